import DequeModule
import NIOCore
import Synchronization

/// Why an outbox stopped accepting frames.
public enum OutboxCloseReason: String, Sendable {
    /// The owner closed it (disconnect, shutdown).
    case closed
    /// It stayed over its byte limit after typing was dropped.
    case slowConsumer = "slow consumer"
}

/// A connection's bounded outbound queue. Producers (thread actors, sessions) never wait on it:
/// `enqueue` is synchronous and O(1). Over `limit` bytes, droppable frames (typing) are dropped; if it *stays*
/// over for `grace` seconds, or ever exceeds `hardLimit` bytes (16 × `limit`, at least 16 MiB), the outbox closes with `slowConsumer` and its
/// drainer sees the close. So a reader that absorbs a burst a little late keeps its connection, and memory per
/// connection never exceeds `hardLimit`.
public final class Outbox: Sendable {
    struct State {
        var queue = Deque<OutboundFrame>()
        var bytes = 0
        /// How many queued frames are droppable (typing), so that an enqueue over the limit looks through the queue
        /// only when there is something to drop: each typing frame is dropped at most once, and a slow reader's full
        /// queue of messages is never scanned again for every frame offered to it.
        var droppableQueued = 0
        var closed: OutboxCloseReason?
        /// While set (`restrict`), a frame that would make the queue longer than this many frames or bytes closes the
        /// outbox at once; a queue over it since `since` (restricted with a backlog) is closed once the grace ends.
        var restriction: (frames: Int, bytes: Int, since: UInt64)?
        var waiter: CheckedContinuation<Void, Never>?
        var overSince: UInt64?
        /// The event-driven drainer's wake-up, and whether the next enqueue must call it.
        var signal: (@Sendable () -> Void)?
        var armed = false
        /// Bytes a writer took with `takeOrRearm(holdingUntilSent:)` and has not reported `sent`.
        var inFlight = 0
        /// The user's budget this outbox's bytes (queued and in flight) count in (`share`), its bound, the bound
        /// that closes a connection behind at once (twice `limit`, at least `minimumHardLimit` as for one
        /// connection, so that a small bound still lets a reader take one large message or page within the grace),
        /// and how far behind this connection may be while the user is over `limit`.
        var shared: (budget: UserOutboundBudget, limit: Int, hardLimit: Int, allowance: Int)?
        /// Since when this connection has been behind (more than `allowance`) while its user was over the shared
        /// bound: it has the grace period to catch up (`closeIfStalled`).
        var sharedOverSince: UInt64?

        /// Ends the shared bound's grace once this connection is no more than its allowance behind.
        mutating func caughtUpWithUser() {
            if let shared, bytes + inFlight > shared.allowance { return }
            sharedOverSince = nil
        }

        /// The drainer's wake-ups, handed over for the last time when the outbox closes.
        typealias Wakeups = (waiter: CheckedContinuation<Void, Never>?, signal: (@Sendable () -> Void)?)

        /// Closes (keeping the first reason), discards what is queued, and hands back the drainer's wake-ups for the
        /// caller to call outside the lock. The signal is dropped, and with it whatever it holds (a socket writer).
        mutating func shut(_ reason: OutboxCloseReason) -> Wakeups {
            if closed == nil { closed = reason }
            shared?.budget.remove(bytes + inFlight)
            shared = nil
            queue.removeAll()
            bytes = 0
            inFlight = 0
            droppableQueued = 0
            defer {
                waiter = nil
                signal = nil
            }
            return (waiter, signal)
        }
    }

    /// The byte bound.
    public let limit: Int
    /// The bound that closes the outbox at once: 16 × `limit`, and never less than `minimumHardLimit`, so a small
    /// `limit` still lets a healthy reader absorb a burst of large messages within the grace period.
    public let hardLimit: Int
    public static let minimumHardLimit = 16 << 20
    /// Nanoseconds the outbox may stay over `limit` before it closes.
    public let graceNanos: UInt64
    private let state = Mutex(State())
    private let stats: BrokerStats?

