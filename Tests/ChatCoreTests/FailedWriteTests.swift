import ChatCoreTesting
import ChatJSON
import Testing

/// A write the store refuses fails its own command, and only that: the writes of other commands that the store did
/// commit meanwhile are answered and delivered as stored. (Found by a review: a failed receipt or membership write
/// retired the thread's actor, which answered `internal` to every send still being written, stored or not, and on
/// one node never delivered the stored ones live; and a member removal stored meanwhile was answered `not_found`
/// by the next actor, which no longer listed the member.)
@Suite struct FailedWriteTests {
    static func markRead(_ device: TestDevice, _ thread: ThreadID, upTo seq: Int) async -> Result<JSONValue, ChatError> {
        await device.emit("chat:mark-read", .object(["threadId": .string(thread), "upToSeq": .number(Double(seq))]))
    }

    /// A thread of alice's with `members` (bob first) holding one message, and bob's read mark of it being written:
    /// the store is paused with that write waiting.
    static func readMarkBeingWritten(members: [UserID]) async throws -> (
        store: PausableStore, h: Harness, thread: ThreadID, alice: TestDevice, bob: TestDevice, read: Task<Result<JSONValue, ChatError>, Never>
    ) {
        let store = PausableStore()
        let h = Harness(store: store)
        let thread = try await h.thread(members)
        let alice = try await h.connect("alice")
        let bob = try await h.connect("bob")
        _ = try await alice.send(thread, "one").get()
        store.pause()
        let read = Task { await Self.markRead(bob, thread, upTo: 1) }
        try await MemberChangePositionTests.waitUntil { store.queued == 1 }
        return (store, h, thread, alice, bob, read)
    }

    static func messages(_ device: TestDevice) -> [Int] {
        device.events().filter { $0.name == "chat:message" }.compactMap { $0.data["message"]?["seq"]?.intValue }
    }

    /// bob's read mark fails; alice's send, written behind it and stored, is acknowledged and delivered in its place.
    @Test func aSendStoredBehindAFailedReceiptIsAcknowledgedAndDelivered() async throws {
        let (store, h, thread, alice, bob, read) = try await Self.readMarkBeingWritten(members: ["bob"])
        let sent = Task { await alice.send(thread, "two") }
        try await MemberChangePositionTests.waitUntil { store.queued == 2 }
        store.resume(failing: 1)
        #expect(await read.value.error?.code == .internal, "the failed mark is answered internal")
        let ack = await sent.value
        #expect(ack.value?["message"]?["seq"]?.intValue == 2, "the stored send is acknowledged: \(ack)")
        _ = try await alice.send(thread, "three").get()
        #expect(Self.messages(bob) == [1, 2, 3], "bob gets every stored message live, in order")
        #expect(!alice.events().contains { $0.name == "chat:read" }, "alice is not told of the read mark that was not stored")
        await h.close()
    }

    /// bob's read mark fails while alice removes carol: the removal, stored, is answered with the thread as it is now
    /// (also when a send is still being written behind it, which keeps the failed actor from retiring at once).
    @Test(arguments: [false, true]) func aRemovalStoredWhileAnotherWriteFailsIsAnswered(sendBehind: Bool) async throws {
        let (store, h, thread, alice, _, read) = try await Self.readMarkBeingWritten(members: ["bob", "carol"])
        let removal = Task { () -> Result<CommandResult, ChatError> in
            do throws(ChatError) {
                return .success(try await h.supervisor.perform(.removeMember(thread, "carol"), as: h.principal("alice"), device: nil))
            } catch { return .failure(error) }
        }
        try await MemberChangePositionTests.waitUntil { store.queued == 2 }
        let sent = sendBehind ? Task { await alice.send(thread, "two") } : nil
        if sendBehind { try await MemberChangePositionTests.waitUntil { store.queued == 3 } }
        store.resume(failing: 1)
        _ = await read.value
        let answer = await removal.value
        guard case .success(.thread(let summary, _)) = answer else {
            Issue.record("the stored removal was answered \(answer)")
            await h.close()
            return
        }
        #expect(summary.members.contains("carol") == false)
        if let sent { #expect(await sent.value.value?["message"]?["seq"]?.intValue == 2) }
        // The removal stands: carol may no longer send.
        let carol = try await h.connect("carol")
        #expect(await carol.send(thread, "still here?").error?.code == .notAMember)
        await h.close()
    }
}
