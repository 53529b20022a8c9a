import Synchronization

/// A complete `MessageStore` held in process memory: the same rules as the SQLite store (seq continuity,
/// chunk replacement, direct-thread lookup) without a file. For embedding in tests and benchmarks; it survives
/// nothing beyond the process.
public final class InMemoryStore: MessageStore {
    struct StoredThread {
        var info: ThreadInfo
        var members: [(userId: UserID, marks: MemberMarks)] = []
        var messages: [MessageID: Message] = [:]
        var messageOrder: [MessageID] = []
        var edits: [(seq: Int, kind: EventKind, messageId: MessageID)] = []
        var chunks: [Int: HistoryChunk] = [:]
        var lastSeq = 0
    }

    struct State {
        var threads: [ThreadID: StoredThread] = [:]
        var messageThread: [MessageID: ThreadID] = [:]
        var failNext: String?
    }

    private let state = Mutex(State())

    public init() {}

    /// Makes the next `submit` fail with `reason` (for fault tests of the layers above).
    public func failNextCommit(_ reason: String) { state.withLock { $0.failNext = reason } }

    public func submit(_ writes: [StoreWrite], completion: @escaping @Sendable (Result<Void, any Error>) -> Void) {
        let result: Result<Void, any Error> = state.withLock { s in
            if let reason = s.failNext {
                s.failNext = nil
                return .failure(StoreError(reason))
            }
            // Validate the whole unit first, so it is applied entirely or not at all (without copying the state).
            if let error = Self.validate(writes, in: s) { return .failure(error) }
            for write in writes { Self.apply(write, to: &s) }
            return .success(())
        }
        completion(result)
    }

    static func validate(_ writes: [StoreWrite], in s: State) -> StoreError? {
        var last: [ThreadID: Int] = [:]
        var created: Set<ThreadID> = []
        for write in writes {
            if case .createThread(let info, let members) = write {
                // One direct thread per pair and company, as the databases' unique index keeps it.
                if info.kind == .direct, s.threads.values.contains(where: {
                    $0.info.companyId == info.companyId && $0.info.kind == .direct && Set($0.members.map(\.userId)) == Set(members)
                }) {
                    return StoreError("a direct thread between these users exists")
                }
                created.insert(info.id)
            }
            guard let (thread, seq) = write.seq else { continue }
            guard let current = last[thread] ?? s.threads[thread]?.lastSeq ?? (created.contains(thread) ? 0 : nil) else {
                return StoreError("unknown thread \(thread)")
            }
            guard seq == current + 1 else { return StoreError("seq \(seq) of thread \(thread) does not follow \(current)") }
            last[thread] = seq
        }
        return nil
    }

    static func apply(_ write: StoreWrite, to s: inout State) {
        switch write {
        case .createThread(let info, let members):
            var t = StoredThread(info: info)
            t.members = members.map { ($0, MemberMarks()) }
            s.threads[info.id] = t
        case .addMembers(let id, let users, _):
            for user in users where !(s.threads[id]?.members.contains { $0.userId == user } ?? true) {
                s.threads[id]?.members.append((user, MemberMarks()))
            }
        case .removeMember(let id, let user, _):
            s.threads[id]?.members.removeAll { $0.userId == user }
        case .insertMessage(let m):
            s.threads[m.threadId]!.messages[m.id] = m
            s.threads[m.threadId]!.messageOrder.append(m.id)
            s.threads[m.threadId]!.lastSeq = m.seq
            s.messageThread[m.id] = m.threadId
        case .updateMessage(let m, let seq, let kind):
            s.threads[m.threadId]!.messages[m.id] = m
            s.threads[m.threadId]!.edits.append((seq, kind, m.id))
            s.threads[m.threadId]!.lastSeq = seq
        case .marks(let id, let user, let marks, _):
            if let i = s.threads[id]?.members.firstIndex(where: { $0.userId == user }) {
                s.threads[id]!.members[i].marks = marks
            }
        case .putChunk(let id, let chunk, _):
            s.threads[id]?.chunks[chunk.firstSeq] = chunk
        case .fence, .rebasable, .offlineNotice, .notePosition:
            break  // one writer, nothing to renumber; no outbox (it is not an `OfflineNoticeStore`)
        }
    }