    public init(limit: Int, grace: Double = 1.0, stats: BrokerStats? = nil) {
        self.limit = limit
        let sixteenFold = limit.multipliedReportingOverflow(by: 16)
        hardLimit = sixteenFold.overflow ? Int.max : max(sixteenFold.partialValue, Self.minimumHardLimit)
        graceNanos = UInt64(max(0, grace) * 1e9)
        self.stats = stats
    }

    /// The outcome of `enqueue`.
    public enum EnqueueResult: Sendable, Equatable {
        case queued
        case dropped
        case closed
    }

    /// Adds a frame without waiting. Returns `.dropped` for a typing frame that did not fit, `.closed` if the
    /// outbox is (or just became) closed.
    @discardableResult
    public func enqueue(_ frame: OutboundFrame) -> EnqueueResult {
        let size = frame.bytes.readableBytes
        var wake: CheckedContinuation<Void, Never>?
        var signal: (@Sendable () -> Void)?
        var becameSlow = false
        let result: EnqueueResult = state.withLock { s in
            if s.closed != nil { return .closed }
            if let cap = s.restriction, s.queue.count + 1 > cap.frames || s.bytes + size > cap.bytes {
                becameSlow = true
                (wake, signal) = s.shut(.slowConsumer)
                return .closed
            }
            if s.bytes + size > limit {
                if frame.droppable { return .dropped }
                // Drop queued typing frames first.
                if s.droppableQueued > 0 {
                    var kept = Deque<OutboundFrame>()
                    var keptBytes = 0
                    for f in s.queue where !f.droppable {
                        kept.append(f)
                        keptBytes += f.bytes.readableBytes
                    }
                    s.shared?.budget.remove(s.bytes - keptBytes)
                    s.queue = kept
                    s.bytes = keptBytes
                    s.droppableQueued = 0
                }
                if s.bytes + size > limit {
                    let now = monotonicNanos()
                    let since = s.overSince ?? now
                    s.overSince = since
                    if s.bytes + size > hardLimit || now &- since > graceNanos {
                        becameSlow = true
                        (wake, signal) = s.shut(.slowConsumer)
                        return .closed
                    }
                }
            }
            if let shared = s.shared {
                let total = shared.budget.add(size)
                // Back within the bound: a grace begun earlier is over (a later one starts afresh).
                if total <= shared.limit { s.sharedOverSince = nil }
                if total > shared.limit, s.bytes + s.inFlight + size > shared.allowance {
                    // The user's connections hold more than their bound, and this one is behind: a typing frame is
                    // dropped; anything else is queued if the connection catches up within the grace period and the
                    // user stays within twice the bound, and closes it as a slow consumer otherwise (its bytes leave
                    // the budget with it).
                    if frame.droppable {
                        shared.budget.remove(size)
                        return .dropped
                    }
                    let now = monotonicNanos()
                    let since = s.sharedOverSince ?? now
                    if total > shared.hardLimit || now &- since > graceNanos {
                        shared.budget.remove(size)
                        becameSlow = true
                        (wake, signal) = s.shut(.slowConsumer)
                        return .closed
                    }
                    s.sharedOverSince = since
                }
            }
            s.queue.append(frame)
            s.bytes += size
            if frame.droppable { s.droppableQueued += 1 }
            wake = s.waiter
            s.waiter = nil
            if s.armed {
                s.armed = false
                signal = s.signal
            }
            return .queued
        }
        wake?.resume()
        signal?()
        if let stats {
            switch result {
            case .queued: stats.add(stats.framesEnqueued)
            case .dropped: stats.add(stats.typingDropped)
            case .closed: if becameSlow { stats.add(stats.slowConsumerCloses) }
            }
        }
        return result
    }

    /// Closes the outbox; queued frames are discarded and the drainer is woken (for the last time: the drain signal
    /// is dropped, and with it whatever it holds).
    public func close(_ reason: OutboxCloseReason = .closed) {
        let wake = state.withLock { $0.shut(reason) }
        wake.waiter?.resume()
        wake.signal?()
    }

