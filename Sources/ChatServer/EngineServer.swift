import ChatCore
import ChatJSON
import Foundation
import Prometheus
import HTTPTypes
import Hummingbird
import HummingbirdWebSocket
import Logging
import NIOCore
import NIOWebSocket
import ServiceLifecycle
import SocketIOCodec
import Synchronization

/// The Engine.IO v4 / Socket.IO v5 endpoint at `/socket.io/` with the `/chat` namespace: handshakes, long
/// polling, WebSocket (direct or upgraded from polling), heartbeats, and the Socket.IO packets that it turns
/// into core commands. Runs as a service: it owns the heartbeat; a session has no task of its own (its packets
/// are handled by the transport that read them, its outbox is drained by a `SocketWriter` on the event loop).
public final class EngineServer: Service, Sendable {
    static let namespace = "/chat"
    static let maxPacketsPerPoll = 16
    static let eventPrefix: [UInt8] = Array("42/chat,".utf8)

    let supervisor: Supervisor
    let tokens: TokenVerifier
    let configuration: ServerConfiguration
    let metrics: BrokerMetrics
    let logger: Logger
    private let sessions = Mutex<[String: EngineSession]>([:])

    public init(supervisor: Supervisor, tokens: TokenVerifier, configuration: ServerConfiguration, metrics: BrokerMetrics, logger: Logger) {
        self.supervisor = supervisor
        self.tokens = tokens
        self.configuration = configuration
        self.metrics = metrics
        self.logger = logger
    }

    var pingIntervalNanos: UInt64 { UInt64(configuration.pingInterval) * 1_000_000 }
    var pingTimeoutNanos: UInt64 { UInt64(configuration.pingTimeout) * 1_000_000 }

    /// How many Engine.IO sessions are open.
    public var sessionCount: Int { sessions.withLock { $0.count } }

    // MARK: - Service

    public func run() async throws {
        await withDiscardingTaskGroup { group in
            group.addTask { await self.heartbeat() }
            group.addTask { await self.supervisor.run() }
            await withGracefulShutdownHandler {
                while !Task.isShuttingDownGracefully && !Task.isCancelled {
                    try? await Task.sleep(for: .milliseconds(200))
                }
            } onGracefulShutdown: {
                self.closeAllSessions(reason: "server shutting down")
            }
            group.cancelAll()
        }
    }

    private func heartbeat() async {
        while !Task.isCancelled {
            try? await Task.sleep(for: .milliseconds(250))
            let now = monotonicNanos()
            let connectTimeout = UInt64(configuration.connectTimeout * 1e9)
            for session in sessions.withLock({ Array($0.values) }) {
                enum Action { case none, ping, timeout, handshakeTimeout }
                session.outbox.closeIfStalled(now: now)
                if session.outbox.closeReason == .slowConsumer {
                    close(session, reason: OutboxCloseReason.slowConsumer.rawValue)
                    continue
                }
                let action: Action = session.state.withLock { s in
                    if s.closed { return .none }
                    if s.device == nil && !s.connecting && now &- session.createdAt > connectTimeout { return .handshakeTimeout }
                    if let sent = s.pingSentAt {
                        return now &- sent > pingTimeoutNanos ? .timeout : .none
                    }
                    if now >= s.nextPingAt {
                        s.pingSentAt = now
                        return .ping
                    }
                    return .none
                }
                switch action {
                case .none: break
                case .ping: session.send([EnginePacketType.ping.rawValue], name: "ping")
                case .timeout:
                    metrics.pingTimeouts.increment()
                    close(session, reason: "ping timeout")
                case .handshakeTimeout:
                    metrics.handshakeTimeouts.increment()
                    close(session, reason: "no CONNECT within the handshake timeout")
                }
            }
        }
    }

    // MARK: - Sessions

    private func openPacket(sid: String) -> [UInt8] {
        let open: JSONValue = .object([
            "sid": .string(sid), "upgrades": .array([.string("websocket")]), "pingInterval": .int(configuration.pingInterval),
            "pingTimeout": .int(configuration.pingTimeout), "maxPayload": .int(configuration.maxPayload),
        ])
        return [EnginePacketType.open.rawValue] + JSONWriter.encode(open)
    }

