@testable import ChatCore
import ChatCoreTesting
import ChatJSON
@testable import ChatStorePostgres
import Foundation
import Logging
import PostgresNIO
import Synchronization
import Testing

/// Several nodes, embedded: two or three brokers (each a `Supervisor` on its own `PostgresMessageStore`) on one real
/// PostgreSQL database, talking only through it.
@Suite(.enabled(if: testDatabaseURL != nil, "CHAT_TEST_DATABASE_URL is not set: no PostgreSQL to test against"))
struct ClusterTests {
    /// Starts `count` nodes; each follows the others' changes until `stop`.
    static func nodes(
        _ count: Int, durability: Durability = .process, configure: @escaping (inout BrokerConfiguration) -> Void = { _ in }
    ) async throws -> (nodes: [ChatTestBroker], stop: @Sendable () async -> Void) {
        var stores: [any MessageStore] = []
        for _ in 0..<count { stores.append(try await PostgresMessageStore.open(url: try DatabaseURL(testDatabaseURL ?? ""), durability: durability)) }
        return nodes(on: stores, configure: configure)
    }

    /// A node on each of `stores` (of one company, rate limits out of the way), each following the others' changes
    /// until `stop`.
    static func nodes(
        on stores: [any MessageStore], configure: (inout BrokerConfiguration) -> Void = { _ in }
    ) -> (nodes: [ChatTestBroker], stop: @Sendable () async -> Void) {
        let company = "acme-\(UUID().uuidString.prefix(8))"
        let nodes = stores.map { store in
            ChatTestBroker(store: store, company: company) {
                $0.ratePerSecond = 1e9
                $0.rateBurst = 1e9
                configure(&$0)
            }
        }
        let running = nodes.map { node in Task { await node.supervisor.run() } }
        return (nodes, {
            for task in running { task.cancel() }
            for task in running { await task.value }
            for node in nodes { await node.close() }
        })
    }

    /// Two nodes (`gatedPair`, node B gated) and a thread of alice and bob with one message: alice's device is on node
    /// A, bob's on node B, where the thread is active.
    static func threadActiveOnB() async throws -> (
        a: ChatTestBroker, b: ChatTestBroker, gated: GatedClusterStore, stop: @Sendable () async -> Void, thread: ThreadID,
        alice: TestDevice, bob: TestDevice, actor: ThreadActor
    ) {
        let (a, b, gated, stop) = try await gatedPair()
        let (thread, alice, bob, actor) = try await threadOfAliceOnAAndBobOnB(a, b)
        return (a, b, gated, stop, thread, alice, bob, actor)
    }

