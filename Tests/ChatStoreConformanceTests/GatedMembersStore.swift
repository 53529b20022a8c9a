import ChatCore
import ChatStorePostgres
import Synchronization

/// A real PostgreSQL store whose member listing (`members(of:)`) reads the database, then waits at a gate the test
/// opens: the list it returns is then older than what happened while it waited, the worst moment for the actor that
/// asked. Everything else goes straight to the store.
final class GatedMembersStore: SharedStore {
    let base: PostgresMessageStore
    private let gate = Mutex<(open: Bool, waiting: [CheckedContinuation<Void, Never>])>((true, []))

    init(base: PostgresMessageStore) {
        self.base = base
    }

    /// Member listings wait from now on, until `open`.
    func close() { gate.withLock { $0.open = false } }

    /// How many listings wait at the gate.
    var waiting: Int { gate.withLock { $0.waiting.count } }

    func open() {
        let waiting = gate.withLock { g in
            g.open = true
            defer { g.waiting = [] }
            return g.waiting
        }
        for waiter in waiting { waiter.resume() }
    }

    func members(of thread: ThreadID) async throws -> [(userId: UserID, marks: MemberMarks)] {
        let list = try await base.members(of: thread)
        await withCheckedContinuation { (cont: CheckedContinuation<Void, Never>) in
            let now = gate.withLock { g -> Bool in
                if g.open { return true }
                g.waiting.append(cont)
                return false
            }
            if now { cont.resume() }
        }
        return list
    }

    var nodeId: String { base.nodeId }
    func nextChanges() async -> [ClusterChange]? { await base.nextChanges() }
    func events(in ranges: [ThreadRange]) async throws -> [ThreadID: [ThreadEvent]] { try await base.events(in: ranges) }
    func memberships(of threads: [ThreadID]) async throws -> [(thread: ThreadID, company: CompanyID, users: [UserID])] {
        try await base.memberships(of: threads)
    }
    func publish(_ changes: [ClusterChange]) { base.publish(changes) }
    func presenceChanged(_ key: SessionKey, online: @escaping @Sendable () -> Bool) { base.presenceChanged(key, online: online) }
    func onlineElsewhere(company: CompanyID, among users: [UserID]) async throws -> Set<UserID> {
        try await base.onlineElsewhere(company: company, among: users)
    }
    func missed(by users: [SessionKey], since: Timestamp) async throws -> [MissedThread] { try await base.missed(by: users, since: since) }
    func submit(_ writes: [StoreWrite], completion: @escaping @Sendable (Result<Void, any Error>) -> Void) { base.submit(writes, completion: completion) }
    func loadThread(_ id: ThreadID, recentChunks: Int) async throws -> ThreadSnapshot? { try await base.loadThread(id, recentChunks: recentChunks) }
    func threadIDs(of key: SessionKey) async throws -> [ThreadID] { try await base.threadIDs(of: key) }
    func directThread(company: CompanyID, between a: UserID, and b: UserID) async throws -> ThreadID? {
        try await base.directThread(company: company, between: a, and: b)
    }
    func threadID(ofMessage id: MessageID) async throws -> ThreadID? { try await base.threadID(ofMessage: id) }
    func chunks(of thread: ThreadID, overlapping seqs: ClosedRange<Int>) async throws -> [HistoryChunk] {
        try await base.chunks(of: thread, overlapping: seqs)
    }
    func eventSeqs(of thread: ThreadID, messages ids: [MessageID]) async throws -> [MessageID: [Int]] {
        try await base.eventSeqs(of: thread, messages: ids)
    }
    func messageSeq(of thread: ThreadID, sender: UserID, tempId: String) async throws -> Int? {
        try await base.messageSeq(of: thread, sender: sender, tempId: tempId)
    }
    func unreadCount(of thread: ThreadID, reader: UserID, in seqs: ClosedRange<Int>) async throws -> Int {
        try await base.unreadCount(of: thread, reader: reader, in: seqs)
    }
    func messagesBySender(of thread: ThreadID, in seqs: ClosedRange<Int>, excluding reader: UserID) async throws -> [(sender: UserID, ids: [MessageID])] {
        try await base.messagesBySender(of: thread, in: seqs, excluding: reader)
    }
    func shutdown() async { await base.shutdown() }
}
