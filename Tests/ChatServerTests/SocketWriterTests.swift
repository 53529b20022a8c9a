import ChatCore
import NIOCore
import NIOEmbedded
import NIOWebSocket
import Synchronization
import Testing

@testable import ChatServer

/// A socket whose peer reads only when told: it keeps every write and its promise until the test completes or fails
/// them, and counts flushes.
final class HeldWrites: ChannelOutboundHandler, @unchecked Sendable {
    typealias OutboundIn = WebSocketFrame
    typealias OutboundOut = WebSocketFrame

    var frames: [String] = []
    var promises: [EventLoopPromise<Void>] = []
    var flushes = 0

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        var frame = unwrapOutboundIn(data)
        frames.append(frame.data.readString(length: frame.data.readableBytes) ?? "")
        if let promise { promises.append(promise) }
    }

    func flush(context: ChannelHandlerContext) { flushes += 1 }

    /// The peer read everything written so far.
    func completeAll() {
        let pending = promises
        promises = []
        for promise in pending { promise.succeed() }
    }

    func failAll() {
        let pending = promises
        promises = []
        for promise in pending { promise.fail(ChannelError.ioOnClosedChannel) }
    }
}

/// The close reasons a writer reported.
final class Closes: Sendable {
    let reasons = Mutex<[String]>([])
    var list: [String] { reasons.withLock { $0 } }
}

/// `SocketWriter` on an `EmbeddedChannel`: one flush per batch, the next batch only once that flush reached the
/// socket, and a close (reported once) when a write fails or the outbox closes as a slow consumer.
struct SocketWriterTests {
    let channel = EmbeddedChannel()
    let socket = HeldWrites()
    let closes = Closes()

    init() throws {
        try channel.pipeline.syncOperations.addHandler(socket)
    }

    func writer(for outbox: Outbox) -> SocketWriter {
        let closes = closes
        let writer = SocketWriter(channel: channel, outbox: outbox, maxBytes: 1 << 20, metrics: BrokerMetrics(stats: BrokerStats())) { reason in
            closes.reasons.withLock { $0.append(reason) }
        }
        writer.start(through: EventLoopDrainQueue(eventLoop: channel.embeddedEventLoop))
        channel.embeddedEventLoop.run()
        return writer
    }

    static func frame(_ text: String) -> OutboundFrame { OutboundFrame(name: "chat:message", bytes: ByteBuffer(string: text)) }

    @Test func oneFlushPerBatchAndTheNextBatchOnlyAfterIt() {
        let outbox = Outbox(limit: 1 << 20)
        let writer = writer(for: outbox)
        for text in ["a", "b", "c"] { outbox.enqueue(Self.frame(text)) }
        channel.embeddedEventLoop.run()
        #expect(socket.frames == ["a", "b", "c"])
        #expect(socket.flushes == 1, "one flush for the batch")

        for text in ["d", "e"] { outbox.enqueue(Self.frame(text)) }
        channel.embeddedEventLoop.run()
        #expect(socket.frames == ["a", "b", "c"], "nothing more while the flush is pending: the backlog stays in the outbox")
        #expect(outbox.queuedBytes == 2)

        socket.completeAll()
        channel.embeddedEventLoop.run()
        #expect(socket.frames == ["a", "b", "c", "d", "e"])
        #expect(socket.flushes == 2)
        #expect(closes.list.isEmpty)
        withExtendedLifetime(writer) {}
    }

    @Test func aFailedWriteClosesOnceAndWritesNothingMore() {
        let outbox = Outbox(limit: 1 << 20)
        let writer = writer(for: outbox)
        outbox.enqueue(Self.frame("a"))
        channel.embeddedEventLoop.run()
        socket.failAll()
        channel.embeddedEventLoop.run()
        #expect(closes.list == ["write failed"])
        outbox.enqueue(Self.frame("b"))
        channel.embeddedEventLoop.run()
        #expect(socket.frames == ["a"])
        #expect(closes.list == ["write failed"], "reported once")
        withExtendedLifetime(writer) {}
    }

