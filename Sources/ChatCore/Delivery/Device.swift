import Synchronization

/// One connected socket (a device of a user): its principal, its bounded outbox, the thread rooms it
/// currently receives, and its rate limits. Created by `Supervisor.connect`.
public final class Device: Sendable, Hashable {
    private static let nextId = Atomic<UInt64>(1)

    /// Unique for the life of the process.
    public let id: UInt64
    public let principal: Principal
    public let outbox: Outbox
    private let rooms: Mutex<Set<ThreadID>>
    private let typingIn = Mutex<Set<ThreadID>>([])
    private let sendBucket: Mutex<TokenBucket>
    private let signalBucket: Mutex<TokenBucket>

    init(principal: Principal, configuration: BrokerConfiguration, stats: BrokerStats?, outbox: Outbox? = nil) {
        id = Device.nextId.wrappingAdd(1, ordering: .relaxed).oldValue
        self.principal = principal
        self.outbox = outbox ?? Outbox(limit: configuration.outboundLimit, grace: configuration.slowConsumerGrace, stats: stats)
        rooms = Mutex([])
        sendBucket = Mutex(TokenBucket(rate: configuration.ratePerSecond, burst: configuration.rateBurst))
        signalBucket = Mutex(
            TokenBucket(rate: configuration.signalRatePerSecond, burst: configuration.signalRatePerSecond * 2))
    }

    public static func == (lhs: Device, rhs: Device) -> Bool { lhs === rhs }
    public func hash(into hasher: inout Hasher) { hasher.combine(id) }

    /// Whether this device currently receives events of `thread`.
    public func receives(_ thread: ThreadID) -> Bool { rooms.withLock { $0.contains(thread) } }

    /// The thread rooms this device receives.
    public var joinedRooms: Set<ThreadID> { rooms.withLock { $0 } }

    func join(_ thread: ThreadID) { _ = rooms.withLock { $0.insert(thread) } }
    func leave(_ thread: ThreadID) { _ = rooms.withLock { $0.remove(thread) } }
    func setRooms(_ threads: Set<ThreadID>) { rooms.withLock { $0 = threads } }

    func markTyping(_ thread: ThreadID, _ on: Bool) {
        typingIn.withLock { if on { $0.insert(thread) } else { $0.remove(thread) } }
    }
    func takeTypingThreads() -> Set<ThreadID> { typingIn.withLock { s in defer { s = [] }; return s } }

    /// Takes a token from the send/edit/delete bucket.
    func allowSend() -> Bool { sendBucket.withLock { $0.take() } }
    /// Takes a token from the typing/receipt bucket.
    func allowSignal() -> Bool { signalBucket.withLock { $0.take() } }
}
