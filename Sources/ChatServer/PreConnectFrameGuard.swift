import NIOCore
import NIOHTTP1
import NIOWebSocket

/// Reads the frame headers of a WebSocket's raw bytes, in front of the frame decoder, so that a client without a
/// `/chat` connection cannot make the decoder buffer a message of up to `--max-payload` before it is judged: a
/// message (a text or binary frame and its continuations) that announces more than `limit` bytes while the session
/// has no connection closes the socket as its header arrives (close code 1009). Bytes pass on unchanged; the guard
/// only follows frame boundaries (a header, then its payload skipped whole), so it costs a few operations per read.
/// The session is asked only when a message goes over the limit: a connected one may send up to `--max-payload`.
/// The server removes the guard once the session's token is checked (`EngineServer.dropPreConnectGuard`).
///
/// Two placements: right before the frame decoder, with the frame encoder in front of it (the task-free path, which
/// sets up the pipeline itself); or, with permessage-deflate on, where hummingbird-websocket sets up the pipeline,
/// behind NIO's upgrade handler before the upgrade, passing everything on untouched until the upgrade completes
/// (NIO's `upgradeComplete` event comes before the bytes it held back, and the frame decoder is added behind the
/// guard), and writing its close frame as bytes, since the frame encoder is behind it too.
final class PreConnectFrameGuard: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundOut = WebSocketFrame

    private let limit: UInt64
    private let connected: () -> Bool
    /// The header of the frame being read (2 to 14 bytes), until it is whole; inline, so an idle socket's guard
    /// allocates nothing.
    private var header = InlineArray<14, UInt8>(repeating: 0)
    private var headerCount = 0
    /// Payload bytes of the current frame still to come.
    private var payloadLeft: UInt64 = 0
    /// Bytes announced so far by the message being read (its frames until one with FIN).
    private var messageBytes: UInt64 = 0
    private var refused = false
    /// Whether the bytes passing are websocket frames: from the start before the frame decoder, from NIO's
    /// `upgradeComplete` event behind the upgrade handler (until then, what passes may be HTTP parts).
    private var reading: Bool
    /// Whether the frame encoder is behind the guard (the close frame is then written as bytes).
    private let encoderBehind: Bool

    enum Placement {
        /// Right before the frame decoder, the frame encoder in front: frames from the start.
        case beforeDecoder
        /// Behind the HTTP upgrade handler, added before the upgrade: frames once the upgrade completes.
        case awaitingUpgrade
    }

    init(limit: Int, placement: Placement = .beforeDecoder, connected: @escaping () -> Bool) {
        self.limit = UInt64(max(0, limit))
        self.connected = connected
        self.reading = placement == .beforeDecoder
        self.encoderBehind = placement == .awaitingUpgrade
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard reading else {
            context.fireChannelRead(data)
            return
        }
        guard !refused else { return }
        let buffer = unwrapInboundIn(data)
        let allowed = buffer.withUnsafeReadableBytes { scan($0) }
        guard allowed else {
            refused = true
            // A close frame, 1009 (message too big): unmasked, as a server's.
            if encoderBehind {
                context.writeAndFlush(NIOAny(ByteBuffer(bytes: [0x88, 0x02, 0x03, 0xF1])), promise: nil)
            } else {
                let close = WebSocketFrame(fin: true, opcode: .connectionClose, data: ByteBuffer(bytes: [0x03, 0xF1]))
                context.writeAndFlush(wrapOutboundOut(close), promise: nil)
            }
            context.close(promise: nil)
            return
        }
        context.fireChannelRead(data)
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if !reading, let upgrade = event as? HTTPServerUpgradeEvents, case .upgradeComplete = upgrade { reading = true }
        context.fireUserInboundEventTriggered(event)
    }

    /// Follows the frames in `bytes`; `false` once a message over the limit is announced by a session without a
    /// connection.
    private func scan(_ bytes: UnsafeRawBufferPointer) -> Bool {
        var i = 0
        while i < bytes.count {
            if payloadLeft > 0 {
                let skip = Int(min(payloadLeft, UInt64(bytes.count - i)))
                i += skip
                payloadLeft -= UInt64(skip)
                continue
            }
            header[headerCount] = bytes[i]
            headerCount += 1
            i += 1
            guard headerCount >= 2 else { continue }
            let code = header[1] & 0x7F
            let needed = 2 + (code == 126 ? 2 : code == 127 ? 8 : 0) + (header[1] & 0x80 != 0 ? 4 : 0)
            guard headerCount >= needed else { continue }
            var length = UInt64(code)
            if code == 126 {
                length = UInt64(header[2]) << 8 | UInt64(header[3])
            } else if code == 127 {
                length = (2..<10).reduce(0) { $0 << 8 | UInt64(header[$1]) }
            }
            let fin = header[0] & 0x80 != 0, opcode = header[0] & 0x0F
            headerCount = 0
            payloadLeft = length
            // Control frames (opcode 8 and up) carry at most 125 bytes and are no part of a message.
            guard opcode < 8 else { continue }
            if opcode != 0 { messageBytes = 0 }
            messageBytes = length > UInt64.max - messageBytes ? UInt64.max : messageBytes + length
            if messageBytes > limit && !connected() { return false }
            if fin { messageBytes = 0 }
        }
        return true
    }
}