    public func loadThread(_ id: ThreadID, recentChunks: Int) async throws -> ThreadSnapshot? {
        state.withLock { s in
            guard let t = s.threads[id] else { return nil }
            let all = t.chunks.values.sorted { $0.firstSeq < $1.firstSeq }
            let chunks = Array(all.suffix(max(recentChunks, 1)))
            let omittedThrough = (chunks.first?.firstSeq ?? 1) - 1
            let sealed = chunks.last?.lastSeq ?? 0
            let messages = t.messageOrder.compactMap { t.messages[$0] }
            let tail = ThreadSnapshot.tail(afterSeq: sealed, messages: messages, edits: t.edits) { t.messages[$0] }
            let index = messages.map {
                MessageIndexEntry(seq: $0.seq, id: $0.id, senderId: $0.senderId, deleted: $0.isDeleted, tempId: $0.tempId)
            }
            var snapshot = ThreadSnapshot(
                info: t.info, members: t.members, chunks: chunks, tail: tail, index: index,
                editEvents: t.edits.map { ($0.seq, $0.messageId) })
            snapshot.omittedThrough = omittedThrough
            snapshot.newestOmittedMessage = messages.last { $0.seq <= omittedThrough }
            return snapshot
        }
    }

    public func threadIDs(of key: SessionKey) async throws -> [ThreadID] {
        state.withLock { s in
            s.threads.values.filter { t in
                t.info.companyId == key.companyId && t.members.contains { $0.userId == key.userId }
            }.sorted { ($0.info.createdAt, $0.info.id) < ($1.info.createdAt, $1.info.id) }.map(\.info.id)  // as the SQL stores order them
        }
    }

    public func directThread(company: CompanyID, between a: UserID, and b: UserID) async throws -> ThreadID? {
        state.withLock { s in
            s.threads.values.first { t in
                t.info.companyId == company && t.info.kind == .direct && Set(t.members.map(\.userId)) == Set([a, b])
            }?.info.id
        }
    }

    public func threadHead(of id: ThreadID, reader: UserID, company: CompanyID?) async throws -> ThreadHead? {
        state.withLock { s in
            guard let thread = s.threads[id], company == nil || company == thread.info.companyId else { return nil }
            return ThreadHead(company: thread.info.companyId, lastSeq: thread.lastSeq, isMember: thread.members.contains { $0.userId == reader })
        }
    }

    public func threadID(ofMessage id: MessageID, company: CompanyID) async throws -> ThreadID? {
        state.withLock { s in
            guard let thread = s.messageThread[id], s.threads[thread]?.info.companyId == company else { return nil }
            return thread
        }
    }

    public func chunks(of thread: ThreadID, overlapping seqs: ClosedRange<Int>) async throws -> [HistoryChunk] {
        state.withLock { s in
            (s.threads[thread]?.chunks.values ?? [:].values)
                .filter { $0.firstSeq <= seqs.upperBound && $0.lastSeq >= seqs.lowerBound }
                .sorted { $0.firstSeq < $1.firstSeq }
        }
    }

    public func eventSeqs(of thread: ThreadID, messages ids: [MessageID]) async throws -> [MessageID: [Int]] {
        state.withLock { s in
            guard let t = s.threads[thread] else { return [:] }
            var out: [MessageID: [Int]] = [:]
            for id in ids { if let m = t.messages[id] { out[id] = [m.seq] } }
            for edit in t.edits.sorted(by: { $0.seq < $1.seq }) where out[edit.messageId] != nil { out[edit.messageId]!.append(edit.seq) }
            return out
        }
    }

    public func messageSeq(of thread: ThreadID, sender: UserID, tempId: String) async throws -> Int? {
        state.withLock { s in
            s.threads[thread]?.messages.values.filter { $0.senderId == sender && $0.tempId.map { $0.utf8.elementsEqual(tempId.utf8) } == true }.map(\.seq).min()
        }
    }

    /// The thread's messages in `seqs` not deleted and not sent by `reader`, in seq order.
    private func unread(of thread: ThreadID, reader: UserID, in seqs: ClosedRange<Int>) -> [Message] {
        state.withLock { s in
            guard let t = s.threads[thread] else { return [] }
            return t.messageOrder.compactMap { t.messages[$0] }
                .filter { seqs.contains($0.seq) && !$0.isDeleted && $0.senderId != reader }
                .sorted { $0.seq < $1.seq }
        }
    }

    public func unreadCount(of thread: ThreadID, reader: UserID, in seqs: ClosedRange<Int>) async throws -> Int {
        unread(of: thread, reader: reader, in: seqs).count
    }

    public func messagesBySender(
        of thread: ThreadID, in seqs: ClosedRange<Int>, excluding reader: UserID
    ) async throws -> [(sender: UserID, ids: [MessageID])] {
        groupedBySender(unread(of: thread, reader: reader, in: seqs).map { ($0.senderId, $0.id) })
    }

    public func shutdown() async {}
}
