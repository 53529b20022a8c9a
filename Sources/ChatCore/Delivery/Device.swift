import Synchronization

/// One connected socket (a device of a user): its principal, its bounded outbox, the threads it opted out of
/// with `chat:leave`, and its rate limits (writes, signals, reads). Created by `Supervisor.connect`.
///
/// Which threads a device receives is not decided here: a thread actor fans out to the user sessions of its
/// members (it is the one owner of membership), and a device receives every such event unless it left that
/// thread's room. So a device that connects while a member is being added can never miss the room.
public final class Device: Sendable, Hashable {
    private static let nextId = Atomic<UInt64>(1)

    /// Unique for the life of the process.
    public let id: UInt64
    public let principal: Principal
    public let outbox: Outbox
    /// The user's session, kept alive while the device is connected.
    let session: UserSession
    private let leftRooms = Mutex<Set<ThreadID>>([])
    /// How many rooms `leftRooms` holds: fan-out skips the lock (and hashing the thread id) while it is 0.
    private let leftCount = Atomic<Int>(0)
    /// Per thread, the seq up to which this device already has the events that this node has not fanned out yet
    /// (`skipLive`): it said so with `chat:sync` after moving here from another node, which had delivered them first.
    private let skipThrough = Mutex<[ThreadID: Int]>([:])
    /// How many threads `skipThrough` holds: fan-out skips its lock while it is 0.
    private let skipCount = Atomic<Int>(0)
    private let typingIn = Mutex<Set<ThreadID>>([])
    private let sendBucket: Mutex<TokenBucket>
    private let signalBucket: Mutex<TokenBucket>
    private let readBucket: Mutex<TokenBucket>

    init(principal: Principal, session: UserSession, configuration: BrokerConfiguration, stats: BrokerStats?, outbox: Outbox? = nil) {
        id = Device.nextId.wrappingAdd(1, ordering: .relaxed).oldValue
        self.principal = principal
        self.session = session
        self.outbox = outbox ?? Outbox(limit: configuration.outboundLimit, grace: configuration.slowConsumerGrace, stats: stats)
        sendBucket = Mutex(TokenBucket(rate: configuration.ratePerSecond, burst: configuration.rateBurst))
        signalBucket = Mutex(TokenBucket(rate: configuration.signalRatePerSecond, burst: configuration.signalBurst))
        readBucket = Mutex(TokenBucket(rate: configuration.readRatePerSecond, burst: configuration.readBurst))
    }

    public static func == (lhs: Device, rhs: Device) -> Bool { lhs === rhs }
    public func hash(into hasher: inout Hasher) { hasher.combine(id) }

    /// Whether this device receives the events of `thread` that reach its user (it did not leave the room), and,
    /// for the thread event at `seq`, whether it does not have that event already (`skipLive`). Events reach a
    /// device in seq order, so the first one past a skip ends it.
    public func receives(_ thread: ThreadID, seq: Int? = nil) -> Bool {
        if leftCount.load(ordering: .acquiring) > 0, leftRooms.withLock({ $0.contains(thread) }) { return false }
        guard let seq, skipCount.load(ordering: .acquiring) > 0 else { return true }
        return skipThrough.withLock { floors in
            guard let floor = floors[thread] else { return true }
            if seq <= floor { return false }
            floors[thread] = nil
            skipCount.store(floors.count, ordering: .releasing)
            return true
        }
    }

    /// Several nodes: the device has `thread`'s events up to `seq` (from another node, before it moved here), which
    /// this node has not fanned out yet. They are not delivered to it live again, so its live stream never goes back.
    func skipLive(_ thread: ThreadID, through seq: Int) {
        skipThrough.withLock { floors in
            floors[thread] = max(floors[thread] ?? 0, seq)
            skipCount.store(floors.count, ordering: .releasing)
        }
    }

    /// Lowers a `skipLive` of `thread` to `seq`, if it is higher (past the thread's last event, it would keep the
    /// device from events it never had), and ends it if that is no further than `fannedOut` (the thread's events fanned
    /// out so far: nothing is left to skip, and a skip kept would cost the device's every delivery a lock).
    func limitSkip(_ thread: ThreadID, to seq: Int, fannedOut: Int) {
        guard skipCount.load(ordering: .acquiring) > 0 else { return }
        skipThrough.withLock { floors in
            guard let floor = floors[thread] else { return }
            let limited = min(floor, seq)
            floors[thread] = limited > fannedOut ? limited : nil
            skipCount.store(floors.count, ordering: .releasing)
        }
    }

    /// Back in `thread`'s room (`chat:join`, or the user was added to the thread again).
    func join(_ thread: ThreadID) {
        guard leftCount.load(ordering: .acquiring) > 0 else { return }
        leftRooms.withLock { rooms in
            rooms.remove(thread)
            leftCount.store(rooms.count, ordering: .releasing)
        }
    }
    /// Out of `thread`'s room until it joins again (`chat:leave`); membership is unchanged.
    func leave(_ thread: ThreadID) {
        leftRooms.withLock { rooms in
            rooms.insert(thread)
            leftCount.store(rooms.count, ordering: .releasing)
        }
    }

    func markTyping(_ thread: ThreadID, _ on: Bool) {
        typingIn.withLock { if on { $0.insert(thread) } else { $0.remove(thread) } }
    }
    func takeTypingThreads() -> Set<ThreadID> { typingIn.withLock { s in defer { s = [] }; return s } }

    /// Takes `cost` tokens from the bucket of `rateClass` (sends, edits and deletes; typing and receipts; reads) if it
    /// has that many.
    func allow(_ rateClass: ClientCommand.RateClass, cost: Double) -> Bool {
        withBucket(rateClass) { $0.take(cost) }
    }

    /// Gives back what `allow` took, for an event its user's bucket refused.
    func giveBack(_ rateClass: ClientCommand.RateClass, cost: Double) {
        withBucket(rateClass) { $0.giveBack(cost) }
    }

    /// Runs `body` on the bucket of `rateClass`, under its lock.
    private func withBucket<R>(_ rateClass: ClientCommand.RateClass, _ body: (inout TokenBucket) -> R) -> R {
        switch rateClass {
        case .write: sendBucket.withLock { body(&$0) }
        case .signal: signalBucket.withLock { body(&$0) }
        case .read: readBucket.withLock { body(&$0) }
        }
    }
}
