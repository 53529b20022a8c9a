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

/// The WebSocket transport: a direct WebSocket session, or the upgrade of a polling one (probe, then the
/// switch), its reader, and the compressed writer.
extension EngineServer {
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
            guard let existing = self.session(sid), existing.isPolling else { return }
            session = existing
            guard await upgrade(session, channel: channel, iterator: &iterator, outbound: outbound) else { return }
            // A polling POST may still be handling packets the client sent before "5"; the socket's packets are
            // handled in order, so the WebSocket reader starts only once that POST is done.
            await session.postEnded()
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

    func upgrade(
        _ session: EngineSession, channel: any Channel, iterator: inout WebSocketInboundStream.AsyncIterator, outbound: WebSocketOutboundWriter
    ) async -> Bool {
        do {
            guard Self.text(try await iterator.next()) == "2probe" else { return false }
            try await outbound.write(.text("3probe"))
            guard session.state.withLock({ $0.transport.probed() }) else { return false }
            // A long poll waiting now answers noop, so that the client sends "5".
            session.outbox.wakeDrainer()
            guard Self.text(try await iterator.next()) == "5" else {
                session.state.withLock { $0.transport.probeFailed() }
                return false
            }
        } catch {
            session.state.withLock { $0.transport.probeFailed() }
            return false
        }
        let upgraded = session.state.withLock { s -> Bool in
            guard s.transport.upgraded() else { return false }
            s.channel = channel
            return true
        }
        guard upgraded else { return false }
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
}
