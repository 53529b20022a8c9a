import Logging
import NIOCore
import NIOWebSocket

/// The last handler of a WebSocket that needs no task of its own: whole messages (fragments joined by
/// `NIOWebSocketFrameAggregator` below it, up to `maxPayload`) go to the session's `WebSocketInbound` on the event
/// loop; a ping is answered with a pong; a close (or the end of the client's input) ends the session once what was
/// read before it is handled; the server's graceful shutdown closes the session and the socket. The session's frames are written by its `SocketWriter`, below this handler.
final class EngineWebSocketHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = WebSocketFrame
    typealias OutboundOut = WebSocketFrame

    private let inbound: WebSocketInbound
    private var closing = false

    init(inbound: WebSocketInbound) {
        self.inbound = inbound
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        // After a close frame (the client's, or one failing the connection) nothing is handled.
        guard !closing else { return }
        let frame = unwrapInboundIn(data)
        switch frame.opcode {
        case .text, .binary:
            let data = frame.unmaskedData
            // A text message that is not UTF-8 fails the connection with 1007; what was read before it is handled.
            if frame.opcode == .text, !WebSocketFrameRules.isValidText(data) { return fail(context: context, code: .dataInconsistentWithMessage) }
            inbound.receive(data, binary: frame.opcode == .binary)
        case .ping:
            inbound.receivedControlFrame()
            // Answered only while the socket takes writes: a client that pings and never reads would otherwise make
            // the broker queue one pong per ping without bound. RFC 6455 (5.5.3) lets a pong answer only the most
            // recent of several pings.
            guard context.channel.isWritable else { return }
            context.writeAndFlush(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .pong, data: frame.unmaskedData)), promise: nil)
        case .connectionClose:
            // A close frame the RFC does not allow (a 1-byte body, a reserved code, a reason that is not UTF-8) is
            // answered with the code that says why, as other protocol errors are.
            if let code = WebSocketFrameRules.closeFrameProblem(frame.unmaskedData) { return fail(context: context, code: code) }
            closing = true
            // The messages read before it are still handled; then the session closes, which answers with a close
            // frame and ends the connection.
            inbound.transportEnded()
        default:
            // Pongs (the broker pings in Engine.IO, not with WebSocket pings) and anything else: nothing to do but
            // charge them.
            inbound.receivedControlFrame()
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        inbound.transportEnded()
        context.fireChannelInactive()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is ChannelShouldQuiesceEvent {
            // The server stops: the session closes (its socket once what was written to it went out, as the
            // shutdown's own close of every session does), and so does this socket within a second, whether or not
            // the session is on it. Closing at once here would throw away the acks the shutdown waited for.
            inbound.engine.close(inbound.session, reason: "server shutting down", afterWrites: true)
            let channel = context.channel
            context.eventLoop.scheduleTask(in: .seconds(1)) { channel.close(promise: nil) }
        } else if let event = event as? ChannelEvent, event == .inputClosed {
            // The client sends nothing more: what it sent is still handled, then the session closes.
            inbound.transportEnded()
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        inbound.engine.logger.debug("websocket error", metadata: ["connection.id": "\(inbound.session.sid)", "error": "\(error)"])
        // A fragmented message the aggregator refused is answered with a close frame saying why, as a single
        // oversized frame is (1009) by NIO's protocol error handler; then the connection closes.
        guard !closing, let code = Self.closeCode(for: error) else { return context.close(promise: nil) }
        fail(context: context, code: code)
    }

    /// Fails the connection (RFC 6455 §7.1.7): a close frame with `code`, then the connection closes. Nothing read
    /// after this is handled; what was read before is (`channelInactive`).
    private func fail(context: ChannelHandlerContext, code: WebSocketErrorCode) {
        guard !closing else { return }
        closing = true
        var data = context.channel.allocator.buffer(capacity: 2)
        data.write(webSocketErrorCode: code)
        context.writeAndFlush(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .connectionClose, data: data)))
            .assumeIsolated().whenComplete { _ in context.close(promise: nil) }
    }

    /// The close code for a message that `NIOWebSocketFrameAggregator` refused; `nil` for other errors.
    static func closeCode(for error: any Error) -> WebSocketErrorCode? {
        guard let refused = error as? NIOWebSocketFrameAggregator.Error else { return nil }
        switch refused {
        case .tooManyFragments, .accumulatedFrameSizeIsTooLarge: return .messageTooLarge
        case .nonFinalFragmentSizeIsTooSmall, .receivedNewFrameWithoutFinishingPrevious, .didReceiveFragmentBeforeReceivingTextOrBinaryFrame:
            return .protocolError
        }
    }
}
