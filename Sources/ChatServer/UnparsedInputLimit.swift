import NIOCore
import NIOHTTP1

/// Bounds what an HTTP connection may send that NIO's request decoder reads without producing anything: a `Raw`
/// handler in front of the decoder counts the bytes read, a `Parts` handler right behind it sets the count back to 0
/// whenever the decoder hands on a part (a head, a piece of body, an end). Past `limit` bytes with no part, the
/// connection is closed. What the decoder reads without a part is a head being read (at most the decoder's bounds,
/// `RequestHeadGuard.decoderLimits`, and a target of 64 KiB) and the framing of chunked bodies, a few bytes per
/// chunk; but a chunk's extension (`1;` then anything up to the line's end) is skipped by the parser without end, and
/// every bound on bodies counts body parts only (the drain after an early answer, `BoundedBodyReader`, the inbound
/// budgets): one endless extension had the broker read 15 GB in 35 s before any token was checked, until the read
/// deadline (found by an outside probe; Node.js's CVE-2024-22019 is the same pattern).
///
/// Both handlers leave the pipeline when the connection becomes a WebSocket (`remove`): the frames that follow are
/// not HTTP. They live on the connection's event loop.
enum UnparsedInputLimit {
    /// More than a whole head at the decoder's bounds (64 KiB of fields and a 64 KiB target).
    static let limit = 256 * 1024

    /// The count both handlers share.
    final class Count {
        var bytes = 0
    }

    /// In front of the decoder: counts what is read, and closes the connection past the limit.
    final class Raw: ChannelInboundHandler, RemovableChannelHandler {
        typealias InboundIn = ByteBuffer
        typealias InboundOut = ByteBuffer

        let count: Count
        private var closed = false

        init(count: Count) {
            self.count = count
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            guard !closed else { return }
            count.bytes += unwrapInboundIn(data).readableBytes
            guard count.bytes > UnparsedInputLimit.limit else { return context.fireChannelRead(data) }
            closed = true
            context.close(promise: nil)
        }
    }

    /// Behind the decoder: every part it hands on is progress.
    final class Parts: ChannelInboundHandler, RemovableChannelHandler {
        typealias InboundIn = HTTPServerRequestPart
        typealias InboundOut = HTTPServerRequestPart

        let count: Count

        init(count: Count) {
            self.count = count
        }

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            count.bytes = 0
            context.fireChannelRead(data)
        }
    }

    /// Puts the two handlers around the pipeline's request decoder.
    static func install(in pipeline: ChannelPipeline.SynchronousOperations) throws {
        let decoder = try pipeline.handler(type: ByteToMessageHandler<HTTPRequestDecoder>.self)
        let count = Count()
        try pipeline.addHandler(Raw(count: count), position: .before(decoder))
        try pipeline.addHandler(Parts(count: count), position: .after(decoder))
    }

    /// Takes both handlers out (the connection is becoming a WebSocket).
    static func remove(from pipeline: ChannelPipeline.SynchronousOperations) {
        if let raw = try? pipeline.handler(type: Raw.self) { pipeline.removeHandler(raw, promise: nil) }
        if let parts = try? pipeline.handler(type: Parts.self) { pipeline.removeHandler(parts, promise: nil) }
    }
}
