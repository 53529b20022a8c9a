import NIOCore
import NIOHTTPTypes

/// Closes an HTTP connection whose request body has not come whole within `timeout` of its head (`--request-read-
/// timeout`). Hummingbird's idle timeout only bounds silence, and restarts at every part of a body: a client that
/// sends one byte of a chunked body every few seconds would otherwise hold a connection, and a handler awaiting the
/// body, for as long as it liked. A long poll is not affected: its request ends with its head, and only its response
/// takes long. Passes every part through untouched.
///
/// One scheduled callback at most per connection (no promise, no closure, never cancelled, as `FirstRequestDeadline`
/// does): when it fires for a request that has ended, or for an earlier one, it does nothing or moves itself on to
/// the current request's deadline, so a keep-alive connection with many requests adds no timers.
final class RequestBodyDeadline: ChannelInboundHandler, RemovableChannelHandler, NIOScheduledCallbackHandler {
    typealias InboundIn = HTTPRequestPart
    typealias InboundOut = HTTPRequestPart

    private let timeout: TimeAmount
    /// When the request being read must have ended; `nil` while no request is being read.
    private var deadline: NIODeadline?
    private var scheduled = false
    /// The connection, while the handler is in its pipeline.
    private var channel: (any Channel)?

    init(timeout: TimeAmount) {
        self.timeout = timeout
    }

    func handlerAdded(context: ChannelHandlerContext) {
        channel = context.channel
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        channel = nil
        deadline = nil
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head:
            let due = context.eventLoop.now + timeout
            deadline = due
            schedule(at: due, on: context.eventLoop)
        case .end:
            deadline = nil
        case .body:
            break
        }
        context.fireChannelRead(data)
    }

    private func schedule(at due: NIODeadline, on eventLoop: any EventLoop) {
        guard !scheduled else { return }
        scheduled = true
        // Throws only on an event loop that is shutting down, whose channels close anyway.
        _ = try? eventLoop.assumeIsolated().scheduleCallback(at: due, handler: self)
    }

    func handleScheduledCallback(eventLoop: some EventLoop) {
        scheduled = false
        guard let due = deadline, let channel else { return }
        if due <= eventLoop.now {
            deadline = nil
            channel.close(promise: nil)
        } else {
            schedule(at: due, on: eventLoop)
        }
    }
}
