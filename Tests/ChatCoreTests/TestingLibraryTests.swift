import ChatCoreTesting
import Testing

/// The README's testing-library example, verbatim, so the documentation cannot rot; and what `next` promises.
@Suite struct TestingLibraryTests {
    @Test func readmeTestingLibraryExample() async throws {
        let broker = try ChatTestBroker.sqlite()                 // or ChatTestBroker() for the in-memory store
        let thread = try await broker.thread(["bob"], by: "alice")
        let alice = try await broker.connect("alice")
        let bob = try await broker.connect("bob")
        _ = try await alice.send(thread, "hello").get()
        let event = try await bob.next("chat:message")           // waits up to 5 s by default
        #expect(event["message"]?["content"] == .string("hello"))
        #expect(event["message"]?["seq"]?.intValue == 1)
        await broker.close()
    }

    @Test func nextTimesOutAndKeepsOtherEventsInOrder() async throws {
        let broker = ChatTestBroker()
        let thread = try await broker.thread(["bob"])
        let alice = try await broker.connect("alice")
        let bob = try await broker.connect("bob")
        for i in 1...3 { _ = try await alice.send(thread, "m\(i)").get() }
        _ = await alice.emit("chat:typing:start", .object(["threadId": .string(thread)]))
        let typing = try await bob.next("chat:typing:start")
        #expect(typing["userId"] == .string("alice"))
        let second = try await bob.next("chat:message") { $0["message"]?["seq"]?.intValue == 2 }
        #expect(second["message"]?["content"] == .string("m2"))
        #expect(bob.events().compactMap { $0.data["message"]?["seq"]?.intValue } == [1, 3])
        let started = ContinuousClock.now
        await #expect(throws: TestDevice.Timeout.self) { try await bob.next("chat:message", timeout: .milliseconds(200)) }
        #expect(ContinuousClock.now - started >= .milliseconds(200))
        await bob.disconnect()
        await #expect(throws: TestDevice.Timeout.self) { try await bob.next("chat:message", timeout: .seconds(5)) }
        await broker.close()
    }
}
