import CompressNIO
import HummingbirdWSCompression
import HummingbirdWebSocket
import NIOCore
import NIOWebSocket
import Synchronization

/// permessage-deflate (RFC 7692) whose inbound side inflates a frame only as far as the socket's reader allows at
/// that moment, so a client without a token makes the broker inflate no more than twice
/// `--max-payload-before-connect` per frame (hummingbird-websocket's own extension takes one bound for the whole
/// connection, `--max-payload`: about 4 ms of CPU for 1 KB sent). Negotiation stays hummingbird-websocket's; this type
/// owns the inflater and its state between the frames of a message, and hands what the broker sends to the
/// `SharedDeflater` (each message on its own: no compressor per socket, one compression per event).
///
/// The bound comes from the reading task (`Bound`, task-local: hummingbird-websocket applies extensions inside the
/// `next()` of the reader's own loop). A frame that breaks the extension's rules is not thrown at hummingbird-websocket
/// (which would close with 1011): its data is dropped and `Bound.refusal` says which close code ends the socket, for
/// the reader to send as it would its own (1009 past the bound, 1007 for a stream that does not inflate, 1002 for
/// RSV1 on a continuation frame, RFC 7692 §6.1).
final class BoundedDeflateExtension: WebSocketExtension {
    /// What the reading task allows the frames it reads to inflate to, and the close code of a frame refused.
    final class Bound: Sendable {
        private let beforeConnect: Int
        private let connected: Int
        private let isConnected: @Sendable () -> Bool
        /// Set at the first frame read once the session is connected: the larger bound holds from then on.
        private let connectedOnce = Atomic(false)
        private let refused = Mutex<WebSocketErrorCode?>(nil)

        init(beforeConnect: Int, connected: Int, isConnected: @escaping @Sendable () -> Bool) {
            self.beforeConnect = beforeConnect
            self.connected = connected
            self.isConnected = isConnected
        }

        /// Most bytes a frame, or a message, may inflate to now.
        func limit() -> Int {
            if connectedOnce.load(ordering: .relaxed) { return connected }
            guard isConnected() else { return beforeConnect }
            connectedOnce.store(true, ordering: .relaxed)
            return connected
        }

        /// The close code of the first frame refused, if one was.
        var refusal: WebSocketErrorCode? { refused.withLock { $0 } }

        fileprivate func refuse(_ code: WebSocketErrorCode) { refused.withLock { $0 = $0 ?? code } }

        /// What inflating the frames read since the last `takeInputCost` cost: their compressed bytes, and for each
        /// stream a frame ended and began again (a final block with input after it), what a small message costs.
        private let inputCost = Atomic(0)
        fileprivate func addInputCost(_ bytes: Int) { inputCost.add(bytes, ordering: .relaxed) }
        /// Takes the input cost counted so far (the reader charges it to the socket's inbound budget).
        func takeInputCost() -> Int { inputCost.exchange(0, ordering: .relaxed) }
    }

    /// The bound of the socket the current task reads (set by `EngineServer.readCompressedMessages`).
    @TaskLocal static var bound: Bound?

    /// The inflater (made at the first compressed frame: a socket that never sends one holds none) and whether the
    /// message being read is compressed (its first frame's RSV1).
    private struct Inflater {
        let windowBits: Int
        var zlib: ZlibDecompressor?
        var inflating = false
    }

    let name = "permessage-deflate"
    var reservedBits: WebSocketFrame.ReservedBits { .rsv1 }
    /// The window the client inflates what the broker sends with (`server_max_window_bits`, else 15).
    private let sendWindowBits: Int
    private let inflater: Mutex<Inflater>

    init(receiveWindowBits: Int, sendWindowBits: Int) {
        self.sendWindowBits = sendWindowBits
        self.inflater = Mutex(Inflater(windowBits: receiveWindowBits))
    }

