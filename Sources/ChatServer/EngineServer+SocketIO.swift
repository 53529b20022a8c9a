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

/// Socket.IO on top of Engine.IO: routing a session's packets to `/chat`, CONNECT with its token check, and the
/// answers (acks, CONNECT_ERROR) the core's results become.
extension EngineServer {
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
            // within the handshake timeout and counted among the sessions awaiting a CONNECT, as a new one, and
            // held to a few unread frames as one.
            await leave(device, closingOutbox: false)
            Self.restrictUnconnected(session.outbox)
            awaitConnect(session)
        case .event(let device, let name, let argument, let ackId):
            guard await session.acquireReplySlot(limit: configuration.maxPipelinedSends) else { return true }
            // Looked at once the slot is held: shutdown either saw this event in flight and waits for its reply, or
            // began before, and then it is refused here (never stored without its ack).
            if isQuiescing {
                answer(session, ackId: ackId, .failure(Self.shuttingDown))
                session.releaseReplySlot()
                return true
            }
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
        // Before CONNECT a client sends its CONNECT only, and a token has at most 8,192 bytes: a websocket message
        // over the polling POST's bound (`maxPayloadBeforeConnect`) is not decoded. A CONNECT to /chat is refused as
        // the oversized token it carries would be; anything else is a protocol error.
        // The bound is the websocket message's, its Engine.IO type byte included (as a polling POST's body counts it).
        if device == nil, !connecting, bytes.count + 1 > maxPayloadBeforeConnect {
            guard Self.isChatConnect(bytes) else { return .protocolError("packet over \(maxPayloadBeforeConnect) bytes before CONNECT") }
            connectError(session, TokenError.invalid.message)
            return Self.noteRefusedConnect(session) ? .protocolError("\(Self.maxRefusedConnects) CONNECTs refused") : .none
        }
        // Before CONNECT succeeded, the only useful packet is a CONNECT with a token: objects stay small.
        let limit = device != nil ? JSONParser.defaultMaxObjectMembers : Self.maxObjectMembersBeforeConnect
        do { packet = try SocketCodec.decode(bytes, maxObjectMembers: limit) } catch {
            // An event of a connected client refused for its text (a long run of combining marks, a lone surrogate
            // escape as JavaScript makes of a string cut inside an emoji): answered like
            // any invalid payload, and the connection stays (socket.io would take the text, so a client that resends
            // what it buffered on reconnect must not be disconnected again and again).
            guard error.isRefusedText, device != nil || connecting, error.namespace == Self.namespace else {
                return .protocolError("undecodable Socket.IO packet: \(error)")
            }
            // Dropped while the CONNECT is being checked, as any event then.
            guard device != nil else { return .none }
            metrics.eventErrors.increment()
            reply(session, ackId: error.ackId, ChatError.invalid(error.description).ackBody)
            return .none
        }
        if let attachments = packet.attachments {
            // Binary attachments are not supported; the ones announced are consumed as they arrive, a few at a time:
            // a session owing more (a header may say 999,999, or many packets 16 each) would be a sink for that many
            // frames, which no rate limit counts.
            let owed = session.state.withLock { s -> Int in
                s.attachmentsOwed += attachments
                return s.attachmentsOwed
            }
            guard owed <= Self.maxAttachments else { return .protocolError("\(owed) binary attachments owed") }
        }
        guard packet.namespace == Self.namespace else {
            if packet.namespace == "/" { return routeDefaultNamespace(packet, session: session) }
            guard packet.type == .connect else { return .protocolError("packet for namespace \(packet.namespace.prefix(64)), which is not connected") }
            connectError(session, "Invalid namespace", namespace: packet.namespace)
            return Self.noteOtherNamespaceConnect(session)
        }
        switch packet.type {
        case .connect:
            if device != nil || connecting { return .protocolError("CONNECT to /chat while connected") }
            return .connect(packet)
        case .disconnect:
            // The CONNECT deadline starts again here, in the lock that ends the connection: a deadline timer that
            // fires before `awaitConnect` below finds this one, not the handshake's.
            let restart = connectDeadlineFromNow
            guard let device = session.state.withLock({ s -> Device? in
                defer { s.device = nil }
                if s.device != nil { s.connectDeadline = restart }
                return s.device
            }) else {
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

    /// A packet for the default namespace `/`. Every socket.io server has it, with or without handlers, and the
    /// gateway this broker replaces has none: a CONNECT is answered (no token needed, as there), and its events are
    /// dropped unanswered, as handlers that do not exist answer nothing. (Refused before, a python-socketio client
    /// with a handler on `/`, which connects `/` with `/chat`, failed to connect at all: found by an outside probe.)
    /// Nothing reaches it; a session connected to `/` only is still one awaiting its `/chat` CONNECT, with its
    /// deadline and bounds.
    private func routeDefaultNamespace(_ packet: SocketPacket, session: EngineSession) -> Route {
        let connected = session.state.withLock { $0.defaultNamespaceConnected }
        switch packet.type {
        case .connect:
            // As socket.io: a CONNECT to a namespace the socket is connected to is a protocol error.
            guard !connected else { return .protocolError("CONNECT to / while connected") }
            session.state.withLock { $0.defaultNamespaceConnected = true }
            session.send(
                [EnginePacketType.message.rawValue]
                    + SocketCodec.encode(SocketPacket(type: .connect, namespace: "/", data: .object(["sid": .string(Identifier.uuid())]))))
            return Self.noteOtherNamespaceConnect(session)
        case .disconnect:
            guard connected else { return .protocolError("DISCONNECT from / while not connected") }
            session.state.withLock { $0.defaultNamespaceConnected = false }
            return .none
        case .event, .binaryEvent, .ack, .binaryAck:
            return connected ? .none : .protocolError("packet for namespace /, which is not connected")
        case .connectError:
            return .protocolError("CONNECT_ERROR from a client")
        }
    }

    /// Counts a CONNECT to a namespace other than `/chat` (answered, or refused as one that does not exist); `.none`,
    /// or a protocol error once the session has had `maxOtherNamespaceConnects`. Counted apart from the refused
    /// CONNECTs to /chat: a socket.io client multiplexes every namespace an app uses over one connection, and counted
    /// with them, a fourth namespace closed it (and its reconnection sent them all again: found by an outside probe).
    /// Bounded all the same (each may have been inflated, up to twice --max-payload-before-connect before a token).
    private static func noteOtherNamespaceConnect(_ session: EngineSession) -> Route {
        let count = session.state.withLock { s -> Int in
            s.otherNamespaceConnects += 1
            return s.otherNamespaceConnects
        }
        return count >= maxOtherNamespaceConnects ? .protocolError("\(maxOtherNamespaceConnects) CONNECTs to other namespaces") : .none
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

    func answer(_ session: EngineSession, ackId: Int?, _ result: Result<JSONValue, ChatError>) {
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
        guard let withinRate = session.state.withLock({ s -> Bool? in
            if s.closed || s.device != nil || s.connecting { return nil }
            s.connecting = true
            return s.connects.take()
        }) else { return }
        // An empty `token` falls back to the handshake's header, as a gateway's `auth.token || header` does (a client
        // that defaults its token to "" and sends the header was refused `missing token`: an outside contract probe).
        let ownToken = packet.data?["token"]?.stringValue.flatMap { $0.isEmpty ? nil : $0 }
        func refuse(_ message: String) {
            // Not connecting any more before the refusal is queued: a packet the client sends after reading it
            // is judged as one for a namespace it is not connected to.
            let deadlinePassed = session.state.withLock { s in
                s.connecting = false
                return s.deadlinePassed
            }
            Self.restrictUnconnected(session.outbox)
            connectError(session, message)
            if Self.noteRefusedConnect(session) {
                metrics.protocolErrors.increment()
                close(session, reason: "\(Self.maxRefusedConnects) CONNECTs refused")
            } else if deadlinePassed {
                handshakeTimedOut(session)
            }
        }
        guard withinRate else { return refuse(Self.tooManyConnects) }
        // The handshake's token is checked once per session: CONNECTs that fall back to it cost nothing more.
        if ownToken == nil, let refusal = session.state.withLock({ $0.handshakeTokenRefusal }) { return refuse(refusal) }
        let principal: Principal
        do { principal = try await tokens.verify(ownToken ?? session.handshakeToken) } catch {
            if ownToken == nil { session.state.withLock { $0.handshakeTokenRefusal = error.message } }
            return refuse(error.message)
        }
        // A valid token: the session may hold a connection's backlog, and it is the newest among the sessions
        // awaiting a CONNECT (a flood of handshakes evicts older ones first, not one being connected). A refusal
        // below restricts it again to the same bounds.
        session.outbox.lift()
        countPending(session, deadline: session.state.withLock { $0.connectDeadline })
        // The CONNECT answer is queued as the device joins its user, before any event of a thread can reach it.
        let answer = OutboundFrame(
            name: "control",
            bytes: ByteBuffer(bytes: [EnginePacketType.message.rawValue]
                + SocketCodec.encode(SocketPacket(type: .connect, namespace: Self.namespace, data: .object(["sid": .string(Identifier.uuid())])))))
        let device: Device
        do { device = try await supervisor.connect(principal, outbox: session.outbox, greeting: answer) } catch { return refuse(error.message) }
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
    }

    /// CONNECTs to `/chat` one session may begin: `connectBurst` at once, then `connectRate` a second (a client that
    /// disconnects and connects again now and then never meets it). One over the rate is refused with
    /// `tooManyConnects` before its token is checked, and counts as refused (`maxRefusedConnects`).
    static let connectRate = 1.0
    static let connectBurst = 10.0
    static let tooManyConnects = "too many CONNECTs on this connection; slow down"

    /// CONNECTs to namespaces other than `/chat` (`/`, answered, or ones that do not exist, refused) one session may
    /// make: at this many it closes. More than the namespaces an app's client multiplexes over one connection, and
    /// with the refused `/chat` CONNECTs' answers no more than a session that has not connected may leave unread (32
    /// frames). (At 30, 10,000 sessions awaiting their CONNECT, each with 29 answers to 256-byte namespaces unread,
    /// held about 190 MB: an outside probe.)
    static let maxOtherNamespaceConnects = 16

    /// CONNECTs to `/chat` one session may have refused: at this many it closes. A client whose token was refused may
    /// try again with another, but what a session without a valid token can make the broker check (and, with
    /// permessage-deflate, inflate) stays a few messages' worth.
    static let maxRefusedConnects = 4

    /// Counts a refused CONNECT; `true` once the session has had `maxRefusedConnects` and must close.
    static func noteRefusedConnect(_ session: EngineSession) -> Bool {
        session.state.withLock { s in
            s.refusedConnects += 1
            return s.refusedConnects >= maxRefusedConnects
        }
    }

    /// Whether a Socket.IO packet is a CONNECT to `/chat` (`0/chat` then `,` or the end), from its first bytes.
    static func isChatConnect(_ bytes: [UInt8]) -> Bool {
        let head = chatConnectPrefix
        guard bytes.count >= head.count, bytes.starts(with: head) else { return false }
        return bytes.count == head.count || bytes[head.count] == UInt8(ascii: ",")
    }
    private static let chatConnectPrefix: [UInt8] = Array("0/chat".utf8)

    /// Whether `bytes` (a Socket.IO packet's first bytes) are a CONNECT to the default namespace `/`: `0`, alone,
    /// followed by its JSON data, or ending its packet in a polling body (the record separator).
    static func isRootConnect(_ bytes: [UInt8]) -> Bool {
        bytes.first == UInt8(ascii: "0") && (bytes.count == 1 || bytes[1] == UInt8(ascii: "{") || bytes[1] == 0x1e)
    }

    private func connectError(_ session: EngineSession, _ message: String, namespace: String = EngineServer.namespace) {
        session.send(
            [EnginePacketType.message.rawValue]
                + SocketCodec.encode(SocketPacket(type: .connectError, namespace: namespace, data: .object(["message": .string(message)]))))
    }

    /// Handles one Engine.IO packet from either transport. Returns `false` if the session must close.
    func handleEnginePacket(_ packet: EnginePacket, session: EngineSession) async -> Bool {
        // An outbox closed (a slow consumer, or too many unread answers before CONNECT) ends the session: the rest
        // of a polling POST is not handled.
        if session.isClosed || session.outbox.closeReason != nil { return false }
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
            session.state.withLock { $0.transport.requestClose() }
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
}
