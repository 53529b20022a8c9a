import ChatCoreTesting
import ChatJSON
import Synchronization
import Testing

/// A real in-memory store whose member listing (`threadIDs(of:)`) waits at a gate the test opens: it holds a
/// connect that reads the user's threads at the worst moment, so an interleaving that is rare in production
/// happens on every run.
final class GatedStore: ForwardingStore, @unchecked Sendable {
    /// Where listings wait (closed until the test opens it).
    let gate = TestGate(open: false)

    init() {
        super.init(base: InMemoryStore())
    }

    /// How many listings were asked for.
    var listings: Int { gate.passes }

    func open() { gate.open() }

    override func threadIDs(of key: SessionKey) async throws -> [ThreadID] {
        let ids = try await base.threadIDs(of: key)
        await gate.pass()
        return ids
    }
}

@Suite struct ConnectRaceTests {
    /// A device connects while its user is added to a thread, in the order that lost the room before: the
    /// connect reads the user's threads before the add commits, and attaches after the add fanned out. The
    /// device must get `chat:thread:created` or, if it connected after the add, the thread's messages.
    @Test func deviceConnectingDuringAMemberAddJoinsTheRoom() async throws {
        let store = GatedStore()
        let supervisor = Supervisor(store: store)
        let alice = Principal(userId: "alice", companyId: "acme")
        let bob = Principal(userId: "bob", companyId: "acme")
        let aliceDevice = try await supervisor.connect(alice)
        let thread = try await supervisor.createThread(name: "t", kind: .group, memberIds: [], by: alice).summary.info.id

        // Bob's first device connects. A connect that lists bob's threads stops at the gate, before the add.
        let finished = Flag()
        let connecting = Task {
            let device = try await supervisor.connect(bob)
            finished.set()
            return device
        }
        // Either the connect is done, or it is parked in the listing: wait for whichever happens first.
        for _ in 0..<5000 where store.listings == 0 && !finished.isSet { try await Task.sleep(for: .milliseconds(1)) }

        // The add commits and fans out while that connect (if it read the store) is parked.
        let added = await supervisor.handleREST(.addMembers(thread, ["bob"]), as: alice)
        #expect(added)
        store.open()
        let bobDevice = try await connecting.value

        #expect(await supervisor.handle(event: "chat:send", data: .object(["threadId": .string(thread), "content": .string("hi bob")]), from: aliceDevice).value != nil)
        let names = bobDevice.outbox.takeAvailable().compactMap { supervisor.encoder.decode($0)?.name }
        #expect(names.contains("chat:message"), "bob's device must be in the thread's room; it got \(names)")
        #expect(store.listings == 0, "connect must not read the user's threads (O(1) per connect)")
    }
}

extension Supervisor {
    /// Runs a REST-style command and says whether it succeeded.
    func handleREST(_ command: ClientCommand, as principal: Principal) async -> Bool {
        do { _ = try await perform(command, as: principal, device: nil); return true } catch { return false }
    }
}

/// A flag one task sets and another reads.
final class Flag: Sendable {
    private let value = Atomic<Bool>(false)
    func set() { value.store(true, ordering: .releasing) }
    var isSet: Bool { value.load(ordering: .acquiring) }
}

/// A real in-memory store whose edits and deletes (`.updateMessage` writes) wait at a gate before they are written,
/// and which counts those that were.
final class EditGatedStore: ForwardingStore, @unchecked Sendable {
    let gate = TestGate(open: true)
    private let stored = Mutex(0)

    init() {
        super.init(base: InMemoryStore())
    }

    /// Edits and deletes the store has answered.
    var updatesStored: Int { stored.withLock { $0 } }

    override func submit(_ writes: [StoreWrite], completion: @escaping @Sendable (Result<Void, any Error>) -> Void) {
        guard writes.contains(where: { if case .updateMessage = $0 { true } else { false } }) else {
            return base.submit(writes, completion: completion)
        }
        Task {
            await self.gate.pass()
            self.base.submit(writes) { result in
                self.stored.withLock { $0 += 1 }
                completion(result)
            }
        }
    }
}

@Suite struct UnstoredEditTests {
    /// alice's message "original" in a thread with bob, and alice's edit of it held at the store's gate.
    static func editHeldAtTheGate() async throws -> (
        store: EditGatedStore, supervisor: Supervisor, thread: ThreadID, sent: Message, edit: Task<CommandResult, any Error>
    ) {
        let store = EditGatedStore()
        let supervisor = Supervisor(store: store)
        let alice = Principal(userId: "alice", companyId: "acme")
        let thread = try await supervisor.createThread(name: "t", kind: .group, memberIds: ["bob"], by: alice).summary.info.id
        let device = try await supervisor.connect(alice)
        guard case .message(let sent) = try await supervisor.perform(
            .send(SendRequest(threadId: thread, content: "original")), as: alice, device: device)
        else { throw ChatError.messageNotFound }
        store.gate.close()
        let edit = Task { try await supervisor.perform(.editMessage(sent.id, content: "changed"), as: alice, device: nil) }
        while store.gate.waiting == 0 { try await Task.sleep(for: .milliseconds(5)) }
        return (store, supervisor, thread, sent, edit)
    }

    /// An edit of a message that is not the requester's, or of no message, is refused at once, not after the edit
    /// being written before it: it takes no edit slot, so it holds no send of the thread back either.
    @Test func aBogusEditIsRefusedWithoutWaitingForTheEditBeforeIt() async throws {
        let (store, supervisor, thread, sent, edit) = try await Self.editHeldAtTheGate()
        let bob = Principal(userId: "bob", companyId: "acme")
        let answered = Mutex<ChatError?>(nil)
        let notMine = Task {
            do throws(ChatError) {
                _ = try await supervisor.perform(.edit(thread, sent.id, content: "bob's"), as: bob, device: nil)
            } catch {
                answered.withLock { $0 = error }
            }
        }
        let deadline = ContinuousClock.now + .seconds(2)
        while answered.withLock({ $0 }) == nil, ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(5)) }
        let answer = answered.withLock { $0 }
        #expect(answer?.code == .forbidden, "refused while alice's edit is still being written")
        store.gate.open()
        _ = try await edit.value
        await notMine.value
    }

    /// A read while an edit is in memory and not yet stored (history, sync, the thread listing) does not show it:
    /// it waits for the store's answer, as a client must never see what could later disappear.
    @Test func readsDoNotShowAnEditBeforeItIsStored() async throws {
        let (store, supervisor, thread, _, edit) = try await Self.editHeldAtTheGate()
        let bob = Principal(userId: "bob", companyId: "acme")
        // Each read returns what it saw and whether the edit was stored by then.
        let history = Task { () throws -> (String?, Bool) in
            guard case .page(let page, _) = try await supervisor.perform(.history(thread, beforeSeq: nil, limit: 10), as: bob, device: nil)
            else { return (nil, false) }
            return (page.first?.content, store.updatesStored > 0)
        }
        let listing = Task { () throws -> (String?, Bool) in
            guard case .threads(let threads, _) = try await supervisor.perform(.listThreads(after: nil), as: bob, device: nil)
            else { return (nil, false) }
            return (threads.first?.lastMessage?.content, store.updatesStored > 0)
        }
        try await Task.sleep(for: .milliseconds(200))
        store.gate.open()
        _ = try await edit.value
        for (content, storedByThen) in [try await history.value, try await listing.value] {
            #expect(content == "original" || (content == "changed" && storedByThen), "seen: \(content ?? "nothing"), stored then: \(storedByThen)")
        }
    }
}