    /// The thread's actor on `node`, once it is active there (an activation for another node's event may still be
    /// finishing when a device has received that event).
    static func activeActor(for thread: ThreadID, on node: ChatTestBroker) async throws -> ThreadActor {
        let deadline = ContinuousClock.now + .seconds(10)
        while node.supervisor.activeActor(for: thread) == nil, ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(10)) }
        return try #require(node.supervisor.activeActor(for: thread))
    }

    static func seqs(_ events: [(name: String, data: JSONValue)]) -> [Int] {
        events.filter { $0.name == "chat:message" }.compactMap { $0.data["message"]?["seq"]?.intValue }
    }

    /// Collects `chat:message` seqs on `device` until `count` arrived (or 10 s passed).
    static func collect(_ device: TestDevice, count: Int) async throws -> [Int] {
        var seen: [Int] = []
        while seen.count < count {
            let event = try await device.next("chat:message", timeout: .seconds(10))
            seen.append(event["message"]?["seq"]?.intValue ?? -1)
        }
        return seen
    }

    @Test func concurrentWritersOnThreeNodesShareOneGapFreeOrder() async throws {
        let (nodes, stop) = try await Self.nodes(3)
        let company = nodes[0].company
        let users = ["u0", "u1", "u2"]
        let thread = try await nodes[0].thread(["u1", "u2"], by: "u0", company: company)
        var devices: [TestDevice] = []
        for (i, node) in nodes.enumerated() { devices.append(try await node.connect(users[i], company: company)) }
        let perNode = 150
        try await withThrowingTaskGroup(of: [Int].self) { group in
            for (i, device) in devices.enumerated() {
                group.addTask {
                    var acked: [Int] = []
                    for n in 0..<perNode {
                        let ack = try await device.send(thread, "n\(i)-\(n)").get()
                        acked.append(ack["message"]?["seq"]?.intValue ?? -1)
                    }
                    return acked
                }
            }
            var all: [Int] = []
            for try await acked in group {
                #expect(acked == acked.sorted(), "one sender's messages keep their order")
                all += acked
            }
            #expect(all.sorted() == Array(1...(3 * perNode)), "every send acked once, no seq reused or skipped")
        }
        for device in devices {
            let seen = try await Self.collect(device, count: 3 * perNode)
            #expect(seen == Array(1...(3 * perNode)), "every node delivers the thread in seq order, without gaps")
        }
        // Every node's history agrees.
        for device in devices {
            let page = try await device.emit("chat:history", .object(["threadId": .string(thread), "limit": .int(100)])).get()
            let history = page["messages"]?.arrayValue?.compactMap { $0["seq"]?.intValue } ?? []
            #expect(history == Array((3 * perNode - 99)...(3 * perNode)))
        }
        await stop()
    }

    /// Two nodes asked at the same instant for the direct thread of the same pair: the store's unique key on the pair
    /// lets one create it, and the other answers with that thread (`created == false`), never an error.
    @Test func aDirectThreadCreatedOnTwoNodesAtOnceIsOneThread() async throws {
        let (nodes, stop) = try await Self.nodes(2)
        let company = nodes[0].company
        for pair in 0..<20 {
            let a = "a\(pair)", b = "b\(pair)"
            let results = await withTaskGroup(of: Result<(ThreadID, Bool), ChatError>.self) { group in
                for (i, node) in nodes.enumerated() {
                    group.addTask {
                        do throws(ChatError) {
                            let (summary, created) = try await node.supervisor.createThread(
                                name: nil, kind: .direct, memberIds: [i == 0 ? b : a], by: node.principal(i == 0 ? a : b, company))
                            return .success((summary.info.id, created))
                        } catch {
                            return .failure(error)
                        }
                    }
                }
                var all: [Result<(ThreadID, Bool), ChatError>] = []
                for await result in group { all.append(result) }
                return all
            }
            let answers = results.compactMap { try? $0.get() }
            #expect(answers.count == 2, "pair \(pair): both nodes answer (\(results))")
            #expect(Set(answers.map(\.0)).count == 1, "pair \(pair): one thread")
            #expect(answers.filter(\.1).count == 1, "pair \(pair): created once")
        }
        await stop()
    }

    /// Receipt marks only rise in memory: a members list read from the store before a receipt and applied after it
    /// (a resync after a missed notification) does not take the receipt back.
    @Test func aMembersListReadBeforeAReceiptDoesNotTakeItBack() async throws {
        let (node, gated) = try await Self.gatedNode()
        let company = node.company
        let thread = try await node.thread(["bob"], by: "alice", company: company)
        let alice = try await node.connect("alice", company: company)
        for n in 1...3 { _ = try await alice.send(thread, "m\(n)").get() }
        let bob = node.principal("bob", company)

        gated.members.close()
        let resync = Task { try await node.supervisor.withThread(thread, as: bob) { actor throws(ChatError) in await actor.resynchronize() } }
        while gated.members.waiting == 0 { try await Task.sleep(for: .milliseconds(5)) }
        // The list is read (bob has read nothing in it); bob reads everything before it is applied.
        try await node.supervisor.withThread(thread, as: bob) { actor throws(ChatError) in try await actor.markRead(upToSeq: 3, by: bob) }
        gated.members.open()
        try await resync.value

        let summary = try await node.supervisor.withThread(thread, as: bob) { actor throws(ChatError) in try await actor.summary(for: "bob") }
        #expect(summary.readSeq == 3, "bob's receipt survives the older list")
        #expect(summary.unreadCount == 0)
        await node.close()
    }

    /// One node on a `GatedClusterStore` (not following other nodes).
    static func gatedNode() async throws -> (ChatTestBroker, GatedClusterStore) {
        let gated = GatedClusterStore(base: try await PostgresMessageStore.open(url: try DatabaseURL(testDatabaseURL ?? ""), durability: .process))
        let node = ChatTestBroker(store: gated, company: "acme-\(UUID().uuidString.prefix(8))") {
            $0.ratePerSecond = 1e9
            $0.rateBurst = 1e9
        }
        return (node, gated)
    }

    /// Two nodes, the second on a `GatedClusterStore`, both following each other's changes until `stop` (which opens
    /// the gates first).
    static func gatedPair(
        configure: (inout BrokerConfiguration) -> Void = { _ in }
    ) async throws -> (a: ChatTestBroker, b: ChatTestBroker, gated: GatedClusterStore, stop: @Sendable () async -> Void) {
        let url = try DatabaseURL(testDatabaseURL ?? "")
        let gated = GatedClusterStore(base: try await PostgresMessageStore.open(url: url, durability: .process))
        let (nodes, stop) = Self.nodes(on: [try await PostgresMessageStore.open(url: url, durability: .process), gated], configure: configure)
        return (nodes[0], nodes[1], gated, {
            gated.members.open()
            gated.loads.open()
            gated.feed.open()
            gated.sends.open()
            gated.memberWrites.open()
            gated.catchUps.open()
            gated.heads.open()
            gated.membershipLookups.open()
            gated.eventReadsFail.store(false, ordering: .relaxed)
            await stop()
        })
    }

    /// A thread activated on a node by a local command while another node's announcement of its newest event is on
    /// its way, long after the node last heard of the thread (it remembers no position for it): the snapshot holds
    /// the event, which the store says was stored moments ago, so the node's live devices get it at activation, and
    /// the announcement arriving after it delivers nothing twice.
    @Test func anEventAnnouncedAfterItsThreadWasActivatedIsDeliveredOnce() async throws {
        let (a, b, gated, stop) = try await Self.gatedPair {
            $0.positionMemory = 3
            $0.idleSeconds = 0.2
        }
        let thread = try await a.thread(["bob"], by: "alice")
        let other = try await a.thread(["bob"], by: "alice")
        let alice = try await a.connect("alice")
        let bob = try await b.connect("bob")
        _ = try await alice.send(thread, "m1").get()
        #expect(try await Self.collect(bob, count: 1) == [1])

        // Node B forgets the thread: passivated, and its position out of memory while the feed announced another
        // thread (a retiring actor leaves its position, so it takes two rounds).
        for _ in 0..<2 {
            try await Task.sleep(for: .seconds(3.3))
            _ = try await alice.send(other, "tick").get()
            _ = try await bob.next("chat:message")
            try await Task.sleep(for: .milliseconds(100))
            _ = await b.supervisor.passivateIdle()
        }
        #expect(b.supervisor.activeActor(for: thread) == nil)
        #expect(b.supervisor.announcedSeq(of: thread) == nil)

        gated.feed.close()
        _ = try await alice.send(thread, "m2").get()
        while gated.feed.waiting == 0 { try await Task.sleep(for: .milliseconds(5)) }
        // Bob's node activates the thread while the announcement of m2 waits.
        let summary = try await b.supervisor.withThread(thread, as: b.principal("bob")) { actor throws(ChatError) in try await actor.summary(for: "bob") }
        #expect(summary.lastMessage?.seq == 2, "the snapshot holds m2")
        gated.feed.open()
        _ = try await alice.send(thread, "m3").get()
        #expect(try await Self.collect(bob, count: 2) == [2, 3], "m2 delivered live on node B, in order")
        try await Task.sleep(for: .milliseconds(300))
        #expect(Self.seqs(bob.events()).isEmpty, "nothing delivered twice")
        await stop()
    }

    /// A thread whose actor is loading on a node when another node adds a member with a live device there: the
    /// snapshot was read before the change, so the node reads the members again, greets the new member and
    /// delivers them the next message.
    @Test func aMemberAddedWhileTheThreadLoadsIsWelcomed() async throws {
        let (a, b, gated, stop) = try await Self.gatedPair()
        let thread = try await a.thread(["bob"], by: "alice")
        let alice = try await a.connect("alice")
        _ = try await alice.send(thread, "m1").get()
        let carol = try await b.connect("carol")
        #expect(b.supervisor.activeActor(for: thread) == nil)

        gated.loads.close()
        let load = Task { try await b.supervisor.withThread(thread, as: b.principal("alice")) { actor throws(ChatError) in try await actor.summary(for: "alice") } }
        while gated.loads.waiting == 0 { try await Task.sleep(for: .milliseconds(5)) }
        // The snapshot (members alice and bob) is read; carol is added on node A before it is used.
        _ = try await a.supervisor.perform(.addMembers(thread, ["carol"]), as: a.principal("alice"), device: nil)
        try await Task.sleep(for: .milliseconds(300))
        gated.loads.open()
        _ = try await load.value
        let created = try await carol.next("chat:thread:created")
        #expect(created["thread"]?["id"] == .string(thread))
        _ = try await alice.send(thread, "m2").get()
        #expect(try await Self.collect(carol, count: 1) == [2], "carol receives the next message on node B")
        await stop()
    }

    /// A node that shuts down takes its presence with it: a user whose only socket was there reads offline on the
    /// other nodes at once, not when the node's heartbeat expires (15 s).
    @Test func aNodeThatShutsDownTakesItsPresenceWithIt() async throws {
        let (nodes, stop) = try await Self.nodes(2)
        _ = try await nodes[1].connect("carol")
        let deadline = ContinuousClock.now + .seconds(5)
        func online() async throws -> Bool {
            try await nodes[0].supervisor.presence(of: ["carol"], as: nodes[0].principal("alice")).first?.1 ?? false
        }
        while try await !online(), ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(50)) }
        #expect(try await online(), "carol is online on node B")
        await nodes[1].close()
        #expect(try await !online(), "node B shut down: carol is offline at once")
        await stop()
    }

    /// Two nodes and a thread of alice (on node A), bob and carol (on node B, with the devices of `onB`), m1 delivered;
    /// then node B's own send from bob is held in flight (its `sends` gate closed) while alice sends m2 on node A,
    /// removes carol and adds `added`: node B puts m2 off, and the member changes wait for it. `held` is bob's send.
    static func memberChangesWaitingOnB(adding added: [UserID] = [], onB: [UserID] = []) async throws -> (
        a: ChatTestBroker, b: ChatTestBroker, gated: GatedClusterStore, stop: @Sendable () async -> Void, thread: ThreadID,
        devices: [UserID: TestDevice], actor: ThreadActor, held: Task<JSONValue, any Error>
    ) {
        let (a, b, gated, stop) = try await gatedPair()
        let thread = try await a.thread(["bob", "carol"], by: "alice")
        let alice = try await a.connect("alice")
        var devices: [UserID: TestDevice] = [:]
        for user in ["bob"] + onB { devices[user] = try await b.connect(user) }
        _ = try await alice.send(thread, "m1").get()
        #expect(try await collect(devices["bob"]!, count: 1) == [1])
        let actor = try await activeActor(for: thread, on: b)
        gated.sends.close()
        let bob = devices["bob"]!
        let held = Task { try await bob.send(thread, "from bob").get() }
        while gated.sends.waiting == 0 { try await Task.sleep(for: .milliseconds(5)) }
        _ = try await alice.send(thread, "m2").get()
        _ = try await a.supervisor.perform(.removeMember(thread, "carol"), as: a.principal("alice"), device: nil)
        if !added.isEmpty { _ = try await a.supervisor.perform(.addMembers(thread, added), as: a.principal("alice"), device: nil) }
        let deadline = ContinuousClock.now + .seconds(5)
        let changes = added.isEmpty ? 1 : 2
        while await actor.waitingMembershipChanges < changes, ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(20)) }
        return (a, b, gated, stop, thread, devices, actor, held)
    }

    /// A member change of this node's made while another node's waits here is checked against the members as they are
    /// once that one is applied: adding carol back while her removal waits adds her (it found her a member and wrote
    /// nothing, and the removal then took her out).
    @Test func anAdditionRacingAWaitingRemovalAddsTheMemberBack() async throws {
        let (_, b, gated, stop, thread, _, actor, held) = try await Self.memberChangesWaitingOnB()
        let add = Task { try await b.supervisor.perform(.addMembers(thread, ["carol"]), as: b.principal("alice"), device: nil) }
        try await Task.sleep(for: .milliseconds(200))
        gated.sends.open()
        _ = try await held.value
        _ = try await add.value
        let shared = try #require(b.supervisor.store as? any SharedStore)
        #expect(try await shared.members(of: thread).list.contains { $0.userId == "carol" }, "carol is a member again in the store")
        #expect(await actor.isMember("carol"))
        await stop()
    }

    /// Two nodes (`gatedPair`) and a thread of alice, bob and carol with one message from alice's socket on node A, the
    /// thread active on node B where bob and carol have their sockets (carol got m1); then B's feed is held and alice
    /// removes carol on A: B has not heard of the removal.
    static func carolRemovedOnAUnheardOnB() async throws -> (
        b: ChatTestBroker, gated: GatedClusterStore, stop: @Sendable () async -> Void, thread: ThreadID, alice: TestDevice,
        bobOnB: TestDevice, carolOnB: TestDevice
    ) {
        let (a, b, gated, stop) = try await gatedPair()
        let thread = try await a.thread(["bob", "carol"], by: "alice")
        let alice = try await a.connect("alice")
        let bob = try await b.connect("bob")
        let carol = try await b.connect("carol")
        _ = try await alice.send(thread, "m1").get()
        #expect(try await collect(carol, count: 1) == [1])
        _ = try await activeActor(for: thread, on: b)
        gated.feed.close()
        _ = try await a.supervisor.perform(.removeMember(thread, "carol"), as: a.principal("alice"), device: nil)
        return (b, gated, stop, thread, alice, bob, carol)
    }

    /// An addition asked for on a node right after the user's removal on another node, before the node heard of it:
    /// the node held the user as a member, but the store's members moved, so it catches up and adds them. (The
    /// addition wrote nothing and answered 200, and the user stayed out: found by an outside probe, 8 of 50 pairs.)
    /// The removal's announcement, arriving afterwards, undoes nothing.
    @Test func anAdditionRightAfterARemovalOnAnotherNodeAddsTheUser() async throws {
        let (b, gated, stop, thread, alice, _, carol) = try await Self.carolRemovedOnAUnheardOnB()
        let shared = try #require(b.supervisor.store as? any SharedStore)
        _ = try await b.supervisor.perform(.addMembers(thread, ["carol"]), as: b.principal("alice"), device: nil)
        #expect(try await shared.members(of: thread).list.contains { $0.userId == "carol" }, "carol is a member again")
        gated.feed.open()
        try await Task.sleep(for: .milliseconds(300))
        let actor = try await Self.activeActor(for: thread, on: b)
        #expect(await actor.isMember("carol"), "the removal's late announcement did not take her out again")
        _ = carol.events()
        _ = try await alice.send(thread, "m2").get()
        let event = try await carol.next("chat:message", timeout: .seconds(10))
        #expect(event["message"]?["content"] == .string("m2"))
        await stop()
    }

    /// The creator's removal of a user added on another node a moment before, asked for before the node heard of the
    /// addition, removes them: the store's members moved, so the node catches up first. (It answered `not_found`,
    /// and the user stayed: found by an outside probe, 9 of 50 pairs.)
    @Test func aRemovalRightAfterAnAdditionOnAnotherNodeRemovesTheUser() async throws {
        let (a, b, gated, stop) = try await Self.gatedPair()
        let thread = try await a.thread(["bob"], by: "alice")
        _ = try await b.supervisor.withThread(thread, as: b.principal("alice")) { actor throws(ChatError) in try await actor.summary(for: "alice") }
        gated.feed.close()
        _ = try await a.supervisor.perform(.addMembers(thread, ["carol"]), as: a.principal("alice"), device: nil)
        _ = try await b.supervisor.perform(.removeMember(thread, "carol"), as: b.principal("alice"), device: nil)
        let shared = try #require(b.supervisor.store as? any SharedStore)
        #expect(try await !shared.members(of: thread).list.contains { $0.userId == "carol" }, "carol is no member")
        gated.feed.open()
        try await Task.sleep(for: .milliseconds(300))
        let actor = try await Self.activeActor(for: thread, on: b)
        #expect(await !actor.isMember("carol"), "the addition's late announcement did not put her back")
        await stop()
    }

    /// A reload after a conflict, before the node heard of a removal made elsewhere: the removed member gets none of
    /// the events the reload fans out (where the removal happened is not known here, so nothing more reaches them).
    @Test func aReloadBeforeARemovalsAnnouncementGivesTheRemovedNothingMore() async throws {
        let (_, gated, stop, thread, alice, bob, carol) = try await Self.carolRemovedOnAUnheardOnB()
        _ = try await alice.send(thread, "m2 after the removal").get()
        // Bob's send on node B carries the members version before the removal: refused, node B reloads.
        let sent = try await bob.send(thread, "from bob").get()
        #expect(sent["message"]?["seq"]?.intValue == 3)
        try await Task.sleep(for: .milliseconds(300))
        gated.feed.open()
        try await Task.sleep(for: .milliseconds(500))
        #expect(Self.seqs(carol.events()).isEmpty, "carol, removed before m2, gets neither m2 nor bob's message")
        await stop()
    }

    /// A `chat:leave` on a node that loaded the thread (with the member) before another node's announcement that the
    /// member was added arrived: the announcement tells the device about the thread, and the leave stands (it lasts
    /// until the user is removed and added again); it used to put the device back in the room.
    @Test func aLeaveBeforeTheAdditionsAnnouncementStands() async throws {
        let (a, b, gated, stop) = try await Self.gatedPair()
        let thread = try await a.thread(["bob"], by: "alice")
        let alice = try await a.connect("alice")
        let carol = try await b.connect("carol")
        gated.feed.close()
        _ = try await a.supervisor.perform(.addMembers(thread, ["carol"]), as: a.principal("alice"), device: nil)
        _ = try await carol.emit("chat:leave", .object(["threadId": .string(thread)])).get()
        try await Task.sleep(for: .milliseconds(200))
        gated.feed.open()
        let created = try await carol.next("chat:thread:created", timeout: .seconds(10))
        #expect(created["thread"]?["id"] == .string(thread))
        _ = try await alice.send(thread, "m1").get()
        try await Task.sleep(for: .milliseconds(500))
        #expect(Self.seqs(carol.events()).isEmpty, "carol left the thread's room on this connection")
        await stop()
    }

    /// Waits until `node`'s feed has handled the announcement of `thread` up to `seq` (other tests' nodes share the
    /// database, so the feed hears their batches too: only this thread's position tells).
    static func waitAnnounced(_ node: ChatTestBroker, _ thread: ThreadID, _ seq: Int) async throws {
        let deadline = ContinuousClock.now + .seconds(10)
        while (node.supervisor.announcedSeq(of: thread) ?? 0) < seq, ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(5))
        }
        #expect((node.supervisor.announcedSeq(of: thread) ?? 0) >= seq, "the node heard of seq \(seq)")
    }

    /// A thread loading on a node for a member's own command when another node removes that member, with no other
    /// member online there: the snapshot was read before the removal, so the node applies the removal's notice to the
    /// actor once it is loaded (reading the members again), and the removed member receives nothing more.
    @Test func aMemberRemovedWhileTheThreadLoadsForThemStaysRemoved() async throws {
        let (a, b, gated, stop) = try await Self.gatedPair()
        let thread = try await a.thread(["bob", "carol"], by: "alice")
        let alice = try await a.connect("alice")
        _ = try await alice.send(thread, "m1").get()
        try await Self.waitAnnounced(b, thread, 1)
        let carol = try await b.connect("carol")
        #expect(b.supervisor.activeActor(for: thread) == nil)

        gated.loads.close()
        let load = Task { try await b.supervisor.withThread(thread, as: b.principal("carol")) { actor throws(ChatError) in try await actor.summary(for: "carol") } }
        while gated.loads.waiting == 0 { try await Task.sleep(for: .milliseconds(5)) }
        // The snapshot (alice, bob, carol) is read; carol is removed on node A before it is used, and node B's feed
        // gets the removal's notice while the thread still loads (and waits for the load to apply it).
        _ = try await a.supervisor.perform(.removeMember(thread, "carol"), as: a.principal("alice"), device: nil)
        try await Task.sleep(for: .milliseconds(500))
        #expect(b.supervisor.activeActor(for: thread) == nil, "still loading")
        gated.loads.open()
        _ = try await load.value
        // (m1, from before the removal, may reach her at the activation.)
        try await Self.expectRemoved("carol", device: carol, from: thread, on: b, after: alice)
        await stop()
    }

    /// Waits (5 s at most) until `user` is no longer a member of `thread` on `node`; then `sender` sends m2, which
    /// `device` (the user's, on `node`) must not receive.
    static func expectRemoved(_ user: UserID, device: TestDevice, from thread: ThreadID, on node: ChatTestBroker, after sender: TestDevice) async throws {
        let deadline = ContinuousClock.now + .seconds(5)
        var stillMember = true
        while ContinuousClock.now < deadline {
            stillMember = await (try activeActor(for: thread, on: node)).isMember(user)
            if !stillMember { break }
            try await Task.sleep(for: .milliseconds(20))
        }
        #expect(!stillMember, "\(user) is no longer a member on the node")
        _ = try await sender.send(thread, "m2").get()
        try await Task.sleep(for: .milliseconds(300))
        #expect(!seqs(device.events()).contains(2), "\(user) does not receive what was sent after the removal")
    }

    /// A member removed while the thread reads its members from the store (a resync after a missed notification):
    /// the list, read before the removal is written, does not put the member back; the read waits for the write.
    @Test func aMemberRemovedWhileTheMembersAreReadStaysRemoved() async throws {
        let (node, gated) = try await Self.gatedNode()
        let thread = try await node.thread(["bob", "carol"], by: "alice")
        let alice = try await node.connect("alice")
        let carol = try await node.connect("carol")
        _ = try await alice.send(thread, "m1").get()
        #expect(try await Self.collect(carol, count: 1) == [1])

        gated.memberWrites.close()
        let remove = Task { try await node.supervisor.perform(.removeMember(thread, "carol"), as: node.principal("alice"), device: nil) }
        while gated.memberWrites.waiting == 0 { try await Task.sleep(for: .milliseconds(5)) }
        // The removal is in memory, not yet in the store; a resync reads the members meanwhile.
        let resync = Task {
            try await node.supervisor.withThread(thread, as: node.principal("alice")) { actor throws(ChatError) in await actor.resynchronize() }
        }
        try await Task.sleep(for: .milliseconds(200))
        gated.memberWrites.open()
        _ = try await remove.value
        try await resync.value

        let summary = try await node.supervisor.withThread(thread, as: node.principal("alice")) { actor throws(ChatError) in try await actor.summary(for: "alice") }
        #expect(summary.members == ["alice", "bob"], "carol stays removed")
        _ = try await alice.send(thread, "m2").get()
        try await Task.sleep(for: .milliseconds(300))
        #expect(Self.seqs(carol.events()).isEmpty, "carol receives nothing after her removal")
        await node.close()
    }

    /// A member removed on another node while this node reads the members (a resync): the list, read before the
    /// removal was committed, does not put the member back once the removal's notice has been applied.
    @Test func aMemberRemovedElsewhereWhileTheMembersAreReadStaysRemoved() async throws {
        let (a, b, gated, stop) = try await Self.gatedPair()
        let thread = try await a.thread(["bob", "carol"], by: "alice")
        let alice = try await a.connect("alice")
        let carol = try await b.connect("carol")
        _ = try await alice.send(thread, "m1").get()
        #expect(try await Self.collect(carol, count: 1) == [1])

        gated.members.close()
        let resync = Task {
            try await b.supervisor.withThread(thread, as: b.principal("alice")) { actor throws(ChatError) in await actor.resynchronize() }
        }
        while gated.members.waiting == 0 { try await Task.sleep(for: .milliseconds(5)) }
        // Node B holds a list with carol; node A removes her, and B applies the notice before the list comes back.
        _ = try await a.supervisor.perform(.removeMember(thread, "carol"), as: a.principal("alice"), device: nil)
        let deadline = ContinuousClock.now + .seconds(10)
        while try await b.supervisor.withThread(thread, as: b.principal("alice"), { actor throws(ChatError) in
            try await actor.summary(for: "alice")
        }).members.contains("carol"), ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(10))
        }
        gated.members.open()
        try await resync.value

        let summary = try await b.supervisor.withThread(thread, as: b.principal("alice")) { actor throws(ChatError) in try await actor.summary(for: "alice") }
        #expect(summary.members == ["alice", "bob"], "carol stays removed on node B")
        _ = try await alice.send(thread, "m2").get()
        try await Task.sleep(for: .milliseconds(300))
        #expect(Self.seqs(carol.events()).isEmpty, "carol receives nothing after her removal")
        await stop()
    }

    /// A reload after a conflict takes the members list it read with the member log, not one read again after it has
    /// fanned out: carol's removal, committed on node A after that read (behind m2, which node B has not fanned out
    /// yet), is applied at its place, so carol on B gets m2. (Read again, the list already lacked her: she lost m2;
    /// found by an outside probe of several nodes with members removed and added back in a loop.)
    @Test func aReloadTakesTheMembersListItReadWithTheLog() async throws {
        let (a, b, gated, stop) = try await Self.gatedPair()
        let thread = try await a.thread(["bob", "carol"], by: "alice")
        let alice = try await a.connect("alice")
        let bob = try await b.connect("bob"), carol = try await b.connect("carol")
        _ = try await alice.send(thread, "m1").get()
        #expect(try await Self.collect(carol, count: 1) == [1])
        _ = try await Self.activeActor(for: thread, on: b)

        // dave's addition, which B does not hear of, makes B's next send a conflict, and B reloads.
        gated.feed.close()
        _ = try await a.supervisor.perform(.addMembers(thread, ["dave"]), as: a.principal("alice"), device: nil)
        gated.members.close()
        let send = Task { await bob.send(thread, "from B") }
        for _ in 0..<1000 where gated.members.waiting == 0 { try await Task.sleep(for: .milliseconds(10)) }
        try #require(gated.members.waiting > 0, "node B reloads and reads the members")
        // B has read the log and the list (carol a member); A sends m2 and then removes carol.
        _ = try await alice.send(thread, "m2").get()
        _ = try await a.supervisor.perform(.removeMember(thread, "carol"), as: a.principal("alice"), device: nil)
        gated.members.open()
        _ = try await send.value.get()
        gated.feed.open()
        try await Task.sleep(for: .milliseconds(500))
        #expect(Self.seqs(carol.events()) == [2], "carol gets m2, sent before her removal, and nothing after")
        await stop()
    }

    /// A thread of alice (connected on node A), bob and carol, active on node B, where bob, erin (and `also`) are
    /// connected; then, while node B hears nothing (`gated.feed` closed), erin is added on node A and alice sends m2.
    static func erinAddedUnheardOnB(also: UserID? = nil) async throws -> (
        a: ChatTestBroker, b: ChatTestBroker, gated: GatedClusterStore, stop: @Sendable () async -> Void, thread: ThreadID, erin: TestDevice,
        also: TestDevice?
    ) {
        let (a, b, gated, stop) = try await Self.gatedPair()
        let thread = try await a.thread(["bob", "carol"], by: "alice")
        let alice = try await a.connect("alice")
        let bob = try await b.connect("bob"), erin = try await b.connect("erin")
        var alsoDevice: TestDevice?
        if let also { alsoDevice = try await b.connect(also) }
        _ = try await alice.send(thread, "m1").get()
        #expect(try await Self.collect(bob, count: 1) == [1])
        _ = try await Self.activeActor(for: thread, on: b)
        gated.feed.close()
        _ = try await a.supervisor.perform(.addMembers(thread, ["erin"]), as: a.principal("alice"), device: nil)
        _ = try await alice.send(thread, "m2").get()
        return (a, b, gated, stop, thread, erin, alsoDevice)
    }

    /// The thread events among `events`, as `chat:thread:created` or `message <seq>`.
    static func labels(_ events: [(name: String, data: JSONValue)]) -> [String] {
        events.filter { $0.name.hasPrefix("chat:") }.map { event in
            event.name == "chat:message" ? "message \(event.data["message"]?["seq"]?.intValue ?? -1)" : event.name
        }
    }

    /// A membership change of this node's that the store refuses (another node changed the members first, unheard of
    /// here) is undone in the members: the catch-up that follows finds them agreeing with the store's log, and applies
    /// the other node's change at its place. (Left in the members, the refused change made them disagree with the log,
    /// and the store's newest list was taken before the events were fanned out: a user added a moment before got the
    /// events after their addition with no `chat:thread:created`; found by an outside probe of three nodes changing
    /// members at once.)
    @Test func aRefusedMembershipChangeOfThisNodeIsUndoneBeforeTheCatchUp() async throws {
        let (_, b, gated, stop, thread, erin, _) = try await Self.erinAddedUnheardOnB()
        // Alice removes carol through node B: refused (the members moved), caught up, and written again.
        _ = try await b.supervisor.perform(.removeMember(thread, "carol"), as: b.principal("alice"), device: nil)
        gated.feed.open()
        var received: [(name: String, data: JSONValue)] = []
        for _ in 0..<100 where Self.seqs(received).isEmpty {
            try await Task.sleep(for: .milliseconds(50))
            received += erin.events()
        }
        try await Task.sleep(for: .milliseconds(300))
        #expect(Self.labels(received + erin.events()) == ["chat:thread:created", "message 2"], "erin is greeted at her place, then gets m2, each once")
        await stop()
    }

    /// A reload after a conflict does not take the members list read with the log when a change announced meanwhile,
    /// and committed after that read, waits to be applied: the list does not hold it. Here erin's addition comes while
    /// node B reads the log; it is applied at its place (after m2) and erin stays a member: she gets m3. (Taken, the
    /// list dropped erin again right after her greeting: she missed what came next until another catch-up added and
    /// greeted her a second time; found by an outside probe, one client removing and re-adding on another node.)
    @Test func aChangeAnnouncedWhileAReloadReadsTheLogIsKept() async throws {
        let (a, b, gated, stop) = try await Self.gatedPair()
        let thread = try await a.thread(["bob", "carol"], by: "alice")
        let alice = try await a.connect("alice")
        let bob = try await b.connect("bob"), erin = try await b.connect("erin")
        let b1 = try await bob.send(thread, "b1").get()
        let id = try #require(b1["message"]?["id"]?.stringValue)
        _ = try await Self.activeActor(for: thread, on: b)
        let actor = try #require(b.supervisor.activeActor(for: thread))

        // Node B does not hear of m2; its edit of b1 then conflicts, and it reloads (m2 in its snapshot).
        gated.feed.close()
        _ = try await alice.send(thread, "m2").get()
        gated.members.close()
        let edit = Task {
            await bob.emit("chat:edit", .object(["threadId": .string(thread), "messageId": .string(id), "content": .string("b1 edited")]))
        }
        for _ in 0..<1000 where gated.members.waiting == 0 { try await Task.sleep(for: .milliseconds(10)) }
        try #require(gated.members.waiting > 0, "node B reloads and reads the log and the members")
        // Erin is added after that read; B hears of it (and of m2) while the read is held.
        _ = try await a.supervisor.perform(.addMembers(thread, ["erin"]), as: a.principal("alice"), device: nil)
        gated.feed.open()
        for _ in 0..<1000 where await actor.waitingMembershipChanges == 0 { try await Task.sleep(for: .milliseconds(10)) }
        try #require(await actor.waitingMembershipChanges > 0, "erin's addition waits for its place")
        gated.members.open()
        _ = try await edit.value.get()
        _ = try await alice.send(thread, "m3").get()
        var received: [(name: String, data: JSONValue)] = []
        for _ in 0..<100 where !Self.seqs(received).contains(4) {
            try await Task.sleep(for: .milliseconds(50))
            received += erin.events()
        }
        let labels = Self.labels(received).filter { $0 != "chat:message:edited" }
        #expect(labels == ["chat:thread:created", "message 4"], "erin is greeted once and gets m3")
        await stop()
    }

    /// Two membership changes of this node's written at once and both refused (the first because another node changed
    /// the members first; the second because it was fenced on the version the first was to set) are undone the last
    /// first: an addition of dave then his removal leave dave as he was, out, so the catch-up finds the members agreeing
    /// with the store's log and applies erin's addition at its place; both are then written again in order. (Undone
    /// first to last, the removal's undo put dave back in the members, which then disagreed with the log: the store's
    /// newest list was taken, and erin got m2 before her greeting; found by a review.)
    @Test func ownMembershipChangesRefusedTogetherAreUndoneLastFirst() async throws {
        let (_, b, gated, stop, thread, erin, also) = try await Self.erinAddedUnheardOnB(also: "dave")
        let dave = try #require(also)
        gated.memberWrites.close()
        let add = Task { try await b.supervisor.perform(.addMembers(thread, ["dave"]), as: b.principal("alice"), device: nil) }
        while gated.memberWrites.waiting < 1 { try await Task.sleep(for: .milliseconds(5)) }
        let remove = Task { try await b.supervisor.perform(.removeMember(thread, "dave"), as: b.principal("alice"), device: nil) }
        while gated.memberWrites.waiting < 2 { try await Task.sleep(for: .milliseconds(5)) }
        gated.memberWrites.open()
        gated.feed.open()
        _ = try await add.value
        _ = try await remove.value
        try await Task.sleep(for: .milliseconds(300))
        let greetings = dave.events().filter { $0.name == "chat:thread:created" }.count
        #expect(greetings == 1, "dave was added, then removed: greeted once")
        #expect(Self.labels(erin.events()) == ["chat:thread:created", "message 2"], "the catch-up applied erin's addition at its place")
        let stored = try await (b.store as! any SharedStore).members(of: thread).list.map(\.userId)
        #expect(stored == ["alice", "bob", "carol", "erin"])
        let summary = try await b.supervisor.withThread(thread, as: b.principal("alice")) { actor throws(ChatError) in try await actor.summary(for: "alice") }
        #expect(Set(summary.members) == Set(stored), "node B holds the store's members")
        await stop()
    }

    /// A batch of the feed that holds a change and then a resync (the connection dropped after the change was queued):
    /// the change is applied before the store is read again, never after it, so an old "added" does not put back a
    /// member the store no longer has.
    @Test func changesQueuedBeforeAResyncAreAppliedBeforeIt() async throws {
        let (a, b, gated, stop, thread, _, _, active) = try await Self.threadActiveOnB()
        // Carol was added and removed again while node B was not listening; B's feed still holds the addition.
        let stale: [ClusterChange] = [
            .membership(thread, company: a.company, asOf: 1, created: false, added: ["carol"], removed: []), .resync(since: nil),
        ]
        await b.supervisor.applyCluster(stale, shared: gated)
        #expect(b.supervisor.activeActor(for: thread) === active)
        let summary = try await b.supervisor.withThread(thread, as: b.principal("alice")) { actor throws(ChatError) in try await actor.summary(for: "alice") }
        #expect(summary.members == ["alice", "bob"], "the store, read after the old change, has the last word")
        await stop()
    }

    /// After a lost LISTEN connection, a thread whose members cannot be read again (the store does not answer) does
    /// not go on with a list that may miss a removal made meanwhile: it retires, and its successor loads the members.
    @Test func aThreadWhoseMembersCannotBeReadAfterAResyncRetires() async throws {
        let (_, b, gated, stop, thread, _, _, actor) = try await Self.threadActiveOnB()

        gated.membersFail.store(true, ordering: .relaxed)
        await actor.resynchronize()
        // The catch-up runs once nothing of the actor's is in flight (a receipt may be).
        let deadline = ContinuousClock.now + .seconds(5)
        while b.supervisor.activeActor(for: thread) === actor, ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(10)) }
        gated.membersFail.store(false, ordering: .relaxed)
        #expect(b.supervisor.activeActor(for: thread) !== actor, "the actor with unconfirmed members retired")
        let summary = try await b.supervisor.withThread(thread, as: b.principal("bob")) { actor throws(ChatError) in try await actor.summary(for: "bob") }
        #expect(summary.members == ["alice", "bob"] && summary.lastSeq == 1, "its successor loads the thread from the store")
        await stop()
    }

    /// A notice that another node committed far beyond what the store holds (forged by a role that may NOTIFY, or a
    /// commit lost in a database crash): the node reads the store, believes it, and does not read it again and again.
    @Test func anAnnouncedPositionTheStoreDoesNotHoldIsReadOnce() async throws {
        let (_, _, gated, stop, thread, alice, bob, _) = try await Self.threadActiveOnB()
        let before = gated.eventReads
        let payload = #"{"n":"forger","c":[["a","\#(thread)",2,9000000000]]}"#
        try await BinaryArrayColumnTests.withConnection { db in
            _ = try await db.query("SELECT pg_notify(\(ClusterNotice.channel), \(payload))", logger: Logger(label: "test"))
        }
        // Read once the notice is heard (a loaded machine may take a while), and not again and again after that.
        let heard = ContinuousClock.now + .seconds(10)
        while gated.eventReads == before, ContinuousClock.now < heard { try await Task.sleep(for: .milliseconds(10)) }
        try await Task.sleep(for: .milliseconds(500))
        let reads = gated.eventReads - before
        #expect(reads >= 1 && reads <= 4, "the store is read for the news, not in a loop (\(reads) reads)")
        _ = try await alice.send(thread, "m2").get()
        #expect(try await Self.collect(bob, count: 1) == [2], "the thread goes on from what the store holds")
        await stop()
    }

    /// A forged position, then real news while the catch-up checks it against the store: the catch-up believes the
    /// store over the forged position, but keeps what was announced during its read. (It lowered the forged maximum
    /// to what it had read, which swallowed m2's announcement: bob got m2 only with a later message.)
    @Test func newsThatComesWhileAForgedPositionIsCheckedIsDelivered() async throws {
        let (_, b, gated, stop, thread, alice, bob, _) = try await Self.threadActiveOnB()
        gated.catchUps.close()
        let payload = #"{"n":"forger","c":[["a","\#(thread)",2,9000000000]]}"#
        try await BinaryArrayColumnTests.withConnection { db in
            _ = try await db.query("SELECT pg_notify(\(ClusterNotice.channel), \(payload))", logger: Logger(label: "test"))
        }
        let deadline = ContinuousClock.now + .seconds(10)
        while gated.catchUps.waiting == 0, ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(5)) }
        #expect(gated.catchUps.waiting == 1, "node B reads the store for the forged news, and its read is held")
        while b.supervisor.announcedSeq(of: thread) != 9_000_000_000, ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(5)) }
        // m2's announcement reaches node B while the read (which holds m1 only) waits.
        let noted = b.supervisor.announced.withLock { $0[thread]?.at }
        _ = try await alice.send(thread, "m2").get()
        while b.supervisor.announced.withLock({ $0[thread]?.at }) == noted, ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(5))
        }
        #expect(b.supervisor.announced.withLock { $0[thread]?.at } != noted, "node B heard m2's announcement")
        gated.catchUps.open()
        #expect(try await Self.collect(bob, count: 1) == [2], "m2 reaches bob without a later message")
        await stop()
    }

    /// Node A, where alice wrote m1 to a thread of hers and bob's, and node B, which heard of m1 (and noted it as
    /// given to its devices) before bob's device connected there: the thread is not active on B.
    static func threadNotActiveOnB() async throws -> (
        b: ChatTestBroker, gated: GatedClusterStore, stop: @Sendable () async -> Void, thread: ThreadID, alice: TestDevice, bob: TestDevice
    ) {
        let (a, b, gated, stop) = try await Self.gatedPair()
        let thread = try await a.thread(["bob"], by: "alice")
        let alice = try await a.connect("alice")
        _ = try await alice.send(thread, "m1").get()
        try await Self.waitAnnounced(b, thread, 1)
        let bob = try await b.connect("bob")
        #expect(b.supervisor.activeActor(for: thread) == nil)
        return (b, gated, stop, thread, alice, bob)
    }

    /// An announcement the node could not act on (the store did not say whose the thread is): the position is not
    /// noted as given to the devices here, so when the thread is activated (here by a command, while the store still
    /// cannot say whose the thread is) its live devices get what they missed.
    @Test func anAnnouncementTheNodeCouldNotActOnIsDeliveredAtTheNextActivation() async throws {
        let (b, gated, stop, thread, alice, bob) = try await Self.threadNotActiveOnB()

        gated.failMemberships(of: thread)
        _ = try await alice.send(thread, "m2").get()
        let deadline = ContinuousClock.now + .seconds(10)
        while gated.membershipFailures == 0, ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(5)) }
        #expect(gated.membershipFailures > 0, "node B asked whose the thread is, and the store did not answer")
        #expect(b.supervisor.activeActor(for: thread) == nil, "not activated: the node could not tell bob is a member")
        _ = try await b.supervisor.withThread(thread, as: b.principal("bob")) { actor throws(ChatError) in try await actor.summary(for: "bob") }
        #expect(try await Self.collect(bob, count: 1) == [2], "m2 reaches bob at the activation")
        gated.failMemberships(of: nil)
        await stop()
    }

    /// The same, with no command to activate the thread: the node asks the store again, and once it answers, the
    /// thread is activated for bob's device, which gets m2 without waiting for a later message.
    @Test func anAnnouncementTheNodeCouldNotActOnIsDeliveredOnceTheStoreAnswers() async throws {
        let (b, gated, stop, thread, alice, bob) = try await Self.threadNotActiveOnB()

        gated.failMemberships(of: thread)
        _ = try await alice.send(thread, "m2").get()
        let deadline = ContinuousClock.now + .seconds(10)
        while gated.membershipFailures < 2, ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(5)) }
        #expect(gated.membershipFailures >= 2, "node B asked again while the store did not answer")
        #expect(b.supervisor.activeActor(for: thread) == nil)
        gated.failMemberships(of: nil)
        #expect(try await Self.collect(bob, count: 1) == [2], "m2 reaches bob once the store answers")
        await stop()
    }

    /// The same, for a thread whose position the node no longer remembers (heard of more than `positionMemory`
    /// ago; here the entry is dropped by hand): the batch it could not act on notes where it starts, so the
    /// activation that follows (the retry's, or a later batch's) gives bob m2, not only what comes after it.
    @Test func anAnnouncementTheNodeCouldNotActOnForAThreadItForgotIsDelivered() async throws {
        let (b, gated, stop, thread, alice, bob) = try await Self.threadNotActiveOnB()
        b.supervisor.announced.withLock { _ = $0.removeValue(forKey: thread) }

        gated.failMemberships(of: thread)
        _ = try await alice.send(thread, "m2").get()
        let deadline = ContinuousClock.now + .seconds(10)
        while gated.membershipFailures == 0, ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(5)) }
        gated.failMemberships(of: nil)
        _ = try await alice.send(thread, "m3").get()
        #expect(try await Self.collect(bob, count: 2) == [2, 3], "bob gets m2, then m3")
        await stop()
    }

    /// One node whose commits give up after 1 s, a thread of alice with `others`, alice's device and `watcher`'s, and m1
    /// delivered to the watcher.
    static func nodeWithShortDeadline(_ others: [UserID], watcher: UserID) async throws -> (
        node: ChatTestBroker, stop: @Sendable () async -> Void, thread: ThreadID, alice: TestDevice, watcher: TestDevice
    ) {
        let store = try await PostgresMessageStore.open(url: try DatabaseURL(testDatabaseURL ?? ""), durability: .process, commitTimeout: .seconds(1))
        let (nodes, stop) = Self.nodes(on: [store])
        let node = nodes[0]
        // With a 1-s deadline on every call, the set-up itself may miss one on a loaded machine: it tries again (the
        // same tempId, so a send that landed late is answered with its message).
        let thread = try await eventually { try await node.thread(others, by: "alice") }
        let alice = try await node.connect("alice")
        let device = try await node.connect(watcher)
        _ = try await eventually { try await alice.send(thread, "m1", tempId: "m1").get() }
        #expect(try await collect(device, count: 1) == [1])
        return (node, stop, thread, alice, device)
    }

    /// `sender` sends `contents` and then alice removes carol on `node`, all asked for while another transaction holds
    /// the thread's row, so that they wait and then commit together (the first send holds the committer while the rest
    /// queue behind it: they go in one group commit); returns once all are answered (the sends must succeed).
    static func sendsThenRemovalOfCarol(on node: ChatTestBroker, _ thread: ThreadID, by sender: TestDevice, _ contents: [String]) async throws {
        let (sends, removal) = try await withThreadRowHeld(thread) {
            var sends: [Task<Result<JSONValue, ChatError>, Never>] = []
            for content in contents {
                sends.append(Task { await sender.send(thread, content) })
                try await Task.sleep(for: .milliseconds(50))
            }
            let removal = Task { try await node.supervisor.perform(.removeMember(thread, "carol"), as: node.principal("alice"), device: nil) }
            try await Task.sleep(for: .milliseconds(200))
            return (sends, removal)
        }
        for send in sends { _ = try await send.value.get() }
        _ = try await removal.value
    }

    /// Two nodes (`gatedPair`, node B gated) and a thread of alice, bob and carol with one message from bob's socket on
    /// node A; carol's only socket is on node B, connected once B heard of the message, where the thread is not loaded.
    static func carolOnlyOnBWhereTheThreadIsNotLoaded() async throws -> (
        a: ChatTestBroker, b: ChatTestBroker, gated: GatedClusterStore, stop: @Sendable () async -> Void, thread: ThreadID,
        bob: TestDevice, carolOnB: TestDevice
    ) {
        let (a, b, gated, stop) = try await gatedPair()
        let thread = try await a.thread(["bob", "carol"], by: "alice")
        let bob = try await a.connect("bob")
        _ = try await bob.send(thread, "m1").get()
        try await waitAnnounced(b, thread, 1)
        let carolOnB = try await b.connect("carol")
        #expect(b.supervisor.activeActor(for: thread) == nil)
        return (a, b, gated, stop, thread, bob, carolOnB)
    }

    /// `body`'s result, trying again for up to 15 s while it throws (its last error after that). The tests with a
    /// 1-s store deadline read through it: on a loaded machine (CI runs every suite at once on two cores) a read, or
    /// the outage probe a missed deadline starts, can miss a few deadlines in a row.
    static func eventually<T>(_ body: () async throws -> T) async throws -> T {
        let deadline = ContinuousClock.now + .seconds(15)
        while true {
            do { return try await body() } catch where ContinuousClock.now < deadline {
                try await Task.sleep(for: .milliseconds(100))
            }
        }
    }

    static func failure(_ result: Result<JSONValue, ChatError>) -> ChatError? {
        if case .failure(let error) = result { return error }
        return nil
    }

    /// Runs `body` while another transaction holds `thread`'s row (`SELECT … FOR UPDATE`), then commits that one.
    static func withThreadRowHeld<T>(_ thread: ThreadID, _ body: () async throws -> T) async throws -> T {
        let logger = Logger(label: "test")
        return try await BinaryArrayColumnTests.withConnection { db in
            _ = try await db.query("BEGIN", logger: logger)
            _ = try await db.query("SELECT 1 FROM chat.threads WHERE id = \(thread) FOR UPDATE", logger: logger)
            let result = try await body()
            _ = try await db.query("COMMIT", logger: logger)
            return result
        }
    }

    /// A commit that outlasts its deadline (another transaction holds the thread's row) and lands after its send was
    /// answered `internal`: the node's own announcement of it is applied like another node's, so the thread's devices
    /// on that node get the message without waiting for a later one. Whether the abandoned commit lands is
    /// PostgreSQL's call: if it checks the closed connection (`client_connection_check_interval`, each second) before
    /// the row is let go, it rolls back, and nothing is there to deliver. So the test asks the store, and tries again
    /// (on a loaded machine the answer reaches the test late, and the window for that check is wide).
    @Test func aCommitThatLandsAfterItsDeadlineReachesTheNodesDevices() async throws {
        let (node, stop, thread, alice, bob) = try await Self.nodeWithShortDeadline(["bob"], watcher: "bob")
        var tried: [String] = []
        var landed: [Int] = []
        for attempt in 1...6 where landed.isEmpty {
            tried.append("late-\(attempt)")
            let late = try await Self.withThreadRowHeld(thread) { await alice.send(thread, "late", tempId: tried.last!) }
            guard case .failure(let error) = late else { Issue.record("the send was acknowledged: \(late)"); return await stop() }
            #expect(error.code == .internal)
            // A commit let through lands within milliseconds of the row's release; one rolled back never does. (An
            // earlier try that landed later than its own wait is counted too.)
            let deadline = ContinuousClock.now + .seconds(3)
            while landed.isEmpty, ContinuousClock.now < deadline {
                landed = []
                for tempId in tried {
                    // A read past its 1-s deadline (a loaded machine) is asked again in the next round.
                    if let seq = try? await node.store.messageSeq(of: thread, sender: "alice", tempId: tempId) { landed.append(seq) }
                }
                if landed.isEmpty { try await Task.sleep(for: .milliseconds(50)) }
            }
        }
        landed.sort()
        #expect(!landed.isEmpty && landed == Array(2..<(2 + landed.count)), "late commits landed after m1: \(landed)")
        #expect(try await Self.collect(bob, count: landed.count) == landed, "the late commits' messages reach bob on the same node")
        await stop()
    }

    /// A send whose commit outlasts its deadline is answered `internal`, and its client sends it again with the same
    /// `tempId` (socket.io-client resends what it buffered). The original may land late (if it gets the row before
    /// PostgreSQL finds its connection closed, `client_connection_check_interval`) or not at all: if it lands, the
    /// resend, written behind it by the thread's next actor, which did not know the original yet, is refused by the
    /// database (one message per thread, sender and tempId) and the client's next try is answered with the original;
    /// if not, the resend stores it. One message, not two, at seq 2 either way.
    @Test func aResendOfASendStuckPastItsDeadlineIsStoredOnce() async throws {
        let (_, stop, thread, alice, bob) = try await Self.nodeWithShortDeadline(["bob"], watcher: "bob")
        let resend = try await Self.withThreadRowHeld(thread) {
            let original = await alice.send(thread, "once", tempId: "t-once")
            #expect(Self.failure(original)?.code == .internal, "past its deadline")
            // The resend reaches the thread's next actor, and waits behind the original; the row is let go within
            // its deadline.
            let resend = Task { await alice.send(thread, "once", tempId: "t-once") }
            try await Task.sleep(for: .milliseconds(300))
            return resend
        }
        // Refused as a conflict: the actor catches up, finds the original by its tempId and answers with it. On a loaded
        // machine the resend's new actor may not load the thread within the 1 s deadline (`internal`, as any call in
        // an outage): the client resends, and gets the message then.
        let first = await resend.value
        let answered = try await Self.eventually { () async throws -> JSONValue in
            if case .success(let value) = first { return value }
            return try await alice.send(thread, "once", tempId: "t-once").get()
        }
        #expect(answered["message"]?["seq"] == .int(2), "the resend is answered with the message at seq 2")
        // While the outage probe runs, the actor that was handed the announcement of the original may fail to read it
        // and retire: its successor fans it out (`eventsPutOffByAnActorThatRetiresAfterAStoreFailureReachTheNodesDevices`).
        #expect(try await Self.collect(bob, count: 1) == [2], "the message reaches bob once")
        #expect(try await alice.send(thread, "once", tempId: "t-once").get()["message"]?["seq"] == .int(2))
        let after = try await alice.send(thread, "after").get()
        #expect(after["message"]?["seq"] == .int(3), "the next message follows the original")
        let history = try await alice.emit("chat:history", .object(["threadId": .string(thread), "limit": .int(100)])).get()
        let contents = history["messages"]?.arrayValue?.compactMap { $0["content"]?.stringValue } ?? []
        #expect(contents.filter { $0 == "once" }.count == 1, "stored once: \(contents)")
        #expect(try await Self.collect(bob, count: 1) == [3], "bob gets the next message, not a second copy")
        await stop()
    }

    /// Two nodes (`gatedPair`), a thread of alice and bob with one message from alice's socket on node A that bob's
    /// socket on node B got; then B's feed is held: B hears of nothing more.
    static func bobOnBThenFeedHeld(configure: (inout BrokerConfiguration) -> Void = { _ in }) async throws -> (
        a: ChatTestBroker, b: ChatTestBroker, gated: GatedClusterStore, stop: @Sendable () async -> Void, thread: ThreadID,
        alice: TestDevice, bobOnB: TestDevice
    ) {
        let (a, b, gated, stop) = try await gatedPair(configure: configure)
        let thread = try await a.thread(["bob"], by: "alice")
        let alice = try await a.connect("alice")
        let bob = try await b.connect("bob")
        _ = try await alice.send(thread, "m1").get()
        #expect(try await collect(bob, count: 1) == [1])
        gated.feed.close()
        return (a, b, gated, stop, thread, alice, bob)
    }

    /// An announcement handed to an active actor that puts it off (a write of its own in flight) and then retires
    /// after a store failure: the thread is activated again once the store answers, so the node's live devices get the
    /// announced events without waiting for the thread's next event or command. With `batchStillHandled`, the actor
    /// retires while the rest of the batch is still being handled (the members of another thread of it are being
    /// looked up): the position the actor left is kept, not raised to the batch's. (Before, nothing activated the
    /// thread, and the batch's position was noted over the retired actor's: bob's socket never got m2.)
    @Test(arguments: [false, true])
    func eventsPutOffByAnActorThatRetiresAfterAStoreFailureReachTheNodesDevices(batchStillHandled: Bool) async throws {
        let (a, b, gated, stop, thread, alice, bob) = try await Self.bobOnBThenFeedHeld()
        // Alice writes m2 in the thread and u1 in another one (B does not hear of it: not loaded there).
        let other = try await a.thread(["bob"], by: "alice")
        _ = try await alice.send(thread, "m2").get()
        _ = try await alice.send(other, "u1").get()
        // Bob's own send on B stays in flight (its write waits), so B's actor puts off the announcement of m2.
        gated.sends.close()
        let bobSend = Task { await bob.send(thread, "b1") }
        while gated.sends.waiting == 0 { try await Task.sleep(for: .milliseconds(10)) }
        let first = try #require(b.supervisor.activeActor(for: thread))
        gated.eventReadsFail.store(true, ordering: .relaxed)
        let batch: [ClusterChange] = [.advanced(thread, first: 2, last: 2)] + (batchStillHandled ? [.advanced(other, first: 1, last: 1)] : [])
        if batchStillHandled { gated.membershipLookups.close() }
        let handled = Task { await b.supervisor.applyCluster(batch, shared: gated) }
        if batchStillHandled {
            while gated.membershipLookups.waiting == 0 { try await Task.sleep(for: .milliseconds(10)) }
        } else {
            await handled.value
        }
        // The send is written after m2; the actor cannot read m2, answers the send `internal` and retires.
        gated.sends.open()
        #expect(Self.failure(await bobSend.value)?.code == .internal)
        // Retired (a successor may already be active: the retirement owes one).
        let deadline = ContinuousClock.now + .seconds(10)
        while b.supervisor.activeActor(for: thread) === first, ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(10)) }
        #expect(b.supervisor.activeActor(for: thread) !== first, "retired")
        gated.eventReadsFail.store(false, ordering: .relaxed)
        gated.membershipLookups.open()
        await handled.value
        // Nothing more is asked of node B: bob's socket gets m2 and then his own message, once each (and nothing more
        // of the thread, the other thread's u1 aside).
        var seen: [Int] = []
        while seen.count < 3, let event = try? await bob.next("chat:message", timeout: .seconds(seen.count < 2 ? 10 : 1)) {
            if event["message"]?["threadId"]?.stringValue == thread { seen.append(event["message"]?["seq"]?.intValue ?? -1) }
        }
        #expect(seen == [2, 3], "bob's live socket gets what the retired actor had not fanned out, once")
        await stop()
    }

    /// A client told of a message by one node names it to another node that has not heard of it yet (found by an
    /// outside probe: 6 of 100 read marks sent right after the message arrived): a read mark up to it and a delivered
    /// receipt of its id are not clamped to the stale node's last seq, but stored as asked, and alice's sockets hear
    /// of them. (Before, the mark was stored one short and answered success.)
    @Test(arguments: ["upToSeq", "delivered"])
    func aReceiptNamingAnEventTheNodeHasNotHeardOfIsStoredAsAsked(receipt: String) async throws {
        let (a, _, _, stop, thread, alice, bobOnB) = try await Self.bobOnBThenFeedHeld()
        // Bob's client learns of m2 through node A.
        let m2 = try await alice.send(thread, "m2").get()
        let id = try #require(m2["message"]?["id"]?.stringValue)
        let payload: JSONValue = receipt == "upToSeq"
            ? .object(["threadId": .string(thread), "upToSeq": .int(2)])
            : .object(["threadId": .string(thread), "messageIds": .array([.string(id)])])
        _ = try await bobOnB.emit(receipt == "delivered" ? "chat:delivered" : "chat:mark-read", payload).get()
        let marks = try #require(try await (a.store as! any SharedStore).members(of: thread).list.first { $0.userId == "bob" }?.marks)
        #expect(marks.deliveredSeq == 2, "stored as asked: \(marks)")
        #expect(marks.readSeq == (receipt == "delivered" ? 0 : 2), "stored as asked: \(marks)")
        let notice = try await alice.next(receipt == "delivered" ? "chat:delivered" : "chat:read")
        #expect(notice["upToSeq"] == .int(2), "alice hears of it: \(notice)")
        await stop()
    }

    /// The read-ahead a receipt makes on a node that has not heard of the newest events (above) applies the member
    /// changes it has not heard of either at their places: carol, removed on node A before m2, gets nothing of m2 on
    /// node B when bob's read mark up to m2 makes B read it. (Found by a review: the read-ahead first fanned m2 out to
    /// the members B knew, carol among them.)
    @Test func aReadAheadForAReceiptGivesAMemberRemovedElsewhereNothingAfterTheRemoval() async throws {
        let (_, _, stop, thread, alice, bobOnB, carolOnB) = try await Self.carolRemovedOnAUnheardOnB()
        #expect(try await Self.collect(bobOnB, count: 1) == [1])
        _ = try await alice.send(thread, "m2").get()
        _ = try await bobOnB.emit("chat:mark-read", .object(["threadId": .string(thread), "upToSeq": .int(2)])).get()
        #expect(try await Self.collect(bobOnB, count: 1) == [2], "bob gets m2")
        let carolGot = try? await carolOnB.next("chat:message", timeout: .seconds(1))
        #expect(carolGot == nil, "carol, removed before m2, gets nothing of it: \(String(describing: carolGot))")
        await stop()
    }

    /// A client that saw events on node A and moved to node B, which has not heard of them yet, syncs from the last
    /// one it saw: B reads ahead, so the answer goes on from there, and does not deliver the events the client has live
    /// again. (Found by an outside probe: B answered nothing more, then delivered the client's last events live again,
    /// its live stream going back: 7 of 24 kill runs.)
    @Test func aSyncPastWhatTheNodeHoldsReadsAheadAndDoesNotDeliverWhatTheClientHasAgain() async throws {
        let (_, b, gated, stop, thread, alice, bobOnB) = try await Self.bobOnBThenFeedHeld()
        for text in ["m2", "m3", "m4"] { _ = try await alice.send(thread, text).get() }
        // Bob's phone saw m2 and m3 on node A, then reconnected to B.
        let phone = try await b.connect("bob")
        let cursor: JSONValue = .object(["threadId": .string(thread), "afterSeq": .int(3)])
        let answer = try await phone.emit("chat:sync", .object(["threads": .array([cursor])])).get()
        let entry = answer["threads"]?.arrayValue?.first
        let synced = entry?["events"]?.arrayValue?.compactMap { $0["data"]?["message"]?["seq"]?.intValue }
        #expect(synced == [4], "the answer goes on from what the client saw: \(answer)")
        #expect(entry?["hasMore"] == .bool(false))
        gated.feed.open()
        // Bob's other device on B, which saw m1 only, gets m2–m4 live; the phone none of what it has.
        #expect(try await Self.collect(bobOnB, count: 3) == [2, 3, 4])
        _ = try await alice.send(thread, "m5").get()
        #expect(try await Self.collect(bobOnB, count: 1) == [5])
        let live = try await Self.collect(phone, count: 1)
        let rest = phone.events().filter { $0.name == "chat:message" }.compactMap { $0.data["message"]?["seq"]?.intValue }
        #expect((live + rest).allSatisfy { $0 > 3 } && (live + rest).last == 5, "the phone's live stream does not go back: \(live + rest)")
        await stop()
    }

    /// A sync naming a seq past the thread's end (a `Long.MAX_VALUE` cursor for "the newest") skips nothing committed
    /// after the node asked the store how far the thread goes: m3, committed and fanned out on node B while its head
    /// query was on its way back, reaches the phone live. (Found by an outside probe: the skip went up to the cursor
    /// during the wait, and such events were lost to the socket.)
    @Test func aSyncPastTheThreadsEndSkipsNothingCommittedAfterTheNodeAsked() async throws {
        let (_, b, gated, stop, thread, alice, bobOnB) = try await Self.bobOnBThenFeedHeld()
        _ = try await alice.send(thread, "m2").get()
        let phone = try await b.connect("bob")
        gated.heads.close()
        let cursor: JSONValue = .object(["threadId": .string(thread), "afterSeq": .int(9_007_199_254_740_991)])
        let sync = Task { await phone.emit("chat:sync", .object(["threads": .array([cursor])])) }
        while gated.heads.waiting == 0 { try await Task.sleep(for: .milliseconds(5)) }
        // The head said 2; m3 is committed now, and B hears of m2 and m3 while the answer is on its way.
        _ = try await alice.send(thread, "m3").get()
        gated.feed.open()
        #expect(try await Self.collect(bobOnB, count: 2) == [2, 3])
        gated.heads.open()
        _ = try await sync.value.get()
        // m2 and m3 were fanned out while the query was on its way: delivered (m2 the phone may have had, m3 not).
        #expect(try await Self.collect(phone, count: 2) == [2, 3], "m3, committed after the query, reaches the phone")
        await stop()
    }

    /// A history page before a seq node B has not heard of yet (the client saw it on node A) is read once B holds
    /// the rest: without it, the page ended at B's last seq and a client paging back from there never got the events
    /// in between. A sync naming a seq past the thread's last keeps the device from nothing that comes after.
    @Test func aHistoryPageBeforeASeqTheNodeHasNotHeardOfHasEverythingBeforeIt() async throws {
        let (_, b, gated, stop, thread, alice, bobOnB) = try await Self.bobOnBThenFeedHeld()
        for text in ["m2", "m3", "m4"] { _ = try await alice.send(thread, text).get() }
        let page = try await bobOnB.emit("chat:history", .object(["threadId": .string(thread), "beforeSeq": .int(5), "limit": .int(10)])).get()
        let seqs = page["messages"]?.arrayValue?.compactMap { $0["seq"]?.intValue }
        #expect(seqs == [1, 2, 3, 4], "\(page)")
        // A client claiming more than the thread holds still gets what comes next.
        let phone = try await b.connect("bob")
        let cursor: JSONValue = .object(["threadId": .string(thread), "afterSeq": .int(1_000)])
        _ = try await phone.emit("chat:sync", .object(["threads": .array([cursor])])).get()
        gated.feed.open()
        _ = try await alice.send(thread, "m5").get()
        #expect(try await Self.collect(phone, count: 1) == [5])
        await stop()
    }

    /// Each head query a command makes the node ask of the store costs its user a read: a `chat:sync` naming one
    /// thread 100 times past its last seq is 100 queries, and the user's next read is refused. (Found by a review: the
    /// queries were free, about 20,000 a second from one user at the default read rate.)
    @Test func theHeadQueriesOfASyncAreChargedAsReads() async throws {
        let (_, _, _, stop, thread, alice, bobOnB) = try await Self.bobOnBThenFeedHeld { $0.readRatePerSecond = 10 }
        _ = try await alice.send(thread, "m2").get()
        let cursor: JSONValue = .object(["threadId": .string(thread), "afterSeq": .int(1_000)])
        _ = try await bobOnB.emit("chat:sync", .object(["threads": .array(Array(repeating: cursor, count: 100))])).get()
        let next = await bobOnB.emit("chat:history", .object(["threadId": .string(thread)]))
        #expect(throws: ChatError.self, "\(next)") { try next.get() }
        await stop()
    }

    /// An edit or delete sent to node B right after the message was acknowledged on node A, before B heard of it:
    /// B asks the store how far the thread goes and finds it. (Found by an outside probe: `not_found`, 3–8 in 60.)
    @Test(arguments: ["chat:edit", "chat:delete"])
    func anEditOnANodeThatHasNotHeardOfTheMessageYetFindsIt(event: String) async throws {
        let (a, _, _, stop, thread, _, bobOnB) = try await Self.bobOnBThenFeedHeld()
        let bobOnA = try await a.connect("bob")
        let sent = try await bobOnA.send(thread, "typo").get()
        let id = try #require(sent["message"]?["id"]?.stringValue)
        let payload: JSONValue = event == "chat:edit"
            ? .object(["threadId": .string(thread), "messageId": .string(id), "content": .string("fixed")])
            : .object(["threadId": .string(thread), "messageId": .string(id)])
        let answer = await bobOnB.emit(event, payload)
        #expect(throws: Never.self, "\(answer)") { try answer.get() }
        await stop()
    }

    /// An edit, delete or receipt on node B of a message B takes in while the store answers its head query: B looks the
    /// message up again once it holds what the store holds. (Found by an outside probe: the miss was taken as final
    /// when the head said nothing beyond what B held by then: 1 in 60 edits answered `not_found` right after the ack,
    /// and receipts that moved no mark.)
    @Test(arguments: ["chat:edit", "chat:delete", "chat:delivered"])
    func aMessageTheNodeTakesInWhileTheStoreAnswersIsFound(event: String) async throws {
        let (a, _, gated, stop, thread, alice, bobOnB) = try await Self.bobOnBThenFeedHeld()
        let bobOnA = try await a.connect("bob")
        let sent = try await (event == "chat:delivered" ? alice : bobOnA).send(thread, "typo").get()
        let id = try #require(sent["message"]?["id"]?.stringValue)
        let payload: JSONValue =
            switch event {
            case "chat:edit": .object(["threadId": .string(thread), "messageId": .string(id), "content": .string("fixed")])
            case "chat:delete": .object(["threadId": .string(thread), "messageId": .string(id)])
            default: .object(["threadId": .string(thread), "messageIds": .array([.string(id)])])
            }
        gated.heads.close()
        let answer = Task { await bobOnB.emit(event, payload) }
        while gated.heads.waiting == 0 { try await Task.sleep(for: .milliseconds(5)) }
        // B hears of the message and takes it in while the head's answer is on its way.
        gated.feed.open()
        #expect(try await Self.collect(bobOnB, count: 1) == [2])
        gated.heads.open()
        let result = await answer.value
        #expect(throws: Never.self, "\(result)") { try result.get() }
        if event == "chat:delivered" {
            // The mark moved: alice, the sender, is told.
            let notice = try await alice.next("chat:delivered", timeout: .seconds(3)) { $0["messageIds"]?.arrayValue?.contains(.string(id)) == true }
            #expect(notice["upToSeq"]?.intValue == 2, "\(notice)")
        }
        await stop()
    }

    /// A batch holding a message that repeats a stored tempId (a resend that reached another node or outlived its
    /// original's deadline): that unit is refused as a conflict, and the batch's other units are committed together,
    /// in one more commit, not one commit each (which any user could otherwise cause with two devices on two nodes).
    @Test func aBatchWithARepeatedTempIdCommitsItsOtherUnitsTogether() async throws {
        let store = try await PostgresMessageStore.open(url: try DatabaseURL(testDatabaseURL ?? ""), committers: 1)
        let threads = (0..<10).map { _ in StoreConformance.info() }
        for thread in threads { try await store.commit([.createThread(thread, members: ["alice"])]) }
        try await store.commit([.insertMessage(StoreConformance.message(threads[0].id, 1, tempId: "t-once"))])
        let before = store.commitPaths
        let outcomes = Mutex<[Int: Result<Void, any Error>]>([:])
        await withTaskGroup(of: Void.self) { group in
            for (i, thread) in threads.enumerated() {
                let message = StoreConformance.message(thread.id, i == 0 ? 2 : 1, tempId: i == 0 ? "t-once" : "t-\(i)")
                let done = OneShot<Void>()
                store.submit([.insertMessage(message)]) { result in
                    outcomes.withLock { $0[i] = result }
                    done.complete(())
                }
                group.addTask { await done.value() }
            }
        }
        let results = outcomes.withLock { $0 }
        guard case .failure(let error as StoreError) = results[0] else { Issue.record("the repeat was stored: \(String(describing: results[0]))"); return }
        #expect(error.isConflict, "refused as a conflict: the writer catches up and finds the original")
        #expect((1..<10).allSatisfy { if case .success = results[$0] { true } else { false } })
        let after = store.commitPaths
        let commits = (after.singleStatement + after.moved + after.general) - (before.singleStatement + before.moved + before.general)
        #expect(commits <= 3, "\(commits) commits for 10 units: not one by one")
        #expect(try await store.messageSeq(of: threads[0].id, sender: "alice", tempId: "t-once") == 1)
        await store.shutdown()
    }

    /// A member removed on one node sends on another node that has not heard of the removal yet (its announcement is
    /// held): the commit finds that the thread's members version moved since the node read the members, so the node
    /// reloads them, and the send is refused as a non-member's. Nothing is stored. (Before the members version, the
    /// send was stored and acknowledged after the removal.) Sends of the members who stay go on. With `addFirst`, bob
    /// first adds dave on node B, whose list still holds carol: that change is fenced with the version B knew, so it
    /// cannot give B's stale list the database's new version.
    @Test(arguments: [false, true])
    func aSendOfAMemberRemovedOnAnotherNodeIsNotStored(addFirst: Bool) async throws {
        let (a, b, gated, stop) = try await Self.gatedPair()
        let thread = try await a.thread(["bob", "carol"], by: "alice")
        let alice = try await a.connect("alice")
        let carol = try await b.connect("carol")
        let bob = try await b.connect("bob")
        _ = try await alice.send(thread, "m1").get()
        #expect(try await Self.collect(carol, count: 1) == [1])
        _ = try await Self.activeActor(for: thread, on: b)

        gated.feed.close()
        _ = try await a.supervisor.perform(.removeMember(thread, "carol"), as: a.principal("alice"), device: nil)
        if addFirst {
            // A change on node B on top of its stale list (carol still in it) must not vouch for that list: it is
            // refused as a conflict, B reloads the members and adds dave again.
            _ = try await b.supervisor.perform(.addMembers(thread, ["dave"]), as: b.principal("bob"), device: nil)
        }
        let refused = await carol.send(thread, "after my removal", tempId: "late")
        guard case .failure(let error) = refused else {
            Issue.record("the removed member's send was accepted: \(refused)")
            await stop()
            return
        }
        #expect(error.code == ChatError.notAMember.code)
        let kept = try await bob.send(thread, "bob stays").get()
        #expect(kept["message"]?["seq"] == .int(2), "the next send takes the next seq: nothing was stored in between")
        gated.feed.open()
        let stored = try await gated.events(of: thread, after: 0)
        #expect(stored.map(\.message.senderId) == ["alice", "bob"])
        #expect(try await gated.messageSeq(of: thread, sender: "carol", tempId: "late") == nil)
        await stop()
    }

    /// A member change committed in one batch after messages of the same writer (a group commit) is logged, and so
    /// announced, after them: its position is where the thread's log stood before its own unit, as the writing node
    /// places it (after its sends asked for before). Before, it was where the log stood before the whole batch, so the
    /// other nodes applied it ahead of those messages, and a removed member missed there what the writing node gave them.
    /// The thread's row is held while the units are queued, so that they wait, and commit, together.
    @Test func aMemberChangeBatchedAfterMessagesIsPlacedAfterThem() async throws {
        let store = try await PostgresMessageStore.open(url: try DatabaseURL(testDatabaseURL ?? ""), durability: .process)
        let info = StoreConformance.info(company: "acme-\(UUID().uuidString.prefix(8))")
        try await store.commit([.createThread(info, members: ["alice", "bob", "carol"])])
        try await store.commit([.insertMessage(StoreConformance.message(info.id, 1))])
        let commits = try await Self.withThreadRowHeld(info.id) {
            let commits = ([[.insertMessage(StoreConformance.message(info.id, 2))], [.insertMessage(StoreConformance.message(info.id, 3))],
                [.removeMember(info.id, "carol", membersVersion: StoreWrite.newMembersVersion())]] as [[StoreWrite]]).map { writes in
                let done = OneShot<Bool>()
                store.submit(writes) { done.complete((try? $0.get()) != nil) }
                return done
            }
            try await Task.sleep(for: .milliseconds(300))
            return commits
        }
        var outcomes: [Bool] = []
        for commit in commits { outcomes.append(await commit.value()) }
        #expect(outcomes == [true, true, true])
        let logged = try await store.memberChanges(of: info.id, company: info.companyId, from: 0)
        let positions = logged.compactMap { change -> Int? in
            if case .membership(_, _, let asOf, _, _, let removed, _) = change, removed == ["carol"] { return asOf }
            return nil
        }
        #expect(positions == [3], "the removal comes after m2 and m3, queued before it")
        await store.shutdown()
    }

    /// alice removes carol on node A while bob's two messages, sent on node A before, are still being written (they
    /// wait for the thread's row, and then commit with the removal): carol's devices on both nodes get both messages
    /// and nothing after. Before, node A cut carol off when the removal was asked for (she got neither there), and
    /// node B applied it before both (the removal's logged position was where the batch began).
    @Test func aRemovalAskedForWhileMessagesAreWrittenComesAfterThemOnEveryNode() async throws {
        let (nodes, stop) = try await Self.nodes(2)
        let (a, b) = (nodes[0], nodes[1])
        let thread = try await a.thread(["bob", "carol"], by: "alice")
        let bob = try await a.connect("bob")
        let carolOnA = try await a.connect("carol")
        let carolOnB = try await b.connect("carol")
        _ = try await bob.send(thread, "m1").get()
        #expect(try await Self.collect(carolOnA, count: 1) == [1])
        #expect(try await Self.collect(carolOnB, count: 1) == [1])
        try await Self.sendsThenRemovalOfCarol(on: a, thread, by: bob, ["m2", "m3"])
        _ = try await bob.send(thread, "m4").get()
        #expect(try await Self.collect(carolOnA, count: 2) == [2, 3], "node A: the messages sent before the removal")
        #expect(try await Self.collect(carolOnB, count: 2) == [2, 3], "node B: the same")
        try await Task.sleep(for: .milliseconds(300))
        #expect(carolOnA.events().filter { $0.name == "chat:message" }.isEmpty, "nothing after the removal")
        #expect(carolOnB.events().filter { $0.name == "chat:message" }.isEmpty)
        await stop()
    }

    /// Node A commits m2, then m3, m4 and carol's removal in one group commit (m2 holds the committer while they
    /// queue); carol's only socket is on node B, where the thread is not loaded, and B hears of both commits once both
    /// are made. Node B loads the thread for her (she is named by the removal, or was removed within 30 s when it asks
    /// the store about m2's commit) and gives her m2, m3 and m4, which came before the removal, as a node where the
    /// thread was loaded does. Before, node B asked the store who the thread's members were (no longer carol),
    /// loaded nothing, and she missed them.
    @Test func aUserRemovedAfterEventsOfTheSameCommitGetsThemWhereTheThreadIsNotLoaded() async throws {
        let (a, _, gated, stop, thread, bob, carolOnB) = try await Self.carolOnlyOnBWhereTheThreadIsNotLoaded()
        // Node B hears of both commits once both are made (as a node busy elsewhere would).
        gated.feed.close()
        try await Self.sendsThenRemovalOfCarol(on: a, thread, by: bob, ["m2", "m3", "m4"])
        gated.feed.open()
        // (The activation may also give her m1 and m2, committed before: it fans out what the node's devices may have
        // missed lately.)
        var got: [Int] = []
        while got.last != 4 {
            guard let event = try? await carolOnB.next("chat:message", timeout: .seconds(10)) else { break }
            got.append(event["message"]?["seq"]?.intValue ?? -1)
        }
        #expect(got.suffix(3) == [2, 3, 4] && got.allSatisfy { $0 >= 1 && $0 <= 4 }, "node B: the messages committed before the removal: \(got)")
        await stop()
    }

    /// carol's only socket is on node B, where the thread is not loaded; node A commits m2, and removes carol while
    /// node B is about to handle m2's announcement (held at its feed). Node B asks the store whose the thread is: carol
    /// was removed 0.1 s before, so the thread is loaded for her, and the activation's replay of the member log gives
    /// her m2 (committed before her removal) and nothing after. Before, only the current members counted: nothing was
    /// loaded, and she missed m2 there, while a node where the thread was loaded gave it to her.
    @Test func aUserRemovedRightAfterAnEventGetsItWhereTheThreadIsNotLoaded() async throws {
        let (a, _, gated, stop, thread, bob, carolOnB) = try await Self.carolOnlyOnBWhereTheThreadIsNotLoaded()
        gated.feed.close()
        _ = try await bob.send(thread, "m2").get()
        while gated.feed.waiting == 0 { try await Task.sleep(for: .milliseconds(5)) }
        _ = try await a.supervisor.perform(.removeMember(thread, "carol"), as: a.principal("alice"), device: nil)
        try await Task.sleep(for: .milliseconds(100))
        gated.feed.open()
        _ = try await bob.send(thread, "m3").get()
        var got: [Int] = []
        while let event = try? await carolOnB.next("chat:message", timeout: .seconds(3)) {
            got.append(event["message"]?["seq"]?.intValue ?? -1)
        }
        // (The activation may also give her m1, committed before she connected.)
        #expect(got.last == 2 && got.allSatisfy { $0 == 1 || $0 == 2 }, "node B: m2, and nothing after the removal: \(got)")
        await stop()
    }

    /// Node B removes carol right after node A committed m2, before B heard of it (B's feed is held): the store puts the
    /// removal after m2, and so does node B (it moves its own change to where the store says, and reads m2), so
    /// carol's device on B gets m2, as her device on A does, and neither gets m3. Before, node B cut carol off at the
    /// position it knew, and she missed m2 there.
    @Test func aRemovalAfterAnEventTheNodeHasNotHeardOfComesAfterIt() async throws {
        let (a, b, gated, stop) = try await Self.gatedPair()
        let thread = try await a.thread(["bob", "carol"], by: "alice")
        let alice = try await a.connect("alice")
        let carolOnA = try await a.connect("carol")
        let carolOnB = try await b.connect("carol")
        _ = try await alice.send(thread, "m1").get()
        #expect(try await Self.collect(carolOnA, count: 1) == [1])
        #expect(try await Self.collect(carolOnB, count: 1) == [1])
        gated.feed.close()
        _ = try await alice.send(thread, "m2").get()
        _ = try await b.supervisor.perform(.removeMember(thread, "carol"), as: b.principal("alice"), device: nil)
        gated.feed.open()
        _ = try await alice.send(thread, "m3").get()
        #expect(try await Self.collect(carolOnA, count: 1) == [2])
        #expect(try await Self.collect(carolOnB, count: 1) == [2], "node B gives carol m2, committed before her removal")
        try await Task.sleep(for: .milliseconds(500))
        #expect(carolOnA.events().filter { $0.name == "chat:message" }.isEmpty, "nothing after the removal")
        #expect(carolOnB.events().filter { $0.name == "chat:message" }.isEmpty)
        await stop()
    }

    /// A member's removal whose commit outlasts its deadline (another transaction holds the thread's row): the client
    /// is answered an error, and the commit, once it gets the row, finds its writer stopped (a membership change is
    /// fenced like a send since the members version) and stores nothing. The node and the database agree afterwards:
    /// carol is still a member, in the thread's next actor (loaded meanwhile) and in the store, and still receives.
    /// (Before, the removal landed after the error and the node applied it from its own announcement; that path stays
    /// for a commit that gets past its check before the node gives up on it.)
    @Test func aRemovalPastItsDeadlineIsNotStoredAfterTheError() async throws {
        let (node, stop, thread, alice, carol) = try await Self.nodeWithShortDeadline(["bob", "carol"], watcher: "carol")
        try await Self.withThreadRowHeld(thread) {
            let removal = try? await node.supervisor.perform(.removeMember(thread, "carol"), as: node.principal("alice"), device: nil)
            #expect(removal == nil, "the removal is answered with an error past its deadline")
            // The missed deadline starts the store's outage probe: under load its fresh connection may be slow to
            // answer, and calls fail at once until it does (a fraction of a second), so the reads below try again.
            let summary = try await Self.eventually {
                try await node.supervisor.withThread(thread, as: node.principal("alice")) { actor throws(ChatError) in
                    try await actor.summary(for: "alice")
                }
            }
            #expect(summary.members.contains("carol"))
        }
        try await Task.sleep(for: .milliseconds(500))
        let shared = try #require(node.supervisor.store as? any SharedStore)
        #expect(try await shared.members(of: thread).list.contains { $0.userId == "carol" }, "nothing stored after the error")
        #expect(await (try Self.activeActor(for: thread, on: node)).isMember("carol"))
        _ = try await Self.eventually { try await alice.send(thread, "m2").get() }
        #expect(try await Self.collect(carol, count: 1) == [2], "carol, still a member, receives m2")
        await stop()
    }

    /// A receipt from another node that covers events this node has not applied yet (they were put off while the
    /// node's own send was in flight): the senders here are told once the events are applied, not never.
    @Test func aReceiptAheadOfTheEventsItCoversIsToldOnceTheyArrive() async throws {
        let (a, b, gated, stop) = try await Self.gatedPair()
        let thread = try await a.thread(["bob", "carol"], by: "alice")
        let aliceOnA = try await a.connect("alice")
        let carol = try await a.connect("carol")
        let bob = try await b.connect("bob")
        let aliceOnB = try await b.connect("alice")
        _ = try await aliceOnA.send(thread, "m1").get()
        #expect(try await Self.collect(bob, count: 1) == [1])
        _ = try await Self.activeActor(for: thread, on: b)

        // Node B's own send is in flight; meanwhile alice sends m2 on node A and carol reads it there.
        gated.sends.close()
        let held = Task { try await bob.send(thread, "from bob").get() }
        while gated.sends.waiting == 0 { try await Task.sleep(for: .milliseconds(5)) }
        let sent = try await aliceOnA.send(thread, "m2").get()
        let m2 = try #require(sent["message"]?["id"]?.stringValue)
        _ = try await carol.next("chat:message")
        _ = try await carol.next("chat:message")
        _ = try await carol.emit("chat:mark-read", .object(["threadId": .string(thread), "upToSeq": .int(2)])).get()
        try await Task.sleep(for: .milliseconds(500))
        gated.sends.open()
        _ = try await held.value
        // alice's device on node B hears that carol read m1 and m2 (in one notice or two).
        var told: Set<String> = []
        let deadline = ContinuousClock.now + .seconds(5)
        while !told.contains(m2), ContinuousClock.now < deadline {
            guard let read = try? await aliceOnB.next("chat:read", timeout: .seconds(1)), read["userId"] == .string("carol") else { continue }
            for id in read["messageIds"]?.arrayValue ?? [] { if let id = id.stringValue { told.insert(id) } }
        }
        #expect(told.contains(m2), "the sender's device on node B is told that carol read m2")
        await stop()
    }

    /// A membership change of another node is applied here at its place in the thread's order: while this node's own
    /// send is in flight, the other node's message and then its member change arrive; the message is put off until the
    /// write settles, and the change waits for it. The removed member gets the message sent before the removal, the
    /// added one does not, and what is sent after reaches the added member only.
    @Test func aMemberChangeOfAnotherNodeWaitsForTheEventsBeforeIt() async throws {
        let (_, _, gated, stop, _, devices, actor, held) = try await Self.memberChangesWaitingOnB(adding: ["dave"], onB: ["carol", "dave"])
        let carol = devices["carol"]!, dave = devices["dave"]!
        _ = carol.events()  // m1
        // Node B heard of m2 and of both changes while its own write is in flight.
        #expect(await actor.isMember("carol"), "the removal waits for m2")
        gated.sends.open()
        let stored = try await held.value
        let bobSeq = try #require(stored["message"]?["seq"]?.intValue)
        #expect(bobSeq == 3, "stored after m2 and the changes")
        try await Task.sleep(for: .milliseconds(300))
        #expect(Self.seqs(carol.events()) == [2], "carol gets m2, sent before her removal, and nothing after")
        #expect(Self.seqs(dave.events()) == [3], "dave gets what was sent after he was added, not m2")
        let carolStays = await actor.isMember("carol"), daveJoined = await actor.isMember("dave")
        #expect(!carolStays && daveJoined)
        await stop()
    }

    /// A receipt for a thread that went passive on the sender's node since the sender's message (a reader reading it
    /// minutes later) reaches the sender's devices there: the notice activates the thread on that node, whose fresh
    /// snapshot already holds the new watermark, so the notice says where the watermark stood before.
    @Test func aReceiptReachesTheSenderOnANodeWhereTheThreadWentPassive() async throws {
        let (nodes, stop) = try await Self.nodes(2) { $0.idleSeconds = 0.2 }
        let (a, b) = (nodes[0], nodes[1])
        let thread = try await a.thread(["bob"], by: "alice")
        let alice = try await a.connect("alice")
        let bob = try await b.connect("bob")
        let first = try #require(try await alice.send(thread, "one").get()["message"]?["id"]?.stringValue)
        let second = try #require(try await alice.send(thread, "two").get()["message"]?["id"]?.stringValue)
        #expect(try await Self.collect(bob, count: 2) == [1, 2])
        _ = try await bob.emit("chat:delivered", .object(["threadId": .string(thread), "messageIds": .array([.string(first)])])).get()
        #expect(try await alice.next("chat:delivered")["messageIds"] == .array([.string(first)]))
        let deadline = ContinuousClock.now + .seconds(10)
        while a.supervisor.activeActor(for: thread) != nil, ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(300))
            _ = await a.supervisor.passivateIdle()
        }
        try #require(a.supervisor.activeActor(for: thread) == nil, "passive on node A")
        _ = try await bob.emit("chat:mark-read", .object(["threadId": .string(thread)])).get()
        let read = try await alice.next("chat:read")
        #expect(read["userId"] == .string("bob") && read["messageIds"] == .array([.string(first), .string(second)]))
        let delivered = try await alice.next("chat:delivered")
        #expect(delivered["messageIds"] == .array([.string(second)]), "m1 was told delivered before")
        await stop()
    }

    /// A member's receipt that a node learns from a members list read from the store (a resync, a catch-up) before
    /// the receipt's own notice arrives is told to the senders there then, once: the notice, when it comes, raises
    /// nothing.
    @Test func aReceiptLearnedFromAMembersReadIsToldOnce() async throws {
        let (a, b, gated, stop) = try await Self.gatedPair()
        let thread = try await a.thread(["bob", "carol"], by: "alice")
        let aliceOnA = try await a.connect("alice")
        let aliceOnB = try await b.connect("alice")
        let carol = try await a.connect("carol")
        let sent = try await aliceOnA.send(thread, "m1").get()
        let m1 = try #require(sent["message"]?["id"]?.stringValue)
        #expect(try await Self.collect(aliceOnB, count: 1) == [1])
        let actor = try await Self.activeActor(for: thread, on: b)
        gated.feed.close()
        _ = try await carol.emit("chat:mark-read", .object(["threadId": .string(thread)])).get()
        #expect(try await aliceOnA.next("chat:read")["messageIds"] == .array([.string(m1)]))
        await actor.resynchronize()
        let read = try await aliceOnB.next("chat:read")
        #expect(read["userId"] == .string("carol") && read["messageIds"] == .array([.string(m1)]))
        gated.feed.open()
        _ = try await aliceOnA.send(thread, "m2").get()
        #expect(try await Self.collect(aliceOnB, count: 1) == [2])
        try await Task.sleep(for: .milliseconds(300))
        #expect(!aliceOnB.events().contains { $0.name == "chat:read" }, "told once")
        await stop()
    }

    /// A read made moments after a message, while the node of the sender's other device loads the thread: the
    /// snapshot holds the read already, so its announcement, arriving after the activation, raises nothing there. The
    /// sender's device on that node is told of it at activation, after the message, once. (Found by an outside probe:
    /// it was never told, in 4 rounds of 160.)
    @Test func aReadTheSnapshotHoldsIsToldAtActivationOnce() async throws {
        let (a, b, gated, stop) = try await Self.gatedPair()
        let thread = try await a.thread(["bob"], by: "alice")
        let aliceOnA = try await a.connect("alice")
        let bob = try await a.connect("bob")
        // Node B heard of the thread while no device of its members was there: not active.
        try await Task.sleep(for: .milliseconds(300))
        let aliceOnB = try await b.connect("alice")
        #expect(b.supervisor.activeActor(for: thread) == nil)

        gated.feed.close()
        let sent = try await aliceOnA.send(thread, "m1").get()
        let m1 = try #require(sent["message"]?["id"]?.stringValue)
        _ = try await bob.emit("chat:mark-read", .object(["threadId": .string(thread), "upToSeq": .int(1)])).get()
        while gated.feed.waiting == 0 { try await Task.sleep(for: .milliseconds(5)) }
        // Alice's node loads the thread (a command of hers) while the announcements of m1 and of the read wait.
        _ = try await b.supervisor.withThread(thread, as: b.principal("alice")) { actor throws(ChatError) in try await actor.summary(for: "alice") }
        let read = try await aliceOnB.next("chat:read")
        #expect(read["userId"] == .string("bob") && read["messageIds"] == .array([.string(m1)]))
        let told = aliceOnB.events()
        #expect(told.map(\.name) == ["chat:message", "chat:delivered"], "m1, then its receipts (the read taken above)")
        #expect(Self.seqs(told) == [1])
        gated.feed.open()
        _ = try await aliceOnA.send(thread, "m2").get()
        #expect(try await Self.collect(aliceOnB, count: 1) == [2])
        try await Task.sleep(for: .milliseconds(300))
        #expect(aliceOnB.events().isEmpty, "the announcements of m1 and of the read told nothing twice")
        await stop()
    }

    /// A read that reaches back past the position a node reloads a thread from (its last event here before the thread
    /// went idle): the node tells the part after the position at activation, and the part before it when the read's
    /// announcement comes, once, whether in the batch that loaded the thread or a later one. (Found by a review: the
    /// part before the position was never told.)
    @Test func aReadReachingBackPastTheActivationsPositionIsToldWhole() async throws {
        let (a, b, gated, stop) = try await Self.gatedPair { $0.idleSeconds = 0.2 }
        let thread = try await a.thread(["bob", "carol"], by: "alice")
        let bobOnA = try await a.connect("bob")
        let bobOnB = try await b.connect("bob")
        let carol = try await a.connect("carol")
        let alice = try await a.connect("alice")
        var bobs: [String] = []
        for i in 1...4 { bobs.append(try #require(try await bobOnA.send(thread, "b\(i)").get()["message"]?["id"]?.stringValue)) }
        #expect(try await Self.collect(bobOnB, count: 4) == [1, 2, 3, 4])
        // Node B lets the thread go, remembering its position (4).
        try await Task.sleep(for: .milliseconds(400))
        _ = await b.supervisor.passivateIdle()
        #expect(b.supervisor.activeActor(for: thread) == nil)

        gated.feed.close()
        _ = try await carol.send(thread, "c5").get()
        _ = try await alice.emit("chat:mark-read", .object(["threadId": .string(thread), "upToSeq": .int(5)])).get()
        // The first batch waits; the read's announcement is queued behind it (or in it).
        while gated.feed.waiting == 0 { try await Task.sleep(for: .milliseconds(5)) }
        try await Task.sleep(for: .milliseconds(300))
        gated.feed.open()
        #expect(try await Self.collect(bobOnB, count: 1) == [5])
        var read: [String] = []
        while read.count < 4 {
            let notice = try await bobOnB.next("chat:read", timeout: .seconds(5))
            read += notice["messageIds"]?.arrayValue?.compactMap(\.stringValue) ?? []
        }
        #expect(read == bobs)
        try await Task.sleep(for: .milliseconds(300))
        #expect(!bobOnB.events().contains { $0.name == "chat:read" }, "told once")
        await stop()
    }

    /// A member added on one node acts at once on another, where the thread is active and the announcement of the
    /// addition is still on its way: the store lists the member, so the node catches up with the member log instead
    /// of refusing `not_a_member`. (Found by an outside probe: refused in 9 rounds of 60, for sends, syncs, joins,
    /// read marks and history.) A user the store does not list is still refused.
    @Test(arguments: ["chat:send", "chat:sync", "chat:join", "chat:mark-read", "chat:history"])
    func aMemberJustAddedOnAnotherNodeIsNotRefusedThere(event: String) async throws {
        let (a, b, gated, stop) = try await Self.gatedPair()
        let thread = try await a.thread(["bob"], by: "alice")
        let alice = try await a.connect("alice")
        let bob = try await b.connect("bob")
        let carol = try await b.connect("carol")
        let dave = try await b.connect("dave")
        _ = try await alice.send(thread, "m1").get()
        #expect(try await Self.collect(bob, count: 1) == [1])
        _ = try await Self.activeActor(for: thread, on: b)

        gated.feed.close()
        _ = try await a.supervisor.perform(.addMembers(thread, ["carol"]), as: a.principal("alice"), device: nil)
        while gated.feed.waiting == 0 { try await Task.sleep(for: .milliseconds(5)) }
        let payload: JSONValue =
            switch event {
            case "chat:send": .object(["threadId": .string(thread), "content": .string("hi")])
            case "chat:sync": .object(["threads": .array([.object(["threadId": .string(thread), "afterSeq": .int(0)])])])
            default: .object(["threadId": .string(thread)])
            }
        // (A sync answers each thread apart: a refusal is in its entry.)
        let answer = await carol.emit(event, payload)
        #expect((try? answer.get()) != nil && !"\(answer)".contains("not_a_member"), "\(event) of the member just added: \(answer)")
        let refused = await dave.emit(event, payload)
        #expect("\(refused)".contains("not_a_member"), "\(event) of a user the store does not list: \(refused)")
        gated.feed.open()
        await stop()
    }

    /// A socket's send from a member just added on another node, held on this node behind a catch-up that read the
    /// members before the addition committed, is written when the catch-up ends, not refused `not_a_member`: the node
    /// reads the member log once more first. (Found by an outside probe: 6 of 40 additions followed at once by a send on
    /// another node were refused there.) A send from a user the store does not list is still refused, once.
    /// `newsDuringTheLogRead`: the addition comes after an event this node has not heard of, and news of a later event
    /// arrives while the member log is read: the addition read is applied at the end of that catch-up, before the held
    /// sends are tried again (it waited for the next event; found under load, 1 of 80 additions then still refused).
    @Test(arguments: [false, true])
    func aSendHeldBehindACatchUpFromAMemberJustAddedElsewhereIsWritten(newsDuringTheLogRead: Bool) async throws {
        let (a, b, gated, stop) = try await Self.gatedPair { $0.memberRereadInterval = 60 }
        let (thread, alice, bob, _) = try await Self.threadOfAliceOnAAndBobOnB(a, b)
        let carol = try await b.connect("carol")
        let dave = try await b.connect("dave")

        let bobsSend = try await Self.catchUpWaitingOnB(gated, thread, bob: bob, "from b", alice: alice, "from a")
        // Carol is added on A; B does not hear of it (its feed waits) before she sends there, as a socket does.
        gated.feed.close()
        if newsDuringTheLogRead { _ = try await alice.send(thread, "before the addition").get() }
        _ = try await a.supervisor.perform(.addMembers(thread, ["carol"]), as: a.principal("alice"), device: nil)
        let carolsSend = Task { await Self.dispatchSend(thread, "carol's first", from: carol, on: b) }
        let davesSend = Task { await Self.dispatchSend(thread, "not mine", from: dave, on: b) }
        try await Task.sleep(for: .milliseconds(100))
        gated.catchUps.open()
        var senders = ["alice", "alice", "bob", "carol"]
        if newsDuringTheLogRead {
            // The catch-up that reads the member log waits at the gate too, having read the addition and the event
            // before it; meanwhile alice writes again and B hears of it all.
            gated.catchUps.close()
            while gated.catchUps.waiting == 0 { try await Task.sleep(for: .milliseconds(5)) }
            _ = try await alice.send(thread, "after the addition").get()
            gated.feed.open()
            while (b.supervisor.announcedSeq(of: thread) ?? 0) < 5 { try await Task.sleep(for: .milliseconds(5)) }
            gated.catchUps.open()
            senders = ["alice", "alice", "bob", "alice", "alice", "carol"]
        }

        let written = await carolsSend.value
        let seq = (try? written.get())?["message"]?["seq"]?.intValue
        #expect(seq == senders.count, "carol's send is written after the catch-up: \(written)")
        let refused = await davesSend.value
        #expect("\(refused)".contains("not_a_member"), "a user the store does not list: \(refused)")
        #expect((try? await bobsSend.value.get()) != nil)
        gated.feed.open()
        #expect(try await gated.events(of: thread, after: 0).map(\.message.senderId) == senders)

        // Dave sends again, held behind another catch-up: refused without another read of the member log (a user who is
        // no member and sends on costs a read per `memberRereadInterval`, not one per send).
        let reads = gated.members.passes
        let bobsSecond = try await Self.catchUpWaitingOnB(gated, thread, bob: bob, "again from b", alice: alice, "again from a")
        let davesSecond = Task { await Self.dispatchSend(thread, "still not mine", from: dave, on: b) }
        try await Task.sleep(for: .milliseconds(100))
        gated.catchUps.open()
        #expect("\(await davesSecond.value)".contains("not_a_member"))
        #expect((try? await bobsSecond.value.get()) != nil)
        #expect(gated.members.passes == reads, "the member log was read again for a user refused after a read a moment ago")
        await stop()
    }

    /// Bob's send on B waits before the store while alice's on A takes the next seq: B's is stored after it (rebased),
    /// and B's catch-up then reads the store and waits at its gate (closed), with nothing of what follows. Returns
    /// bob's send.
    static func catchUpWaitingOnB(
        _ gated: GatedClusterStore, _ thread: ThreadID, bob: TestDevice, _ bobsContent: String, alice: TestDevice, _ alicesContent: String
    ) async throws -> Task<Result<JSONValue, ChatError>, Never> {
        gated.sends.close()
        let bobsSend = Task { await bob.send(thread, bobsContent) }
        while gated.sends.waiting == 0 { try await Task.sleep(for: .milliseconds(5)) }
        _ = try await alice.send(thread, alicesContent).get()
        gated.catchUps.close()
        gated.sends.open()
        while gated.catchUps.waiting == 0 { try await Task.sleep(for: .milliseconds(5)) }
        return bobsSend
    }

    /// A thread of alice and bob with one message: alice's device on node A, bob's on node B, where it is active.
    static func threadOfAliceOnAAndBobOnB(_ a: ChatTestBroker, _ b: ChatTestBroker) async throws -> (
        thread: ThreadID, alice: TestDevice, bob: TestDevice, actor: ThreadActor
    ) {
        let thread = try await a.thread(["bob"], by: "alice")
        let bob = try await b.connect("bob")
        let alice = try await a.connect("alice")
        _ = try await alice.send(thread, "m1").get()
        #expect(try await collect(bob, count: 1) == [1])
        return (thread, alice, bob, try await activeActor(for: thread, on: b))
    }

    /// `chat:send` as a socket's transport sends it (`Supervisor.dispatch`: answered when durable, never retried).
    static func dispatchSend(_ thread: ThreadID, _ content: String, from device: TestDevice, on node: ChatTestBroker) async -> Result<JSONValue, ChatError> {
        let answer = OneShot<Result<JSONValue, ChatError>>()
        await node.supervisor.dispatch(event: "chat:send", data: TestDevice.sendPayload(thread, content, tempId: nil), from: device.device) {
            answer.complete($0)
        }
        return await answer.value()
    }

    /// A typist removed on another node is announced stopped on every node at once, not at the typing timeout or never:
    /// the node that applies the removal stops the typists it heard of from other nodes, and the typist's own node
    /// announces its stop to all.
    @Test func aTypistRemovedOnAnotherNodeIsAnnouncedStoppedEverywhere() async throws {
        let (nodes, stop) = try await Self.nodes(3)
        let (a, b, c) = (nodes[0], nodes[1], nodes[2])
        let thread = try await a.thread(["w", "y"], by: "alice")
        let alice = try await a.connect("alice")
        let watchers = [try await a.connect("w"), try await b.connect("w"), try await c.connect("w")]
        let typist = try await c.connect("y")
        _ = try await alice.send(thread, "m1").get()
        for watcher in watchers { #expect(try await Self.collect(watcher, count: 1) == [1]) }
        _ = await typist.emit("chat:typing:start", .object(["threadId": .string(thread)]))
        for watcher in watchers { #expect(try await watcher.next("chat:typing:start")["userId"] == .string("y")) }
        let removed = ContinuousClock.now
        _ = try await a.supervisor.perform(.removeMember(thread, "y"), as: a.principal("alice"), device: nil)
        for watcher in watchers { #expect(try await watcher.next("chat:typing:stop", timeout: .seconds(4))["userId"] == .string("y")) }
        #expect(ContinuousClock.now - removed < .seconds(4), "well before the 6 s typing timeout")
        await stop()
    }

    /// Typing reaches a member's device on a node where the thread is not active (the member opened the app there
    /// after the last message): a start activates the thread there, as a message does; the stop follows it.
    @Test func typingReachesANodeWhereTheThreadIsNotActive() async throws {
        let (nodes, stop) = try await Self.nodes(2)
        let (a, b) = (nodes[0], nodes[1])
        let thread = try await a.thread(["w"], by: "alice")
        let alice = try await a.connect("alice")
        let watcher = try await b.connect("w")
        #expect(b.supervisor.activeActor(for: thread) == nil)
        _ = await alice.emit("chat:typing:start", .object(["threadId": .string(thread)]))
        #expect(try await watcher.next("chat:typing:start")["userId"] == .string("alice"))
        _ = await alice.emit("chat:typing:stop", .object(["threadId": .string(thread)]))
        #expect(try await watcher.next("chat:typing:stop")["userId"] == .string("alice"))
        await stop()
    }

    @Test func editsReceiptsAndMembersCrossNodes() async throws {
        let (nodes, stop) = try await Self.nodes(2)
        let (a, b) = (nodes[0], nodes[1])
        let company = a.company
        let thread = try await a.thread(["bob"], by: "alice", company: company)
        let alice = try await a.connect("alice", company: company)
        let bob = try await b.connect("bob", company: company)
        let carol = try await b.connect("carol", company: company)

        let sent = try await alice.send(thread, "hello").get()
        let messageId = try #require(sent["message"]?["id"]?.stringValue)
        #expect(try await bob.next("chat:message")["message"]?["content"] == .string("hello"))

        // A receipt on node B reaches the sender on node A.
        _ = try await bob.emit("chat:mark-read", .object(["threadId": .string(thread), "upToSeq": .int(1)])).get()
        let read = try await alice.next("chat:read")
        #expect(read["userId"] == .string("bob") && read["messageIds"] == .array([.string(messageId)]))

        // An edit on node A reaches node B, in seq order.
        _ = try await alice.emit("chat:edit", .object(["threadId": .string(thread), "messageId": .string(messageId), "content": .string("hi")])).get()
        let edited = try await bob.next("chat:message:edited")
        #expect(edited["seq"] == .int(2) && edited["message"]?["content"] == .string("hi"))

        // A member added on node A: their live device on node B is told and receives the next message.
        _ = try await a.supervisor.perform(.addMembers(thread, ["carol"]), as: a.principal("alice", company), device: nil)
        let created = try await carol.next("chat:thread:created")
        #expect(created["thread"]?["id"] == .string(thread))
        _ = try await alice.send(thread, "welcome").get()
        #expect(try await carol.next("chat:message")["message"]?["content"] == .string("welcome"))

        // Typing on node B reaches node A; an emitted event from node A reaches node B.
        _ = try await bob.emit("chat:typing:start", .object(["threadId": .string(thread)])).get()
        #expect(try await alice.next("chat:typing:start")["userId"] == .string("bob"))
        let service = a.principal("backend", company, service: true)
        _ = try await a.supervisor.emit(event: "app:ping", data: .object(["n": .int(1)]), to: .users(["bob"]), as: service)
        #expect(try await bob.next("app:ping")["n"] == .int(1))

        // Presence counts the other node's devices (within the writer's flush interval).
        var online: [(UserID, Bool)] = []
        for _ in 0..<50 {
            online = try await a.supervisor.presence(of: ["bob", "zed"], as: a.principal("alice", company))
            if online.first?.1 == true { break }
            try await Task.sleep(for: .milliseconds(50))
        }
        #expect(online.map(\.1) == [true, false], "bob is online on node B; zed nowhere")

        // Bob, after the edit, catches up from the store on node B exactly.
        let sync = try await bob.emit("chat:sync", .object(["threads": .array([.object(["threadId": .string(thread), "afterSeq": .int(0)])])])).get()
        let events = sync["threads"]?.arrayValue?.first?["events"]?.arrayValue ?? []
        #expect(events.compactMap { $0["data"]?["seq"]?.intValue ?? $0["data"]?["message"]?["seq"]?.intValue } == [1, 2, 3])

        await bob.disconnect()
        await carol.disconnect()
        for _ in 0..<50 {
            online = try await a.supervisor.presence(of: ["bob"], as: a.principal("alice", company))
            if online.first?.1 == false { break }
            try await Task.sleep(for: .milliseconds(50))
        }
        #expect(online.first?.1 == false, "bob went offline on node B")
        await stop()
    }

    /// A node that stopped hearing the others (its LISTEN connection dropped, and its database role was refused
    /// logins for a while) delivers, once it listens again, what they wrote meanwhile to threads not active on it:
    /// messages and an edit from where its devices stood (a position it noted, or, for a thread it had noted nothing
    /// of lately, the last event stored before it stopped hearing), a thread created with one of its users and a
    /// thread one was added to; each event once, each thread's in seq order.
    @Test func threadsWrittenWhileANodeWasNotListeningArriveWhenItListensAgain() async throws {
        try await Self.withNodeOfItsOwnRole(idleSeconds: 0.2) { a, b, role, admin in
            try await Self.missedWhileNotListening(a: a, b: b, role: role, admin: admin)
        }
    }

    /// A device that left a thread's room stays out of it after its node, which had unloaded the thread, stops hearing
    /// the others and delivers what they wrote meanwhile: the catch-up names every member added since a margin before
    /// the outage, the device's own user among them for a thread that young, and that is no addition after the leave.
    /// (Found by an outside probe: the device was put back in the room, and got every later message and typing.)
    @Test func aDeviceThatLeftAThreadStaysOutAfterTheCatchUpOfAnOutage() async throws {
        try await Self.withNodeOfItsOwnRole(idleSeconds: 0.2) { a, b, role, admin in
            let alice = try await a.connect("alice")
            let bob = try await b.connect("bob")
            let thread = try await b.thread(["alice"], by: "bob")
            _ = try await bob.send(thread, "before the leave").get()
            _ = try await alice.next("chat:message", timeout: .seconds(10))
            _ = try await alice.emit("chat:leave", .object(["threadId": .string(thread)])).get()
            for _ in 0..<100 where a.supervisor.stats.activeThreads.load(ordering: .relaxed) > 0 {
                await a.supervisor.passivateIdle()
                try await Task.sleep(for: .milliseconds(50))
            }
            #expect(a.supervisor.stats.activeThreads.load(ordering: .relaxed) == 0)
            _ = alice.events()

            try await admin("ALTER ROLE \(role) NOLOGIN")
            try await admin("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '\(role)'")
            try await Task.sleep(for: .milliseconds(500))
            _ = try await bob.send(thread, "during the outage").get()
            try await admin("ALTER ROLE \(role) LOGIN")
            // Node A catches up (it loads the thread to deliver the message to its members' devices but alice's).
            for _ in 0..<300 where a.supervisor.stats.activeThreads.load(ordering: .relaxed) == 0 { try await Task.sleep(for: .milliseconds(50)) }
            #expect(a.supervisor.stats.activeThreads.load(ordering: .relaxed) > 0, "node A loaded the thread to catch up")
            _ = try await bob.send(thread, "after the outage").get()
            _ = try await bob.emit("chat:typing:start", .object(["threadId": .string(thread)])).get()
            try await Task.sleep(for: .milliseconds(1000))
            let got = alice.events().filter { $0.name.hasPrefix("chat:message") || $0.name.hasPrefix("chat:typing") }.map(\.name)
            #expect(got.isEmpty, "alice's device left the thread: \(got)")
        }
    }

    /// The other side of that rule: a leave lasts until the user is removed. A device that left a thread, whose user
    /// was removed (on its node: applied there) and then added again while its node was not listening, is back in the
    /// room after the catch-up: the removal put it back (the catch-up's greeting alone would have kept it out; found by
    /// a review).
    @Test func aDeviceThatLeftIsBackInTheRoomWhenItsUserWasRemovedAndAddedAgainDuringAnOutage() async throws {
        try await Self.withNodeOfItsOwnRole(idleSeconds: 0.2) { a, b, role, admin in
            let alice = try await a.connect("alice")
            let bob = try await b.connect("bob")
            let thread = try await b.thread(["alice", "carol"], by: "bob")
            _ = try await bob.send(thread, "before the leave").get()
            _ = try await alice.next("chat:message", timeout: .seconds(10))
            _ = try await alice.emit("chat:leave", .object(["threadId": .string(thread)])).get()
            let bobPrincipal = b.principal("bob"), alicePrincipal = a.principal("alice")
            // alice leaves the thread on node A, whose actor applies the removal; then node A unloads the thread.
            _ = try await a.supervisor.withThread(thread, as: alicePrincipal) { actor throws(ChatError) in try await actor.removeMember("alice", by: alicePrincipal) }
            for _ in 0..<100 where a.supervisor.stats.activeThreads.load(ordering: .relaxed) > 0 {
                await a.supervisor.passivateIdle()
                try await Task.sleep(for: .milliseconds(50))
            }
            #expect(a.supervisor.stats.activeThreads.load(ordering: .relaxed) == 0)

            try await admin("ALTER ROLE \(role) NOLOGIN")
            try await admin("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '\(role)'")
            try await Task.sleep(for: .milliseconds(500))
            _ = try await b.supervisor.withThread(thread, as: bobPrincipal) { actor throws(ChatError) in try await actor.addMembers(["alice"], by: bobPrincipal) }
            _ = alice.events()
            try await admin("ALTER ROLE \(role) LOGIN")
            for _ in 0..<300 where a.supervisor.stats.activeThreads.load(ordering: .relaxed) == 0 { try await Task.sleep(for: .milliseconds(50)) }
            _ = try await bob.send(thread, "after the outage").get()
            let event = try await alice.next("chat:message", timeout: .seconds(10)) { $0["message"]?["content"] == .string("after the outage") }
            #expect(event["message"]?["threadId"] == .string(thread))
        }
    }

    /// A read mark committed on another node while this node's feed was cut off (a PostgreSQL restart), after the
    /// thread's actor here retired on a failed write: the next actor tells this node's sender of it. Its snapshot holds
    /// the mark already and nothing of the thread was missed, so before, the receipt was taken as told (it is at or
    /// below the position the retired actor fanned out) and the sender's device here never got it. (Found by an outside
    /// probe: after a PostgreSQL restart, one node's sender sockets missed `chat:read` notices, 3 runs in 8.)
    @Test func aReceiptCommittedWhileANodeWasCutOffIsToldByItsNextActor() async throws {
        try await Self.withNodeOfItsOwnRole { a, b, role, admin in
            let sender = try await a.connect("alice")
            let reader = try await b.connect("bob")
            let thread = try await a.thread(["bob"], by: "alice")
            var ids: [String] = []
            for i in 1...20 { ids.append(try await sender.send(thread, "m\(i)").get()["message"]?["id"]?.stringValue ?? "") }
            _ = try await reader.emit("chat:mark-read", .object(["threadId": .string(thread), "upToSeq": .int(5)])).get()
            let first = try await sender.next("chat:read", timeout: .seconds(10))
            #expect(first["messageIds"] == .array(ids[0..<5].map { .string($0) }))

            // Node A stops hearing; alice's send there fails, and the thread's actor on A retires.
            try await Self.cutOff(a, role: role, admin: admin, after: sender, in: thread)
            // Bob reads up to 15 on B meanwhile; A does not hear of it.
            _ = try await reader.emit("chat:mark-read", .object(["threadId": .string(thread), "upToSeq": .int(15)])).get()

            // A hears again; alice's next send there loads the thread.
            try await admin("ALTER ROLE \(role) LOGIN")
            var sent = false
            for _ in 0..<100 where !sent {
                sent = (try? await sender.send(thread, "after the outage").get()) != nil
                if !sent { try await Task.sleep(for: .milliseconds(200)) }
            }
            #expect(sent)
            let read = try await sender.next("chat:read", timeout: .seconds(10)) { $0["userId"] == .string("bob") }
            #expect(read["messageIds"] == .array(ids[5..<15].map { .string($0) }), "told once, from where the retired actor left")
            #expect((try? await sender.next("chat:read", timeout: .milliseconds(500))) == nil, "nothing told twice")
        }
    }

    /// A member added on another node (or on this one), and greeted on this node, a moment before this node was cut
    /// off (a PostgreSQL restart), after which the thread's actor here retired on a failed write: the catch-up after
    /// the outage names every member added since a margin before it, and greeted her again (found by an outside
    /// probe: members added about ten seconds before a restart got `chat:thread:created` twice). A member added during
    /// the outage is greeted once.
    @Test(arguments: [false, true])
    func aMemberGreetedJustBeforeANodeWasCutOffIsNotGreetedAgainByTheCatchUp(addedHere: Bool) async throws {
        try await Self.withNodeOfItsOwnRole { a, b, role, admin in
            let alice = try await a.connect("alice"), carol = try await a.connect("carol"), dave = try await a.connect("dave")
            let thread = try await b.thread(["alice"], by: "bob")
            let adder = addedHere ? a : b
            _ = try await adder.supervisor.perform(.addMembers(thread, ["carol"]), as: adder.principal(addedHere ? "alice" : "bob"), device: nil)
            _ = try await carol.next("chat:thread:created", timeout: .seconds(10))

            // Node A stops hearing; alice's send there fails, and the thread's actor on A retires.
            try await Self.cutOff(a, role: role, admin: admin, after: alice, in: thread)
            // Dave is added on B meanwhile; A does not hear of it.
            _ = try await b.supervisor.perform(.addMembers(thread, ["dave"]), as: b.principal("bob"), device: nil)

            // A hears again and catches up.
            try await admin("ALTER ROLE \(role) LOGIN")
            _ = try await dave.next("chat:thread:created", timeout: .seconds(30))
            #expect((try? await dave.next("chat:thread:created", timeout: .seconds(1))) == nil, "dave is greeted once")
            #expect(
                (try? await carol.next("chat:thread:created", timeout: .milliseconds(500))) == nil,
                "carol, greeted before the outage, is not greeted again: \(carol.events().map(\.name))")
        }
    }

    /// A thread whose activation was under way when its node heard again after an outage, from a snapshot read before
    /// a message another node committed meanwhile, and done before the node's catch-up asked what it missed: the
    /// catch-up skipped it as active, and the re-read of active threads had missed it as loading, so its devices
    /// did not get the message until the thread's next event (found by a review).
    @Test func aThreadThatFinishesLoadingDuringTheCatchUpOfAnOutageGetsWhatWasMissed() async throws {
        try await Self.withNodeOfItsOwnRole(idleSeconds: 0.2, gated: true) { a, b, gates, role, admin in
            let gates = try #require(gates)
            let alice = try await a.connect("alice")
            let bob = try await b.connect("bob")
            let thread = try await b.thread(["alice"], by: "bob")
            _ = try await bob.send(thread, "before the outage").get()
            _ = try await alice.next("chat:message", timeout: .seconds(10))
            for _ in 0..<100 where a.supervisor.stats.activeThreads.load(ordering: .relaxed) > 0 {
                await a.supervisor.passivateIdle()
                try await Task.sleep(for: .milliseconds(50))
            }
            #expect(a.supervisor.activeActor(for: thread) == nil)
            _ = alice.events()

            // Node A reads the thread's snapshot (at seq 1), and holds it.
            gates.loads.close()
            let load = Task { () -> String in
                do {
                    _ = try await a.supervisor.withThread(thread, as: a.principal("alice")) { actor throws(ChatError) in try await actor.summary(for: "alice") }
                    return "loaded"
                } catch { return "\(error)" }
            }
            for _ in 0..<3000 where gates.loads.waiting == 0 { try await Task.sleep(for: .milliseconds(10)) }
            if gates.loads.waiting == 0 {
                gates.loads.open()
                Issue.record("node A did not read the thread: \(await load.value)")
                return
            }
            // Node A stops hearing; bob's message is committed meanwhile.
            try await admin("ALTER ROLE \(role) NOLOGIN")
            try await admin("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '\(role)'")
            try await Task.sleep(for: .milliseconds(500))
            _ = try await bob.send(thread, "during the outage").get()
            // Node A hears again; its catch-up has read what it missed when the thread becomes active.
            gates.missedReads.close()
            try await admin("ALTER ROLE \(role) LOGIN")
            for _ in 0..<600 where gates.missedReads.waiting == 0 { try await Task.sleep(for: .milliseconds(50)) }
            #expect(gates.missedReads.waiting > 0, "node A's catch-up asked what it missed")
            gates.loads.open()
            // Active, not waited for whole: the command's own read may wait for the catch-up.
            for _ in 0..<1000 where a.supervisor.activeActor(for: thread) == nil { try await Task.sleep(for: .milliseconds(10)) }
            #expect(a.supervisor.activeActor(for: thread) != nil)
            gates.missedReads.open()
            // Generous: on a loaded machine (CI runs the suites in parallel on two cores) the catch-up once took longer
            // than 10 s.
            let event = try await alice.next("chat:message", timeout: .seconds(30)) { $0["message"]?["content"] == .string("during the outage") }
            #expect(event["message"]?["seq"] == .int(2))
            _ = await load.value
        }
    }

    /// A batch whose connection the database cut (an administrator's terminate, a fast shutdown: SQLSTATE 57P01) fails
    /// whole, at once: that says nothing about its units. (Taken for a refusal of their data, the batch was committed
    /// again unit by unit, each waiting out the commit deadline for a connection the database no longer let in: eight
    /// sends were answered after eight deadlines; found by a review.)
    @Test func aBatchWhoseConnectionTheDatabaseCutFailsAtOnce() async throws {
        // A deadline of 4 s: 2 s was passed by a send on a loaded machine (the suites run in parallel).
        try await Self.withNodeOfItsOwnRole(gated: false, commitTimeout: .seconds(4), committers: 1) { a, _, _, role, admin in
            let alice = try await a.connect("alice")
            var made: [ThreadID] = []
            for _ in 0..<9 { made.append(try await a.thread(["bob"], by: "alice")) }
            let threads = made
            // The first send holds the only committer (its thread's row is held) while the other eight gather behind
            // it; once it is let through, the eight go in one batch, which waits for their rows.
            let first = try await Self.holdingThreadRows([threads[0]])
            let rest = try await Self.holdingThreadRows(Array(threads.dropFirst()))
            let firstSend = Task { await alice.send(threads[0], "first") }
            try await Task.sleep(for: .milliseconds(200))
            var sends: [Task<Result<JSONValue, ChatError>, Never>] = []
            for thread in threads.dropFirst() { sends.append(Task { await alice.send(thread, "batched") }) }
            try await Task.sleep(for: .milliseconds(200))
            first.release.open()
            try await first.held.value
            _ = try await firstSend.value.get()
            try await Task.sleep(for: .milliseconds(300))

            try await admin("ALTER ROLE \(role) NOLOGIN")
            let cut = ContinuousClock.now
            try await admin("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '\(role)'")
            var refused = 0
            for send in sends { if case .failure = await send.value { refused += 1 } }
            let answered = ContinuousClock.now - cut
            rest.release.open()
            try await rest.held.value
            try await admin("ALTER ROLE \(role) LOGIN")
            #expect(refused == 8, "no send of the cut batch was acknowledged")
            #expect(answered < .seconds(4), "the eight sends were answered \(answered) after their connection was cut, not at once")
        }
    }

    /// Holds `threads`' rows in a transaction of the test's own (their commits wait) until `release` opens; `held` ends
    /// once the transaction has.
    static func holdingThreadRows(_ threads: [ThreadID]) async throws -> (held: Task<Void, any Error>, release: TestGate) {
        let release = TestGate(open: false), locked = TestGate(open: false)
        let held = Task {
            let logger = Logger(label: "test")
            try await BinaryArrayColumnTests.withConnection { db in
                _ = try await db.query("BEGIN", logger: logger)
                _ = try await db.query("SELECT 1 FROM chat.threads WHERE id = ANY(\(threads)) FOR UPDATE", logger: logger)
                locked.open()
                await release.pass()
                _ = try await db.query("COMMIT", logger: logger)
            }
        }
        await locked.pass()
        return (held, release)
    }

    /// Runs `body` with two nodes on the test database: `a` connects as a role of its own (member of the test's user),
    /// which `admin` (SQL as the test's user) can refuse logins to make `a` stop hearing; `b` as the test's user. The
    /// nodes are stopped and the role dropped afterwards, whatever `body` did.
    static func withNodeOfItsOwnRole(
        idleSeconds: Double? = nil,
        _ body: (_ a: ChatTestBroker, _ b: ChatTestBroker, _ role: String, _ admin: @escaping @Sendable (String) async throws -> Void) async throws -> Void
    ) async throws {
        try await withNodeOfItsOwnRole(idleSeconds: idleSeconds, gated: false) { a, b, _, role, admin in try await body(a, b, role, admin) }
    }

    /// Cuts node `a` (its own `role`) off the database, then has `sender`'s send there fail, and waits for the thread's
    /// actor on `a` to retire after that store failure.
    static func cutOff(
        _ a: ChatTestBroker, role: String, admin: @Sendable (String) async throws -> Void, after sender: TestDevice, in thread: ThreadID
    ) async throws {
        try await admin("ALTER ROLE \(role) NOLOGIN")
        try await admin("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '\(role)'")
        let failed = await sender.send(thread, "during the outage")
        #expect((try? failed.get()) == nil, "the send on the node cut off fails: \(failed)")
        for _ in 0..<500 where a.supervisor.activeActor(for: thread) != nil { try await Task.sleep(for: .milliseconds(10)) }
        #expect(a.supervisor.activeActor(for: thread) == nil, "the actor retired after the store failure")
    }

    /// `withNodeOfItsOwnRole`, with `a`'s store behind gates (`GatedClusterStore`) when `gated`, and giving its commits
    /// `commitTimeout` and `committers`.
    static func withNodeOfItsOwnRole(
        idleSeconds: Double? = nil, gated: Bool, commitTimeout: Duration = .seconds(5), committers: Int = 2,
        _ body: (
            _ a: ChatTestBroker, _ b: ChatTestBroker, _ gates: GatedClusterStore?, _ role: String, _ admin: @escaping @Sendable (String) async throws -> Void
        ) async throws -> Void
    ) async throws {
        let base = try DatabaseURL(testDatabaseURL ?? "")
        let role = "chat_node_\(UUID().uuidString.prefix(8).lowercased())"
        let password = "pw-\(role)"
        let admin: @Sendable (String) async throws -> Void = { sql in
            try await BinaryArrayColumnTests.withConnection { db in _ = try await db.query(PostgresQuery(unsafeSQL: sql), logger: Logger(label: "test")) }
        }
        try await admin("CREATE ROLE \(role) LOGIN PASSWORD '\(password)' IN ROLE \(base.user)")
        var roleURL = base
        roleURL.user = role
        roleURL.password = password
        let company = "acme-\(UUID().uuidString.prefix(8))"
        var nodes: [ChatTestBroker] = []
        var runs: [Task<Void, Never>] = []
        let outcome: Result<Void, any Error>
        do {
            // The base user's store opens first, so that a migration this run brings is made by it (a table the
            // test's role made would be its own, and other tests could not use it).
            let bStore = try await PostgresMessageStore.open(url: base, durability: .process)
            let aStore = try await PostgresMessageStore.open(url: roleURL, durability: .process, commitTimeout: commitTimeout, committers: committers)
            let gates = gated ? GatedClusterStore(base: aStore) : nil
            nodes.append(ChatTestBroker(store: gates ?? aStore, company: company) {
                if let idleSeconds { $0.idleSeconds = idleSeconds }
            })
            nodes.append(ChatTestBroker(store: bStore, company: company))
            for node in nodes { runs.append(Task { await node.supervisor.run() }) }
            try await body(nodes[0], nodes[1], gates, role, admin)
            outcome = .success(())
        } catch {
            outcome = .failure(error)
        }
        for run in runs { run.cancel() }
        for run in runs { await run.value }
        for node in nodes { await node.close() }
        try? await admin("ALTER ROLE \(role) LOGIN")
        try? await admin("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '\(role)'")
        try? await admin("DROP ROLE \(role)")
        try outcome.get()
    }

    /// The member-change catch-up scenario: carol, dave and erin on node `a` (which connects as `role`), alice on node
    /// `b`; a thread of alice, carol and dave whose first message (m0) `a` delivers; then `beforeOutage`, and `a` stops
    /// hearing (its connections are cut and cannot come back) while `b` sends m1–m3, removes dave, sends m4–m6, adds
    /// erin and sends m7–m9. Node `a` may log in again when this returns.
    private static func memberChangesWhileNotListening(
        a: ChatTestBroker, b: ChatTestBroker, role: String, admin: (String) async throws -> Void,
        beforeOutage: () async throws -> Void = {}
    ) async throws -> (carol: TestDevice, dave: TestDevice, erin: TestDevice, thread: ThreadID) {
        let carol = try await a.connect("carol"), dave = try await a.connect("dave"), erin = try await a.connect("erin")
        let alice = try await b.connect("alice")
        let thread = try await b.thread(["carol", "dave"], by: "alice")
        _ = try await alice.send(thread, "m0").get()
        for device in [carol, dave] {
            _ = try await device.next("chat:message", timeout: .seconds(10)) { $0["message"]?["seq"] == .int(1) }
        }
        try await beforeOutage()
        for device in [carol, dave, erin] { _ = device.events() }

        try await admin("ALTER ROLE \(role) NOLOGIN")
        try await admin("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '\(role)'")
        try await Task.sleep(for: .milliseconds(500))
        for n in 1...3 { _ = try await alice.send(thread, "m\(n)").get() }
        _ = try await b.supervisor.withThread(thread, as: b.principal("alice")) { actor throws(ChatError) in
            try await actor.removeMember("dave", by: b.principal("alice"))
        }
        for n in 4...6 { _ = try await alice.send(thread, "m\(n)").get() }
        _ = try await b.supervisor.withThread(thread, as: b.principal("alice")) { actor throws(ChatError) in
            try await actor.addMembers(["erin"], by: b.principal("alice"))
        }
        for n in 7...9 { _ = try await alice.send(thread, "m\(n)").get() }
        try await Task.sleep(for: .milliseconds(300))
        return (carol, dave, erin, thread)
    }

    /// The messages' contents among `events`.
    private static func contents(_ events: [(name: String, data: JSONValue)]) -> [String] {
        events.filter { $0.name == "chat:message" }.compactMap { $0.data["message"]?["content"]?.stringValue }
    }

    /// What `memberChangesWhileNotListening` must leave after node `a` caught up: dave got what was sent before his
    /// removal, erin what was sent after her addition (less what the test took), and one `chat:thread:created`.
    private static func expectChangesAtTheirPlaces(dave: TestDevice, erin: TestDevice) {
        #expect(contents(dave.events()) == ["m1", "m2", "m3"], "dave was removed after m3")
        let erinEvents = erin.events()
        #expect(contents(erinEvents) == ["m7", "m8", "m9"], "erin was added after m6")
        #expect(erinEvents.filter { $0.name == "chat:thread:created" }.count == 1, "erin is told of the thread once")
    }

    /// A node that did not hear a thread's member changes (its LISTEN connection was down) applies them at their places
    /// when it catches up, as if their announcements had arrived: a member removed meanwhile gets the messages sent
    /// before the removal, one added meanwhile none of them. Found by an outside probe (7 of 7 runs): the catch-up
    /// took the store's newest members list first, so the removed member got none of them and the added one all.
    @Test func memberChangesMissedWhileNotListeningApplyAtTheirPlaces() async throws {
        try await Self.withNodeOfItsOwnRole { a, b, role, admin in
            let (carol, dave, erin, _) = try await Self.memberChangesWhileNotListening(a: a, b: b, role: role, admin: admin)
            // Node A listens again and catches up.
            try await admin("ALTER ROLE \(role) LOGIN")
            _ = try await carol.next("chat:message", timeout: .seconds(15)) { $0["message"]?["seq"] == .int(10) }
            try await Task.sleep(for: .milliseconds(500))
            Self.expectChangesAtTheirPlaces(dave: dave, erin: erin)
        }
    }

    /// The same for a thread that is not active on the node when it listens again (it went idle before the outage):
    /// the activation that delivers what was missed puts the members back as they were where the node's devices
    /// stood, and replays the logged changes at their places. Left open by the twenty-sixth session: the thread was
    /// loaded with its current members, so dave got none of m1–m3 and erin all of m1–m9.
    @Test func memberChangesMissedByAnInactiveThreadApplyAtTheirPlaces() async throws {
        try await Self.withNodeOfItsOwnRole(idleSeconds: 0.2) { a, b, role, admin in
            let (carol, dave, erin, _) = try await Self.memberChangesWhileNotListening(a: a, b: b, role: role, admin: admin) {
                // The thread goes idle on node A.
                try await Task.sleep(for: .milliseconds(400))
                for _ in 0..<100 where a.supervisor.stats.activeThreads.load(ordering: .relaxed) > 0 {
                    _ = await a.supervisor.passivateIdle()
                    try await Task.sleep(for: .milliseconds(50))
                }
                #expect(a.supervisor.stats.activeThreads.load(ordering: .relaxed) == 0)
            }
            try await admin("ALTER ROLE \(role) LOGIN")
            _ = try await carol.next("chat:message", timeout: .seconds(15)) { $0["message"]?["seq"] == .int(10) }
            try await Task.sleep(for: .milliseconds(500))
            #expect(Self.contents(carol.events()) == (1...8).map { "m\($0)" }, "m9 was taken above")
            Self.expectChangesAtTheirPlaces(dave: dave, erin: erin)
        }
    }

    /// A member change this node heard and applied before its actor went idle is not replayed when a later message of
    /// another node activates the thread again: the activation rewinds only the changes after where the node's
    /// devices stood. Found by a review of the rewind's first version (from that position on): the change at the
    /// position itself was replayed, and the added member was told of the thread a second time.
    @Test func aMemberChangeHeardBeforeTheThreadWentIdleIsNotReplayed() async throws {
        try await Self.withNodeOfItsOwnRole(idleSeconds: 0.2) { a, b, _, _ in
            let carol = try await a.connect("carol"), erin = try await a.connect("erin")
            let alice = try await b.connect("alice")
            let thread = try await b.thread(["carol"], by: "alice")
            _ = try await alice.send(thread, "m1").get()
            _ = try await carol.next("chat:message", timeout: .seconds(10)) { $0["message"]?["seq"] == .int(1) }
            _ = try await b.supervisor.withThread(thread, as: b.principal("alice")) { actor throws(ChatError) in
                try await actor.addMembers(["erin"], by: b.principal("alice"))
            }
            _ = try await erin.next("chat:thread:created", timeout: .seconds(10)) { $0["thread"]?["id"] == .string(thread) }
            // The thread goes idle on node A, then node B's next message activates it there again.
            try await Task.sleep(for: .milliseconds(400))
            for _ in 0..<100 where a.supervisor.stats.activeThreads.load(ordering: .relaxed) > 0 {
                _ = await a.supervisor.passivateIdle()
                try await Task.sleep(for: .milliseconds(50))
            }
            #expect(a.supervisor.stats.activeThreads.load(ordering: .relaxed) == 0)
            _ = try await alice.send(thread, "m2").get()
            _ = try await erin.next("chat:message", timeout: .seconds(10)) { $0["message"]?["content"] == .string("m2") }
            try await Task.sleep(for: .milliseconds(300))
            #expect(erin.events().filter { $0.name == "chat:thread:created" }.isEmpty, "erin was told of the thread once, when she was added")
        }
    }

    /// The same when the node learns of the changes from a send of its own that the store refuses (its members
    /// version is old), before its LISTEN connection is back: the reload reads the log and applies them at their
    /// places. Found by an outside probe (3 of 3 runs, about 100 events off): the reload dropped the removed member
    /// and added the new one before fanning out what it had missed.
    @Test func memberChangesLearnedFromARefusedSendApplyAtTheirPlaces() async throws {
        try await Self.withNodeOfItsOwnRole { a, b, role, admin in
            let (carol, dave, erin, thread) = try await Self.memberChangesWhileNotListening(a: a, b: b, role: role, admin: admin)
            // Node A may log in again; carol sends at once, before its LISTEN connection is re-established.
            try await admin("ALTER ROLE \(role) LOGIN")
            _ = try await carol.send(thread, "c1").get()
            _ = try await erin.next("chat:message", timeout: .seconds(15)) { $0["message"]?["content"] == .string("c1") }
            try await Task.sleep(for: .milliseconds(500))
            Self.expectChangesAtTheirPlaces(dave: dave, erin: erin)
        }
    }

    /// The same when the LISTEN connection comes back while that send's reload runs: the listener's catch-up
    /// (`resynchronize`, fired here a few times around the send, as a reconnection does) and the reload each read the
    /// log. Seen in CI (and in 8 of 12 runs with the send timed at the listener's reconnection): the two raced, and
    /// the store's newest list was taken first (dave got none of m1–m3, erin all of m1–m9).
    @Test func memberChangesLearnedFromARefusedSendWhileTheListenerCatchesUp() async throws {
        try await Self.withNodeOfItsOwnRole { a, b, role, admin in
            let (carol, dave, erin, thread) = try await Self.memberChangesWhileNotListening(a: a, b: b, role: role, admin: admin)
            let actor = try #require(a.supervisor.activeActor(for: thread))
            try await admin("ALTER ROLE \(role) LOGIN")
            async let sent = carol.send(thread, "c1")
            var catchUps: [Task<Void, Never>] = []
            for _ in 0..<6 {
                catchUps.append(Task { await actor.resynchronize() })
                try await Task.sleep(for: .milliseconds(10))
            }
            _ = try await sent.get()
            for catchUp in catchUps { await catchUp.value }
            _ = try await erin.next("chat:message", timeout: .seconds(15)) { $0["message"]?["content"] == .string("c1") }
            try await Task.sleep(for: .milliseconds(500))
            Self.expectChangesAtTheirPlaces(dave: dave, erin: erin)
        }
    }

    /// The scenario of `threadsWrittenWhileANodeWasNotListeningArriveWhenItListensAgain`: node `a` connects as `role`.
    private static func missedWhileNotListening(
        a: ChatTestBroker, b: ChatTestBroker, role: String, admin: (String) async throws -> Void
    ) async throws {
        let alice = try await a.connect("alice")
        let bob = try await b.connect("bob")
        func message(_ thread: ThreadID, _ seq: Int) async throws -> String? {
            let event = try await alice.next("chat:message", timeout: .seconds(10)) {
                $0["message"]?["threadId"] == .string(thread) && $0["message"]?["seq"] == .int(seq)
            }
            return event["message"]?["content"]?.stringValue
        }

        // Heard live on node A: t1 (three messages) and t2 (two), and t4, which alice is not a member of yet.
        let t1 = try await b.thread(["alice"], by: "bob")
        let t2 = try await b.thread(["alice"], by: "bob")
        let t4 = try await b.thread(["carol"], by: "bob")
        var t1Ids: [String] = []
        for n in 1...3 { t1Ids.append(try await bob.send(t1, "t1-\(n)").get()["message"]?["id"]?.stringValue ?? "") }
        for n in 1...2 { _ = try await bob.send(t2, "t2-\(n)").get() }
        _ = try await bob.send(t4, "t4-1").get()
        for n in 1...3 { #expect(try await message(t1, n) == "t1-\(n)") }
        for n in 1...2 { #expect(try await message(t2, n) == "t2-\(n)") }
        // The threads go inactive on node A. Node A forgets t2's position, as it does a minute after the last batch
        // it heard; t2's messages are then older than the hearing margin (10 s) when the outage starts.
        try await Task.sleep(for: .seconds(14))
        for _ in 0..<100 where a.supervisor.stats.activeThreads.load(ordering: .relaxed) > 0 {
            await a.supervisor.passivateIdle()
            try await Task.sleep(for: .milliseconds(50))
        }
        #expect(a.supervisor.stats.activeThreads.load(ordering: .relaxed) == 0)
        a.supervisor.announced.withLock { $0[t2] = nil }
        _ = alice.events()

        // The outage: node A's connections are cut and cannot come back.
        try await admin("ALTER ROLE \(role) NOLOGIN")
        try await admin("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '\(role)'")
        try await Task.sleep(for: .milliseconds(500))
        for n in 4...5 { _ = try await bob.send(t1, "t1-\(n)").get() }
        _ = try await bob.emit("chat:edit", .object(["threadId": .string(t1), "messageId": .string(t1Ids[0]), "content": .string("t1-1 edited")])).get()
        _ = try await bob.send(t2, "t2-3").get()
        let t3 = try await b.thread(["alice"], by: "bob")
        _ = try await bob.send(t3, "t3-1").get()
        _ = try await b.supervisor.withThread(t4, as: b.principal("bob")) { actor throws(ChatError) in try await actor.addMembers(["alice"], by: b.principal("bob")) }
        _ = try await bob.send(t4, "t4-2").get()
        try await Task.sleep(for: .milliseconds(300))
        #expect(alice.events().filter { $0.name.hasPrefix("chat:") }.isEmpty, "node A heard nothing during the outage")

        // Node A listens again and delivers what it missed, from where alice's device stood.
        try await admin("ALTER ROLE \(role) LOGIN")
        var received: [(name: String, data: JSONValue)] = []
        func seen(_ thread: ThreadID) -> [String] {
            received.compactMap { event -> String? in
                let data = event.data
                switch event.name {
                case "chat:message" where data["message"]?["threadId"] == .string(thread):
                    return "message \(data["message"]?["seq"]?.intValue ?? -1)"
                case "chat:message:edited" where (data["threadId"] ?? data["message"]?["threadId"]) == .string(thread):
                    return "edited \(data["seq"]?.intValue ?? -1)"
                case "chat:thread:created" where data["thread"]?["id"] == .string(thread):
                    return "created"
                default:
                    return nil
                }
            }
        }
        let clock = ContinuousClock()
        let deadline = clock.now + .seconds(15)
        while clock.now < deadline && (seen(t1).count < 3 || seen(t2).isEmpty || seen(t3).count < 2 || seen(t4).count < 2) {
            try await Task.sleep(for: .milliseconds(50))
            received += alice.events()
        }
        // Anything delivered twice would come now.
        try await Task.sleep(for: .milliseconds(500))
        received += alice.events()
        #expect(seen(t1) == ["message 4", "message 5", "edited 6"])
        #expect(seen(t2) == ["message 3"], "from the last event stored before the outage: no message of before comes again")
        #expect(seen(t3).filter { $0 != "created" } == ["message 1"] && seen(t3).filter { $0 == "created" }.count == 1)
        #expect(seen(t4).filter { $0 != "created" } == ["message 2"] && seen(t4).filter { $0 == "created" }.count == 1)
    }

    /// Two nodes that both keep one chunk of 4 events in memory: the messages one node wrote are released on the other
    /// too, and an edit, a delete, receipts, unread counts and tempId retries of those old messages stay exact across
    /// the nodes (the applying node asks the store about messages its index no longer holds).
    @Test func releasedMessagesStayExactAcrossNodes() async throws {
        let (nodes, stop) = try await Self.nodes(2, configure: StoreConformance.releasing)
        let (a, b) = (nodes[0], nodes[1])
        let company = a.company
        let thread = try await a.thread(["bob"], by: "alice", company: company)
        let alice = try await a.connect("alice", company: company)
        let aliceOnB = try await b.connect("alice", company: company)
        let bob = try await b.connect("bob", company: company)
        var ids: [String] = []
        for n in 1...40 { ids.append(try await alice.send(thread, "m\(n)", tempId: "t\(n)").get()["message"]?["id"]?.stringValue ?? "") }
        #expect(try await Self.collect(bob, count: 40) == Array(1...40))
        for node in [a, b] {
            let stats = node.supervisor.stats
            for _ in 0..<300 where stats.historyChunksReleased.load(ordering: .relaxed) < 6 { try await Task.sleep(for: .milliseconds(10)) }
            #expect(stats.historyChunksReleased.load(ordering: .relaxed) >= 6, "old chunks are released on both nodes")
        }

        // A delete on node A of a message both nodes released: node B applies it and shows it.
        _ = try await alice.emit("chat:delete", .object(["threadId": .string(thread), "messageId": .string(ids[2])])).get()
        let deleted = try await bob.next("chat:message:deleted")
        #expect(deleted["seq"] == .int(41) && deleted["messageId"] == .string(ids[2]))
        // An edit on node B of another old message: node A applies it.
        _ = try await aliceOnB.emit("chat:edit", .object(["threadId": .string(thread), "messageId": .string(ids[3]), "content": .string("m4 edited")])).get()
        let edited = try await alice.next("chat:message:edited")
        #expect(edited["seq"] == .int(42) && edited["message"]?["content"] == .string("m4 edited"))
        let page = try await bob.emit("chat:history", .object(["threadId": .string(thread), "beforeSeq": .int(6), "limit": .int(5)])).get()
        #expect(page["messages"]?.arrayValue?.map { $0["content"]?.stringValue ?? "?" } == ["m1", "m2", "", "m4 edited", "m5"])

        // Bob's unread count on node B, and his read receipt reaching alice on node A with exactly the ids read.
        let bobOnB = Principal(userId: "bob", companyId: company)
        #expect(try await b.supervisor.listThreads(as: bobOnB).first?.unreadCount == 39)
        _ = try await bob.emit("chat:mark-read", .object(["threadId": .string(thread), "upToSeq": .int(10)])).get()
        let read = try await alice.next("chat:read") { $0["userId"] == .string("bob") }
        #expect(read["messageIds"]?.arrayValue?.compactMap(\.stringValue) == (0..<10).filter { $0 != 2 }.map { ids[$0] })
        #expect(try await b.supervisor.listThreads(as: bobOnB).first?.unreadCount == 30)

        // Retries of old sends on either node answer the original and take no seq.
        let retryA = try await alice.send(thread, "again", tempId: "t5").get()
        let retryB = try await aliceOnB.send(thread, "again", tempId: "t6").get()
        #expect(retryA["message"]?["seq"] == .int(5) && retryB["message"]?["seq"] == .int(6))
        #expect(try await alice.send(thread, "m43", tempId: "t43").get()["message"]?["seq"] == .int(43))

        for device in [alice, aliceOnB, bob] { await device.disconnect() }
        await stop()
    }

    /// A group commit that holds a send in one thread and an edit or delete in another (the rows go in by their own
    /// statement, before the edits): stored and acknowledged, while another node is alive (its notices carry the
    /// events). It used to stop the process (postgres-nio's command tag asked before the statement had completed).
    @Test(arguments: [Durability.full, .process]) func aBatchWithASendAndAnEditOfAnotherThreadCommits(durability: Durability) async throws {
        let (nodes, stop) = try await Self.nodes(2, durability: durability)
        let company = nodes[0].company
        let first = try await nodes[0].thread(["bob"], by: "alice", company: company)
        let second = try await nodes[0].thread(["bob"], by: "alice", company: company)
        let alice = try await nodes[0].connect("alice", company: company)
        let other = try await nodes[0].connect("alice", company: company)
        let watcher = try await nodes[1].connect("bob", company: company)
        let id = try #require(try await alice.send(second, "to edit").get()["message"]?["id"]?.stringValue)
        for n in 0..<30 {
            async let sent = alice.send(first, "m\(n)")
            async let edited = other.emit(
                n == 29 ? "chat:delete" : "chat:edit",
                .object(["threadId": .string(second), "messageId": .string(id), "content": .string("e\(n)")]))
            let (s, e) = await (sent, edited)
            _ = try s.get()
            _ = try e.get()
        }
        var seqs: [Int] = []
        for _ in 0..<30 {
            let event = try await watcher.next("chat:message", timeout: .seconds(10)) { $0["threadId"] == .string(first) }
            seqs.append(event["message"]?["seq"]?.intValue ?? -1)
        }
        #expect(seqs == Array(1...30), "the sends reach the other node, in order")
        await stop()
    }

    @Test func editsAndSendsOfTwoNodesInOneThreadKeepOneOrder() async throws {
        let (nodes, stop) = try await Self.nodes(2)
        let company = nodes[0].company
        let thread = try await nodes[0].thread(["bob"], by: "alice", company: company)
        let alice = try await nodes[0].connect("alice", company: company)
        let bob = try await nodes[1].connect("bob", company: company)
        let watcher = try await nodes[1].connect("alice", company: company)
        let rounds = 60
        // Alice (node A) sends and edits her own messages while Bob (node B) sends into the same thread.
        async let aliceSide: [Int] = {
            var seqs: [Int] = []
            for n in 0..<rounds {
                let sent = try await alice.send(thread, "a\(n)").get()
                seqs.append(sent["message"]?["seq"]?.intValue ?? -1)
                let id = sent["message"]?["id"]?.stringValue ?? ""
                let edited = try await alice.emit(
                    "chat:edit", .object(["threadId": .string(thread), "messageId": .string(id), "content": .string("a\(n)!")])
                ).get()
                #expect(edited["message"]?["content"] == .string("a\(n)!"))
            }
            return seqs
        }()
        async let bobSide: [Int] = {
            var seqs: [Int] = []
            for n in 0..<rounds { seqs.append(try await bob.send(thread, "b\(n)").get()["message"]?["seq"]?.intValue ?? -1) }
            return seqs
        }()
        let (a, b) = try await (aliceSide, bobSide)
        #expect(Set(a).isDisjoint(with: Set(b)), "no seq acknowledged twice")
        let total = 3 * rounds   // every alice message is followed by its edit
        // Every socket on either node sees 1...total in order, each seq once.
        for device in [alice, watcher] {
            var seen: [Int] = []
            let deadline = ContinuousClock.now + .seconds(15)
            while seen.count < total && ContinuousClock.now < deadline {
                for event in device.events() {
                    if event.name == "chat:message" { seen.append(event.data["message"]?["seq"]?.intValue ?? -1) }
                    if event.name == "chat:message:edited" { seen.append(event.data["seq"]?.intValue ?? -1) }
                }
                try await Task.sleep(for: .milliseconds(20))
            }
            #expect(seen == Array(1...total), "every event once, in seq order, on both nodes")
        }
        await stop()
    }

    /// Notices carry a commit's events when they fit; the receiving node fans them out without reading them back, and
    /// reads back only what did not fit (a message too big for any payload): every message arrives whole, in order.
    @Test func carriedAndReadBackEventsArriveWholeAndInOrder() async throws {
        let (nodes, stop) = try await Self.nodes(2)
        let company = nodes[0].company
        let thread = try await nodes[0].thread(["u1"], by: "u0", company: company)
        let writer = try await nodes[0].connect("u0", company: company)
        let reader = try await nodes[1].connect("u1", company: company)
        var sent: [String] = []
        for n in 0..<40 {
            // Every seventh message is too big for a notice (8,000 bytes): announced by position, read back.
            let content = n % 7 == 3 ? String(repeating: "é\(n)", count: 3_000) : "small \"\(n)\" ✓"
            sent.append(content)
            _ = try await writer.send(thread, content).get()
        }
        var received: [(seq: Int, content: String)] = []
        while received.count < sent.count {
            let event = try await reader.next("chat:message", timeout: .seconds(10))
            received.append((event["message"]?["seq"]?.intValue ?? -1, event["message"]?["content"]?.stringValue ?? ""))
        }
        #expect(received.map(\.seq) == Array(1...sent.count))
        #expect(received.map(\.content) == sent)
        // An edit crosses too, with the message as edited.
        let first = try await writer.emit("chat:history", .object(["threadId": .string(thread), "limit": .int(1)])).get()
        let id = first["messages"]?.arrayValue?.first?["id"]?.stringValue ?? ""
        _ = try await writer.emit("chat:edit", .object(["threadId": .string(thread), "messageId": .string(id), "content": .string("edited")])).get()
        let edited = try await reader.next("chat:message:edited", timeout: .seconds(10))
        #expect(edited["seq"]?.intValue == sent.count + 1 && edited["message"]?["content"]?.stringValue == "edited")
        await stop()
    }

    /// A commit that removes (or adds) a member and stores a message announces the member change first, at the
    /// thread's position before the commit: the writing node applied it in memory before the message became durable
    /// and was fanned out, and the other nodes apply it after the events before the commit and before the commit's
    /// own, so the removed member gets the message on no node (and an added one on every node).
    @Test func aMemberChangeIsAnnouncedBeforeTheMessagesOfItsCommit() throws {
        var rows = BatchPlan.Rows()
        let message = Message(id: "m6", threadId: "t1", seq: 6, senderId: "u", type: .text, content: "after", createdAt: Timestamp(millis: 1_700_000_000_000))
        rows.add(.insertMessage(message), carry: true, company: ["t1": "acme"], before: ["t1": 5])
        rows.add(.removeMember("t1", "rick", membersVersion: 7), carry: true, company: ["t1": "acme"], before: ["t1": 5])
        rows.add(.addMembers("t1", ["una"], membersVersion: 8), carry: true, company: ["t1": "acme"], before: ["t1": 5])
        rows.add(.marks("t1", "u", MemberMarks(deliveredSeq: 6, readSeq: 6)), carry: true, company: ["t1": "acme"], before: ["t1": 5])
        let changes = rows.changes(carry: true)
        #expect(changes.count == 4)
        #expect(changes[0] == .membership("t1", company: "acme", asOf: 5, created: false, added: [], removed: ["rick"], membersVersion: 7))
        #expect(changes[1] == .membership("t1", company: "acme", asOf: 5, created: false, added: ["una"], removed: [], membersVersion: 8))
        #expect(changes[2] == .advanced("t1", first: 6, last: 6, events: [ThreadEvent(seq: 6, kind: .message, message: message)]))
        #expect(changes[3] == .marks("t1", "u", MemberMarks(deliveredSeq: 6, readSeq: 6)))
    }

    /// A members version as drawn for a change survives a notice's JSON exactly (a double holds integers up to 2^53).
    @Test func aMembershipNoticeCarriesItsVersionExactly() throws {
        for _ in 0..<1000 {
            let version = StoreWrite.newMembersVersion()
            let change = ClusterChange.membership("t1", company: "acme", asOf: 3, created: false, added: ["una"], removed: [], membersVersion: version)
            let text = JSONWriter.encode(change.json)
            #expect(ClusterChange(json: try JSONParser.parse(text)) == change)
        }
    }

    /// A notice naming a thread id no thread can have (written by hand by a role that may NOTIFY: empty, over 256
    /// bytes, with U+0000 or not in NFC) is dropped: a node never asks the store about it (PostgreSQL refuses U+0000
    /// in text, and a retried query holding it would fail with the real threads asked about alongside).
    @Test(arguments: ["", String(repeating: "x", count: 257), "a\u{0}b", "cafe\u{301}"])
    func aNoticeNamingAnImpossibleThreadIdIsDropped(id: String) throws {
        for change: ClusterChange in [
            .advanced(id, first: 1, last: 2, events: nil), .marks(id, "u", MemberMarks(deliveredSeq: 1, readSeq: 1)),
            .membership(id, company: "c", asOf: 1, created: false, added: ["u"], removed: []), .typing(id, "u", started: true),
            .emit("c", .thread(id), event: "app:x", data: .null),
        ] {
            #expect(ClusterChange(json: try JSONParser.parse(JSONWriter.encode(change.json))) == nil, "\(change)")
        }
        #expect(ClusterChange(json: try JSONParser.parse(JSONWriter.encode(ClusterChange.typing("t1", "u", started: true).json))) != nil)
    }

    /// A receipt notice says where the watermarks stood before (two more elements, which older nodes ignore), and two
    /// receipts of one member in one batch make one notice from the lower starting point.
    @Test func aReceiptNoticeSaysWhereTheWatermarksStoodBefore() throws {
        let change = ClusterChange.marks("t1", "u", MemberMarks(deliveredSeq: 9, readSeq: 7), from: MemberMarks(deliveredSeq: 4, readSeq: 2))
        let text = JSONWriter.encode(change.json)
        #expect(String(decoding: text, as: UTF8.self) == #"["m","t1","u",9,7,4,2]"#)
        #expect(ClusterChange(json: try JSONParser.parse(text)) == change)
        #expect(ClusterChange(json: try JSONParser.parse(#"["m","t1","u",9,7]"#)) == .marks("t1", "u", MemberMarks(deliveredSeq: 9, readSeq: 7)))
        var rows = BatchPlan.Rows()
        rows.add(.marks("t1", "u", MemberMarks(deliveredSeq: 5, readSeq: 3), from: MemberMarks(deliveredSeq: 4, readSeq: 2)), carry: true, company: [:], before: [:])
        rows.add(.marks("t1", "u", MemberMarks(deliveredSeq: 9, readSeq: 7), from: MemberMarks(deliveredSeq: 5, readSeq: 1)), carry: true, company: [:], before: [:])
        #expect(rows.changes(carry: true) == [.marks("t1", "u", MemberMarks(deliveredSeq: 9, readSeq: 7), from: MemberMarks(deliveredSeq: 4, readSeq: 1))])
    }

    @Test func advancesCarryTheirEventsSplitOverPayloads() throws {
        func message(_ seq: Int, _ content: String) -> Message {
            Message(id: "m\(seq)", threadId: "t1", seq: seq, senderId: "u", type: .text, content: content, createdAt: Timestamp(millis: 1_700_000_000_000 + Int64(seq)), tempId: "tmp-\(seq)")
        }
        var events = (1...200).map { ThreadEvent(seq: $0, kind: .message, message: message($0, "hello \($0) ✓ \"quoted\"")) }
        events[99] = ThreadEvent(seq: 100, kind: .message, message: message(100, String(repeating: "x", count: 9_000)))
        events[149] = ThreadEvent(seq: 150, kind: .edited, message: message(7, "edited"))
        let change = ClusterChange.advanced("t1", first: 1, last: 200, events: events)
        let (payloads, oversized) = ClusterNotice.pack(node: "node-1", changes: [change, .marks("t1", "u", MemberMarks(deliveredSeq: 3, readSeq: 2))])
        #expect(oversized.isEmpty)
        #expect(payloads.count > 1 && payloads.allSatisfy { $0.utf8.count <= ClusterNotice.maxPayload })
        var decoded: [ClusterChange] = []
        for payload in payloads {
            guard case .changes(_, let list) = ClusterNotice.decode(payload) else { Issue.record("undecodable"); return }
            decoded += list
        }
        var carried: [ThreadEvent] = []
        var positionsOnly: [ClosedRange<Int>] = []
        var next = 1
        for case .advanced(let id, let first, let last, let list) in decoded {
            #expect(id == "t1" && first == next, "advances arrive in seq order, without gaps or overlaps")
            next = last + 1
            if let list { carried += list } else { positionsOnly.append(first...last) }
        }
        #expect(next == 201)
        #expect(positionsOnly == [100...100], "only the event too big for a payload is left to be read back")
        #expect(carried == events.filter { $0.seq != 100 }, "every other event arrives exactly as committed")
        #expect(decoded.last == .marks("t1", "u", MemberMarks(deliveredSeq: 3, readSeq: 2)))
        // A node skips its own notices by their first bytes.
        #expect(payloads.allSatisfy { ClusterNotice.isFrom("node-1", $0) })
        #expect(!ClusterNotice.isFrom("node-", payloads[0]) && !ClusterNotice.isFrom("node-10", payloads[0]))
        // Carried events that are not exactly the announced range are not trusted: the range is read back instead.
        let wrong = JSONValue.array([.string("a"), .string("t1"), .int(1), .int(3), .array(events[0..<2].map(\.record))])
        #expect(ClusterChange(json: wrong) == .advanced("t1", first: 1, last: 3, events: nil))
        let otherThread = JSONValue.array([.string("a"), .string("t2"), .int(1), .int(2), .array(events[0..<2].map(\.record))])
        #expect(ClusterChange(json: otherThread) == .advanced("t2", first: 1, last: 2, events: nil))
        // A new message carried at another seq than its own is not trusted either.
        var shifted = events[0]
        shifted.message.seq = 7
        let misplaced = JSONValue.array([.string("a"), .string("t1"), .int(1), .int(1), .array([shifted.record])])
        #expect(ClusterChange(json: misplaced) == .advanced("t1", first: 1, last: 1, events: nil))
        // A node that predates carried events reads the position and ignores the rest.
        let plain = JSONValue.array([.string("a"), .string("t1"), .int(1), .int(2)])
        #expect(ClusterChange(json: plain) == .advanced("t1", first: 1, last: 2))
        // An emit names an `app:` event, as `POST /chat/emit` requires: a notice sent by hand cannot make the nodes
        // deliver a protocol event.
        func emit(_ event: String) -> JSONValue {
            .array([.string("e"), .string("acme"), .array([.string("c")]), .string(event), .object(["x": .int(1)])])
        }
        #expect(ClusterChange(json: emit("app:ping")) == .emit("acme", .company, event: "app:ping", data: .object(["x": .int(1)])))
        #expect(ClusterChange(json: emit("chat:message")) == nil)
        #expect(ClusterChange(json: emit("app:" + String(repeating: "x", count: 300))) == nil)
        // Nor a name the API refuses for its control or invisible characters (found by a review).
        #expect(ClusterChange(json: emit("app:x\r\nforged: line")) == nil)
        #expect(ClusterChange(json: emit("app:a\u{202E}b")) == nil)
    }

    @Test func noticesFitAPayloadAndSplitBigChanges() throws {
        let users = (0..<1_000).map { "user-\($0)-" + String(repeating: "x", count: 20) }
        let changes: [ClusterChange] = [.advanced("t1", first: 1, last: 9), .membership("t1", company: "acme", asOf: 0, created: true, added: users, removed: [])]
            + (0..<500).map { .marks("t\($0)", "u", MemberMarks(deliveredSeq: $0, readSeq: $0)) }
        let (payloads, oversized) = ClusterNotice.pack(node: "node-1", changes: changes)
        #expect(oversized.isEmpty)
        #expect(payloads.count > 1 && payloads.allSatisfy { $0.utf8.count <= ClusterNotice.maxPayload })
        var decoded: [ClusterChange] = []
        for payload in payloads {
            guard case .changes(let node, let list) = ClusterNotice.decode(payload) else { Issue.record("undecodable"); return }
            #expect(node == "node-1")
            decoded += list
        }
        #expect(decoded.first == changes.first)
        var added: [UserID] = []
        for case .membership(_, _, _, let created, let list, _, _) in decoded {
            #expect(created)
            added += list
        }
        #expect(added == users, "a big member list arrives whole, in order, split over payloads")
        // Ids of the longest kind (256 bytes, some escaped in JSON): 100 of them do not fit one payload, and none may go
        // through `chat.broadcasts` (announced after the commit's payloads, so after events of members it adds).
        let long = (0..<100).map { String(format: "%03d", $0) + String(repeating: "\u{1}", count: 40) + String(repeating: "z", count: 213) }
        let removedLong = Array(long.reversed())
        let wide: [ClusterChange] = [.membership("t1", company: "acme", asOf: 4, created: false, added: long, removed: removedLong)]
        let (widePayloads, wideOversized) = ClusterNotice.pack(node: "node-1", changes: wide)
        #expect(wideOversized.isEmpty, "a membership change is split by bytes, never stored as a broadcast")
        #expect(widePayloads.count > 2 && widePayloads.allSatisfy { $0.utf8.count <= ClusterNotice.maxPayload })
        var wideAdded: [UserID] = [], wideRemoved: [UserID] = []
        for payload in widePayloads {
            guard case .changes(_, let list) = ClusterNotice.decode(payload) else { Issue.record("undecodable"); return }
            for case .membership(_, _, let asOf, _, let added, let removed, _) in list {
                #expect(asOf == 4)
                wideAdded += added
                wideRemoved += removed
            }
        }
        #expect(wideAdded == long && wideRemoved == removedLong)
        let big = ClusterChange.emit("acme", .company, event: "app:x", data: .string(String(repeating: "y", count: 10_000)))
        #expect(ClusterNotice.pack(node: "n", changes: [big]).oversized == [big], "too big for any payload: stored instead")
        #expect(ClusterNotice.decodeStored(ClusterNotice.encodeStored([big])) == [big])
    }
}
