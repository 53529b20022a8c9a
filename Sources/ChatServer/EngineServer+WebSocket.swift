import ChatCore
import HTTPTypes
import HummingbirdWebSocket
import NIOCore
import NIOWebSocket
import Synchronization

/// The WebSocket transport: a direct WebSocket session, or the upgrade of a polling one. A WebSocket needs no task:
/// `EngineWebSocketHandler` hands its messages to a `WebSocketInbound`, and a `SocketWriter` drains the session's
/// outbox into it. With permessage-deflate on, hummingbird-websocket runs the socket (and compresses) instead, and
/// its messages go to the same `WebSocketInbound`.
extension EngineServer {
    /// Whether an upgrade request (its path and query) is an Engine.IO v4 websocket request for a live or new session.
    func acceptsUpgrade(path: String) -> Bool {
        let query = EngineServer.query(of: path)
        guard EngineServer.isEnginePath(path), query["EIO"] == "4", query["transport"] == "websocket" else { return false }
        // A known session is upgraded; one already on WebSocket (a second WebSocket for the same sid) is accepted
        // and then closed at once, as engine.io does, rather than refused at the HTTP level.
        if let sid = query["sid"] { return session(sid) != nil }
        // A new session once graceful shutdown began is refused (`websocketRefusal`, 503).
        return !isQuiescing
    }

    /// The answer to a websocket request that is not upgraded (refused by `acceptsUpgrade`, or sent without the
    /// upgrade headers), in engine.io's words: a `sid` no session has (`known` false) is `Session ID unknown`; a new
    /// session while the server is `shuttingDown` is 503.
    static func websocketRefusal(path: String, known: Bool = false, shuttingDown: Bool = false) -> (status: HTTPResponse.Status, body: [UInt8]) {
        let query = query(of: path)
        guard isEnginePath(path) else { return badRequest("Bad request") }
        if query["EIO"] != "4" { return badRequest("Unsupported protocol version", code: 5) }
        if query["transport"] != "websocket" { return badRequest("Transport unknown", code: 0) }
        if query["sid"] != nil && !known { return unknownSession }
        if query["sid"] == nil && shuttingDown { return shuttingDownRefusal }
        return badRequest("Bad request")
    }

    /// Called on the event loop once the upgrade's answer is written: opens or upgrades the session and adds the
    /// handlers that run the socket from now on.
    func attachWebSocket(path: String, authorization: String?, channel: any Channel) throws {
        let maxBytes = configuration.broker.outboundLimit
        let metrics = self.metrics
        let drainQueue = self.drainQueue(for: channel.eventLoop)
        guard
            let inbound = openWebSocket(
                path: path, authorization: authorization, channel: channel,
                startWriter: { session, _ in
                    let writer = SocketWriter(channel: channel, outbox: session.outbox, maxBytes: maxBytes, metrics: metrics) {
                        [weak self, weak session] reason in
                        guard let self, let session else { return }
                        self.close(session, reason: reason)
                    }
                    session.state.withLock { $0.writer = writer }
                    writer.start(through: drainQueue)
                })
        else { return }
        do {
            // Right before the frame decoder (not first: the upgrade handler replays bytes sent with the request from
            // its own place), so a client whose token is not checked cannot make it buffer a message of up to
            // --max-payload (up to twice --max-payload-before-connect still reaches the engine, which refuses a CONNECT
            // that large as `invalid token`), and what unfinished messages hold is counted for the socket's life.
            let session = inbound.session
            let decoder = try channel.pipeline.syncOperations.context(handlerType: ByteToMessageHandler<WebSocketFrameDecoder>.self)
            try channel.pipeline.syncOperations.addHandler(
                WebSocketMessageGuard(
                    limit: 2 * maxPayloadBeforeConnect, holds: heldMessages, owner: { [weak session] in session?.device?.principal.sessionKey },
                    connected: { [weak session] in session?.isConnected ?? true }),
                position: .before(decoder.handler))
            try channel.pipeline.syncOperations.addHandlers([
                WebSocketFrameRules { [weak inbound] in inbound?.receivedControlFrame() },
                NIOWebSocketFrameAggregator(
                    minNonFinalFragmentSize: 0, maxAccumulatedFrameCount: Self.maxFragments, maxAccumulatedFrameSize: configuration.maxPayload),
                EngineWebSocketHandler(inbound: inbound),
            ])
        } catch {
            close(inbound.session, reason: "websocket set-up failed")
            throw error
        }
        // Shutdown may have begun while this socket was being set up (after its sessions were closed, before its
        // handler could hear the server quiesce).
        if isStopping { close(inbound.session, reason: "server shutting down") }
    }

    /// What the unfinished WebSocket messages of all sessions without a connection may hold together: 32 MiB (each
    /// may announce at most twice `--max-payload-before-connect`; 9,800 of them held 1.2 GB).
    static let heldBeforeConnectBound = 32 << 20

