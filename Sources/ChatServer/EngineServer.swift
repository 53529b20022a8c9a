import ChatCore
import ChatJSON
import Foundation
import Prometheus
import HTTPTypes
import Hummingbird
import HummingbirdWebSocket
import Logging
import NIOCore
import NIOPosix
import NIOWebSocket
import ServiceLifecycle
import SocketIOCodec
import Synchronization

/// The Engine.IO v4 / Socket.IO v5 endpoint at `/socket.io/` with the `/chat` namespace: handshakes, long
/// polling, WebSocket (direct or upgraded from polling), heartbeats, and the Socket.IO packets that it turns
/// into core commands. A session has no task of its own: its packets are handled by the transport that read
/// them, its outbox is drained by a `SocketWriter` on the event loop, its heartbeat is timers on an event loop,
/// and its handshake deadline is found by a sweep of the sessions awaiting a CONNECT, which `run()` does
/// (docs/PROTOCOL.md §1). Malformed packets close the session, as socket.io does.
public final class EngineServer: Service, Sendable {
    static let namespace = "/chat"
    static let maxPacketsPerPoll = 16
    /// The most binary attachments a session may owe (announced and not yet received; none is supported, the
    /// announced ones are read and dropped): more is a protocol error.
    static let maxAttachments = 16
    /// The most members a JSON object may have in a packet of a session that has not connected to `/chat`.
    static let maxObjectMembersBeforeConnect = 16
    /// What a session that has not connected to `/chat` may have queued and unread (the open packet, pings, CONNECT
    /// errors): one frame or byte more closes it (`Outbox.restrict`).
    static let maxFramesBeforeConnect = 32
    static let maxQueuedBytesBeforeConnect = 16 * 1024
    static let eventPrefix: [UInt8] = Array("42/chat,".utf8)

    let supervisor: Supervisor
    let tokens: TokenVerifier
    let configuration: ServerConfiguration
    let metrics: BrokerMetrics
    /// The TCP connections the server holds at once (`--max-connections`), checked as each is accepted.
    let connections: ConnectionLimit
    let logger: Logger
    let sessions = Mutex<[String: EngineSession]>([:])
    /// Sessions that have not completed a Socket.IO CONNECT yet (at most `maxPendingSessions`, the oldest evicted past
    /// it): all an unauthenticated client can hold.
    let pending: PendingSessions
    /// The inbound bytes each user's sessions share (`UserInboundBudget`).
    let userInbound: UserInboundBudget
    /// What WebSocket messages begun and not yet whole hold, per user and before a connection (`WebSocketMessageGuard`).
    let heldMessages: HeldMessageBytes
    /// Graceful shutdown began: no new WebSocket session is opened.
    private let stopping = Atomic<Bool>(false)
    /// Graceful shutdown began: events are answered `shuttingDown` instead of dispatched (`finishRepliesInFlight`).
    private let quiescing = Atomic<Bool>(false)
    /// One drain queue per event loop that runs websockets, made on first use.
    private let drainQueues = Mutex<[ObjectIdentifier: EventLoopDrainQueue]>([:])
    /// The first ping of every new session (made in `init`, which it calls back).
    private let firstPings: Mutex<FirstPingQueue?> = Mutex(nil)

