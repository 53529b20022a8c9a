import Synchronization
import ChatJSON

/// One change to persist. Changes that carry a thread `seq` must arrive in seq order per thread; a store
/// refuses a seq whose predecessor it does not hold, so a failed write can never leave a gap behind it.
public enum StoreWrite: Sendable {
    case createThread(ThreadInfo, members: [UserID])
    /// Adds members; `membersVersion` becomes the thread's members version (`fence`): a token the writer draws
    /// (`StoreWrite.newMembersVersion()`), never 0, which a new thread starts at. Single-writer stores ignore it.
    case addMembers(ThreadID, [UserID], membersVersion: Int64)
    /// Removes a member; `membersVersion` as for `addMembers`.
    case removeMember(ThreadID, UserID, membersVersion: Int64)
    /// A new message at its seq.
    case insertMessage(Message)
    /// An edit or delete event at `seq`; `message` is the message's new state.
    case updateMessage(Message, seq: Int, kind: EventKind)
    /// A member's receipt watermarks, raised to `marks` (a store keeps the greater of each); `from` is where the
    /// writing node knew them to stand before, for the other nodes' notice (`ClusterChange.marks`).
    case marks(ThreadID, UserID, MemberMarks, from: MemberMarks? = nil)
    /// A sealed (or resealed) history chunk reflecting every event up to seq `asOf`, replacing any chunk with the
    /// same `firstSeq` (a shared store keeps the one with the highest `asOf`, so a late seal from one node never
    /// undoes another node's newer reseal).
    case putChunk(ThreadID, HistoryChunk, asOf: Int)
    /// Names the writer of the unit's seq writes for the thread: once a store refuses one write of `epoch` as a
    /// conflict, it refuses every later write of that epoch too, so a writer's pipelined writes never land out of
    /// order behind another node's. A writer that caught up continues under a higher epoch.
    ///
    /// `membersVersion` is the thread's members version the writer knew (of its last membership change, from a
    /// load, a re-read, an announcement or its own change): if the store's differs, the members changed without
    /// the writer having applied it (a removal on another node not heard of yet), and the unit is refused as a
    /// conflict, as a seq taken first is, even when `rebasable`. The writer then reloads the members and checks the
    /// sender again, so no node stores a message of a member removed elsewhere. Single-writer stores ignore it.
    case fence(ThreadID, epoch: Int, membersVersion: Int64)
    /// The unit's new messages of the thread may take later seqs than they carry: if the first does not follow the
    /// store's log (another node wrote first), a shared store renumbers them to follow it, in order, stores them and
    /// completes the unit with `StoreRebased` instead of refusing it. A fenced epoch does not stop such a unit.
    /// Single-writer stores ignore it.
    case rebasable(ThreadID)
    /// Asks the store where the thread's log stood just before this unit (its last seq then, the other nodes' events
    /// and this unit's batch's earlier units counted): a shared store sets `position` before it completes the unit,
    /// so that the writer places its own member change where the other nodes place it. Single-writer stores may
    /// ignore it: the writer's own count is exact there.
    case notePosition(ThreadID, CommitPosition)
    /// The message was stored while `users` (members other than its sender) had no live socket on the writing
    /// node: the store keeps one pending offline notice per user (a transactional outbox, `OfflineNoticeStore`),
    /// due `delay` seconds after the commit, in the same transaction as the message.
    case offlineNotice(ThreadID, MessageID, users: [UserID], delay: Double)

    /// A fresh members version for a membership change (`addMembers`, `removeMember`): random, so that two nodes'
    /// changes never share one and a writer that missed a change never matches the store by chance; at most 2^53 - 1,
    /// so that it survives JSON (a cluster notice) exactly.
    public static func newMembersVersion() -> Int64 { Int64.random(in: 1...Int64(JSONValue.maxExactInteger)) }

    /// The thread seq this write takes, if any.
    public var seq: (thread: ThreadID, seq: Int)? {
        switch self {
        case .insertMessage(let m): (m.threadId, m.seq)
        case .updateMessage(let m, let seq, _): (m.threadId, seq)
        default: nil
        }
    }
}

/// Where a thread's log stood when a unit was committed (`StoreWrite.notePosition`): set by the store, read by the
/// writer once the unit completes.
public final class CommitPosition: Sendable {
    private let stored = Atomic<Int>(-1)

    public init() {}