    /// Holds the outbox to `frames` queued frames and `bytes` queued bytes until `lift()`: a frame that would go past
    /// either closes it at once (`slowConsumer`, no grace), and a backlog already past them when it is restricted
    /// must be read within the grace period (`closeIfStalled`). For a connection without a socket connection (not
    /// authenticated yet, refused, or after leaving): it is owed a few control frames, and a client that makes the
    /// broker answer it (refused CONNECTs) without reading the answers must not hold more than that, whatever the
    /// byte limit (each small frame costs far more memory than its bytes). The bounds are absolute, so restricting
    /// again never moves them.
    public func restrict(frames: Int, bytes: Int, now: UInt64 = monotonicNanos()) {
        state.withLock { s in
            if s.restriction == nil { s.restriction = (frames, bytes, now) }
        }
    }

    /// Ends `restrict`: the byte limit and its grace apply again.
    public func lift() {
        state.withLock { $0.restriction = nil }
    }

    /// Counts this outbox's bytes (queued and in flight) in its user's `budget` from now on, until `unshare` or the
    /// outbox closes. While the user's connections hold more than `limit` bytes, this outbox must not stay behind by
    /// more than `outboundLimit / 16` bytes: a frame that leaves it that far behind starts the grace period, and it
    /// is closed as a slow consumer if it is still behind, and the user still over `limit`, when the grace ends
    /// (`closeIfStalled`, or its next frame), or at once if the frame would take the user past twice `limit` (and
    /// past `minimumHardLimit`).
    public func share(_ budget: UserOutboundBudget, limit: Int) {
        state.withLock { s in
            guard s.closed == nil, s.shared == nil else { return }
            let twice = limit.multipliedReportingOverflow(by: 2)
            let hard = max(twice.overflow ? Int.max : twice.partialValue, Self.minimumHardLimit)
            s.shared = (budget, limit, hard, max(1, self.limit / 16))
            _ = budget.add(s.bytes + s.inFlight)
        }
    }

    /// Stops counting this outbox's bytes in its user's budget (its connection left the user).
    public func unshare() {
        state.withLock { s in
            s.shared?.budget.remove(s.bytes + s.inFlight)
            s.shared = nil
            s.sharedOverSince = nil
        }
    }

    /// A writer that took frames with `takeOrRearm(holdingUntilSent: true)` finished writing `bytes` of them (or
    /// gave up): they no longer count in the user's budget.
    public func sent(_ bytes: Int) {
        state.withLock { s in
            let done = min(bytes, s.inFlight)
            s.inFlight -= done
            s.shared?.budget.remove(done)
            s.caughtUpWithUser()
        }
    }

    /// Why the outbox closed, or `nil` while open.
    public var closeReason: OutboxCloseReason? { state.withLock { $0.closed } }

    /// Bytes of the frames waiting in the queue.
    public var queuedBytes: Int { state.withLock { $0.bytes } }

    /// Takes waiting frames (up to `max` frames and about `maxBytes` bytes, at least one) without waiting.
    /// Empty if none.
    public func takeAvailable(max: Int = .max, maxBytes: Int = .max) -> [OutboundFrame] {
        state.withLock { s in
            guard !s.queue.isEmpty else { return [] }
            return Self.take(from: &s, max: max, maxBytes: maxBytes, limit: limit, holdingUntilSent: false)
        }
    }

    /// Takes frames out of the queue; with `holdingUntilSent`, their bytes stay in the user's budget as in flight
    /// until the writer reports them `sent`.
    private static func take(from s: inout State, max: Int, maxBytes: Int, limit: Int, holdingUntilSent: Bool) -> [OutboundFrame] {
        // Count what fits first (reading sizes in place), then move the frames out of the queue.
        var count = 0
        var taken = 0
        for frame in s.queue {
            let size = frame.bytes.readableBytes
            guard count < max, count == 0 || taken + size <= maxBytes else { break }
            count += 1
            taken += size
        }
        var out: [OutboundFrame] = []
        out.reserveCapacity(count)
        for _ in 0..<count {
            let frame = s.queue.removeFirst()
            if frame.droppable { s.droppableQueued -= 1 }
            out.append(frame)
        }
        s.bytes -= taken
        if holdingUntilSent { s.inFlight += taken } else { s.shared?.budget.remove(taken) }
        if s.bytes <= limit { s.overSince = nil }
        s.caughtUpWithUser()
        return out
    }

