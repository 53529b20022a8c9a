import ChatCore
import ChatJSON
import Testing

/// The README's "Embedding the core" example, verbatim, so the documentation cannot rot.
@Test func readmeEmbeddingExample() async throws {
    let broker = Supervisor(store: InMemoryStore())          // or SQLiteMessageStore(path:durability:)
    let alice = Principal(userId: "alice", companyId: "acme")
    let thread = try await broker.createThread(name: "t", kind: .group, memberIds: ["bob"], by: alice).summary.info.id
    let device = try await broker.connect(alice)             // a simulated socket with its own bounded outbox
    _ = await broker.handle(event: "chat:send", data: .object(["threadId": .string(thread), "content": .string("hi")]), from: device)
    let frames = device.outbox.takeAvailable()               // or `await device.outbox.next()`
    let (name, data) = broker.encoder.decode(frames[0])!     // ("chat:message", {threadId, message, tempId})
    #expect(name == "chat:message")
    #expect(data["message"]?["content"] == .string("hi"))
    #expect(data["message"]?["seq"]?.intValue == 1)
}
