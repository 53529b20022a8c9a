import NIOCore
import NIOWebSocket

/// Holds a client's WebSocket frames to the rules of RFC 6455 that NIO's frame decoder leaves to its user, between
/// the decoder and the frame aggregator: a client's frames are masked (5.1), the RSV bits are 0 since the task-free
/// path negotiates no extension (5.2), and opcodes 3–7 and 11–15 are reserved (5.2). A frame that breaks one fails the
/// connection (7.1.7): it is not passed on, nor is anything after it, and the broker answers with a close frame of
/// code 1002 (protocol error), then closes the connection. (A control frame that is fragmented or longer than 125
/// bytes is refused by the decoder itself, with the same code.) Stateless but for whether the connection has failed.
final class WebSocketFrameRules: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = WebSocketFrame
    typealias InboundOut = WebSocketFrame
    typealias OutboundOut = WebSocketFrame

    private var failed = false

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !failed else { return }
        let frame = unwrapInboundIn(data)
        guard Self.allows(frame) else {
            failed = true
            var reason = context.channel.allocator.buffer(capacity: 2)
            reason.write(webSocketErrorCode: .protocolError)
            // Closed at once, not once the close frame is written: a client that does not read would otherwise keep
            // the connection (and have its bytes read and dropped) until its ping timeout.
            context.writeAndFlush(wrapOutboundOut(WebSocketFrame(fin: true, opcode: .connectionClose, data: reason)), promise: nil)
            context.close(promise: nil)
            return
        }
        context.fireChannelRead(data)
    }

    /// Whether a frame a client sent keeps the rules: masked, no RSV bit, a defined opcode.
    static func allows(_ frame: WebSocketFrame) -> Bool {
        guard frame.maskKey != nil, !frame.rsv1, !frame.rsv2, !frame.rsv3 else { return false }
        switch frame.opcode {
        case .continuation, .text, .binary, .connectionClose, .ping, .pong: return true
        default: return false
        }
    }
}