    /// Hands the outbox to an event-driven drainer instead of an awaiting task: `signal` is called (outside the
    /// lock, on whichever thread enqueues) when a frame arrives while the drainer is idle, and whenever the outbox
    /// closes. The drainer then calls `takeOrRearm` until it returns nothing, which arms the signal again. The
    /// signal is called once right away, so frames queued before are drained too. The outbox keeps the signal until
    /// it closes (it is not kept at all if the outbox is closed already).
    public func setDrainSignal(_ signal: @escaping @Sendable () -> Void) {
        state.withLock { s in
            s.signal = s.closed == nil ? signal : nil
            s.armed = false
        }
        signal()
    }

    /// Like `takeAvailable`, but when nothing is waiting it arms the drain signal (atomically with finding the
    /// queue empty, so no frame can slip in unnoticed). With `holdingUntilSent`, the frames taken count in the user's
    /// budget until the writer reports them `sent` (a writer whose batch waits for a reader that does not read holds
    /// them as much as the queue did).
    public func takeOrRearm(max: Int = .max, maxBytes: Int = .max, holdingUntilSent: Bool = false) -> [OutboundFrame] {
        state.withLock { s in
            guard !s.queue.isEmpty else {
                s.armed = true
                return []
            }
            return Self.take(from: &s, max: max, maxBytes: maxBytes, limit: limit, holdingUntilSent: holdingUntilSent)
        }
    }

    /// Closes the outbox as a slow consumer if it has stayed over its limit (or over its restriction) longer than
    /// the grace period (called periodically, so a reader that stopped reading is dropped even when nothing new is
    /// queued).
    @discardableResult
    public func closeIfStalled(now: UInt64 = monotonicNanos()) -> Bool {
        let wake = state.withLock { s -> State.Wakeups? in
            guard s.closed == nil else { return nil }
            if let cap = s.restriction, s.queue.count > cap.frames || s.bytes > cap.bytes, now &- cap.since > graceNanos {
                return s.shut(.slowConsumer)
            }
            // Behind while the user was over the shared bound: closed if both still hold after the grace; the grace
            // ends once either does not.
            if let shared = s.shared, shared.budget.bytes <= shared.limit { s.sharedOverSince = nil }
            s.caughtUpWithUser()
            if let since = s.sharedOverSince, now &- since > graceNanos { return s.shut(.slowConsumer) }
            guard let since = s.overSince, now &- since > graceNanos else { return nil }
            return s.shut(.slowConsumer)
        }
        guard let wake else { return false }
        wake.waiter?.resume()
        wake.signal?()
        if let stats { stats.add(stats.slowConsumerCloses) }
        return true
    }

    /// Waits until a frame is queued or the outbox closes. Only one drainer may wait at a time.
    public func waitForFrames() async {
        await withCheckedContinuation { (cont: CheckedContinuation<Void, Never>) in
            let resumeNow = state.withLock { s -> Bool in
                if s.closed != nil || !s.queue.isEmpty { return true }
                s.waiter?.resume()
                s.waiter = cont
                return false
            }
            if resumeNow { cont.resume() }
        }
    }

    /// Wakes a waiting drainer without queuing anything (for timeouts and cancellation).
    public func wakeDrainer() {
        let wake = state.withLock { s -> CheckedContinuation<Void, Never>? in
            defer { s.waiter = nil }
            return s.waiter
        }
        wake?.resume()
    }

    /// Waits for and takes the next batch of frames; empty once the outbox is closed.
    public func next(max: Int = .max, maxBytes: Int = .max) async -> [OutboundFrame] {
        while true {
            let batch = takeAvailable(max: max, maxBytes: maxBytes)
            if !batch.isEmpty { return batch }
            if closeReason != nil { return [] }
            await waitForFrames()
            if Task.isCancelled { return [] }
        }
    }
}