    private func createSession(transport: EngineSession.Transport, handshakeToken: String?) -> EngineSession {
        let outbox = Outbox(limit: configuration.broker.outboundLimit, grace: configuration.broker.slowConsumerGrace, stats: supervisor.stats)
        let session = EngineSession(
            sid: Identifier.uuid(), transport: transport, outbox: outbox, handshakeToken: handshakeToken, pingInterval: pingIntervalNanos)
        sessions.withLock { $0[session.sid] = session }
        return session
    }

    func session(_ sid: String) -> EngineSession? { sessions.withLock { $0[sid] } }

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
        sessions.withLock { _ = $0.removeValue(forKey: session.sid) }
        if reason == OutboxCloseReason.slowConsumer.rawValue {
            logger.warning("closing slow consumer", metadata: ["connection.id": "\(session.sid)"])
        } else {
            logger.debug("closing session", metadata: ["connection.id": "\(session.sid)", "reason": "\(reason)"])
        }
        if session.outbox.closeReason == nil { session.outbox.close() }
        session.outbox.wakeDrainer()
        session.releaseReaders()
        if let channel {
            channel.writeAndFlush(WebSocketFrame(fin: true, opcode: .connectionClose, data: ByteBuffer()), promise: nil)
            channel.close(promise: nil)
        }
        if let device { disconnect(device) }
    }

    private func disconnect(_ device: Device) {
        metrics.connections.decrement()
        Task { await supervisor.disconnect(device) }
    }

    // MARK: - Socket.IO

    /// Handles one Socket.IO packet. An event's reply is sent when it is ready (a send's once durable), so sends
    /// from one socket are pipelined, at most `maxPipelinedSends` awaiting their reply at once.
    ///
    /// The async part is kept small on purpose: it runs in the connection's long-lived task, whose async frames
    /// stay allocated for the connection's life, so decoding and checks happen in the synchronous `route`.
    @inline(never)
    private func handleSocketPacket(_ bytes: [UInt8], session: EngineSession) async {
        switch route(bytes, session: session) {
        case .none:
            break
        case .connect(let packet):
            // In a task of its own: token verification and the session set-up run once per connection, and the
            // connection's task keeps no memory from them.
            await Task { await self.connect(packet, session: session) }.value
        case .disconnect(let device):
            metrics.connections.decrement()
            await supervisor.disconnect(device)
        case .event(let device, let name, let argument, let ackId):
            guard await session.acquireReplySlot(limit: configuration.maxPipelinedSends) else { return }
            await supervisor.dispatch(event: name, data: argument, from: device) { result in
                self.answer(session, ackId: ackId, result)
                session.releaseReplySlot()
            }
        }
    }

    /// What a Socket.IO packet asks for, once decoded and checked.
    private enum Route {
        case none
        case connect(SocketPacket)
        case disconnect(Device)
        case event(Device, name: String, argument: JSONValue?, ackId: Int?)
    }

    /// Decodes and checks a Socket.IO packet, answering at once what needs no await.
    private func route(_ bytes: [UInt8], session: EngineSession) -> Route {
        let packet: SocketPacket
        do { packet = try SocketCodec.decode(bytes) } catch {
            logger.debug("undecodable Socket.IO packet", metadata: ["connection.id": "\(session.sid)", "error": "\(error)"])
            metrics.eventErrors.increment()
            return .none
        }
        guard packet.namespace == Self.namespace else {
            if packet.type == .connect {
                session.send(
                    [EnginePacketType.message.rawValue]
                        + SocketCodec.encode(SocketPacket(type: .connectError, namespace: packet.namespace, data: .object(["message": .string("Invalid namespace")]))))
            }
            return .none
        }
        switch packet.type {
        case .connect:
            return .connect(packet)
        case .disconnect:
            guard let device = session.state.withLock({ s -> Device? in defer { s.device = nil }; return s.device }) else { return .none }
            return .disconnect(device)
        case .event, .binaryEvent:
            metrics.eventsIn.increment()
            // Like socket.io, packets for a namespace the socket is not connected to are ignored: after a
            // CONNECT_ERROR nothing else is sent for /chat.
            guard let device = session.device else { return .none }
            if packet.type == .binaryEvent {
                metrics.eventErrors.increment()
                reply(session, ackId: packet.ackId, ChatError.invalid("binary attachments are not supported").ackBody)
                return .none
            }
            guard let (name, argument) = packet.event else { return .none }
            return .event(device, name: name, argument: argument, ackId: packet.ackId)
        case .ack, .binaryAck, .connectError:
            return .none
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
        defer { session.state.withLock { $0.connecting = false } }
        let token = packet.data?["token"]?.stringValue ?? session.handshakeToken
        let principal: Principal
        do { principal = try await tokens.verify(token) } catch {
            connectError(session, error.message)
            return
        }
        let device: Device
        do { device = try await supervisor.connect(principal, outbox: session.outbox) } catch {
            connectError(session, error.message)
            return
        }
        let stillOpen = session.state.withLock { s -> Bool in
            guard !s.closed else { return false }
            s.device = device
            return true
        }
        guard stillOpen else {
            await supervisor.disconnect(device)
            return
        }
        metrics.connections.increment()
        session.send(
            [EnginePacketType.message.rawValue]
                + SocketCodec.encode(SocketPacket(type: .connect, namespace: Self.namespace, data: .object(["sid": .string(Identifier.uuid())]))))
    }

    private func connectError(_ session: EngineSession, _ message: String) {
        session.send(
            [EnginePacketType.message.rawValue]
                + SocketCodec.encode(SocketPacket(type: .connectError, namespace: Self.namespace, data: .object(["message": .string(message)]))))
    }

    /// Handles one Engine.IO packet from either transport. Returns `false` if the session must close.
    func handleEnginePacket(_ packet: EnginePacket, session: EngineSession) async -> Bool {
        switch packet.type {
        case .message:
            if session.isClosed { return false }
            await handleSocketPacket(packet.payload, session: session)
            return !session.isClosed
        case .pong: session.pong(pingInterval: pingIntervalNanos)
        case .ping: session.send([EnginePacketType.pong.rawValue] + packet.payload)
        case .close: return false
        case .open, .upgrade, .noop: break
        }
        return true
    }

    // MARK: - Polling

    /// `GET /socket.io/?EIO=4&transport=polling[&sid=]`: a handshake, or a long poll.
    func pollingGet(sid: String?, authorization: String?) async -> (status: HTTPResponse.Status, body: [UInt8]) {
        guard let sid else {
            let session = createSession(transport: .polling, handshakeToken: authorization)
            return (.ok, openPacket(sid: session.sid))
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
            if session.isClosed || session.outbox.closeReason != nil { return (.ok, [EnginePacketType.close.rawValue]) }
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
        guard let sid, let session = session(sid) else { return Self.unknownSession }
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
    static func badRequest(_ message: String) -> (HTTPResponse.Status, [UInt8]) {
        (.badRequest, JSONWriter.encode(.object(["code": .int(3), "message": .string(message)])))
    }

    // MARK: - WebSocket

    /// Whether an upgrade request is an Engine.IO v4 websocket request for a live or new session.
    func acceptsUpgrade(_ request: HTTPRequest) -> Bool {
        let query = EngineServer.query(of: request.path ?? "")
        guard EngineServer.isEnginePath(request.path ?? ""), query["EIO"] == "4", query["transport"] == "websocket" else { return false }
        if let sid = query["sid"] { return session(sid)?.transport == .polling }
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
            session = createSession(transport: .websocket, handshakeToken: EngineServer.bearer(request.headerFields[.authorization]))
            session.state.withLock { $0.channel = channel }
            session.send(openPacket(sid: session.sid), name: "open")
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
        var skippingBinary = false
        do {
            reading: while let frame = try await iterator.next() {
                let message: ByteBuffer
                switch frame.opcode {
                case .text where frame.fin:
                    message = frame.data
                case .text:
                    fragments = frame.data
                    continue
                case .binary:
                    skippingBinary = !frame.fin
                    continue
                case .continuation:
                    if skippingBinary {
                        skippingBinary = !frame.fin
                        continue
                    }
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
                }
                guard let packet = try? EngineCodec.decode(Array(buffer: message)) else { continue }
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
