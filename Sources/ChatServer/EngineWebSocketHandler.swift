import Logging
import NIOCore
import NIOWebSocket

/// The last handler of a WebSocket that needs no task of its own: whole messages (fragments joined by
/// `NIOWebSocketFrameAggregator` below it, up to `maxPayload`) go to the session's `WebSocketInbound` on the event
/// loop; a ping is answered with a pong; a close is answered with a close and ends the connection; the server's
/// graceful shutdown closes the session. The session's frames are written by its `SocketWriter`, below this handler.
final class EngineWebSocketHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = WebSocketFrame
    typealias OutboundOut = WebSocketFrame

    private let inbound: WebSocketInbound
    private var closing = false

    init(inbound: WebSocketInbound) {
        self.inbound = inbound
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        switch frame.opcode {
        case .text, .binary:
            inbound.receive(frame.unmaskedData, binary: frame.opcode == .binary)
        case .ping:
            context.writeAndFlush(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .pong, data: frame.unmaskedData)), promise: nil)
        case .connectionClose:
            guard !closing else { return }
            closing = true
            // The client's status code is echoed (RFC 6455 §5.5.1), then the connection ends.
            var data = frame.unmaskedData
            let code = data.readSlice(length: 2) ?? ByteBuffer()
            let close = WebSocketFrame(fin: true, opcode: .connectionClose, data: code)
            let channel = context.channel
            context.writeAndFlush(wrapOutboundOut(close)).whenComplete { _ in channel.close(promise: nil) }
        default:
            // Pongs (the broker pings in Engine.IO, not with WebSocket pings) and anything else: nothing to do.
            break
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        inbound.transportEnded()
        context.fireChannelInactive()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is ChannelShouldQuiesceEvent {
            inbound.engine.close(inbound.session, reason: "server shutting down")
        } else if let event = event as? ChannelEvent, event == .inputClosed {
            context.close(promise: nil)
        } else {
            context.fireUserInboundEventTriggered(event)
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        inbound.engine.logger.debug("websocket error", metadata: ["connection.id": "\(inbound.session.sid)", "error": "\(error)"])
        context.close(promise: nil)
    }
}
