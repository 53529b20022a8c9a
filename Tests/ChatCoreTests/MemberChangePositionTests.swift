import ChatCoreTesting
import ChatJSON
import Synchronization
import Testing

/// A real in-memory store whose committer can be paused: writes submitted meanwhile wait, in their order, and are
/// committed in that order once it resumes (as a real store's queue does while a commit is slow).
final class PausableStore: ForwardingStore, @unchecked Sendable {
    private let state = Mutex<(paused: Bool, queued: [(writes: [StoreWrite], completion: @Sendable (Result<Void, any Error>) -> Void)])>((false, []))

    init() {
        super.init(base: InMemoryStore())
    }

    /// Writes waiting for `resume()`.
    var queued: Int { state.withLock { $0.queued.count } }

    func pause() { state.withLock { $0.paused = true } }

    /// Commits what waits, in order, and every later write at once; the first `failing` of those waiting fail
    /// instead (nothing of them is stored), as a commit does that hits a full disk or a dropped connection.
    func resume(failing: Int = 0) {
        let queued = state.withLock { s in
            s.paused = false
            defer { s.queued = [] }
            return s.queued
        }
        for (i, (writes, completion)) in queued.enumerated() {
            if i < failing { completion(.failure(StoreError("disk full"))) } else { base.submit(writes, completion: completion) }
        }
    }

    override func submit(_ writes: [StoreWrite], completion: @escaping @Sendable (Result<Void, any Error>) -> Void) {
        let now = state.withLock { s -> Bool in
            if s.paused { s.queued.append((writes, completion)) }
            return !s.paused
        }
        if now { base.submit(writes, completion: completion) }
    }
}

/// A member change takes effect for delivery at its place in the thread's order, on the node that makes it too: the
/// events before it (this node's sends still being written when it was asked for) reach the members as they were.
@Suite struct MemberChangePositionTests {
    static func waitUntil(_ condition: () -> Bool) async throws {
        let clock = ContinuousClock(), start = clock.now
        while !condition() {
            guard clock.now - start < .seconds(10) else { Issue.record("timed out"); return }
            try await Task.sleep(for: .milliseconds(5))
        }
    }

    /// `sender` sends `content`, then alice asks for `change`, both held by the paused store until both are queued
    /// (then `meanwhile` runs); returns once both are answered (both must succeed).
    static func messageThenChange(
        _ h: Harness, _ store: PausableStore, _ sender: TestDevice, _ thread: ThreadID, _ content: String, _ change: ClientCommand,
        meanwhile: () async -> Void = {}
    ) async throws {
        store.pause()
        let message = Task { await sender.send(thread, content) }
        try await waitUntil { store.queued == 1 }
        let changed = Task { try await h.supervisor.perform(change, as: h.principal("alice"), device: nil) }
        try await waitUntil { store.queued == 2 }
        await meanwhile()
        store.resume()
        _ = try await changed.value
        _ = try #require(await message.value.value)
    }

    static func messages(_ events: [(name: String, data: JSONValue)]) -> [String] {
        events.filter { $0.name == "chat:message" }.compactMap { $0.data["message"]?["content"]?.stringValue }
    }

    /// bob's message is being written when alice removes carol: carol gets it (it comes before her removal), and
    /// nothing after. Before, carol stopped receiving when the removal was asked for and missed it.
    @Test func aRemovedMemberGetsTheMessagesBeingWrittenBeforeTheRemoval() async throws {
        let store = PausableStore()
        let h = Harness(store: store)
        let thread = try await h.thread(["bob", "carol"])
        let bob = try await h.connect("bob")
        let carol = try await h.connect("carol")
        try await Self.messageThenChange(h, store, bob, thread, "before the removal", .removeMember(thread, "carol"))
        _ = try await bob.send(thread, "after the removal").get()
        #expect(Self.messages(carol.events()) == ["before the removal"])
        #expect(Self.messages(bob.events()) == ["before the removal", "after the removal"])
        await h.close()
    }

    /// dave is added while bob's message is being written: he does not get it (it comes before his addition), is
    /// greeted, and gets what is sent after.
    @Test func anAddedMemberGetsNothingWrittenBeforeTheAddition() async throws {
        let store = PausableStore()
        let h = Harness(store: store)
        let thread = try await h.thread(["bob"])
        let bob = try await h.connect("bob")
        let dave = try await h.connect("dave")
        try await Self.messageThenChange(h, store, bob, thread, "before the addition", .addMembers(thread, ["dave"]))
        _ = try await bob.send(thread, "after the addition").get()
        let events = dave.events()
        #expect(events.map(\.name).first == "chat:thread:created")
        #expect(Self.messages(events) == ["after the addition"])
        await h.close()
    }