    public init(supervisor: Supervisor, tokens: TokenVerifier, configuration: ServerConfiguration, metrics: BrokerMetrics, logger: Logger) {
        self.supervisor = supervisor
        self.tokens = tokens
        self.configuration = configuration
        self.metrics = metrics
        self.logger = logger
        // The soft open-file limit is raised whether or not --max-connections is given (a bound past the limit would
        // let connections take every descriptor again).
        let openFileLimit = ConnectionLimit.raiseOpenFileLimit(logger: logger) ?? 1024
        let maxConnections = configuration.maxConnections ?? ConnectionLimit.defaultMax(openFileLimit: openFileLimit)
        if maxConnections > ConnectionLimit.defaultMax(openFileLimit: openFileLimit) {
            logger.warning(
                "--max-connections is more than the open-file limit less 256: connections may take every descriptor",
                metadata: ["max-connections": "\(maxConnections)", "open-file limit": "\(openFileLimit)"])
        }
        connections = ConnectionLimit(max: maxConnections, metrics: metrics)
        // At most half the connections await their CONNECT: held past that, the oldest is closed for a newcomer, so
        // sessions that never CONNECT (held until `--connect-timeout`) cannot fill `--max-connections` (at 2,000 and
        // 10,000 pending sessions they could, unevicted: an outside probe).
        pending = PendingSessions(capacity: min(configuration.maxPendingSessions, max(1, maxConnections / 2)))
        userInbound = UserInboundBudget(
            bytesPerSecond: configuration.inboundBytesPerSecond, burst: configuration.inboundBytesBurst,
            connections: configuration.broker.userRateConnections)
        // One user's unfinished messages: two of --max-payload for each of --user-rate-connections (8 MB by default).
        heldMessages = HeldMessageBytes(
            perUser: configuration.broker.userBound(twice: configuration.maxPayload), beforeConnect: Self.heldBeforeConnectBound)
        let queue = FirstPingQueue(interval: .milliseconds(Int64(configuration.pingInterval))) { [weak self] session in
            self?.ping(session, cycle: 0)
        }
        firstPings.withLock { $0 = queue }
    }

    var pingInterval: TimeAmount { .milliseconds(Int64(configuration.pingInterval)) }
    var pingTimeout: TimeAmount { .milliseconds(Int64(configuration.pingTimeout)) }

    /// The drain queue of `eventLoop`, for the socket writers of its channels.
    func drainQueue(for eventLoop: any EventLoop) -> EventLoopDrainQueue {
        drainQueues.withLock { queues in
            let key = ObjectIdentifier(eventLoop)
            if let queue = queues[key] { return queue }
            let queue = EventLoopDrainQueue(eventLoop: eventLoop)
            queues[key] = queue
            return queue
        }
    }

    // MARK: - Service

    public func run() async throws {
        await withDiscardingTaskGroup { group in
            group.addTask { await self.closeStalledConsumers() }
            group.addTask { await self.supervisor.run() }
            try? await gracefulShutdown()
            closeAllSessions(reason: "server shutting down")
            group.cancelAll()
        }
    }

    /// Closes sessions whose outbox stayed over its limit past the grace period while nothing was enqueued (an
    /// enqueue checks that itself). Four times a second: the grace is a second by default.
    private func closeStalledConsumers() async {
        while !Task.isCancelled {
            try? await Task.sleep(for: .milliseconds(250))
            let now = monotonicNanos()
            for session in sessions.withLock({ Array($0.values) }) {
                session.outbox.closeIfStalled(now: now)
                if session.outbox.closeReason == .slowConsumer { close(session, reason: OutboxCloseReason.slowConsumer.rawValue) }
            }
            expireConnectDeadlines()
        }
    }

    /// Closes the sessions awaiting a CONNECT whose deadline passed (`connectTimeout` from the handshake, or from a
    /// DISCONNECT), four times a second. A CONNECT still being checked at the deadline decides: refused, the session
    /// closes. Looks at the expired sessions only (`PendingSessions.expire`), and no session has a deadline timer
    /// of its own: a flood of handshakes whose sessions are evicted leaves no timers behind.
    func expireConnectDeadlines(now: NIODeadline = .now()) {
        for sid in pending.expire(now: now) {
            guard let session = session(sid) else { continue }
            let expired = session.state.withLock { s -> Bool in
                guard !s.closed, s.device == nil, s.connectDeadline <= now else { return false }
                if s.connecting {
                    s.deadlinePassed = true
                    return false
                }
                return true
            }
            if expired { handshakeTimedOut(session) }
        }
    }

