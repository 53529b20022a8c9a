/// A `MessageStore` that several broker nodes share (PostgreSQL). Besides storing, it tells each node what the
/// others committed, in commit order, and answers the reads a node needs to apply those changes: a node's thread
/// actor is a cache of the thread's log in the store, kept current from these changes.
///
/// Guarantees a node relies on: every committed batch that moved a thread's log, its members or receipt marks is
/// announced to every listening node after it commits (never before, never if it rolled back); announcements
/// arrive in commit order; after the listener lost its connection, `.resync` comes first, so that the node re-reads
/// its active threads, and `missed(by:since:)` then names the inactive threads other nodes wrote meanwhile. A write
/// whose seq does not follow the store's log is refused with a conflict (`StoreError.isConflict`), and so is every
/// later write of the same fenced writer epoch (`StoreWrite.fence`).
public protocol SharedStore: MessageStore {
    /// This node's id: changes it committed itself are not announced back to it.
    var nodeId: String { get }
    /// Waits for other nodes' changes and returns every change announced since the last call, in commit order (a
    /// consumer that fell behind gets many commits at once); `nil` once the store is shut down. One consumer: the
    /// supervisor.
    func nextChanges() async -> [ClusterChange]?
    /// For each range, the thread's events in it, in seq order (messages and edit/delete events, each message as it
    /// is now): one read for many threads.
    func events(in ranges: [ThreadRange]) async throws -> [ThreadID: [ThreadEvent]]
    /// The thread's members in the order they joined, with their receipt marks, and the members version they were
    /// read at (one read).
    func members(of thread: ThreadID) async throws -> ThreadMembers
    /// The thread's member changes with a position (`asOf`) at or after `position`, in commit order, as the
    /// `.membership` announcements that told them (of `company`); changes older than the store keeps (an hour) are
    /// not listed. A node that may have missed announcements replays them at their places.
    func memberChanges(of thread: ThreadID, company: CompanyID, from position: Int) async throws -> [ClusterChange]
    /// `memberChanges(of:company:from:)` and `members(of:)` as of one moment: the list holds exactly the changes the
    /// log lists (read in two moments, a change committed in between is in one and not the other, and a node
    /// checking the log against the list takes them to disagree).
    func memberLog(of thread: ThreadID, company: CompanyID, from position: Int) async throws -> MemberLog
    /// For each of `threads` that exists: its company and members, and with `alsoRemovedWithin` the users removed
    /// from it within that time too (a node deciding whether a batch of another node's events concerns a user here:
    /// the events before a removal committed a moment later are still theirs).
    func memberships(of threads: [ThreadID], alsoRemovedWithin window: Duration?) async throws -> [(thread: ThreadID, company: CompanyID, users: [UserID])]
    /// Tells the other nodes `changes` that are not stored (typing, emitted events): queued and sent in call order,
    /// best effort (lost while the database is unreachable).
    func publish(_ changes: [ClusterChange])
    /// The user's presence on this node may have changed: `online` (asked when the store writes it, so calls need
    /// no ordering) says whether the user has a live device here now.
    func presenceChanged(_ key: SessionKey, online: @escaping @Sendable () -> Bool)
    /// Which of `users` have a live device on another node that is alive (it has written its heartbeat lately).
    func onlineElsewhere(company: CompanyID, among users: [UserID]) async throws -> Set<UserID>
    /// `onlineElsewhere`, with when (the store's clock) the newest heartbeat of the nodes each user is on was written:
    /// a node killed moments ago still counts as alive until its heartbeat is too old, but has written none since.
    func onlineElsewhereHeard(company: CompanyID, among users: [UserID]) async throws -> [UserID: Timestamp]
    /// After `.resync(since:)`: the threads of `users` (this node's users with a live device) that other nodes wrote,
    /// or added one of them to, from `since` on (the store's clock), each with where its log stood before (by the
    /// time the store wrote each event) and where it stands now.
    func missed(by users: [SessionKey], since: Timestamp) async throws -> [MissedThread]
    /// The thread's last seq among the events stored more than `age` ago by the store's clock (0 if none): the events
    /// after it were all stored within `age` (a thread's events are stored in seq order).
    func seqStored(before age: Duration, of thread: ThreadID) async throws -> Int
}

/// A thread's members as a shared store holds them (`SharedStore.members(of:)`).
public struct ThreadMembers: Sendable {
    /// In the order they joined, with their receipt marks.
    public var list: [(userId: UserID, marks: MemberMarks)]
    /// The thread's members version at that read (`StoreWrite.fence`).
    public var version: Int64

    public init(_ list: [(userId: UserID, marks: MemberMarks)], version: Int64) {
        self.list = list
        self.version = version
    }
}

/// A thread's member changes from a position on and its members list, read together (`SharedStore.memberLog`).
public struct MemberLog: Sendable {
    /// The member changes, in commit order.
    public var changes: [ClusterChange]
    /// The members after the last of them.
    public var members: ThreadMembers

    public init(changes: [ClusterChange], members: ThreadMembers) {
        self.changes = changes
        self.members = members
    }
}

/// A thread written while a node was not listening (`SharedStore.missed(by:since:)`).
public struct MissedThread: Sendable, Equatable {
    public var thread: ThreadID
    public var company: CompanyID
    /// The thread's last seq among the events stored before the node stopped hearing.
    public var before: Int
    /// The thread's last seq now.
    public var last: Int
    /// Members added since the node stopped hearing (of any node: the caller picks its own users).
    public var added: [UserID]

    public init(thread: ThreadID, company: CompanyID, before: Int, last: Int, added: [UserID]) {
        self.thread = thread
        self.company = company
        self.before = before
        self.last = last
        self.added = added
    }
}

extension SharedStore {
    /// A store that cannot tell when it heard the nodes: each user online elsewhere counts as heard now.
    public func onlineElsewhereHeard(company: CompanyID, among users: [UserID]) async throws -> [UserID: Timestamp] {
        let now = Timestamp.now()
        return Dictionary(uniqueKeysWithValues: try await onlineElsewhere(company: company, among: users).map { ($0, now) })
    }

    /// The thread's events after `seq`, in seq order.
    public func events(of thread: ThreadID, after seq: Int) async throws -> [ThreadEvent] {
        try await events(in: [ThreadRange(thread: thread, after: seq)])[thread] ?? []
    }
}

/// Seqs `after + 1 ... upTo` of a thread.
public struct ThreadRange: Sendable, Equatable {
    public var thread: ThreadID
    public var after: Int
    public var upTo: Int

    public init(thread: ThreadID, after: Int, upTo: Int = .max) {
        self.thread = thread
        self.after = after
        self.upTo = upTo
    }
}

extension SharedStore {
    /// For each of `threads` that exists: its company and members.
    public func memberships(of threads: [ThreadID]) async throws -> [(thread: ThreadID, company: CompanyID, users: [UserID])] {
        try await memberships(of: threads, alsoRemovedWithin: nil)
    }
}
