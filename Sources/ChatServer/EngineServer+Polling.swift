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

/// The long-polling transport: the handshake, a long GET per session at a time, and POSTs of packets.
extension EngineServer {
    /// `GET /socket.io/?EIO=4&transport=polling[&sid=]`: a handshake, or a long poll (on `channel`).
    func pollingGet(sid: String?, authorization: String?, channel: (any Channel)? = nil) async -> (status: HTTPResponse.Status, body: [UInt8]) {
        guard let sid else {
            if isQuiescing { return Self.shuttingDownRefusal }
            let session = createSession(transport: .polling, handshakeToken: authorization, eventLoop: MultiThreadedEventLoopGroup.singleton.any())
            return (.ok, openPacket(session))
        }
        guard let session = session(sid) else { return Self.unknownSession }
        // A session that closed under this request is answered as a long poll on it would be.
        if let refusal = admit(session, kind: "poll", whenClosed: closedAnswer(session), { $0.beginPoll() }) { return refusal }
        defer { session.state.withLock { $0.transport.endPoll() } }
        noteAwaitingConnect(session, on: channel)
        while true {
            // At most 16 packets per long-poll answer: python-engineio clients refuse larger payloads
            // (`max_decode_packets`), and the client polls again at once anyway.
            let frames = session.outbox.takeAvailable(max: Self.maxPacketsPerPoll, maxBytes: configuration.maxPayload)
            if !frames.isEmpty {
                return (.ok, EngineCodec.encodePayload(frames.map { Array(buffer: $0.bytes) }))
            }
            if session.outbox.closeReason == .slowConsumer {
                close(session, reason: OutboxCloseReason.slowConsumer.rawValue)
                return closedAnswer(session)
            }
            if session.isClosed || session.outbox.closeReason != nil {
                return closedAnswer(session)
            }
            if session.state.withLock({ $0.transport.longPollEnds }) { return (.ok, [EnginePacketType.noop.rawValue]) }
            await session.outbox.waitForFrames()
        }
    }

    /// What a long poll on a closed session answers: `noop` when the client closed it with its own `close` (as
    /// socket.io answers). When the server closed it for the client to connect again (a slow consumer, a shutdown),
    /// an error status, which both Socket.IO clients take as a transport error and reconnect after: python-engineio
    /// takes a `close` packet as a deliberate disconnect and does not reconnect (found by an outside probe: a
    /// python-socketio polling client never came back after a broker restart). Else `close`.
    private func closedAnswer(_ session: EngineSession) -> (status: HTTPResponse.Status, body: [UInt8]) {
        if session.state.withLock({ $0.transport.closeRequested }) { return (.ok, [EnginePacketType.noop.rawValue]) }
        if session.outbox.closeReason == .slowConsumer { return Self.slowConsumerClosed }
        // After a POST over its bound (answered 413): python-socketio took the `close` for a deliberate disconnect
        // and stayed disconnected, where socket.io keeps the session (an outside contract probe).
        if session.state.withLock({ $0.closedForOversizedPost }) { return Self.oversizedPostClosed }
        if isQuiescing { return Self.shuttingDownRefusal }
        return (.ok, [EnginePacketType.close.rawValue])
    }

    /// Starts a polling request of one kind (`begin`: the transport's `beginPoll` or `beginPost`). Returns the
    /// answer if it is refused: `400` when the session is not on a transport that allows it, or when one of the same
    /// kind is already in flight, which Engine.IO treats as a protocol error that ends the session; `whenClosed` when
    /// the session is closed.
    private func admit(
        _ session: EngineSession, kind: String, whenClosed: @autoclosure () -> (status: HTTPResponse.Status, body: [UInt8]),
        _ begin: (inout EngineTransport) -> EngineTransport.Admission
    ) -> (status: HTTPResponse.Status, body: [UInt8])? {
        switch session.state.withLock({ begin(&$0.transport) }) {
        case .admitted: return nil
        case .wrongTransport: return Self.badRequest("Bad request")
        case .closed: return whenClosed()
        case .overlapping:
            close(session, reason: "overlapping \(kind)")
            return Self.badRequest("Bad request")
        }
    }

    /// Whether a polling POST may go on, decided before its body is read.
    enum PollingPostAdmission {
        /// The session's one POST in flight from now on, until `pollingPost(_:body:)` (or `endPost`), and the most
        /// bytes its body may carry.
        case admitted(EngineSession, limit: Int)
        case refused(status: HTTPResponse.Status, body: [UInt8])
    }

    /// `POST /socket.io/?EIO=4&transport=polling&sid=`, before its body is read: a POST for no live session is
    /// answered at once, and a second POST while one is in flight (its body still coming, say) ends the session, as
    /// engine.io does, instead of each reading a body of its own. The limit is `maxPayload` once the session has its
    /// Socket.IO connection, `maxPayloadBeforeConnect` before (a client sends only its CONNECT then; events that
    /// arrive while the CONNECT is being checked are dropped anyway, so they need no room either).
    func admitPollingPost(sid: String, channel: (any Channel)? = nil) -> PollingPostAdmission {
        guard let session = session(sid) else { return .refused(status: Self.unknownSession.0, body: Self.unknownSession.1) }
        // A session that closed meanwhile is answered as engine.io answers a sid that is gone.
        if let refusal = admit(session, kind: "POST", whenClosed: Self.unknownSession, { $0.beginPost() }) {
            return .refused(status: refusal.status, body: refusal.body)
        }
        noteAwaitingConnect(session, on: channel)
        return .admitted(session, limit: session.isConnected ? configuration.maxPayload : maxPayloadBeforeConnect)
    }