    /// Arms the session's next ping, `pingInterval` from now (the first one, from the handshake, is queued in
    /// `FirstPingQueue` instead). The timers carry the heartbeat cycle they were armed in and do nothing once a pong
    /// (or a close) moved on, so none is ever cancelled.
    private func schedulePing(_ session: EngineSession, cycle: UInt64) {
        session.eventLoop.scheduleTask(in: pingInterval) { [weak self, weak session] in
            guard let self, let session else { return }
            ping(session, cycle: cycle)
        }
    }

    /// Pings the session if its heartbeat is still in `cycle`; it closes unless a pong comes within `pingTimeout`.
    /// The deadline is armed before the ping leaves, so a pong can never come before the deadline it answers.
    private func ping(_ session: EngineSession, cycle: UInt64) {
        let due = session.state.withLock { s -> Bool in
            guard !s.closed, s.heartbeat == cycle else { return false }
            s.awaitingPong = true
            return true
        }
        guard due else { return }
        session.eventLoop.scheduleTask(in: pingTimeout) { [weak self, weak session] in
            guard let self, let session else { return }
            guard session.state.withLock({ !$0.closed && $0.heartbeat == cycle && $0.awaitingPong }) else { return }
            metrics.pingTimeouts.increment()
            close(session, reason: "ping timeout")
        }
        session.send([EnginePacketType.ping.rawValue], name: "ping")
    }

    /// A pong answers the ping of the current cycle and starts the next; an unsolicited pong changes nothing.
    func pong(_ session: EngineSession) {
        let next = session.state.withLock { s -> UInt64? in
            guard s.awaitingPong else { return nil }
            s.awaitingPong = false
            s.heartbeat &+= 1
            return s.heartbeat
        }
        if let next { schedulePing(session, cycle: next) }
    }

    /// Closes the session unless it completes a CONNECT within `connectTimeout` (from the handshake, or from a
    /// DISCONNECT): counts it among the sessions awaiting a CONNECT (`countPending`) with that deadline, where
    /// `expireConnectDeadlines` finds it.
    func awaitConnect(_ session: EngineSession) {
        let deadline = connectDeadlineFromNow
        session.state.withLock { s in
            s.connectDeadline = deadline
            s.deadlinePassed = false
        }
        countPending(session, deadline: deadline)
    }

    /// `--connect-timeout` from now.
    var connectDeadlineFromNow: NIODeadline { .now() + .nanoseconds(Int64(configuration.connectTimeout * 1e9)) }

    func handshakeTimedOut(_ session: EngineSession) {
        metrics.handshakeTimeouts.increment()
        close(session, reason: "no CONNECT within the handshake timeout")
    }

    // MARK: - Sessions

    /// The handshake's answer; a session that is already on WebSocket has nothing to upgrade to.
    func openPacket(_ session: EngineSession) -> [UInt8] {
        let upgrades: [JSONValue] = session.isPolling ? [.string("websocket")] : []
        let open: JSONValue = .object([
            "sid": .string(session.sid), "upgrades": .array(upgrades), "pingInterval": .int(configuration.pingInterval),
            "pingTimeout": .int(configuration.pingTimeout), "maxPayload": .int(configuration.maxPayload),
        ])
        return [EnginePacketType.open.rawValue] + JSONWriter.encode(open)
    }