    /// The thread's last seq before the unit; `nil` if the store did not say.
    public var value: Int? {
        let v = stored.load(ordering: .acquiring)
        return v < 0 ? nil : v
    }

    public func set(_ seq: Int) { stored.store(seq, ordering: .releasing) }
}

/// The unit was stored, but its messages at later seqs than they carried (`StoreWrite.rebasable`): the writer reads
/// the thread back from the store to learn where they are.
public struct StoreRebased: Error, Sendable, CustomStringConvertible {
    public init() {}
    public var description: String { "stored after other nodes' events, at later seqs" }
}

/// Everything needed to bring a thread actor back: description, members, sealed chunks, the tail after them,
/// and the compact message index.
public struct ThreadSnapshot: Sendable {
    public var info: ThreadInfo
    /// Members in the order they joined, with their receipt marks.
    public var members: [(userId: UserID, marks: MemberMarks)]
    public var chunks: [HistoryChunk]
    /// Events after the last chunk, with messages as they are now.
    public var tail: [ThreadEvent]
    public var index: [MessageIndexEntry]
    public var editEvents: [(seq: Int, messageId: MessageID)]
    /// The chunks up to this seq were left out (`loadThread(_:recentChunks:)`): the thread reads them back on demand.
    public var omittedThrough = 0
    /// The newest message among those left out, as it is now.
    public var newestOmittedMessage: Message?
    /// The members version the members were read at (`StoreWrite.fence`); 0 from a single-writer store.
    public var membersVersion: Int64 = 0

    public init(
        info: ThreadInfo, members: [(userId: UserID, marks: MemberMarks)], chunks: [HistoryChunk], tail: [ThreadEvent],
        index: [MessageIndexEntry], editEvents: [(seq: Int, messageId: MessageID)]
    ) {
        self.info = info
        self.members = members
        self.chunks = chunks
        self.tail = tail
        self.index = index
        self.editEvents = editEvents
    }
}

/// Why a store refused a write.
public struct StoreError: Error, Sendable, CustomStringConvertible {
    public let description: String
    /// The write's seq does not follow the store's log (another node wrote the thread meanwhile): nothing is wrong
    /// with the write itself, the writer must catch up and write it again at a new seq.
    public let isConflict: Bool
    public init(_ description: String, conflict: Bool = false) {
        self.description = description
        isConflict = conflict
    }
}

/// Where threads, members, messages, receipts and history chunks live. `submit` is synchronous and FIFO:
/// writes are queued in call order and `completion` runs once they are durable (or failed). Implementations
/// batch queued writes into one transaction (group commit).
public protocol MessageStore: AnyObject, Sendable {
    /// Queues `writes` as one unit; `completion` runs after they are durable or refused.
    func submit(_ writes: [StoreWrite], completion: @escaping @Sendable (Result<Void, any Error>) -> Void)
    /// The thread with its state, or `nil` if unknown; of its sealed chunks only the newest `recentChunks` (at least
    /// one; the snapshot says up to which seq it left chunks out, and the newest message among them).
    func loadThread(_ id: ThreadID, recentChunks: Int) async throws -> ThreadSnapshot?
    /// A thread's company, last seq and whether `reader` is a member, or `nil` if the thread is unknown, or not of
    /// `company` when one is given: a few row reads, nothing of the thread loaded (the supervisor asks before it loads
    /// a thread for a request, so that a thread is never loaded for another company's user or a non-member; and a
    /// `chat:sync` whose answer is full answers the threads after from this). Another company's thread costs what an
    /// unknown one does (its row is passed over before anything else is read): an answer that took longer told that
    /// it exists (found by an outside probe: 0.5–0.6 ms more).
    func threadHead(of id: ThreadID, reader: UserID, company: CompanyID?) async throws -> ThreadHead?
    /// The threads a user of a company is a member of.
    func threadIDs(of key: SessionKey) async throws -> [ThreadID]
    /// The direct thread between two users of a company, if one exists.
    func directThread(company: CompanyID, between a: UserID, and b: UserID) async throws -> ThreadID?
    /// The thread holding a message, if the message exists in a thread of `company`: one read, for another
    /// company's message as for an unknown one (a second read for the thread's company told that it exists).
    func threadID(ofMessage id: MessageID, company: CompanyID) async throws -> ThreadID?
    /// The thread's sealed history chunks that hold any seq of `seqs`, in seq order (a thread actor reads back the
    /// chunks it released from memory).
    func chunks(of thread: ThreadID, overlapping seqs: ClosedRange<Int>) async throws -> [HistoryChunk]
    /// For each of `ids` that is a message of the thread: its seq first, then the seqs of its edit and delete events,
    /// ascending (a thread actor keeps these in memory only for the messages of its resident chunks and tail).
    func eventSeqs(of thread: ThreadID, messages ids: [MessageID]) async throws -> [MessageID: [Int]]
    /// The seq of the message `sender` sent to the thread with `tempId`, if there is one.
    func messageSeq(of thread: ThreadID, sender: UserID, tempId: String) async throws -> Int?
    /// How many messages with a seq in `seqs` are not deleted and were not sent by `reader`.
    func unreadCount(of thread: ThreadID, reader: UserID, in seqs: ClosedRange<Int>) async throws -> Int
    /// The ids of the same messages, in seq order, grouped by sender (senders in the order of their first message).
    func messagesBySender(of thread: ThreadID, in seqs: ClosedRange<Int>, excluding reader: UserID) async throws -> [(sender: UserID, ids: [MessageID])]
    /// Waits for every queued write to be durable, then closes.
    func shutdown() async
    /// Why the store cannot serve right now (a database that does not answer, a node deaf to the other nodes'
    /// changes), or `nil` when it can: what `GET /health/ready` reports. Bounded in time (a few seconds).
    func unreadiness() async -> String?
}