    /// Compresses a whole text or binary message of at least `SharedDeflater.minimumSize` bytes, on its own
    /// (`server_no_context_takeover`), with the shared deflater; anything else goes as it is.
    func processFrameToSend(_ frame: WebSocketFrame, context: WebSocketExtensionContext) async throws -> WebSocketFrame {
        guard frame.fin, frame.opcode == .text || frame.opcode == .binary, !frame.rsv1,
            let deflated = SharedDeflater.shared.deflate(frame.data, windowBits: sendWindowBits)
        else { return frame }
        var compressed = frame
        compressed.rsv1 = true
        compressed.data = deflated
        return compressed
    }

    func shutdown() async {}

    func processReceivedFrame(_ frame: WebSocketFrame, context: WebSocketExtensionContext) async throws -> WebSocketFrame {
        // Only a reader that sets a bound reads through this extension; anything else gets nothing inflated.
        guard let bound = Self.bound else { throw NIOWebSocketError.invalidFrameLength }
        var frame = frame
        let data = frame.unmaskedData
        frame.maskKey = nil
        guard bound.refusal == nil else {
            frame.data = ByteBuffer()
            return frame
        }
        let inflated: ByteBuffer? = inflater.withLock { inflater in
            if frame.opcode == .continuation {
                if frame.rsv1 {
                    bound.refuse(.protocolError)
                    return ByteBuffer()
                }
            } else {
                inflater.inflating = frame.rsv1
            }
            guard inflater.inflating else { return nil }
            if frame.fin { inflater.inflating = false }
            if inflater.zlib == nil { inflater.zlib = try? ZlibDecompressor(algorithm: .deflate, windowSize: Int32(inflater.windowBits)) }
            guard let zlib = inflater.zlib else {
                bound.refuse(.unexpectedServerError)
                return ByteBuffer()
            }
            var input = data
            bound.addInputCost(data.readableBytes)
            // The four bytes a sender leaves off each compressed message (RFC 7692 §7.2.2).
            if frame.fin { input.writeBytes(Self.tail) }
            return Self.inflate(&input, with: zlib, upTo: bound.limit(), refusing: bound, tailed: frame.fin)
        }
        frame.data = inflated ?? data
        return frame
    }

    /// The four bytes a sender leaves off each compressed message (RFC 7692 §7.2.2): an empty stored block.
    private static let tail: [UInt8] = [0x00, 0x00, 0xFF, 0xFF]

    /// Inflates `input` into a buffer that grows as it fills, and stops once it holds more than `limit` bytes (what it
    /// costs is bounded by the limit, not by the ratio the sender chose). A refused frame gives an empty buffer.
    /// `tailed`: `input` ends with the message's `tail`, which after a final block (a sender that ends each message so,
    /// RFC 7692 §7.2.3.3) is no block of its own: it is dropped, and the next message starts a new stream. (Inflated as
    /// one, its four bytes began a stored block that took the next message's first bytes as its length: the second
    /// message of such a sender failed with 1007.)
    private static func inflate(
        _ input: inout ByteBuffer, with zlib: ZlibDecompressor, upTo limit: Int, refusing bound: Bound, tailed: Bool
    ) -> ByteBuffer {
        var output = ByteBuffer()
        guard input.readableBytes > 0 else { return output }
        output.reserveCapacity(min(limit + 1, max(256, 4 * input.readableBytes)))
        var more = true
        while more {
            more = false
            let progress = (input.readableBytes, output.readableBytes)
            do {
                try zlib.inflate(from: &input, to: &output)
                // The sender ended its stream (a final block): what follows starts a new one, without the window
                // (a sender that ends each message so and keeps its window, which RFC 7692 §7.2.3.5 allows and
                // mainstream clients do not do, gets 1007 at its first reference to an earlier message).
                if tailed, input.readableBytes == tail.count, input.readableBytesView.elementsEqual(tail) {
                    input.moveReaderIndex(forwardBy: tail.count)
                    try zlib.reset()
                } else if input.readableBytes > 0 {
                    // Each costs what a small message does: a frame of empty final blocks (`03 00`, two bytes each)
                    // restarted the inflater 65,000 times per 130 KB, 5 ms of CPU, for what inflated to nothing.
                    bound.addInputCost(EngineSession.minimumInboundCost)
                    try zlib.reset()
                    more = true
                }
            } catch let error as CompressNIOError where error == .bufferOverflow {
                // Output full: zlib may hold more, whether or not input is left. (With room left and nothing moved,
                // zlib is stuck: nothing more will come of this frame.)
                guard output.writableBytes == 0 || progress != (input.readableBytes, output.readableBytes) else {
                    bound.refuse(.dataInconsistentWithMessage)
                    return ByteBuffer()
                }
                more = true
            } catch let error as CompressNIOError where error == .inputBufferOverflow {
                // All the input is taken and zlib waits for more: the frame is done.
            } catch {
                bound.refuse(.dataInconsistentWithMessage)
                return ByteBuffer()
            }
            guard output.readableBytes <= limit else {
                bound.refuse(.messageTooLarge)
                return ByteBuffer()
            }
            if more, output.writableBytes == 0 {
                output.reserveCapacity(minimumWritableBytes: max(1, min(output.readableBytes, limit + 1 - output.readableBytes)))
            }
        }
        return output
    }