    /// A new session with its heartbeat (`FirstPingQueue`, then timers on `eventLoop`) and handshake deadline (no
    /// timer: `expireConnectDeadlines`) running, counted among the sessions awaiting a CONNECT; past `maxPendingSessions` of
    /// those, the oldest is closed (`PendingSessions`).
    func createSession(transport: EngineTransport.Kind, handshakeToken: String?, eventLoop: any EventLoop) -> EngineSession {
        let outbox = Outbox(limit: configuration.broker.outboundLimit, grace: configuration.broker.slowConsumerGrace, stats: supervisor.stats)
        // Until a token is checked the session is owed a few control frames; `connect` lifts this.
        Self.restrictUnconnected(outbox)
        // A handshake token the secret did not sign is refused at once and not kept: a session awaiting its CONNECT
        // held the 8 KB of a forged one (10,000 of them, 80 MB: an outside probe). One HMAC over at most 8 KiB.
        let forged = handshakeToken.map { !$0.isEmpty && !tokens.mayBeValid($0) } ?? false
        let session = EngineSession(
            sid: Identifier.uuid(), transport: transport, outbox: outbox, handshakeToken: forged ? nil : handshakeToken, eventLoop: eventLoop,
            inboundBudget: (configuration.inboundBytesPerSecond, configuration.inboundBytesBurst), userInbound: userInbound)
        if forged { session.state.withLock { $0.handshakeTokenRefusal = TokenError.invalid.message } }
        sessions.withLock { $0[session.sid] = session }
        awaitConnect(session)
        firstPings.withLock { $0 }?.add(session, live: sessionCount)
        return session
    }

    func session(_ sid: String) -> EngineSession? { sessions.withLock { $0[sid] } }

    /// A session without a connection to `/chat` (new, refused, or after a DISCONNECT) may hold only a few unread
    /// frames (`Outbox.restrict`), whatever its token was.
    static func restrictUnconnected(_ outbox: Outbox) {
        outbox.restrict(frames: maxFramesBeforeConnect, bytes: maxQueuedBytesBeforeConnect)
    }

    /// Open Engine.IO sessions (transports), with or without a Socket.IO CONNECT.
    var sessionCount: Int { sessions.withLock { $0.count } }

    /// Counts a session (new, one that left `/chat`, or one whose CONNECT is being checked) among those awaiting a
    /// CONNECT, until `deadline`, and closes the oldest of them if that makes one too many. A session that closed
    /// meanwhile is not counted.
    func countPending(_ session: EngineSession, deadline: NIODeadline) {
        for sid in pending.admit(session.sid, deadline: deadline) {
            guard let evicted = self.session(sid) else { continue }
            metrics.pendingEvicted.increment()
            close(evicted, reason: "evicted: over \(pending.capacity) sessions awaiting CONNECT")
        }
        if session.isClosed { pending.settle(session.sid) }
    }

    /// Takes a session off the pending count (its CONNECT succeeded, or it closed); nothing if it was not on it.
    func settlePending(_ session: EngineSession) {
        pending.settle(session.sid)
    }

    /// Graceful shutdown began (`closeAllSessions` was called).
    var isStopping: Bool { stopping.load(ordering: .relaxed) }

    /// Events are no longer dispatched (`finishRepliesInFlight` began).
    var isQuiescing: Bool { quiescing.load(ordering: .relaxed) }

    /// The answer to an event that comes once shutdown began: not stored, so the client sends it again once it has
    /// reconnected (to this node after its restart, or to another).
    static let shuttingDown = ChatError(.internal, "the server is shutting down; nothing was stored: send it again once reconnected")

    /// Shutdown's first step, before `closeAllSessions`: events stop being dispatched (each is answered
    /// `shuttingDown`), the replies already being worked on are given (a send being committed gets its ack rather
    /// than being stored unacknowledged) within `grace`, and the sockets' writers get what is left of it, at most a
    /// second, to write what their outboxes hold (a polling client takes it with its next GET).
    func finishRepliesInFlight(grace: Duration) async {
        quiescing.store(true, ordering: .relaxed)
        let clock = ContinuousClock()
        let deadline = clock.now + grace
        // A cancelled shutdown (a service failed) does not wait: its sleeps would return at once.
        func waitUntil(_ deadline: ContinuousClock.Instant, _ done: ([EngineSession]) -> Bool) async {
            while !Task.isCancelled, clock.now < deadline, !done(sessions.withLock { Array($0.values) }) {
                try? await Task.sleep(for: .milliseconds(5))
            }
        }
        await waitUntil(deadline) { sessions in !sessions.contains { $0.hasRepliesInFlight } }
        await waitUntil(min(deadline, clock.now + .seconds(1))) { sessions in !sessions.contains { $0.hasFramesToWrite } }
    }

