import NIOCore
import NIOWebSocket

/// Charges a compressed WebSocket's ping and pong frames to its session's inbound budget, where
/// hummingbird-websocket reads them (it answers pings inside its reader, which the broker's reader never sees): right
/// behind NIO's frame decoder, it passes pings on and drops pongs (the broker sends no websocket pings on this path, so
/// a pong answers nothing), and while the budget is in debt it holds back the channel's reads, as the async channel's
/// own backpressure does: a `read` waits until the debt is paid (at least `WebSocketInbound.minimumBudgetPause`).
/// Without it a socket without a token sending empty pings or pongs was read as fast as the broker could, a core per
/// socket (found by an outside probe). Data frames are charged by the message reader (`WebSocketInbound.receive`).
/// Lives on the channel's event loop.
final class ControlFrameMeter: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = WebSocketFrame
    typealias InboundOut = WebSocketFrame
    typealias OutboundIn = Never

    private let charge: () -> UInt64
    private var paused = false
    private var readWaiting = false

    /// `charge` charges one control frame and returns how long the socket should not be read (0: in budget).
    init(charge: @escaping () -> UInt64) {
        self.charge = charge
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        switch frame.opcode {
        case .ping, .pong:
            let wait = charge()
            if wait > 0, !paused {
                paused = true
                let pause = max(wait, WebSocketInbound.minimumBudgetPause)
                context.eventLoop.assumeIsolated().scheduleTask(in: .nanoseconds(Int64(min(pause, UInt64(Int64.max))))) { [self] in
                    paused = false
                    if readWaiting {
                        readWaiting = false
                        context.read()
                    }
                }
            }
            if frame.opcode == .pong { return }
        default:
            break
        }
        context.fireChannelRead(data)
    }

    func read(context: ChannelHandlerContext) {
        if paused {
            readWaiting = true
        } else {
            context.read()
        }
    }

    /// Puts a meter charging `session` right behind the frame decoder of `channel` (on its event loop).
    static func install(on channel: any Channel, for session: EngineSession) {
        channel.eventLoop.execute {
            let pipeline = channel.pipeline.syncOperations
            guard let decoder = try? pipeline.context(handlerType: ByteToMessageHandler<WebSocketFrameDecoder>.self) else { return }
            try? pipeline.addHandler(ControlFrameMeter { [weak session] in session?.chargeInbound(message: 0) ?? 0 }, position: .after(decoder.handler))
        }
    }
}