    /// The packets of a polling POST that `admitPollingPost` admitted; ends the session's POST in flight.
    func pollingPost(_ session: EngineSession, body: [UInt8]) async -> (status: HTTPResponse.Status, body: [UInt8]) {
        defer { session.endPost() }
        // Closed while its body came: answered as a sid that is gone.
        if session.isClosed { return Self.unknownSession }
        // Handled as they are decoded, as engine.io does: the packets before a malformed one are handled, then the
        // session closes.
        var packets = EngineCodec.PayloadReader(body)
        while true {
            let packet: EnginePacket
            do {
                guard let next = try packets.next() else { break }
                packet = next
            } catch {
                close(session, reason: "bad polling payload")
                return Self.badRequest("Bad request")
            }
            // The body's bytes were charged as they were read; a packet shorter than the least a packet costs is
            // charged the difference (`EngineSession.minimumInboundCost`), and handled once the debt is paid.
            let short = EngineSession.minimumInboundCost - (packet.payload.count + 1)
            if short > 0 { await waitOutInboundDebt(session, nanoseconds: session.chargeInbound(short)) }
            guard await handleEnginePacket(packet, session: session) else {
                close(session, reason: session.outbox.closeReason?.rawValue ?? "client closed")
                break
            }
        }
        return (.ok, Array("ok".utf8))
    }

    /// The body of an admitted polling POST, at most `limit` bytes (else `BoundedBodyReader.TooLarge`). Each part is charged to
    /// the session's inbound budget (and its user's) as it is read, and while either is in debt nothing more is read
    /// (TCP slows the client, as for a websocket in debt): what a user's unfinished bodies hold is bounded by the budget,
    /// not by how many sessions send at once. (Charged once whole, 250 sessions of one user each held a 900 KB body one
    /// byte short of its end: 236 MB, found by an outside probe.) The answer comes once the debt is paid, so a polling
    /// client, which sends one POST at a time, sends the next no sooner.
    func readPollingBody(_ body: RequestBody, of session: EngineSession, limit: Int) async throws -> ByteBuffer {
        // A body that starts the session's login is charged its own budget only for its first bytes
        // (`EngineSession.freeLoginBytes`).
        var login = false
        return try await BoundedBodyReader(limit: limit).read(body) { before, part in
            if before == 0 { login = session.startsLogin(part) }
            let free = login && before + part.readableBytes <= EngineSession.freeLoginBytes
            await waitOutInboundDebt(session, nanoseconds: session.chargeInbound(BoundedBodyReader.cost(ofPart: part.readableBytes), sharedBeforeConnect: !free))
        }
    }

    /// Waits `nanoseconds`, in steps of at most 100 ms, or until the session closes (a graceful shutdown does not wait
    /// for the debt of a session it closed).
    private func waitOutInboundDebt(_ session: EngineSession, nanoseconds: UInt64) async {
        // At least `WebSocketInbound.minimumBudgetPause` once in debt, as for a websocket: a body of thousands of tiny
        // packets waits a few times a second, not once per packet (that was 40 % of a core per session at the budget's
        // pace; found by an outside probe).
        var left = nanoseconds > 0 ? max(nanoseconds, WebSocketInbound.minimumBudgetPause) : 0
        while left > 0, !session.isClosed {
            let step = min(left, 100_000_000)
            try? await Task.sleep(nanoseconds: step)
            left -= step
        }
    }

    /// The largest polling POST or WebSocket message a session that has not connected to `/chat` may send.
    var maxPayloadBeforeConnect: Int { min(configuration.maxPayload, configuration.maxPayloadBeforeConnect) }

    static let unknownSession: (HTTPResponse.Status, [UInt8]) = (.badRequest, Array(#"{"code":1,"message":"Session ID unknown"}"#.utf8))
    /// A long poll of a session closed as a slow consumer (`closedAnswer`): the client connects again and syncs.
    static let slowConsumerClosed: (HTTPResponse.Status, [UInt8]) = (
        .badRequest, Array(#"{"code":1,"message":"Session ID unknown: closed as a slow consumer; connect again and sync"}"#.utf8)
    )
    /// A long poll of a session closed for a POST over its bound: the client connects again.
    static let oversizedPostClosed: (HTTPResponse.Status, [UInt8]) = (
        .badRequest, Array(#"{"code":1,"message":"Session ID unknown: closed for a payload over maxPayload; connect again"}"#.utf8)
    )
    /// A handshake once graceful shutdown began, or a long poll of a session it closed: the client connects again (to
    /// another node behind a balancer).
    static let shuttingDownRefusal: (HTTPResponse.Status, [UInt8]) = (
        .serviceUnavailable, Array(#"{"code":3,"message":"the server is shutting down: connect again"}"#.utf8)
    )
    static func badRequest(_ message: String, code: Int = 3) -> (HTTPResponse.Status, [UInt8]) {
        (.badRequest, JSONWriter.encode(.object(["code": .int(code), "message": .string(message)])))
    }
    static let badHandshakeMethod = badRequest("Bad handshake method", code: 2)

    /// Refuses a request whose `EIO` or `transport` the endpoint does not speak (engine.io's codes: 5, 0).
    static func checkQuery(eio: String?, transport: String?) -> (status: HTTPResponse.Status, body: [UInt8])? {
        if eio != "4" { return badRequest("Unsupported protocol version", code: 5) }
        if transport != "polling" { return badRequest("Transport unknown", code: 0) }
        return nil
    }
}
