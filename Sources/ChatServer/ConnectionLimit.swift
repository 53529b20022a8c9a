import DequeModule
import Glibc
import Logging
import NIOCore
import Prometheus
import Synchronization

/// How many TCP connections the broker holds at once (`--max-connections`): a connection accepted past it is closed
/// at once, before anything is read from it. Without a bound, connections that send nothing (each held until
/// `--request-read-timeout`) could take every file descriptor the process may open: the broker then could not
/// accept anyone, spun on its listening socket, and libdispatch, failing to open a file, stopped the process. By
/// default the bound is the open-file limit less `reserve` descriptors (the database, its files, the webhook's
/// connections, logs), so the process always has some left.
///
/// At the bound, a newcomer is not refused while a connection that is silent is open (one that has not sent a whole
/// first request head, or an HTTP keep-alive connection waiting for its next one with nothing in flight): the oldest
/// such silent connection is closed for it instead (as the oldest session awaiting its CONNECT is). Refused
/// newcomer-first, one client holding 20,000 silent sockets, reopening any that closed, kept everyone else out (an
/// outside probe: 11 of 35 fresh connections of a bystander failed). A connection with a request in flight (a long
/// poll), and a websocket, are never closed for a newcomer, unless it is one of an Engine.IO session that has no
/// Socket.IO connection yet, or a REST request whose body is still arriving (`closable`); one still sending its first
/// head may be, at the bound. (A tokenless
/// client held every connection that way: each waiting polling session kept a long poll and a POST whose body it held
/// back, half the bound in sessions, and no newcomer got in, `/health` included; an outside probe.)
/// Every operation is O(1) amortized, as in `PendingSessions`.
final class ConnectionLimit: Sendable {
    let max: Int
    private let open = Atomic<Int>(0)
    private let refused: Counter
    private let silent = Mutex(Silent())

    /// The silent connections, and those awaiting a CONNECT, oldest first.
    private struct Silent {
        /// The live entries: each such connection's turn.
        var turns: [ObjectIdentifier: UInt64] = [:]
        /// Every admission in order, stale ones (connections that spoke or closed) included. `waiting`: whether a
        /// connection that is not silent may still be closed (asked when the entry comes up; `closable`).
        var order = Deque<(id: ObjectIdentifier, turn: UInt64, channel: any Channel, waiting: (@Sendable () -> Bool)?)>()
        var nextTurn: UInt64 = 0
        /// Connections taken off to be closed for a newcomer, until their close runs on their own event loop: one that
        /// speaks first (a head read on its loop before the close) is not closed (`spoke` takes it off here too).
        var evicting = Set<ObjectIdentifier>()

        mutating func add(_ channel: any Channel, waiting: (@Sendable () -> Bool)? = nil) {
            let id = ObjectIdentifier(channel)
            turns[id] = nextTurn
            order.append((id, nextTurn, channel, waiting))
            nextTurn &+= 1
            if order.count > 2 * turns.count + 1024 {
                let live = turns
                order = Deque(order.filter { live[$0.id] == $0.turn })
            }
        }

        /// Takes the oldest live entry off, if any, and its question (`waiting`), to be asked outside the lock.
        mutating func popOldest() -> (channel: any Channel, waiting: (@Sendable () -> Bool)?)? {
            while let oldest = order.popFirst() {
                guard turns[oldest.id] == oldest.turn else { continue }
                turns[oldest.id] = nil
                evicting.insert(oldest.id)
                return (oldest.channel, oldest.waiting)
            }
            return nil
        }
    }

    /// Descriptors kept for everything that is not a client connection.
    static let reserve = 256
    /// How far past `max` the open count may go while evicted connections finish closing (each is counted out once
    /// closed, on its own event loop): newcomers past it are refused. Within `reserve`.
    static let evictionsInFlight = 64

    init(max: Int, metrics: BrokerMetrics) {
        self.max = max
        refused = metrics.connectionsOverLimit
    }

    /// `channel` sent a whole request head (its first, `FirstRequestDeadline`; or a later one, `RequestHeadGuard`): it is
    /// no longer closed for a newcomer.
    func spoke(_ channel: any Channel) {
        let id = ObjectIdentifier(channel)
        silent.withLock {
            $0.turns[id] = nil
            $0.evicting.remove(id)
        }
    }

    /// `channel` answered its requests, its last answer written, and waits for the next head with nothing in flight (an
    /// idle keep-alive connection), or is only draining a body after its early answer: it may be closed for a newcomer
    /// again, as the newest such. (Exempt once it had spoken, a client
    /// that sent one `GET /health` every half minute on each of its sockets held the bound as silent ones did: a review.)
    func idle(_ channel: any Channel) {
        // A closed one is not added: its close already took it off, and nothing would again.
        guard channel.isActive else { return }
        silent.withLock { $0.add(channel) }
    }

