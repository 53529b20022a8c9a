import ChatCore
import ChatJSON

/// Small helpers over the embedding API: a broker on the in-memory store, devices, and reading their events.
struct Harness {
    let supervisor: Supervisor
    let store: InMemoryStore

    init(configure: (inout BrokerConfiguration) -> Void = { _ in }) {
        var configuration = BrokerConfiguration()
        configure(&configuration)
        store = InMemoryStore()
        supervisor = Supervisor(store: store, configuration: configuration)
    }

    func principal(_ user: String, _ company: String = "acme") -> Principal { Principal(userId: user, companyId: company) }

    func thread(_ members: [String], by creator: String = "alice", company: String = "acme") async throws -> ThreadID {
        try await supervisor.createThread(name: "t", kind: .group, memberIds: members, by: principal(creator, company)).summary.info.id
    }

    /// Every event waiting in `device`'s outbox, decoded.
    func drain(_ device: Device) -> [(name: String, data: JSONValue)] {
        device.outbox.takeAvailable().compactMap { supervisor.encoder.decode($0) }
    }

    func send(_ device: Device, _ thread: ThreadID, _ content: String, tempId: String? = nil) async -> Result<JSONValue, ChatError> {
        var data: JSONObject = ["threadId": .string(thread), "content": .string(content)]
        if let tempId { data["tempId"] = .string(tempId) }
        return await supervisor.handle(event: "chat:send", data: .object(data), from: device)
    }
}

extension Result where Success == JSONValue, Failure == ChatError {
    var value: JSONValue? { if case .success(let v) = self { v } else { nil } }
    var error: ChatError? { if case .failure(let e) = self { e } else { nil } }
}
