import NIOCore

/// Closes a new connection that has not sent a whole first request head within `timeout`: the first handler of
/// every accepted connection, removed as soon as that head is handled (an HTTP request, or a websocket upgrade).
/// What comes after is bounded elsewhere: HTTP by Hummingbird's idle timeout (each later head, and silence within
/// a body), a websocket by its session's deadlines. So a client that connects and sends nothing, or dribbles a
/// head, holds a descriptor and up to one head's buffer for `timeout` at most. Passes every read through untouched.
final class FirstRequestDeadline: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer

    private let timeout: TimeAmount
    private var armed = false
    /// The head was handled: the deadline does nothing when it fires. (It is not cancelled: a cancel scans the event
    /// loop's whole timer heap, which holds every session's heartbeat.)
    private var done = false

    init(timeout: TimeAmount) {
        self.timeout = timeout
    }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { arm(context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        arm(context)
        context.fireChannelActive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        done = true
    }

    private func arm(_ context: ChannelHandlerContext) {
        guard !armed else { return }
        armed = true
        context.eventLoop.assumeIsolated().scheduleTask(in: timeout) { [self] in
            guard !done else { return }
            context.close(promise: nil)
        }
    }
}