    /// `channel` may be closed for a newcomer at the bound, as the newest such, as long as `holds` says so (asked
    /// outside this type's lock, when its turn comes): a request (a long poll, a POST), or the websocket, of an
    /// Engine.IO session that has no Socket.IO connection yet; a REST request whose body is still arriving (one user
    /// held every connection with bodies sent but for their last byte, each costing one write token; an outside
    /// probe). A head read on it later (`spoke`), or its answer (`idle`), takes the place of this entry.
    func closable(_ channel: any Channel, while holds: @escaping @Sendable () -> Bool) {
        // On the channel's event loop, where its close (and `spoke`) runs: a connection that closed meanwhile leaves no
        // entry behind (a review).
        channel.eventLoop.execute {
            guard channel.isActive else { return }
            self.silent.withLock { $0.add(channel, waiting: holds) }
        }
    }

    /// The oldest connection that may be closed for a newcomer, taken off: a silent one, or a `closable` one that still
    /// may be. Each entry is looked at once, so O(1) amortized.
    private func evictable() -> (channel: any Channel, waiting: (@Sendable () -> Bool)?)? {
        while let (channel, waiting) = silent.withLock({ $0.popOldest() }) {
            guard let waiting, !waiting() else { return (channel, waiting) }
            // Its session connected since, or its body arrived: not closed for a newcomer (nor taken for eviction).
            let id = ObjectIdentifier(channel)
            silent.withLock { _ = $0.evicting.remove(id) }
        }
        return nil
    }

    /// Runs a new connection's `setUp` if it is admitted (`admit`); a set-up that fails closes the channel (NIO leaves
    /// it open otherwise), so that it is counted out.
    func setUp<Value: Sendable>(_ channel: any Channel, _ setUp: () -> EventLoopFuture<Value>) -> EventLoopFuture<Value> {
        guard admit(channel) else { return channel.eventLoop.makeFailedFuture(ConnectionOverLimit()) }
        return setUp().flatMapError { error in
            channel.close(promise: nil)
            return channel.eventLoop.makeFailedFuture(error)
        }
    }

    /// Counts `channel` among the open connections until it closes. If `max` are open, the oldest silent connection (or
    /// `closable` one) is closed for it; if there is none, it is closed at once.
    private func admit(_ channel: any Channel) -> Bool {
        let now = open.wrappingAdd(1, ordering: .relaxed).newValue
        if now > max {
            let evicted = now <= max + Self.evictionsInFlight ? evictable() : nil
            refused.increment()
            guard let evicted else {
                open.wrappingSubtract(1, ordering: .relaxed)
                channel.close(promise: nil)
                return false
            }
            // Closed on its own event loop, unless a head was read there since it was taken (a request in flight is
            // never cut for a newcomer: a review), or it stopped being `closable` meanwhile.
            let (victim, waiting) = evicted, id = ObjectIdentifier(victim)
            victim.eventLoop.execute {
                if self.silent.withLock({ $0.evicting.remove(id) != nil }), waiting?() ?? true { victim.close(promise: nil) }
            }
        }
        silent.withLock { $0.add(channel) }
        channel.closeFuture.whenComplete { _ in
            self.open.wrappingSubtract(1, ordering: .relaxed)
            self.spoke(channel)
        }
        return true
    }

    /// The connection bound when none is configured: the open-file limit (raised to its hard limit first, as most
    /// servers do at start; `raiseOpenFileLimit`) less the reserve, at least 1.
    static func defaultMax(openFileLimit: Int) -> Int {
        Swift.max(1, openFileLimit - reserve)
    }

    /// Raises the soft open-file limit to the hard one; returns the soft limit in force afterwards (`nil` if it
    /// cannot be read).
    @discardableResult
    static func raiseOpenFileLimit(logger: Logger) -> Int? {
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return nil }
        if limit.rlim_cur < limit.rlim_max {
            var raised = limit
            raised.rlim_cur = limit.rlim_max
            if setrlimit(Int32(RLIMIT_NOFILE.rawValue), &raised) == 0 {
                logger.debug("open-file limit raised", metadata: ["from": "\(limit.rlim_cur)", "to": "\(raised.rlim_cur)"])
                limit = raised
            }
        }
        return limit.rlim_cur >= rlim_t(Int.max) ? Int.max : Int(limit.rlim_cur)
    }
}

/// An error that makes the server drop a connection `ConnectionLimit` closed.
struct ConnectionOverLimit: Error {}

/// A condition one side clears once: whether a `ConnectionLimit.closable` connection still may be closed.
final class ClosableWhile: Sendable {
    private let holds = Atomic(true)

    var isSet: Bool { holds.load(ordering: .relaxed) }

    func clear() { holds.store(false, ordering: .relaxed) }
}
