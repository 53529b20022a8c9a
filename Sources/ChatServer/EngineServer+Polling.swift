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
        defer { session.endPost() }
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
}
