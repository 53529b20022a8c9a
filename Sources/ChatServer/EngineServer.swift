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
/// them, its outbox is drained by a `SocketWriter` on the event loop, and its heartbeat and handshake deadline
/// are timers on an event loop, fired at the configured times (docs/PROTOCOL.md §1). Malformed packets close
/// the session, as socket.io does.
public final class EngineServer: Service, Sendable {
    static let namespace = "/chat"
    static let maxPacketsPerPoll = 16
    /// The most members a JSON object may have in a packet of a session that has not connected to `/chat`.
    static let maxObjectMembersBeforeConnect = 16
    static let eventPrefix: [UInt8] = Array("42/chat,".utf8)

    let supervisor: Supervisor
    let tokens: TokenVerifier
    let configuration: ServerConfiguration
    let metrics: BrokerMetrics
    let logger: Logger
    private let sessions = Mutex<[String: EngineSession]>([:])
    /// Sessions that have not completed a Socket.IO CONNECT yet (bounded by `maxPendingSessions`): all an
    /// unauthenticated client can hold.
    private let pendingSessions = Atomic<Int>(0)

    public init(supervisor: Supervisor, tokens: TokenVerifier, configuration: ServerConfiguration, metrics: BrokerMetrics, logger: Logger) {
        self.supervisor = supervisor
        self.tokens = tokens
        self.configuration = configuration
        self.metrics = metrics
        self.logger = logger
    }