    /// Negotiates as hummingbird-websocket's permessage-deflate does (its answer), always with
    /// `server_no_context_takeover` (which RFC 7692 §7.1.1.1 lets a server add to any offer it accepts: each message
    /// the broker sends is compressed on its own, `SharedDeflater`), and inflates with a `BoundedDeflateExtension`.
    struct Builder: WebSocketExtensionBuilder {
        static let name = "permessage-deflate"
        private let library: any WebSocketExtensionBuilder

        init(maxPayload: Int) {
            library = WebSocketExtensionFactory.perMessageDeflate(serverNoContextTakeover: true, maxDecompressedFrameSize: maxPayload).build()
        }

        func clientRequestHeader() -> String { library.clientRequestHeader() }

        func serverReponseHeader(to request: WebSocketExtensionHTTPParameters) -> String? {
            guard Self.windowBits(of: request) != nil else { return nil }
            return library.serverReponseHeader(to: request)
        }

        func serverExtension(from request: WebSocketExtensionHTTPParameters) throws -> (any WebSocketExtension)? {
            guard let windowBits = Self.windowBits(of: request) else { return nil }
            // What the client inflates with: the window it asked the broker to keep within, else 15 (zlib cannot
            // deflate with 8: such a client is sent uncompressed messages, `SharedDeflater`).
            let sendWindowBits = request.parameters["server_max_window_bits"]?.optional.flatMap { Int($0) } ?? 15
            return BoundedDeflateExtension(receiveWindowBits: windowBits, sendWindowBits: sendWindowBits)
        }

        /// The window the client compresses with (what it offered, as hummingbird-websocket answers it, else 15), or
        /// `nil` for an offer RFC 7692 §7.1.2 does not allow, which is declined: `server_max_window_bits` must say
        /// 8 to 15, and `client_max_window_bits` nothing or 8 to 15. (Found by a review: hummingbird-websocket
        /// converts either to a 32-bit integer unchecked, so `client_max_window_bits=4294967296` stopped the process
        /// before any token was checked; 0 or -15 were taken, and every message then failed.)
        static func windowBits(of request: WebSocketExtensionHTTPParameters) -> Int? {
            let allowed = 8...15
            if let server = request.parameters["server_max_window_bits"] {
                guard let bits = server.optional.flatMap({ Int($0) }), allowed.contains(bits) else { return nil }
            }
            guard let client = request.parameters["client_max_window_bits"] else { return 15 }
            guard let value = client.optional else { return 15 }
            guard let bits = Int(value), allowed.contains(bits) else { return nil }
            return bits
        }

        /// The broker is a server only.
        func clientExtension(from response: WebSocketExtensionHTTPParameters) throws -> (any WebSocketExtension)? { nil }
    }
}
