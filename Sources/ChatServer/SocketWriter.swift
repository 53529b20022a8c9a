import ChatCore
import NIOCore
import NIOWebSocket

/// Drains one session's outbox into its WebSocket channel without a task of its own. The outbox's drain signal
/// adds the writer to its event loop's `EventLoopDrainQueue`, which drains it on the loop (with every other writer
/// of that loop the same fan-out woke); a drain writes up to about one outbox's worth of frames with
/// one flush, and takes the next batch only once that flush reached the socket, so a slow reader's backlog stays
/// in the bounded outbox (where the slow-consumer rule sees it) instead of piling up in NIO.
///
/// Confined to the channel's event loop after `start()`; that is what makes the unchecked `Sendable` sound.
final class SocketWriter: @unchecked Sendable {
    private let channel: any Channel
    private let outbox: Outbox
    private let maxBytes: Int
    private let metrics: BrokerMetrics
    private let onClose: @Sendable (String) -> Void
    private var writing = false
    private var finished = false
    private var draining = false
    private var drainAgain = false
    private var lookedUpEncoder = false
    private var encoderContext: ChannelHandlerContext?
    /// Batches one `drain` may write back to back before yielding the event loop to its other channels.
    private static let roundsPerTurn = 16

    /// `onClose` is called once, on the event loop, when the outbox closed or a write failed.
    init(channel: any Channel, outbox: Outbox, maxBytes: Int, metrics: BrokerMetrics, onClose: @escaping @Sendable (String) -> Void) {
        self.channel = channel
        self.outbox = outbox
        self.maxBytes = maxBytes
        self.metrics = metrics
        self.onClose = onClose
    }

    /// Starts draining (and drains what is already queued), through `queue`, the drain queue of the channel's event
    /// loop. The outbox's signal holds the writer strongly (a weak reference would make every retain of the writer
    /// take the runtime's slow path) until the outbox closes, which drops the signal: every session's end closes
    /// its outbox.
    func start(through queue: EventLoopDrainQueue) {
        precondition(queue.eventLoop === channel.eventLoop, "a writer drains on its channel's event loop")
        outbox.setDrainSignal { queue.add(self) }
    }

    /// Drains until nothing is waiting or a flush is pending. A flush that completes at once (the socket took
    /// everything) completes its promise synchronously, inside `drainOnce`; that asks for another round here
    /// instead of recursing, and after `roundsPerTurn` rounds the rest is rescheduled so one busy socket cannot
    /// hold the event loop.
    func drain() {
        if draining {
            drainAgain = true
            return
        }
        draining = true
        var rounds = 0
        repeat {
            drainAgain = false
            drainOnce()
            rounds += 1
        } while drainAgain && rounds < Self.roundsPerTurn
        draining = false
        if drainAgain {
            drainAgain = false
            channel.eventLoop.execute { self.drain() }
        }
    }

    private func drainOnce() {
        if finished { return }
        if let reason = outbox.closeReason {
            finish(reason == .slowConsumer ? OutboxCloseReason.slowConsumer.rawValue : "outbox closed")
            return
        }
        guard !writing else { return }
        // The batch counts in its user's outbound budget until its flush completes (`Outbox.sent`).
        let frames = outbox.takeOrRearm(max: 1024, maxBytes: maxBytes, holdingUntilSent: true)
        guard let last = frames.last else { return }
        let bytes = frames.reduce(0) { $0 + $1.bytes.readableBytes }
        writing = true
        metrics.recordDeliveries(of: frames, at: monotonicNanos())
        let flushed = channel.eventLoop.makePromise(of: Void.self)
        if let framed = framedOutput() {
            // Frames already in WebSocket form go in below the frame encoder: one frame as the bytes every recipient
            // shares; several copied into one buffer, which costs less than a pipeline write and an iovec each.
            if frames.count == 1 {
                framed.writeAndFlush(NIOAny(Self.wire(last)), promise: flushed)
            } else {
                var batch = channel.allocator.buffer(capacity: bytes + 10 * frames.count)
                for frame in frames { Self.writeWire(frame, to: &batch) }
                framed.writeAndFlush(NIOAny(batch), promise: flushed)
            }
        } else {
            for frame in frames.dropLast() {
                channel.write(WebSocketFrame(fin: true, opcode: .text, data: frame.bytes), promise: nil)
            }
            channel.writeAndFlush(WebSocketFrame(fin: true, opcode: .text, data: last.bytes), promise: flushed)
        }
        flushed.futureResult.whenComplete { result in
            self.writing = false
            self.outbox.sent(bytes)
            switch result {
            case .success: self.drain()
            case .failure: self.finish("write failed")
            }
        }
    }

    /// The context of the channel's WebSocket frame encoder, looked up once on the event loop: a write from it
    /// enters the pipeline below the encoder, so it carries finished frames (`nil` where there is no such encoder).
    private func framedOutput() -> ChannelHandlerContext? {
        if !lookedUpEncoder {
            lookedUpEncoder = true
            encoderContext = try? channel.pipeline.syncOperations.context(handlerType: WebSocketFrameEncoder.self)
        }
        return encoderContext
    }

    /// The frame as WebSocket bytes: made once by the encoder for every recipient, or framed here (control frames).
    static func wire(_ frame: OutboundFrame) -> ByteBuffer {
        if let wire = frame.webSocketText { return wire }
        var wire = ByteBuffer()
        wire.reserveCapacity(frame.bytes.readableBytes + 10)
        writeWire(frame, to: &wire)
        return wire
    }

    /// Appends the frame as WebSocket bytes to `buffer`.
    static func writeWire(_ frame: OutboundFrame, to buffer: inout ByteBuffer) {
        if let wire = frame.webSocketText {
            buffer.writeImmutableBuffer(wire)
        } else {
            OutboundFrame.writeTextFrameHeader(length: frame.bytes.readableBytes, to: &buffer)
            buffer.writeImmutableBuffer(frame.bytes)
        }
    }

    private func finish(_ reason: String) {
        guard !finished else { return }
        finished = true
        onClose(reason)
    }
}
