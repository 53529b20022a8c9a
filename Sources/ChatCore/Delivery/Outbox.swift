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
/// `enqueue` is synchronous and O(1). Over `limit` bytes, droppable frames (typing) go first; if it is
/// still over, the outbox closes with `slowConsumer` and its drainer sees the close.
public final class Outbox: Sendable {
    struct State {
        var queue = Deque<OutboundFrame>()
        var bytes = 0
        var closed: OutboxCloseReason?
        var waiter: CheckedContinuation<Void, Never>?
    }

    /// The byte bound.
    public let limit: Int
    private let state = Mutex(State())
    private let stats: BrokerStats?

    public init(limit: Int, stats: BrokerStats? = nil) {
        self.limit = limit
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
        var becameSlow = false
        let result: EnqueueResult = state.withLock { s in
            if s.closed != nil { return .closed }
            if s.bytes + size > limit {
                if frame.droppable { return .dropped }
                // Drop queued typing frames first.
                var kept = Deque<OutboundFrame>()
                var keptBytes = 0
                for f in s.queue where !f.droppable {
                    kept.append(f)
                    keptBytes += f.bytes.readableBytes
                }
                s.queue = kept
                s.bytes = keptBytes
                if s.bytes + size > limit {
                    s.closed = .slowConsumer
                    s.queue.removeAll()
                    s.bytes = 0
                    becameSlow = true
                    wake = s.waiter
                    s.waiter = nil
                    return .closed
                }
            }
            s.queue.append(frame)
            s.bytes += size
            wake = s.waiter
            s.waiter = nil
            return .queued
        }
        wake?.resume()
        if let stats {
            switch result {
            case .queued: stats.add(stats.framesEnqueued)
            case .dropped: stats.add(stats.typingDropped)
            case .closed: if becameSlow { stats.add(stats.slowConsumerCloses) }
            }
        }
        return result
    }

    /// Closes the outbox; queued frames are discarded and the drainer is woken.
    public func close(_ reason: OutboxCloseReason = .closed) {
        let wake: CheckedContinuation<Void, Never>? = state.withLock { s in
            if s.closed == nil { s.closed = reason }
            s.queue.removeAll()
            s.bytes = 0
            defer { s.waiter = nil }
            return s.waiter
        }
        wake?.resume()
    }

    /// Why the outbox closed, or `nil` while open.
    public var closeReason: OutboxCloseReason? { state.withLock { $0.closed } }

    /// Bytes waiting.
    public var queuedBytes: Int { state.withLock { $0.bytes } }

    /// Takes every waiting frame (up to `max`) without waiting. Empty if none.
    public func takeAvailable(max: Int = .max) -> [OutboundFrame] {
        state.withLock { s in
            guard !s.queue.isEmpty else { return [] }
            let n = Swift.min(max, s.queue.count)
            var out: [OutboundFrame] = []
            out.reserveCapacity(n)
            for _ in 0..<n {
                let f = s.queue.removeFirst()
                s.bytes -= f.bytes.readableBytes
                out.append(f)
            }
            return out
        }
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
    public func next(max: Int = .max) async -> [OutboundFrame] {
        while true {
            let batch = takeAvailable(max: max)
            if !batch.isEmpty { return batch }
            if closeReason != nil { return [] }
            await waitForFrames()
            if Task.isCancelled { return [] }
        }
    }
}