    /// bob's m1, dave's addition, bob's m2 and carol's removal are all being written at once (the store holds them,
    /// in that order): dave gets m2 only, carol m1 and m2. Before, the removal (queued when asked for) stood ahead of
    /// the addition (queued once written), so dave missed m2; and a membership command waited for the actor's own
    /// writes to settle (it could not even be asked for here).
    @Test func changesAskedForTogetherFallInTheOrderTheyWereAskedFor() async throws {
        let store = PausableStore()
        let h = Harness(store: store)
        let thread = try await h.thread(["bob", "carol"])
        let bob = try await h.connect("bob")
        let carol = try await h.connect("carol")
        let dave = try await h.connect("dave")
        let alice = h.principal("alice")
        store.pause()
        let m1 = Task { await bob.send(thread, "m1") }
        try await Self.waitUntil { store.queued == 1 }
        let addition = Task { try await h.supervisor.perform(.addMembers(thread, ["dave"]), as: alice, device: nil) }
        try await Self.waitUntil { store.queued == 2 }
        let m2 = Task { await bob.send(thread, "m2") }
        try await Self.waitUntil { store.queued == 3 }
        let removal = Task { try await h.supervisor.perform(.removeMember(thread, "carol"), as: alice, device: nil) }
        try await Self.waitUntil { store.queued == 4 }
        store.resume()
        _ = try await addition.value
        _ = try await removal.value
        _ = try #require(await m1.value.value)
        _ = try #require(await m2.value.value)
        let daveEvents = dave.events()
        #expect(Self.messages(daveEvents) == ["m2"])
        #expect(Self.messages(carol.events()) == ["m1", "m2"])
        // dave's greeting describes the thread at his addition's place: m1 counted, m2 not (it comes to him live).
        // Before, it counted every message stored by then, so m2 was counted and delivered too (a contract probe).
        let greeting = try #require(daveEvents.first { $0.name == "chat:thread:created" }?.data["thread"])
        #expect(greeting["lastSeq"]?.intValue == 1)
        #expect(greeting["unreadCount"]?.intValue == 1)
        #expect(greeting["lastMessage"]?["content"]?.stringValue == "m1")
        await h.close()
    }

    /// carol is removed and added back while bob's messages are being written around both changes (the store holds
    /// them all, in order): she gets m1 (before her removal), not "between" (while she was out), then one greeting and
    /// "after". dave, added and then removed the same way, gets one greeting and "between" only. (Each change was
    /// judged against the members as they were once the next was asked for: carol got "between", and dave nothing;
    /// found by an outside probe of several nodes, where a client removed and re-added a member in a loop.)
    @Test func changesOfOneUserAskedForBackToBackEachTakeEffectAtTheirPlace() async throws {
        let store = PausableStore()
        let h = Harness(store: store)
        let thread = try await h.thread(["bob", "carol"])
        let bob = try await h.connect("bob"), carol = try await h.connect("carol"), dave = try await h.connect("dave")
        let alice = h.principal("alice")
        store.pause()
        var queued = 0
        func next<T: Sendable>(_ body: @escaping @Sendable () async throws -> T) async throws -> Task<T, any Error> {
            let task = Task { try await body() }
            queued += 1
            let expected = queued
            try await Self.waitUntil { store.queued == expected }
            return task
        }
        let m1 = try await next { await bob.send(thread, "m1") }
        let removeCarol = try await next { try await h.supervisor.perform(.removeMember(thread, "carol"), as: alice, device: nil) }
        let addDave = try await next { try await h.supervisor.perform(.addMembers(thread, ["dave"]), as: alice, device: nil) }
        let between = try await next { await bob.send(thread, "between") }
        let addCarol = try await next { try await h.supervisor.perform(.addMembers(thread, ["carol"]), as: alice, device: nil) }
        let removeDave = try await next { try await h.supervisor.perform(.removeMember(thread, "dave"), as: alice, device: nil) }
        let after = try await next { await bob.send(thread, "after") }
        store.resume()
        for change in [removeCarol, addDave, addCarol, removeDave] { _ = try await change.value }
        for send in [m1, between, after] { _ = try #require(try await send.value.value) }
        let carolEvents = carol.events(), daveEvents = dave.events()
        #expect(Self.messages(carolEvents) == ["m1", "after"])
        #expect(carolEvents.filter { $0.name == "chat:thread:created" }.count == 1)
        #expect(Self.messages(daveEvents) == ["between"])
        #expect(daveEvents.filter { $0.name == "chat:thread:created" }.count == 1)
        await h.close()
    }

    /// While carol's removal waits for bob's message being written (she still gets that message), bob starts typing:
    /// carol is not told (a typing start is not a thread event, and she is no longer a member). She gets the message.
    @Test func aRemovedMemberIsNotToldOfTypingWhileTheRemovalWaits() async throws {
        let store = PausableStore()
        let h = Harness(store: store)
        let thread = try await h.thread(["bob", "carol"])
        let bob = try await h.connect("bob")
        let carol = try await h.connect("carol")
        try await Self.messageThenChange(h, store, bob, thread, "before the removal", .removeMember(thread, "carol")) {
            _ = await bob.emit("chat:typing:start", .object(["threadId": .string(thread)]))
        }
        let events = carol.events()
        #expect(!events.contains { $0.name == "chat:typing:start" })
        #expect(Self.messages(events) == ["before the removal"])
        await h.close()
    }
}