    /// The reading side of a new WebSocket: a new session, or the upgrade of the polling session its `sid` names.
    /// `nil` (and the socket closed) when there is none to open: too many sessions await their CONNECT, or the `sid`
    /// is gone or already on a WebSocket.
    func openWebSocket(
        path: String, authorization: String?, channel: any Channel, readByTask: Bool = false,
        startWriter: @escaping @Sendable (EngineSession, WebSocketInbound) -> Void
    ) -> WebSocketInbound? {
        if isStopping {
            Self.closeWebSocket(channel)
            return nil
        }
        if let sid = EngineServer.query(of: path)["sid"] {
            // One upgrading websocket per session at a time, as engine.io: a second one is closed at once.
            let reserved = session(sid).flatMap { existing in
                existing.state.withLock { s -> Bool in
                    guard !s.closed, s.transport.isPolling, s.probeChannel == nil else { return false }
                    s.probeChannel = channel
                    return true
                } ? existing : nil
            }
            guard let existing = reserved else {
                Self.closeWebSocket(channel)
                return nil
            }
            noteAwaitingConnect(existing, on: channel)
            return WebSocketInbound(engine: self, session: existing, channel: channel, upgrading: true, readByTask: readByTask) { startWriter(existing, $0) }
        }
        let created = createSession(transport: .websocket, handshakeToken: EngineServer.bearer(authorization), eventLoop: channel.eventLoop)
        // A flood of handshakes may have evicted the session already: then nothing else would close this socket.
        let open = created.state.withLock { s -> Bool in
            s.channel = channel
            return !s.closed
        }
        guard open else {
            Self.closeWebSocket(channel)
            return nil
        }
        noteAwaitingConnect(created, on: channel)
        created.send(openPacket(created), name: "open")
        return WebSocketInbound(engine: self, session: created, channel: channel, upgrading: false, readByTask: readByTask) { startWriter(created, $0) }
    }

    /// The session of a compressed websocket, once `runCompressedWebSocket` has opened it: what the socket's
    /// `WebSocketMessageGuard` asks when a message goes over its limit (no session yet: no token checked), and whose
    /// unfinished messages are.
    final class UpgradingSession: Sendable {
        private struct Weak: Sendable { weak var session: EngineSession? }
        private let slot = Mutex(Weak())

        var isConnected: Bool { slot.withLock { $0.session?.isConnected ?? false } }
        var user: SessionKey? { slot.withLock { $0.session }?.device?.principal.sessionKey }
        func attach(_ session: EngineSession) { slot.withLock { $0.session = session } }
    }

    /// With permessage-deflate on, called from hummingbird-websocket's `shouldUpgrade` (on the channel's event loop,
    /// before the upgrade): puts a `WebSocketMessageGuard` behind the upgrade handler, so that a client whose token is
    /// not checked cannot make NIO's frame decoder buffer a frame of up to `--max-payload` (its compressed size: the
    /// inflated one is bounded by `BoundedDeflateExtension`), and what unfinished frames hold is counted, as on the
    /// task-free path. Before, one frame header announcing a megabyte and a trickle of its bytes held up to a
    /// megabyte per socket that never sent a token.
    func addCompressedMessageGuard(path: String, channel: any Channel) throws -> UpgradingSession {
        let upgrading = UpgradingSession()
        if let sid = EngineServer.query(of: path)["sid"], let existing = session(sid) { upgrading.attach(existing) }
        try channel.pipeline.syncOperations.addHandler(
            WebSocketMessageGuard(
                limit: 2 * maxPayloadBeforeConnect, placement: .awaitingUpgrade, holds: heldMessages, owner: { upgrading.user },
                connected: { upgrading.isConnected }))
        return upgrading
    }

    /// Runs one WebSocket with permessage-deflate (hummingbird-websocket reads the frames, answers pings and closes;
    /// the broker inflates them, `BoundedDeflateExtension`; the messages go to a `WebSocketInbound` as on the task-free
    /// path, and the reader waits while that inbound's reading is paused). `upgrading` is the slot the socket's
    /// `WebSocketMessageGuard` asks (`addCompressedMessageGuard`).
    func runCompressedWebSocket(
        path: String, authorization: String?, channel: any Channel, upgrading: UpgradingSession, inbound: WebSocketInboundStream,
        outbound: WebSocketOutboundWriter
    ) async {
        guard
            let reader = openWebSocket(
                path: path, authorization: authorization, channel: channel, readByTask: true,
                startWriter: { session, reader in
                    Task {
                        await self.writeLoopCompressed(session, outbound: outbound)
                        // The session closed: its socket is read to the end, whatever waits (`closeWebSocketAfterWrites`).
                        reader.releaseReader()
                    }
                })
        else { return }
        upgrading.attach(reader.session)
        ControlFrameMeter.install(on: channel, for: reader.session)
        channel.closeFuture.whenComplete { _ in reader.releaseReader() }
        do {
            if let refused = try await readCompressedMessages(inbound, of: reader.session, into: reader) {
                try? await outbound.close(refused, reason: nil)
            }
        } catch {
            logger.debug("websocket read ended", metadata: ["connection.id": "\(reader.session.sid)", "error": "\(error)"])
        }
        reader.transportEnded()
    }

