import ChatCore
import ChatJSON
import ChatStoreSQLite
import Foundation

/// A broker core to embed in tests: a `Supervisor` on a real store (in memory, or SQLite in a temporary folder that
/// `close()` removes), with helpers to make principals and threads and to connect simulated devices.
///
/// ```swift
/// let broker = try ChatTestBroker.sqlite()
/// let thread = try await broker.thread(["bob"], by: "alice")
/// let alice = try await broker.connect("alice"), bob = try await broker.connect("bob")
/// _ = try await alice.send(thread, "hello").get()
/// let event = try await bob.next("chat:message")          // waits up to 5 s by default
/// await broker.close()
/// ```
public struct ChatTestBroker: Sendable {
    public let supervisor: Supervisor
    public let store: any MessageStore
    /// The SQLite store's folder, removed by `close()`; `nil` for the in-memory store.
    public let directory: URL?
    /// The company `principal`, `thread` and `connect` use when none is given.
    public let company: CompanyID

    /// A broker on the in-memory store; `configure` adjusts its bounds (rates, outbox limits, history sizes…).
    public init(company: CompanyID = "acme", configure: (inout BrokerConfiguration) -> Void = { _ in }) {
        var configuration = BrokerConfiguration()
        configure(&configuration)
        let store = InMemoryStore()
        self.init(supervisor: Supervisor(store: store, configuration: configuration), store: store, directory: nil, company: company)
    }

    /// A broker on a store of the caller's (PostgreSQL, say: several of these on one database are several nodes;
    /// run `supervisor.run()` in a task so that each applies the others' changes). `close()` shuts the store down.
    public init(store: any MessageStore, company: CompanyID = "acme", configure: (inout BrokerConfiguration) -> Void = { _ in }) {
        var configuration = BrokerConfiguration()
        configure(&configuration)
        self.init(supervisor: Supervisor(store: store, configuration: configuration), store: store, directory: nil, company: company)
    }

    private init(supervisor: Supervisor, store: any MessageStore, directory: URL?, company: CompanyID) {
        self.supervisor = supervisor
        self.store = store
        self.directory = directory
        self.company = company
    }

    /// A broker on a SQLite database in a new temporary folder (`--durability process`: tests need no fsync).
    public static func sqlite(
        company: CompanyID = "acme", durability: Durability = .process, configure: (inout BrokerConfiguration) -> Void = { _ in }
    ) throws -> ChatTestBroker {
        var configuration = BrokerConfiguration()
        configure(&configuration)
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("chat-test-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let store = try SQLiteMessageStore(path: directory.appendingPathComponent("chat.sqlite").path, durability: durability)
        return ChatTestBroker(supervisor: Supervisor(store: store, configuration: configuration), store: store, directory: directory, company: company)
    }

    /// Makes the next store write fail with `reason` (fault injection; the in-memory store only).
    public func failNextCommit(_ reason: String) {
        guard let memory = store as? InMemoryStore else { preconditionFailure("failNextCommit needs the in-memory store") }
        memory.failNextCommit(reason)
    }

    /// Flushes and closes the store, and removes its folder.
    public func close() async {
        await supervisor.shutdown()
        if let directory { try? FileManager.default.removeItem(at: directory) }
    }

    public func principal(_ user: UserID, _ company: CompanyID? = nil, service: Bool = false) -> Principal {
        Principal(userId: user, companyId: company ?? self.company, isService: service)
    }

    /// Creates a group thread of `creator` and `members`; returns its id.
    public func thread(_ members: [UserID], by creator: UserID = "alice", company: CompanyID? = nil, name: String? = "t") async throws -> ThreadID {
        try await supervisor.createThread(name: name, kind: .group, memberIds: members, by: principal(creator, company)).summary.info.id
    }

    /// Connects a simulated device (a socket with its own bounded outbox) of `user`.
    public func connect(_ user: UserID, company: CompanyID? = nil) async throws -> TestDevice {
        TestDevice(device: try await supervisor.connect(principal(user, company)), supervisor: supervisor)
    }

    /// Every event waiting in `device`'s outbox, decoded.
    public func drain(_ device: Device) -> [(name: String, data: JSONValue)] {
        device.outbox.takeAvailable().compactMap { supervisor.encoder.decode($0) }
    }

    /// `chat:send` of `content` into `thread` from `device`: the ack body, or the error.
    public func send(_ device: Device, _ thread: ThreadID, _ content: String, tempId: String? = nil) async -> Result<JSONValue, ChatError> {
        await supervisor.handle(event: "chat:send", data: TestDevice.sendPayload(thread, content, tempId: tempId), from: device)
    }
}
