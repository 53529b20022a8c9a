import ChatCoreTesting
import ChatStorePostgres
import Synchronization

/// A real PostgreSQL store whose member listing (`members(of:)`) reads the database, then waits at a gate the test
/// opens: the list it returns is then older than what happened while it waited, the worst moment for the actor that
/// asked. Everything else goes straight to the store.
final class GatedMembersStore: ForwardingSharedStore, @unchecked Sendable {
    private let gate = Mutex<(open: Bool, waiting: [CheckedContinuation<Void, Never>])>((true, []))

    init(base: PostgresMessageStore) {
        super.init(shared: base)
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

    override func members(of thread: ThreadID) async throws -> [(userId: UserID, marks: MemberMarks)] {
        let list = try await shared.members(of: thread)
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
}