    @Test func writersOfOneLoopDrainFromOneQueueAndAreReleasedWhenTheirOutboxCloses() throws {
        // Two sockets on the same event loop, one drain queue: one fan-out reaches both in the same loop turn.
        let other = EmbeddedChannel(loop: channel.embeddedEventLoop)
        let otherSocket = HeldWrites()
        try other.pipeline.syncOperations.addHandler(otherSocket)
        let queue = EventLoopDrainQueue(eventLoop: channel.embeddedEventLoop)
        let first = Outbox(limit: 1 << 20)
        let second = Outbox(limit: 1 << 20)
        weak var released: SocketWriter?
        do {
            let a = SocketWriter(channel: channel, outbox: first, maxBytes: 1 << 20, metrics: BrokerMetrics(stats: BrokerStats())) { _ in }
            let b = SocketWriter(channel: other, outbox: second, maxBytes: 1 << 20, metrics: BrokerMetrics(stats: BrokerStats())) { _ in }
            a.start(through: queue)
            b.start(through: queue)
            released = b
        }
        channel.embeddedEventLoop.run()
        let frame = Self.frame("x")
        first.enqueue(frame)
        second.enqueue(frame)
        channel.embeddedEventLoop.run()
        #expect(socket.frames == ["x"])
        #expect(otherSocket.frames == ["x"])
        let kept = released != nil
        #expect(kept, "an open outbox's signal keeps its writer")

        // The outbox's signal held the writer (and so did its write until the socket took it); closing the outbox
        // drops the signal, and nothing else holds the writer.
        socket.completeAll()
        otherSocket.completeAll()
        channel.embeddedEventLoop.run()
        second.close()
        channel.embeddedEventLoop.run()
        let gone = released == nil
        #expect(gone, "a closed outbox no longer holds its writer")
        first.close()
        channel.embeddedEventLoop.run()
    }

    @Test func aSlowConsumerIsClosedWithItsReason() {
        // The peer never reads: the first batch stays pending, the rest piles up in the outbox until it is over its
        // limit for longer than the grace (0 here) and closes.
        let outbox = Outbox(limit: 1024, grace: 0)
        let writer = writer(for: outbox)
        outbox.enqueue(Self.frame("first"))
        channel.embeddedEventLoop.run()
        let big = String(repeating: "x", count: 600)
        outbox.enqueue(Self.frame(big))
        outbox.enqueue(Self.frame(big))  // over the limit from now on
        outbox.enqueue(Self.frame(big))  // still over it, past the grace: closed
        channel.embeddedEventLoop.run()
        #expect(outbox.closeReason == .slowConsumer)
        #expect(closes.list == [OutboxCloseReason.slowConsumer.rawValue])
        #expect(socket.frames == ["first"])
        withExtendedLifetime(writer) {}
    }
}

/// With NIO's WebSocket frame encoder in the pipeline (as after an upgrade), the writer sends finished WebSocket
/// frames below it: a frame alone as the encoder's shared bytes, a batch copied into one buffer, control frames
/// framed here.
struct SocketWriterFramingTests {
    @Test func framesGoOutFinishedAndABatchAsOneBuffer() throws {
        let channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.addHandler(WebSocketFrameEncoder())
        let outbox = Outbox(limit: 1 << 20)
        let writer = SocketWriter(channel: channel, outbox: outbox, maxBytes: 1 << 20, metrics: BrokerMetrics(stats: BrokerStats())) { _ in }
        writer.start(through: EventLoopDrainQueue(eventLoop: channel.embeddedEventLoop))
        let encoder = FrameEncoder(prefix: Array("42/chat,".utf8), webSocketText: true)
        let event = encoder.encode("chat:message", .object(["text": .string(String(repeating: "é", count: 100))]))
        let control = OutboundFrame(name: "control", bytes: ByteBuffer(string: "2"))
        outbox.enqueue(event)
        outbox.enqueue(control)
        channel.embeddedEventLoop.run()

        // Two frames queued at once go out in one buffer: each with its header.
        let batch = try #require(try channel.readOutbound(as: ByteBuffer.self))
        let payload = Array(event.bytes.readableBytesView)
        #expect(payload.count > 125 && payload.count < 65536)
        #expect(Array(batch.readableBytesView) == [0x81, 126, UInt8(payload.count >> 8), UInt8(payload.count & 0xFF)] + payload + [0x81, 1, UInt8(ascii: "2")])
        #expect(try channel.readOutbound(as: ByteBuffer.self) == nil, "one buffer for the batch")

        // A frame alone goes out as the bytes the encoder made once for every recipient.
        let next = encoder.encode("chat:typing:start", .object(["userId": .string("bob")]))
        outbox.enqueue(next)
        channel.embeddedEventLoop.run()
        let alone = try #require(try channel.readOutbound(as: ByteBuffer.self))
        #expect(alone == next.webSocketText)
        #expect(Array(alone.readableBytesView) == [0x81, UInt8(next.bytes.readableBytes)] + Array(next.bytes.readableBytesView))
        withExtendedLifetime(writer) {}
    }
}