extension MessageStore {
    /// A store in this process (SQLite, memory) serves as long as the process does.
    public func unreadiness() async -> String? { nil }

    /// Loads the thread: a store of its own should read its rows instead.
    public func threadHead(of id: ThreadID, reader: UserID, company: CompanyID?) async throws -> ThreadHead? {
        guard let snapshot = try await loadThread(id, recentChunks: 1), company.map({ $0 == snapshot.info.companyId }) ?? true else { return nil }
        let last = max(snapshot.tail.last?.seq ?? 0, snapshot.chunks.last?.lastSeq ?? 0, snapshot.omittedThrough)
        return ThreadHead(company: snapshot.info.companyId, lastSeq: last, isMember: snapshot.members.contains { $0.userId == reader })
    }
}

/// What `MessageStore.threadHead(of:reader:company:)` tells of a thread.
public struct ThreadHead: Sendable, Equatable {
    public var company: CompanyID
    /// The seq of its newest event (0 for none).
    public var lastSeq: Int
    /// Whether the reader asked about is a member.
    public var isMember: Bool

    public init(company: CompanyID, lastSeq: Int, isMember: Bool) {
        self.company = company
        self.lastSeq = lastSeq
        self.isMember = isMember
    }
}

/// Groups `(sender, id)` pairs given in seq order by sender, senders in the order of their first message.
public func groupedBySender(_ rows: some Sequence<(sender: UserID, id: MessageID)>) -> [(sender: UserID, ids: [MessageID])] {
    var groups: [(sender: UserID, ids: [MessageID])] = []
    var position: [UserID: Int] = [:]
    for row in rows {
        if let i = position[row.sender] {
            groups[i].ids.append(row.id)
        } else {
            position[row.sender] = groups.count
            groups.append((row.sender, [row.id]))
        }
    }
    return groups
}

extension MessageStore {
    /// The thread with all its state.
    public func loadThread(_ id: ThreadID) async throws -> ThreadSnapshot? {
        try await loadThread(id, recentChunks: .max)
    }

    /// `submit` as an async call.
    public func commit(_ writes: [StoreWrite]) async throws {
        try await withCheckedThrowingContinuation { (cont: CheckedContinuation<Void, any Error>) in
            submit(writes) { cont.resume(with: $0) }
        }
    }
}

extension ThreadSnapshot {
    /// Builds the tail after `afterSeq` from message rows and edit/delete event rows (as stores keep them).
    public static func tail(
        afterSeq: Int, messages: [Message], edits: [(seq: Int, kind: EventKind, messageId: MessageID)],
        currentMessage: (MessageID) -> Message?
    ) -> [ThreadEvent] {
        var events: [ThreadEvent] = messages.filter { $0.seq > afterSeq }.map { ThreadEvent(seq: $0.seq, kind: .message, message: $0) }
        for edit in edits where edit.seq > afterSeq {
            if let message = currentMessage(edit.messageId) {
                events.append(ThreadEvent(seq: edit.seq, kind: edit.kind, message: message))
            }
        }
        return events.sorted { $0.seq < $1.seq }
    }
}
