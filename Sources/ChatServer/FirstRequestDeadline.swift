import NIOCore

/// Closes a new connection that has not sent a whole first request head within `timeout`: the first handler of
/// every accepted connection, removed as soon as that head is handled (an HTTP request, or a websocket upgrade).
/// What comes after is bounded elsewhere: HTTP by Hummingbird's idle timeout (each later head, and silence within
/// a body), a websocket by its session's deadlines. So a client that connects and sends nothing, or dribbles a
/// head, holds a descriptor and up to one head's buffer for `timeout` at most. Passes every read through untouched.
///
/// The deadline is a scheduled callback to this handler (no promise, no closure: 0.12 KiB per idle connection at
/// 19,000 while it is scheduled, against 0.41 KiB with `scheduleTask`), and it is not cancelled when the head
/// comes: a cancel scans the event loop's whole timer heap, which holds every session's heartbeat. It then finds
/// nothing to close.
///
/// Where the pipeline after it gives no hook for "the first head was handled" (hummingbird-websocket's channel, used
/// with permessage-deflate), `watchesHeadEnd` makes the handler find the head's end itself: the first blank line
/// (`\r\n\r\n`) in what it reads, one pass over each byte until then; it removes itself there.
///
/// It also stands for the HTTP handlers at a graceful shutdown (`ChannelShouldQuiesceEvent`) until they are there: a
/// connection that has sent nothing closes at once (a browser's preconnected socket would otherwise take its first
/// request after the shutdown began, from handlers that never heard of it, and keep the server alive as long as the
/// page polls), and one whose first request is on its way gets the event again once that request is in the handlers,
/// which close it after the answer.
final class FirstRequestDeadline: ChannelInboundHandler, RemovableChannelHandler, NIOScheduledCallbackHandler {
    typealias InboundIn = ByteBuffer

    private let timeout: TimeAmount
    private let watchesHeadEnd: Bool
    /// Told when the first head was handled: the connection is no longer closed for a newcomer at the bound.
    private let limit: ConnectionLimit?
    private var armed = false
    /// The connection, until its first head was handled.
    private var channel: (any Channel)?
    /// How many bytes of `\r\n\r\n` the bytes read so far end with.
    private var matched = 0
    /// A byte other than CR or LF came: the request line began.
    private var startedHead = false
    /// Bytes of the first request have come.
    private var readAny = false
    /// A graceful shutdown began while the first request was on its way.
    private var quiesced = false

    init(timeout: TimeAmount, watchesHeadEnd: Bool = false, limit: ConnectionLimit? = nil) {
        self.timeout = timeout
        self.watchesHeadEnd = watchesHeadEnd
        self.limit = limit
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        readAny = true
        guard watchesHeadEnd, channel != nil else { return context.fireChannelRead(data) }
        let ended = unwrapInboundIn(data).withUnsafeReadableBytes { bytes in
            for byte in bytes {
                // Empty lines before the request line are skipped by the HTTP parser, as RFC 9112 §2.2 allows: they
                // begin no head (taken for one, `\r\n\r\n` alone removed the deadline before any head, and the
                // connection stayed open with nothing to close it: found by a review).
                if !startedHead {
                    if byte == UInt8(ascii: "\r") || byte == UInt8(ascii: "\n") { continue }
                    startedHead = true
                }
                if byte == Self.headEnd[matched] {
                    matched += 1
                    if matched == Self.headEnd.count { return true }
                } else {
                    matched = byte == UInt8(ascii: "\r") ? 1 : 0
                }
            }
            return false
        }
        context.fireChannelRead(data)
        if ended {
            channel = nil
            context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
        }
    }

    private static let headEnd: [UInt8] = Array("\r\n\r\n".utf8)

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { arm(context) }
    }

    func channelActive(context: ChannelHandlerContext) {
        arm(context)
        context.fireChannelActive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        channel = nil
        limit?.spoke(context.channel)
        guard quiesced else { return }
        // The handlers that take over are added in the same turn, and the first request reaches them before this runs.
        let pipeline = context.pipeline
        context.eventLoop.execute { pipeline.fireUserInboundEventTriggered(ChannelShouldQuiesceEvent()) }
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if event is ChannelShouldQuiesceEvent {
            guard readAny else { return context.close(promise: nil) }
            quiesced = true
        }
        context.fireUserInboundEventTriggered(event)
    }

    private func arm(_ context: ChannelHandlerContext) {
        guard !armed else { return }
        armed = true
        channel = context.channel
        // Throws only on an event loop that is shutting down, whose channels close anyway.
        _ = try? context.eventLoop.assumeIsolated().scheduleCallback(in: timeout, handler: self)
    }

    func handleScheduledCallback(eventLoop: some EventLoop) {
        channel?.close(promise: nil)
        channel = nil
    }

    func didCancelScheduledCallback(eventLoop: some EventLoop) {}
}