    /// Joins the inflated frames of a compressed WebSocket into messages for `reader`, each judged as its frames come
    /// (the first one included) against a connected session's `--max-payload`, or twice `--max-payload-before-connect`
    /// before the session's token is checked, as on the task-free path (`WebSocketMessageGuard`, which sees only
    /// compressed sizes here). Each frame is inflated only up to that bound (`BoundedDeflateExtension`, which reads it
    /// from this task), so what a client without a token makes the broker inflate is bounded by the smaller one, not
    /// by the compression ratio it chose. Returns the close code that ends the socket, or `nil` when the client ended
    /// it. (Found by outside probes: hummingbird-websocket's message reader checks the size of continuation frames
    /// only, so one unfinished 1-KB compressed frame before a token held an inflated megabyte, 3,000 sockets 3.3 GB;
    /// and its inflater's bound was `--max-payload` for every frame, about 2 ms of CPU for 1 KB sent before a token.)
    ///
    /// As on the task-free path, the larger limit holds from the session's first successful CONNECT on (a client that
    /// left `/chat` may send a CONNECT as large as before), and a message of more than `maxFragments` frames closes the
    /// socket (NIO's frame aggregator's bound there): a flood of empty continuation frames, which no budget charges
    /// until its message ends, is not read on forever.
    private func readCompressedMessages(_ inbound: WebSocketInboundStream, of session: EngineSession, into reader: WebSocketInbound) async throws
        -> WebSocketErrorCode?
    {
        let bound = BoundedDeflateExtension.Bound(beforeConnect: 2 * maxPayloadBeforeConnect, connected: configuration.maxPayload) {
            [weak session] in session?.isConnected ?? false
        }
        var hold = HeldMessageBytes.Hold()
        defer { hold.release(in: heldMessages) }
        return try await BoundedDeflateExtension.$bound.withValue(bound) {
            var message: ByteBuffer?
            var binary = false
            var fragments = 0
            for try await frame in inbound {
                if let refused = bound.refusal { return refused }
                switch frame.opcode {
                case .text, .binary:
                    guard message == nil else { return .protocolError }
                    message = frame.data
                    binary = frame.opcode == .binary
                    fragments = 1
                case .continuation:
                    guard message != nil else { return .protocolError }
                    message!.writeImmutableBuffer(frame.data)
                    fragments += 1
                    // Each fragment costs what a small message does (`WebSocketFrameRules` on the task-free path).
                    reader.receivedControlFrame()
                    await reader.waitUntilReadable()
                }
                // A frame whose compressed bytes (and inflater restarts) cost more than what it inflated to is charged the
                // difference: the budget counts what the client sent and made the broker do, not only what came of it.
                // (Found by an outside probe: frames of empty final blocks that inflate to a noop kept a core busy at
                // 27 MB/s within a tokenless budget of 1 MB/s.)
                let surplus = bound.takeInputCost() - frame.data.readableBytes
                if surplus > 0 {
                    reader.chargeInput(surplus)
                    await reader.waitUntilReadable()
                }
                guard let whole = message, whole.readableBytes <= bound.limit(), fragments <= Self.maxFragments else { return .messageTooLarge }
                // The inflated message held until its last fragment is counted as the raw bytes are (1013, try again
                // later, past the bound).
                if !frame.fin || hold.bytes > 0,
                    !hold.update(frame.fin ? 0 : whole.readableBytes, for: session.device?.principal.sessionKey, in: heldMessages)
                {
                    return .unknown(1013)
                }
                if frame.fin {
                    message = nil
                    // As on the task-free path: a text message that is not UTF-8 fails the connection with 1007.
                    if !binary, !WebSocketFrameRules.isValidText(whole) { return .dataInconsistentWithMessage }
                    reader.receive(whole, binary: binary)
                    await reader.waitUntilReadable()
                }
            }
            return nil
        }
    }

    /// Most frames one websocket message may come in (both paths: `NIOWebSocketFrameAggregator`'s
    /// `maxAccumulatedFrameCount` on the task-free one).
    static let maxFragments = 1024

    /// The write path when permessage-deflate is on: frames go through hummingbird-websocket's writer, whose extension
    /// compresses them (`SharedDeflater`: once per event; one write per frame, slower than `SocketWriter`, which is why
    /// compression is off by default).
    private func writeLoopCompressed(_ session: EngineSession, outbound: WebSocketOutboundWriter) async {
        while true {
            let frames = await session.outbox.next(max: 1024, maxBytes: configuration.broker.outboundLimit)
            if frames.isEmpty { break }
            // Counted until written: a shutdown waits for them before it closes the socket.
            session.state.withLock { $0.framesBeingWritten = frames.count }
            defer { session.state.withLock { $0.framesBeingWritten = 0 } }
            for frame in frames {
                // The event's own buffer, shared by its recipients: the deflater compresses it once for all of them.
                do { try await outbound.write(.custom(WebSocketFrame(fin: true, opcode: .text, data: frame.bytes))) } catch {
                    close(session, reason: "write failed")
                    return
                }
                session.state.withLock { $0.framesBeingWritten -= 1 }
            }
        }
        close(session, reason: session.outbox.closeReason == .slowConsumer ? OutboxCloseReason.slowConsumer.rawValue : "outbox closed")
    }
}