    /// Closes every open session (shutdown); no WebSocket session opens after it.
    /// Returns the websockets' close futures: each completes once its peer has closed too (it read what was written
    /// first) or within a second (`closeWebSocketAfterWrites`).
    @discardableResult
    func closeAllSessions(reason: String) -> [EventLoopFuture<Void>] {
        stopping.store(true, ordering: .relaxed)
        var closing: [EventLoopFuture<Void>] = []
        for session in sessions.withLock({ Array($0.values) }) {
            if let channel = session.state.withLock({ $0.channel }) { closing.append(channel.closeFuture) }
            close(session, reason: reason, afterWrites: true)
        }
        return closing
    }

    /// `channel` (a long poll, a POST, a websocket) serves `session`, which has no Socket.IO connection yet: until it
    /// has one, the connection may be closed for a newcomer at `--max-connections` (`ConnectionLimit.closable`).
    func noteAwaitingConnect(_ session: EngineSession, on channel: (any Channel)?) {
        guard let channel, !session.isConnected else { return }
        connections.closable(channel) { [weak session] in session?.awaitsConnect ?? false }
    }

    /// Closes a websocket session for its client's fault (a packet that breaks the protocol) once the replies to the
    /// events before it are given and written (within a second): closed at once, the client lost the acks of sends
    /// stored already, and resent them (found by an outside probe: 20 pipelined sends then a malformed packet, all
    /// 20 stored, 0 acked). Nothing it sends meanwhile is handled; replies are bounded by the store's deadline.
    func closeAfterReplies(_ session: EngineSession, reason: String) async {
        await session.repliesGiven()
        let clock = ContinuousClock(), deadline = clock.now + .seconds(1)
        while session.hasFramesToWrite, !session.isClosed, clock.now < deadline { try? await Task.sleep(for: .milliseconds(5)) }
        close(session, reason: reason, afterWrites: true)
    }

    /// Closes a session: its outbox, its transport, its device. `afterWrites` (shutdown): its websocket is closed
    /// once what was written to it went out (the acks `finishRepliesInFlight` waited for), within a second.
    func close(_ session: EngineSession, reason: String, afterWrites: Bool = false) {
        let (wasOpen, channel, probe, device) = session.state.withLock { s -> (Bool, (any Channel)?, (any Channel)?, Device?) in
            defer {
                s.device = nil
                s.probeChannel = nil
            }
            return (s.transport.close(), s.channel, s.probeChannel, s.device)
        }
        guard wasOpen else { return }
        settlePending(session)
        sessions.withLock { _ = $0.removeValue(forKey: session.sid) }
        if reason == OutboxCloseReason.slowConsumer.rawValue {
            logger.warning("closing slow consumer", metadata: ["connection.id": "\(session.sid)"])
        } else {
            logger.debug("closing session", metadata: ["connection.id": "\(session.sid)", "reason": "\(reason)"])
        }
        if session.outbox.closeReason == nil { session.outbox.close() }
        session.outbox.wakeDrainer()
        session.releaseReaders()
        if let channel { afterWrites ? Self.closeWebSocketAfterWrites(channel) : Self.closeWebSocket(channel) }
        if let probe { Self.closeWebSocket(probe) }
        if let device { disconnect(device) }
    }

    func disconnect(_ device: Device) {
        Task { await leave(device, closingOutbox: true) }
    }

    /// A connected device leaves `/chat` (the counted connection ends).
    func leave(_ device: Device, closingOutbox: Bool) async {
        metrics.connections.decrement()
        await supervisor.disconnect(device, closingOutbox: closingOutbox)
    }
}
