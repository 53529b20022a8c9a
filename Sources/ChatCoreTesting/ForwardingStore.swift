/// A store that hands every call to `base`, a real store: subclass it and override the calls a test wants to hold at
/// a gate, fail or count, and every other call reaches the real store as it is. Holds nothing but `base`.
open class ForwardingStore: MessageStore, @unchecked Sendable {
    public let base: any MessageStore

    public init(base: any MessageStore) {
        self.base = base
    }

    open func submit(_ writes: [StoreWrite], completion: @escaping @Sendable (Result<Void, any Error>) -> Void) {
        base.submit(writes, completion: completion)
    }
    open func loadThread(_ id: ThreadID, recentChunks: Int) async throws -> ThreadSnapshot? {
        try await base.loadThread(id, recentChunks: recentChunks)
    }
    open func threadHead(of id: ThreadID, reader: UserID, company: CompanyID?) async throws -> ThreadHead? {
        try await base.threadHead(of: id, reader: reader, company: company)
    }
    open func threadIDs(of key: SessionKey) async throws -> [ThreadID] { try await base.threadIDs(of: key) }
    open func directThread(company: CompanyID, between a: UserID, and b: UserID) async throws -> ThreadID? {
        try await base.directThread(company: company, between: a, and: b)
    }
    open func threadID(ofMessage id: MessageID, company: CompanyID) async throws -> ThreadID? {
        try await base.threadID(ofMessage: id, company: company)
    }
    open func chunks(of thread: ThreadID, overlapping seqs: ClosedRange<Int>) async throws -> [HistoryChunk] {
        try await base.chunks(of: thread, overlapping: seqs)
    }
    open func eventSeqs(of thread: ThreadID, messages ids: [MessageID]) async throws -> [MessageID: [Int]] {
        try await base.eventSeqs(of: thread, messages: ids)
    }
    open func messageSeq(of thread: ThreadID, sender: UserID, tempId: String) async throws -> Int? {
        try await base.messageSeq(of: thread, sender: sender, tempId: tempId)
    }
    open func unreadCount(of thread: ThreadID, reader: UserID, in seqs: ClosedRange<Int>) async throws -> Int {
        try await base.unreadCount(of: thread, reader: reader, in: seqs)
    }
    open func messagesBySender(
        of thread: ThreadID, in seqs: ClosedRange<Int>, excluding reader: UserID
    ) async throws -> [(sender: UserID, ids: [MessageID])] {
        try await base.messagesBySender(of: thread, in: seqs, excluding: reader)
    }
    open func shutdown() async { await base.shutdown() }
    open func unreadiness() async -> String? { await base.unreadiness() }
}

/// `ForwardingStore` for a store that several nodes share (PostgreSQL): the cluster calls go to `shared` too.
open class ForwardingSharedStore: ForwardingStore, SharedStore, @unchecked Sendable {
    public let shared: any SharedStore

    public init(shared: any SharedStore) {
        self.shared = shared
        super.init(base: shared)
    }

    open var nodeId: String { shared.nodeId }
    open func nextChanges() async -> [ClusterChange]? { await shared.nextChanges() }
    open func events(in ranges: [ThreadRange]) async throws -> [ThreadID: [ThreadEvent]] { try await shared.events(in: ranges) }
    open func members(of thread: ThreadID) async throws -> ThreadMembers { try await shared.members(of: thread) }
    open func memberChanges(of thread: ThreadID, company: CompanyID, from position: Int) async throws -> [ClusterChange] {
        try await shared.memberChanges(of: thread, company: company, from: position)
    }
    open func memberLog(of thread: ThreadID, company: CompanyID, from position: Int) async throws -> MemberLog {
        try await shared.memberLog(of: thread, company: company, from: position)
    }
    open func memberships(of threads: [ThreadID], alsoRemovedWithin window: Duration?) async throws -> [(thread: ThreadID, company: CompanyID, users: [UserID])] {
        try await shared.memberships(of: threads, alsoRemovedWithin: window)
    }
    open func publish(_ changes: [ClusterChange]) { shared.publish(changes) }
    open func presenceChanged(_ key: SessionKey, online: @escaping @Sendable () -> Bool) { shared.presenceChanged(key, online: online) }
    open func onlineElsewhere(company: CompanyID, among users: [UserID]) async throws -> Set<UserID> {
        try await shared.onlineElsewhere(company: company, among: users)
    }
    open func onlineElsewhereHeard(company: CompanyID, among users: [UserID]) async throws -> [UserID: Timestamp] {
        try await shared.onlineElsewhereHeard(company: company, among: users)
    }
    open func missed(by users: [SessionKey], since: Timestamp) async throws -> [MissedThread] { try await shared.missed(by: users, since: since) }
    open func seqStored(before age: Duration, of thread: ThreadID) async throws -> Int { try await shared.seqStored(before: age, of: thread) }
}
