import DequeModule
import NIOCore
import NIOPosix
import Synchronization

/// The first ping of every new Engine.IO session, `interval` after its handshake, from one queue with one timer.
/// Every session waits the same interval, so the queue is in due order and only its head needs a timer: a session
/// costs an entry (a deadline and a weak reference) until its first ping, not a scheduled task of its own. A session
/// freed before then (evicted by a flood of handshakes, say) leaves only that entry behind, dropped when it comes
/// due or when such entries outnumber the live sessions (one pass, amortized O(1) per session): so what the queue
/// holds follows the number of sessions, not the rate of handshakes. Later pings, which only sessions that answered
/// one get, are the session's own timers.
final class FirstPingQueue: Sendable {
    private struct Entry {
        let due: NIODeadline
        weak var session: EngineSession?
    }

    private struct State {
        var entries = Deque<Entry>()
        /// A timer is scheduled for the head.
        var armed = false
    }

    private let interval: TimeAmount
    private let eventLoop: any EventLoop
    private let state = Mutex(State())
    /// Sends a session's first ping (cycle 0 of its heartbeat).
    private let ping: @Sendable (EngineSession) -> Void

    init(interval: TimeAmount, eventLoop: any EventLoop = MultiThreadedEventLoopGroup.singleton.next(), ping: @escaping @Sendable (EngineSession) -> Void) {
        self.interval = interval
        self.eventLoop = eventLoop
        self.ping = ping
    }

    /// Queues `session`'s first ping, `interval` from now; `live` is how many sessions are open.
    func add(_ session: EngineSession, live: Int) {
        let arm = state.withLock { s -> NIODeadline? in
            let due = NIODeadline.now() + interval
            s.entries.append(Entry(due: due, session: session))
            if s.entries.count > 2 * live + 1024 { s.entries.removeAll { $0.session == nil } }
            guard !s.armed else { return nil }
            s.armed = true
            return due
        }
        if let arm { schedule(at: arm) }
    }

    /// Entries waiting (closed sessions' included until they come due).
    var count: Int { state.withLock { $0.entries.count } }

    private func schedule(at due: NIODeadline) {
        eventLoop.scheduleTask(deadline: due) { [self] in fire() }
    }

    private func fire() {
        let now = NIODeadline.now()
        let (due, next) = state.withLock { s -> ([EngineSession], NIODeadline?) in
            var due: [EngineSession] = []
            while let head = s.entries.first, head.due <= now {
                s.entries.removeFirst()
                if let session = head.session { due.append(session) }
            }
            if let head = s.entries.first { return (due, head.due) }
            s.armed = false
            return (due, nil)
        }
        for session in due { ping(session) }
        if let next { schedule(at: next) }
    }
}
