import ChatCoreTesting
import ChatStorePostgres

/// A real PostgreSQL store whose member listing (`members(of:)`) reads the database, then waits at a gate the test
/// opens: the list it returns is then older than what happened while it waited, the worst moment for the actor that
/// asked. Everything else goes straight to the store.
final class GatedMembersStore: ForwardingSharedStore, @unchecked Sendable {
    /// Where member listings wait (open at first).
    let gate = TestGate(open: true)

    init(base: PostgresMessageStore) {
        super.init(shared: base)
    }

    override func members(of thread: ThreadID) async throws -> [(userId: UserID, marks: MemberMarks)] {
        let list = try await shared.members(of: thread)
        await gate.pass()
        return list
    }
}
