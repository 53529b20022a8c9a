import Synchronization
import ChatCoreTesting
import ChatStorePostgres

/// A real PostgreSQL store whose cluster reads can be held at gates the test opens (all open at first), each at the
/// worst moment for the node that asked:
/// - `members`: a member listing (`members(of:)`, or `memberLog` with the log of changes) has read the database and
///   waits: the list it returns is then older than what happened while it waited;
/// - `loads`: a thread's snapshot (`loadThread`) has been read and waits: the actor activated from it is older than
///   what other nodes committed meanwhile;
/// - `feed`: a batch of other nodes' changes (`nextChanges`) has arrived and waits: its announcement is in flight;
/// - `memberWrites`: a membership change (`addMembers`, `removeMember`) waits before it reaches the store (while the
///   gate is closed; other writes go on, so they may overtake it);
/// - `sends`: a unit with a new message waits before it reaches the store (the actor has a write in flight);
/// - `catchUps`: an actor's catch-up (a read of a thread's events to its end) has read the database and waits: what it
///   returns is older than what was announced meanwhile.
/// - `heads`: a thread's head (`threadHead`) has been read and waits: events committed meanwhile are past it.
/// - `missedReads`: the threads written while the node was not listening (`missed(by:since:)`) have been read and wait.
///
/// Everything else goes straight to the store.
final class GatedClusterStore: ForwardingSharedStore, @unchecked Sendable {
    let members = TestGate(open: true)
    let loads = TestGate(open: true)
    let feed = TestGate(open: true)
    let memberWrites = TestGate(open: true)
    let sends = TestGate(open: true)
    let catchUps = TestGate(open: true)
    let heads = TestGate(open: true)
    let missedReads = TestGate(open: true)
    /// Asking whose threads are (`memberships(of:)`) waits here.
    let membershipLookups = TestGate(open: true)
    /// While set, reading events (`events(in:)`) fails as a store that cannot answer.
    let eventReadsFail = Atomic<Bool>(false)

    init(base: PostgresMessageStore) {
        super.init(shared: base)
    }

    /// While set, reading a thread's members (its list, or the log of its changes) fails as a store that cannot answer.
    let membersFail = Atomic<Bool>(false)

    override func memberChanges(of thread: ThreadID, company: CompanyID, from position: Int) async throws -> [ClusterChange] {
        if membersFail.load(ordering: .relaxed) { throw StoreError("member changes cannot be read (test)") }
        return try await shared.memberChanges(of: thread, company: company, from: position)
    }

    override func memberLog(of thread: ThreadID, company: CompanyID, from position: Int) async throws -> MemberLog {
        if membersFail.load(ordering: .relaxed) { throw StoreError("member changes cannot be read (test)") }
        let log = try await shared.memberLog(of: thread, company: company, from: position)
        await members.pass()
        return log
    }

    override func members(of thread: ThreadID) async throws -> ThreadMembers {
        if membersFail.load(ordering: .relaxed) { throw StoreError("members cannot be read (test)") }
        let list = try await shared.members(of: thread)
        await members.pass()
        return list
    }

    /// While a thread is set, asking whose it is (`memberships(of:)` with it among the threads) fails as a store that
    /// cannot answer; `membershipFailures` counts those failures.
    func failMemberships(of thread: ThreadID?) { failing.withLock { $0 = thread } }
    var membershipFailures: Int { failures.load(ordering: .relaxed) }
    private let failing = Mutex<ThreadID?>(nil)
    private let failures = Atomic<Int>(0)

    override func memberships(of threads: [ThreadID], alsoRemovedWithin window: Duration?) async throws -> [(thread: ThreadID, company: CompanyID, users: [UserID])] {
        if let thread = failing.withLock({ $0 }), threads.contains(thread) {
            failures.add(1, ordering: .relaxed)
            throw StoreError("memberships cannot be read (test)")
        }
        await membershipLookups.pass()
        return try await shared.memberships(of: threads, alsoRemovedWithin: window)
    }

    override func threadHead(of id: ThreadID, reader: UserID, company: CompanyID?) async throws -> ThreadHead? {
        let head = try await super.threadHead(of: id, reader: reader, company: company)
        await heads.pass()
        return head
    }

    override func missed(by users: [SessionKey], since: Timestamp) async throws -> [MissedThread] {
        let missed = try await shared.missed(by: users, since: since)
        await missedReads.pass()
        return missed
    }

    override func loadThread(_ id: ThreadID, recentChunks: Int) async throws -> ThreadSnapshot? {
        let snapshot = try await shared.loadThread(id, recentChunks: recentChunks)
        await loads.pass()
        return snapshot
    }

    override func submit(_ writes: [StoreWrite], completion: @escaping @Sendable (Result<Void, any Error>) -> Void) {
        let membership = writes.contains { write in
            switch write {
            case .addMembers, .removeMember: true
            default: false
            }
        }
        let send = writes.contains { if case .insertMessage = $0 { true } else { false } }
        guard membership || send else { return shared.submit(writes, completion: completion) }
        let shared = self.shared, gate = membership ? memberWrites : sends
        Task {
            await gate.pass()
            shared.submit(writes, completion: completion)
        }
    }

    /// Reads of events from the store (`events(in:)`, which `events(of:after:)` uses too).
    var eventReads: Int { reads.load(ordering: .relaxed) }
    private let reads = Atomic<Int>(0)

    override func events(in ranges: [ThreadRange]) async throws -> [ThreadID: [ThreadEvent]] {
        reads.add(1, ordering: .relaxed)
        if eventReadsFail.load(ordering: .relaxed) { throw StoreError("events cannot be read (test)") }
        let events = try await shared.events(in: ranges)
        if ranges.allSatisfy({ $0.upTo == .max }) { await catchUps.pass() }
        return events
    }

    override func nextChanges() async -> [ClusterChange]? {
        let batch = await shared.nextChanges()
        await feed.pass()
        return batch
    }
}
