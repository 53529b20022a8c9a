import NIOCore
import NIOWebSocket

/// Holds a client's WebSocket frames to the rules of RFC 6455 that NIO's frame decoder leaves to its user, between
/// the decoder and the frame aggregator: a client's frames are masked (5.1), the RSV bits are 0 since the task-free
/// path negotiates no extension (5.2), and opcodes 3–7 and 11–15 are reserved (5.2). A frame that breaks one fails the
/// connection (7.1.7): it is not passed on, nor is anything after it, and the broker answers with a close frame of
/// code 1002 (protocol error), then closes the connection. (A control frame that is fragmented or longer than 125
/// bytes is refused by the decoder itself, with the same code.) Stateless but for whether the connection has failed.
///
/// Every continuation frame is charged (`continued`) what a small message costs, before the frame aggregator joins it
/// to its message: a message is charged once, when it is whole, so a message of 1,024 empty fragments cost one
/// charge for 1,024 frames decoded (found by an outside probe: a tokenless socket sending the noop `6` that way kept
/// 0.7 of a core busy within its budget, six processes 1.5 cores).
final class WebSocketFrameRules: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = WebSocketFrame
    typealias InboundOut = WebSocketFrame
    typealias OutboundOut = WebSocketFrame

    private var failed = false
    private let continued: () -> Void

    /// `continued` charges one continuation frame (and pauses reading while the budget is in debt).
    init(continued: @escaping () -> Void = {}) {
        self.continued = continued
    }

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
        if frame.opcode == .continuation { continued() }
        context.fireChannelRead(data)
    }

    /// Whether a whole text message is UTF-8 (RFC 6455 §8.1: a text message that is not fails the connection with
    /// 1007). One pass over the bytes, nothing allocated.
    static func isValidText(_ data: ByteBuffer) -> Bool {
        do {
            _ = try UTF8Span(validating: data.readableBytesUInt8Span)
            return true
        } catch {
            return false
        }
    }

    /// Why a client's close frame fails the connection, `nil` when it may close it cleanly (RFC 6455 §5.5.1 and
    /// §7.4): a 1-byte body, or a code no endpoint may send (below 1000, 1004–1006, 1015–2999, 5000 and up), is a
    /// protocol error (1002); a reason that is not UTF-8 is 1007. 1012–1014 are registered with IANA since the RFC.
    static func closeFrameProblem(_ payload: ByteBuffer) -> WebSocketErrorCode? {
        guard payload.readableBytes > 0 else { return nil }
        guard let code = payload.getInteger(at: payload.readerIndex, as: UInt16.self) else { return .protocolError }
        switch code {
        case 1000...1003, 1007...1014, 3000...4999: break
        default: return .protocolError
        }
        var reason = payload
        reason.moveReaderIndex(forwardBy: 2)
        return isValidText(reason) ? nil : .dataInconsistentWithMessage
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
