import ChatCoreTesting
import ChatJSON
import Testing

/// An actor unloaded by the memory budget while a receipt waits for the store does not write the receipt: the command
/// goes on on the thread's next actor, which tells the sender once. (Found by a review: the unloaded actor wrote the
/// mark and told the sender, and a next actor loaded meanwhile did not have it, so the same receipt sent again was
/// told a second time.)
@Suite struct ReceiptAcrossUnloadTests {
    @Test func aReceiptWaitingForTheStoreWhenItsThreadIsUnloadedIsToldOnce() async throws {
        let store = HeldLookupStore()
        let h = Harness(store: store) {
            $0.hotTail = 4
            $0.chunkSize = 4
            $0.residentChunks = 1
            $0.threadMemoryBudget = 1
        }
        let thread = try await h.thread(["bob"])
        let alice = try await h.connect("alice")
        let bob = try await h.connect("bob")
        var ids: [String] = []
        for i in 0..<24 { ids.append(try #require(try await alice.send(thread, "m\(i)").get()["message"]?["id"]?.stringValue)) }
        let receipt = JSONValue.object(["threadId": .string(thread), "messageIds": .array([.string(ids[0])])])
        store.hold([.eventSeqs])
        let delivered = Task { await bob.emit("chat:delivered", receipt) }
        try await MemberChangePositionTests.waitUntil { store.waiting == 1 }
        #expect(await h.supervisor.enforceMemoryBudget().passivated == 1, "the thread is unloaded while the receipt waits")
        // The thread's next actor, loaded meanwhile (by alice's read), holds the marks as the store has them.
        _ = try await alice.emit("chat:history", .object(["threadId": .string(thread)])).get()
        store.release()
        _ = try await delivered.value.get()
        _ = try await bob.emit("chat:delivered", receipt).get()
        let told = alice.events().filter { $0.name == "chat:delivered" }
        #expect(told.count == 1, "alice is told of bob's receipt once: \(told.map(\.data))")
        await h.close()
    }
}

/// A member removed while their edit or delete of an old message waits for the store (its chunk read back) is not
/// let through once the read is done. (Found by a review: only the actor's state was checked again after the read,
/// and the delete was stored and announced after the removal.)
@Suite struct UpdateAcrossRemovalTests {
    @Test(arguments: ["chat:delete", "chat:edit"]) func aMemberRemovedWhileTheirChangeReadsBackTheMessageDoesNotChangeIt(event: String) async throws {
        let store = HeldLookupStore()
        let h = Harness(store: store) {
            $0.hotTail = 4
            $0.chunkSize = 4
            $0.residentChunks = 1
        }
        let thread = try await h.thread(["bob", "carol"])
        let alice = try await h.connect("alice")
        let bob = try await h.connect("bob")
        let carol = try await h.connect("carol")
        let old = try #require(try await bob.send(thread, "old").get()["message"]?["id"]?.stringValue)
        // Edited once, in a later chunk: a change of it rewrites that chunk too, read back while the change is prepared.
        for i in 0..<8 { _ = try await alice.send(thread, "m\(i)").get() }
        _ = try await bob.emit("chat:edit", .object(["threadId": .string(thread), "messageId": .string(old), "content": .string("once")])).get()
        for i in 8..<32 { _ = try await alice.send(thread, "m\(i)").get() }
        // Held when the change reads back its message's other chunk: the first read (the message's own chunk) is the
        // command's check, the second comes while the attempt prepares the change, after which only the actor's state
        // was checked.
        store.hold([.chunks], after: 1)
        _ = carol.events()
        var data: JSONObject = ["threadId": .string(thread), "messageId": .string(old)]
        if event == "chat:edit" { data["content"] = .string("changed") }
        let change = Task { await bob.emit(event, .object(data)) }
        try await MemberChangePositionTests.waitUntil { store.waiting == 1 }
        _ = try await h.supervisor.perform(.removeMember(thread, "bob"), as: h.principal("alice"), device: nil)
        store.release()
        #expect(await change.value.error?.code == .notAMember)
        let after = carol.events().map(\.name).filter { $0.hasPrefix("chat:message:") }
        #expect(after.isEmpty, "nothing changed after bob's removal: \(after)")
        await h.close()
    }
}