    var pingInterval: TimeAmount { .milliseconds(Int64(configuration.pingInterval)) }
    var pingTimeout: TimeAmount { .milliseconds(Int64(configuration.pingTimeout)) }

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
        }
    }

    /// Arms the session's next ping, `pingInterval` from now; the session closes unless a pong comes within
    /// `pingTimeout` of it. The timers carry the heartbeat cycle they were armed in and do nothing once a pong (or a
    /// close) moved on, so none is ever cancelled. The deadline is armed before the ping leaves, so a pong can never
    /// come before the deadline it answers.
    private func schedulePing(_ session: EngineSession, cycle: UInt64) {
        session.eventLoop.scheduleTask(in: pingInterval) { [weak self, weak session] in
            guard let self, let session else { return }
            let due = session.state.withLock { s -> Bool in
                guard !s.closed, s.heartbeat == cycle else { return false }
                s.awaitingPong = true
                return true
            }
            guard due else { return }
            session.eventLoop.scheduleTask(in: self.pingTimeout) { [weak self, weak session] in
                guard let self, let session else { return }
                guard session.state.withLock({ !$0.closed && $0.heartbeat == cycle && $0.awaitingPong }) else { return }
                self.metrics.pingTimeouts.increment()
                self.close(session, reason: "ping timeout")
            }
            session.send([EnginePacketType.ping.rawValue], name: "ping")
        }
    }

    /// A pong answers the ping of the current cycle and starts the next; an unsolicited pong changes nothing.
    private func pong(_ session: EngineSession) {
        let next = session.state.withLock { s -> UInt64? in
            guard s.awaitingPong else { return nil }
            s.awaitingPong = false
            s.heartbeat &+= 1
            return s.heartbeat
        }
        if let next { schedulePing(session, cycle: next) }
    }

    /// Closes the session unless it completes a CONNECT within `connectTimeout` (from the handshake, or from a
    /// DISCONNECT). A CONNECT still being checked at the deadline decides: refused, the session closes.
    private func armConnectDeadline(_ session: EngineSession) {
        let cycle = session.state.withLock { s -> UInt64 in
            s.connectCycle &+= 1
            s.deadlinePassed = false
            return s.connectCycle
        }
        session.eventLoop.scheduleTask(in: .nanoseconds(Int64(configuration.connectTimeout * 1e9))) { [weak self, weak session] in
            guard let self, let session else { return }
            let expired = session.state.withLock { s -> Bool in
                guard !s.closed, s.connectCycle == cycle, s.device == nil else { return false }
                if s.connecting {
                    s.deadlinePassed = true
                    return false
                }
                return true
            }
            if expired { self.handshakeTimedOut(session) }
        }
    }

    private func handshakeTimedOut(_ session: EngineSession) {
        metrics.handshakeTimeouts.increment()
        close(session, reason: "no CONNECT within the handshake timeout")
    }

    // MARK: - Sessions

    /// The handshake's answer; a session that is already on WebSocket has nothing to upgrade to.
    private func openPacket(_ session: EngineSession) -> [UInt8] {
        let upgrades: [JSONValue] = session.transport == .polling ? [.string("websocket")] : []
        let open: JSONValue = .object([
            "sid": .string(session.sid), "upgrades": .array(upgrades), "pingInterval": .int(configuration.pingInterval),
            "pingTimeout": .int(configuration.pingTimeout), "maxPayload": .int(configuration.maxPayload),
        ])
        return [EnginePacketType.open.rawValue] + JSONWriter.encode(open)
    }

    /// A new session with its heartbeat and handshake deadline running (timers on `eventLoop`); `nil` if
    /// `maxPendingSessions` sessions are already waiting for their CONNECT.
    private func createSession(transport: EngineSession.Transport, handshakeToken: String?, eventLoop: any EventLoop) -> EngineSession? {
        guard reservePendingSlot() else {
            metrics.handshakesRefused.increment()
            return nil
        }
        let outbox = Outbox(limit: configuration.broker.outboundLimit, grace: configuration.broker.slowConsumerGrace, stats: supervisor.stats)
        let session = EngineSession(sid: Identifier.uuid(), transport: transport, outbox: outbox, handshakeToken: handshakeToken, eventLoop: eventLoop)
        sessions.withLock { $0[session.sid] = session }
        armConnectDeadline(session)
        schedulePing(session, cycle: 0)
        return session
    }

    func session(_ sid: String) -> EngineSession? { sessions.withLock { $0[sid] } }

    /// Open Engine.IO sessions (transports), with or without a Socket.IO CONNECT.
    var sessionCount: Int { sessions.withLock { $0.count } }

    /// Counts a session that left `/chat` among those awaiting a CONNECT again; `false` if that is over the cap.
    private func awaitConnectAgain(_ session: EngineSession) -> Bool {
        guard reservePendingSlot() else { return false }
        let open = session.state.withLock { s -> Bool in
            guard !s.closed else { return false }
            s.awaitingConnect = true
            return true
        }
        if !open { pendingSessions.wrappingAdd(-1, ordering: .relaxed) }
        return open
    }

    /// Counts one more session awaiting a CONNECT; `false` (and nothing counted) past `maxPendingSessions`.
    private func reservePendingSlot() -> Bool {
        guard pendingSessions.wrappingAdd(1, ordering: .relaxed).newValue <= configuration.maxPendingSessions else {
            pendingSessions.wrappingAdd(-1, ordering: .relaxed)
            return false
        }
        return true
    }

    /// Takes a session off the pending count once (its CONNECT succeeded, or it closed before).
    private func settlePending(_ session: EngineSession) {
        let wasPending = session.state.withLock { s in
            defer { s.awaitingConnect = false }
            return s.awaitingConnect
        }
        if wasPending { pendingSessions.wrappingAdd(-1, ordering: .relaxed) }
    }

    /// Closes every open session (shutdown).
    func closeAllSessions(reason: String) {
        for session in sessions.withLock({ Array($0.values) }) { close(session, reason: reason) }
    }

    /// Closes a session: its outbox, its transport, its device.
    func close(_ session: EngineSession, reason: String) {
        let (wasOpen, channel, device) = session.state.withLock { s -> (Bool, (any Channel)?, Device?) in
            defer {
                s.closed = true
                s.device = nil
            }
            return (!s.closed, s.channel, s.device)
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
        if let channel { Self.closeWebSocket(channel) }
        if let device { disconnect(device) }
    }

    private func disconnect(_ device: Device) {
        Task { await leave(device, closingOutbox: true) }
    }

    /// A connected device leaves `/chat` (the counted connection ends).
    private func leave(_ device: Device, closingOutbox: Bool) async {
        metrics.connections.decrement()
        await supervisor.disconnect(device, closingOutbox: closingOutbox)
    }

    // MARK: - Socket.IO

    /// Handles one Socket.IO packet. An event's reply is sent when it is ready (a send's once durable), so sends
    /// from one socket are pipelined, at most `maxPipelinedSends` awaiting their reply at once. Returns `false`
    /// if the packet was malformed or out of place: the session must close.
    ///
    /// The async part is kept small on purpose: it runs in the connection's long-lived task, whose async frames
    /// stay allocated for the connection's life, so decoding and checks happen in the synchronous `route`.
    @inline(never)
    private func handleSocketPacket(_ bytes: [UInt8], session: EngineSession) async -> Bool {
        switch route(bytes, session: session) {
        case .none:
            break
        case .protocolError(let reason):
            metrics.protocolErrors.increment()
            logger.debug("protocol error", metadata: ["connection.id": "\(session.sid)", "error": "\(reason)"])
            return false
        case .connect(let packet):
            // In a task of its own: token verification and the session set-up run once per connection, and the
            // connection's task keeps no memory from them.
            await Task { await self.connect(packet, session: session) }.value
        case .disconnect(let device):
            // The socket leaves /chat; the Engine.IO session (and its outbox) stays open and may CONNECT again,
            // within the handshake timeout and counted among the sessions awaiting a CONNECT, as a new one.
            await leave(device, closingOutbox: false)
            guard awaitConnectAgain(session) else { return false }
            armConnectDeadline(session)
        case .event(let device, let name, let argument, let ackId):
            guard await session.acquireReplySlot(limit: configuration.maxPipelinedSends) else { return true }
            await supervisor.dispatch(event: name, data: argument, from: device) { result in
                self.answer(session, ackId: ackId, result)
                session.releaseReplySlot()
            }
        }
        return true
    }

    /// What a Socket.IO packet asks for, once decoded and checked.
    private enum Route {
        case none
        /// Malformed, or not allowed in the session's state: socket.io closes the connection for these.
        case protocolError(String)
        case connect(SocketPacket)
        case disconnect(Device)
        case event(Device, name: String, argument: JSONValue?, ackId: Int?)
    }

    /// Decodes and checks a Socket.IO packet, answering at once what needs no await. Like socket.io, a packet that
    /// does not decode, or any packet but CONNECT for a namespace the socket is not connected to, is a protocol
    /// error; a CONNECT to another namespace gets a CONNECT_ERROR.
    private func route(_ bytes: [UInt8], session: EngineSession) -> Route {
        let packet: SocketPacket
        let (device, connecting) = session.state.withLock { ($0.device, $0.connecting) }
        // Before CONNECT succeeded, the only useful packet is a CONNECT with a token: objects stay small.
        let limit = device != nil ? JSONParser.defaultMaxObjectMembers : Self.maxObjectMembersBeforeConnect
        do { packet = try SocketCodec.decode(bytes, maxObjectMembers: limit) } catch {
            return .protocolError("undecodable Socket.IO packet: \(error)")
        }
        if let attachments = packet.attachments {
            // Binary attachments are not supported; the ones announced are consumed as they arrive.
            session.state.withLock { $0.attachmentsOwed += attachments }
        }
        guard packet.namespace == Self.namespace else {
            guard packet.type == .connect else { return .protocolError("packet for namespace \(packet.namespace.prefix(64)), which is not connected") }
            connectError(session, "Invalid namespace", namespace: packet.namespace)
            return .none
        }
        switch packet.type {
        case .connect:
            if device != nil || connecting { return .protocolError("CONNECT to /chat while connected") }
            return .connect(packet)
        case .disconnect:
            guard let device = session.state.withLock({ s -> Device? in defer { s.device = nil }; return s.device }) else {
                return connecting ? .none : .protocolError("DISCONNECT from /chat while not connected")
            }
            return .disconnect(device)
        case .event, .binaryEvent:
            guard let device else {
                // Dropped while a CONNECT is being checked (a reader awaits its CONNECT, so only a second transport
                // of the session could get here then); with no CONNECT at all it is a protocol error.
                return connecting ? .none : .protocolError("EVENT for /chat before CONNECT")
            }
            guard let (name, argument) = packet.event else { return .protocolError("EVENT without a name") }
            metrics.countEventIn(name)
            if packet.type == .binaryEvent {
                metrics.eventErrors.increment()
                reply(session, ackId: packet.ackId, ChatError.invalid("binary attachments are not supported").ackBody)
                return .none
            }
            return .event(device, name: name, argument: argument, ackId: packet.ackId)
        case .ack, .binaryAck:
            // The broker asks clients for no acknowledgement: nothing to match.
            return device == nil && !connecting ? .protocolError("ACK for /chat before CONNECT") : .none
        case .connectError:
            return .protocolError("CONNECT_ERROR from a client")
        }
    }

    /// A binary message: an attachment announced by a BINARY_EVENT or BINARY_ACK is consumed; any other is a
    /// protocol error (socket.io's parser throws "got binary data when not reconstructing a packet").
    private func handleBinary(session: EngineSession) -> Bool {
        session.state.withLock { s in
            guard s.attachmentsOwed > 0 else { return false }
            s.attachmentsOwed -= 1
            return true
        }
    }

    private func answer(_ session: EngineSession, ackId: Int?, _ result: Result<JSONValue, ChatError>) {
        switch result {
        case .success(let body): reply(session, ackId: ackId, body)
        case .failure(let error):
            metrics.eventErrors.increment()
            reply(session, ackId: ackId, error.ackBody)
        }
    }

    private func reply(_ session: EngineSession, ackId: Int?, _ body: JSONValue) {
        guard let ackId else { return }
        session.send(
            [EnginePacketType.message.rawValue]
                + SocketCodec.encode(SocketPacket(type: .ack, namespace: Self.namespace, ackId: ackId, data: .array([body]))), name: "ack")
    }

    private func connect(_ packet: SocketPacket, session: EngineSession) async {
        guard session.state.withLock({ s -> Bool in
            if s.device != nil || s.connecting { return false }
            s.connecting = true
            return true
        }) else { return }
        let token = packet.data?["token"]?.stringValue ?? session.handshakeToken
        func refuse(_ message: String) {
            // Not connecting any more before the refusal is queued: a packet the client sends after reading it
            // is judged as one for a namespace it is not connected to.
            let deadlinePassed = session.state.withLock { s in
                s.connecting = false
                return s.deadlinePassed
            }
            connectError(session, message)
            if deadlinePassed { handshakeTimedOut(session) }
        }
        let principal: Principal
        do { principal = try await tokens.verify(token) } catch { return refuse(error.message) }
        let device: Device
        do { device = try await supervisor.connect(principal, outbox: session.outbox) } catch { return refuse(error.message) }
        let stillOpen = session.state.withLock { s -> Bool in
            s.connecting = false
            guard !s.closed else { return false }
            s.device = device
            return true
        }
        guard stillOpen else {
            await supervisor.disconnect(device)
            return
        }
        settlePending(session)
        metrics.connections.increment()
        session.send(
            [EnginePacketType.message.rawValue]
                + SocketCodec.encode(SocketPacket(type: .connect, namespace: Self.namespace, data: .object(["sid": .string(Identifier.uuid())]))))
    }

    private func connectError(_ session: EngineSession, _ message: String, namespace: String = EngineServer.namespace) {
        session.send(
            [EnginePacketType.message.rawValue]
                + SocketCodec.encode(SocketPacket(type: .connectError, namespace: namespace, data: .object(["message": .string(message)]))))
    }

    /// Handles one Engine.IO packet from either transport. Returns `false` if the session must close.
    func handleEnginePacket(_ packet: EnginePacket, session: EngineSession) async -> Bool {
        if session.isClosed { return false }
        switch packet.type {
        case .message where packet.isBinary:
            guard handleBinary(session: session) else {
                metrics.protocolErrors.increment()
                return false
            }
        case .message:
            guard await handleSocketPacket(packet.payload, session: session) else { return false }
            return !session.isClosed
        case .pong:
            pong(session)
        case .close:
            session.state.withLock { $0.closedByClient = true }
            return false
        case .ping:
            // In Engine.IO v4 only the server pings (engine.io closes: "invalid heartbeat direction").
            metrics.protocolErrors.increment()
            return false
        case .open, .upgrade, .noop:
            // Ignored, as engine.io ignores them.
            break
        }
        return true
    }

    // MARK: - Polling

    /// `GET /socket.io/?EIO=4&transport=polling[&sid=]`: a handshake, or a long poll.
    func pollingGet(sid: String?, authorization: String?) async -> (status: HTTPResponse.Status, body: [UInt8]) {
        guard let sid else {
            guard let session = createSession(transport: .polling, handshakeToken: authorization, eventLoop: MultiThreadedEventLoopGroup.singleton.any())
            else { return Self.tooManyPending }
            return (.ok, openPacket(session))
        }
        guard let session = session(sid) else { return Self.unknownSession }
        if let refusal = admit(session, \.pollPending, kind: "poll", when: { $0.transport == .polling }) { return refusal }
        defer { session.state.withLock { $0.pollPending = false } }
        while true {
            // At most 16 packets per long-poll answer: python-engineio clients refuse larger payloads
            // (`max_decode_packets`), and the client polls again at once anyway.
            let frames = session.outbox.takeAvailable(max: Self.maxPacketsPerPoll, maxBytes: configuration.maxPayload)
            if !frames.isEmpty {
                return (.ok, EngineCodec.encodePayload(frames.map { Array(buffer: $0.bytes) }))
            }
            if session.outbox.closeReason == .slowConsumer {
                close(session, reason: OutboxCloseReason.slowConsumer.rawValue)
                return (.ok, [EnginePacketType.close.rawValue])
            }
            if session.isClosed || session.outbox.closeReason != nil {
                // A long poll ended by the client's own `close` gets a noop, as socket.io answers it.
                let byClient = session.state.withLock { $0.closedByClient }
                return (.ok, [byClient ? EnginePacketType.noop.rawValue : EnginePacketType.close.rawValue])
            }
            if session.state.withLock({ $0.upgrading || $0.transport != .polling }) { return (.ok, [EnginePacketType.noop.rawValue]) }
            await session.outbox.waitForFrames()
        }
    }

    /// Marks a polling request of one kind (long-poll GET or POST, by its `pending` flag) in flight. Returns the
    /// answer if it is refused: the session is not on a transport that allows it, or one of the same kind is
    /// already in flight, which Engine.IO treats as a protocol error that ends the session.
    private func admit(
        _ session: EngineSession, _ pending: WritableKeyPath<EngineSession.State, Bool>, kind: String,
        when allowed: (EngineSession.State) -> Bool
    ) -> (status: HTTPResponse.Status, body: [UInt8])? {
        enum Admission { case admitted, wrongTransport, overlapping }
        let admission = session.state.withLock { s -> Admission in
            guard allowed(s) else { return .wrongTransport }
            if s[keyPath: pending] { return .overlapping }
            s[keyPath: pending] = true
            return .admitted
        }
        switch admission {
        case .admitted: return nil
        case .wrongTransport: return Self.badRequest("Bad request")
        case .overlapping:
            close(session, reason: "overlapping \(kind)")
            return Self.badRequest("Bad request")
        }
    }

    /// `POST /socket.io/?EIO=4&transport=polling&sid=`: packets from the client.
    func pollingPost(sid: String?, body: [UInt8]) async -> (status: HTTPResponse.Status, body: [UInt8]) {
        guard let sid else { return Self.badHandshakeMethod }
        guard let session = session(sid) else { return Self.unknownSession }
        if let refusal = admit(session, \.postPending, kind: "POST", when: { $0.transport == .polling || $0.upgrading }) { return refusal }
        defer { session.state.withLock { $0.postPending = false } }
        let packets: [EnginePacket]
        do { packets = try EngineCodec.decodePayload(body) } catch {
            close(session, reason: "bad polling payload")
            return Self.badRequest("Bad request")
        }
        for packet in packets where !(await handleEnginePacket(packet, session: session)) {
            close(session, reason: "client closed")
            break
        }
        return (.ok, Array("ok".utf8))
    }

    static let unknownSession: (HTTPResponse.Status, [UInt8]) = (.badRequest, Array(#"{"code":1,"message":"Session ID unknown"}"#.utf8))
    static func badRequest(_ message: String, code: Int = 3) -> (HTTPResponse.Status, [UInt8]) {
        (.badRequest, JSONWriter.encode(.object(["code": .int(code), "message": .string(message)])))
    }
    static let badHandshakeMethod = badRequest("Bad handshake method", code: 2)
    static let tooManyPending: (HTTPResponse.Status, [UInt8]) = (
        .serviceUnavailable, Array(#"{"code":4,"message":"Too many connections awaiting CONNECT; try again"}"#.utf8)
    )

    /// Refuses a request whose `EIO` or `transport` the endpoint does not speak (engine.io's codes: 5, 0).
    static func checkQuery(eio: String?, transport: String?) -> (status: HTTPResponse.Status, body: [UInt8])? {
        if eio != "4" { return badRequest("Unsupported protocol version", code: 5) }
        if transport != "polling" { return badRequest("Transport unknown", code: 0) }
        return nil
    }

    // MARK: - WebSocket

    /// Whether an upgrade request is an Engine.IO v4 websocket request for a live or new session.
    func acceptsUpgrade(_ request: HTTPRequest) -> Bool {
        let query = EngineServer.query(of: request.path ?? "")
        guard EngineServer.isEnginePath(request.path ?? ""), query["EIO"] == "4", query["transport"] == "websocket" else { return false }
        // A known session is upgraded; one already on WebSocket (a second WebSocket for the same sid) is accepted
        // and then closed at once, as engine.io does, rather than refused at the HTTP level.
        if let sid = query["sid"] { return session(sid) != nil }
        return true
    }

    /// Runs one WebSocket connection: a new session, or the upgrade of a polling one.
    func runWebSocket(request: HTTPRequest, channel: any Channel, inbound: WebSocketInboundStream, outbound: WebSocketOutboundWriter) async {
        let query = EngineServer.query(of: request.path ?? "")
        let session: EngineSession
        var iterator = inbound.makeAsyncIterator()
        if let sid = query["sid"] {
            guard let existing = self.session(sid), existing.transport == .polling else { return }
            session = existing
            guard await upgrade(session, channel: channel, iterator: &iterator, outbound: outbound) else { return }
            // A polling POST may still be handling packets the client sent before "5"; the socket's packets are
            // handled in order, so the WebSocket reader starts only once that POST is done.
            while session.state.withLock({ $0.postPending && !$0.closed }) {
                try? await Task.sleep(for: .milliseconds(2))
            }
        } else {
            guard let created = createSession(
                transport: .websocket, handshakeToken: EngineServer.bearer(request.headerFields[.authorization]), eventLoop: channel.eventLoop)
            else {
                Self.closeWebSocket(channel)
                return
            }
            session = created
            session.state.withLock { $0.channel = channel }
            session.send(openPacket(session), name: "open")
        }
        if configuration.webSocketCompression {
            await withDiscardingTaskGroup { group in
                group.addTask { await self.writeLoopCompressed(session, outbound: outbound) }
                await readLoop(session, iterator: &iterator)
            }
        } else {
            let writer = SocketWriter(
                channel: channel, outbox: session.outbox, maxBytes: configuration.broker.outboundLimit, metrics: metrics
            ) { [weak self, weak session] reason in
                guard let self, let session else { return }
                self.close(session, reason: reason)
            }
            session.state.withLock { $0.writer = writer }
            writer.start()
            await readLoop(session, iterator: &iterator)
        }
    }

    /// Reads and handles the WebSocket's packets in order until it ends, then closes the session. Reads frames
    /// (hummingbird-websocket answers pings and closes underneath) and joins fragmented text messages itself, up to
    /// `maxPayload` bytes: one async frame less in the connection's long-lived task than its message iterator.
    private func readLoop(_ session: EngineSession, iterator: inout WebSocketInboundStream.AsyncIterator) async {
        var fragments: ByteBuffer?
        var fragmentsAreBinary = false
        do {
            reading: while let frame = try await iterator.next() {
                let message: ByteBuffer
                let binary: Bool
                switch frame.opcode {
                case .text where frame.fin, .binary where frame.fin:
                    message = frame.data
                    binary = frame.opcode == .binary
                case .text, .binary:
                    fragments = frame.data
                    fragmentsAreBinary = frame.opcode == .binary
                    continue
                case .continuation:
                    guard var joined = fragments, joined.readableBytes + frame.data.readableBytes <= configuration.maxPayload else {
                        logger.debug("websocket message over maxPayload or out of order", metadata: ["connection.id": "\(session.sid)"])
                        break reading
                    }
                    var data = frame.data
                    joined.writeBuffer(&data)
                    guard frame.fin else {
                        fragments = joined
                        continue
                    }
                    fragments = nil
                    message = joined
                    binary = fragmentsAreBinary
                }
                let packet: EnginePacket
                if binary {
                    packet = .binary(Array(buffer: message))
                } else {
                    do { packet = try EngineCodec.decode(Array(buffer: message)) } catch {
                        metrics.protocolErrors.increment()
                        logger.debug("undecodable Engine.IO packet", metadata: ["connection.id": "\(session.sid)", "error": "\(error)"])
                        break reading
                    }
                }
                if !(await handleEnginePacket(packet, session: session)) { break reading }
            }
        } catch {
            logger.debug("websocket read ended", metadata: ["connection.id": "\(session.sid)", "error": "\(error)"])
        }
        close(session, reason: "transport closed")
    }

    /// The text of an unfragmented text frame.
    private static func text(_ frame: WebSocketDataFrame?) -> String? {
        guard let frame, frame.opcode == .text, frame.fin else { return nil }
        return String(buffer: frame.data)
    }

    private func upgrade(
        _ session: EngineSession, channel: any Channel, iterator: inout WebSocketInboundStream.AsyncIterator, outbound: WebSocketOutboundWriter
    ) async -> Bool {
        do {
            guard Self.text(try await iterator.next()) == "2probe" else { return false }
            try await outbound.write(.text("3probe"))
            session.state.withLock { $0.upgrading = true }
            session.outbox.wakeDrainer()
            guard Self.text(try await iterator.next()) == "5" else {
                session.state.withLock { $0.upgrading = false }
                return false
            }
        } catch {
            session.state.withLock { $0.upgrading = false }
            return false
        }
        session.state.withLock { s in
            s.upgrading = false
            s.transport = .websocket
            s.channel = channel
        }
        session.outbox.wakeDrainer()
        return true
    }

    /// The write path when permessage-deflate is on: frames go through hummingbird-websocket's writer, which
    /// compresses them (one write per frame; slower than `writeLoop`, which is why compression is off by default).
    private func writeLoopCompressed(_ session: EngineSession, outbound: WebSocketOutboundWriter) async {
        while true {
            let frames = await session.outbox.next(max: 1024, maxBytes: configuration.broker.outboundLimit)
            if frames.isEmpty { break }
            for frame in frames {
                do { try await outbound.write(.text(String(buffer: frame.bytes))) } catch {
                    close(session, reason: "write failed")
                    return
                }
            }
        }
        close(session, reason: session.outbox.closeReason == .slowConsumer ? OutboxCloseReason.slowConsumer.rawValue : "outbox closed")
    }

    // MARK: - Helpers

    /// Sends a close frame and closes the connection.
    static func closeWebSocket(_ channel: any Channel) {
        channel.writeAndFlush(WebSocketFrame(fin: true, opcode: .connectionClose, data: ByteBuffer()), promise: nil)
        channel.close(promise: nil)
    }

    static func isEnginePath(_ path: String) -> Bool {
        let p = path.split(separator: "?", maxSplits: 1).first.map(String.init) ?? path
        return p == "/socket.io/" || p == "/socket.io"
    }

    static func query(of path: String) -> [String: String] {
        guard let q = path.split(separator: "?", maxSplits: 1).dropFirst().first else { return [:] }
        var out: [String: String] = [:]
        for pair in q.split(separator: "&") {
            let kv = pair.split(separator: "=", maxSplits: 1)
            guard let key = kv.first else { continue }
            out[String(key)] = kv.count > 1 ? String(kv[1]).removingPercentEncoding ?? String(kv[1]) : ""
        }
        return out
    }

    static func bearer(_ header: String?) -> String? {
        guard let header else { return nil }
        let parts = header.split(separator: " ", maxSplits: 1)
        guard parts.count == 2, parts[0].lowercased() == "bearer" else { return nil }
        return String(parts[1]).trimmingCharacters(in: .whitespaces)
    }
}
