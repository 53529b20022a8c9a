import ChatCore
import NIOCore
import NIOHTTP1
import NIOWebSocket

/// Reads the frame headers of a WebSocket's raw bytes, in front of the frame decoder, for the socket's whole life:
///
/// - so that a client without a `/chat` connection cannot make the decoder buffer a message of up to
///   `--max-payload` before it is judged: a message (a text or binary frame and its continuations) that announces
///   more than `limit` bytes while the session has no connection closes the socket as its header arrives (close code
///   1009). The session is asked only when a message goes over the limit: a connected one may send up to
///   `--max-payload`;
/// - so that what messages begun and not yet whole hold is counted where it is held (`HeldMessageBytes`): the bytes
///   of the message being read, once a read ends with it unfinished, are held by the session's user (or by all
///   sockets without a connection); a read that would take them past their bound closes the socket (close code 1013,
///   try again later), and the bytes are given back as the message ends or the socket closes.
///
/// Bytes pass on unchanged; the guard only follows frame boundaries (a header, then its payload skipped whole), so it
/// costs a few operations per read.
///
/// Two placements: right before the frame decoder, with the frame encoder in front of it (the task-free path, which
/// sets up the pipeline itself); or, with permessage-deflate on, where hummingbird-websocket sets up the pipeline,
/// behind NIO's upgrade handler before the upgrade, passing everything on untouched until the upgrade completes
/// (NIO's `upgradeComplete` event comes before the bytes it held back, and the frame decoder is added behind the
/// guard), and writing its close frame as bytes, since the frame encoder is behind it too.
final class WebSocketMessageGuard: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = ByteBuffer
    typealias OutboundOut = WebSocketFrame

    private let limit: UInt64
    private let connected: () -> Bool
    /// Where unfinished messages are counted, and whose they are now (`nil`: a socket without a connection).
    private let holds: HeldMessageBytes?
    private let owner: () -> SessionKey?
    /// The header of the frame being read (2 to 14 bytes), until it is whole; inline, so an idle socket's guard
    /// allocates nothing.
    private var header = InlineArray<14, UInt8>(repeating: 0)
    private var headerCount = 0
    /// Payload bytes of the current frame still to come.
    private var payloadLeft: UInt64 = 0
    /// Whether the current frame (its payload) is part of a message, and whether it ends the message.
    private var frameInMessage = false
    private var frameEndsMessage = false
    /// Bytes announced so far by the message being read (its frames until one with FIN).
    private var messageBytes: UInt64 = 0
    /// Bytes of the message being read that have come (headers and payloads of its frames so far).
    private var messageRead = 0
    /// What `holds` holds for this socket's unfinished message.
    private var hold = HeldMessageBytes.Hold()
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

    init(
        limit: Int, placement: Placement = .beforeDecoder, holds: HeldMessageBytes? = nil, owner: @escaping () -> SessionKey? = { nil },
        connected: @escaping () -> Bool
    ) {
        self.limit = UInt64(max(0, limit))
        self.connected = connected
        self.holds = holds
        self.owner = owner
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
        guard buffer.withUnsafeReadableBytes({ scan($0) }) else { return refuse(context: context, code: 1009) }
        guard holdUnfinished() else { return refuse(context: context, code: 1013) }
        context.fireChannelRead(data)
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        if let holds { hold.release(in: holds) }
    }

    /// Closes the socket with a close frame of `code` (1009, message too big; 1013, try again later): unmasked, as a
    /// server's.
    private func refuse(context: ChannelHandlerContext, code: UInt16) {
        refused = true
        let payload: [UInt8] = [UInt8(code >> 8), UInt8(code & 0xFF)]
        if encoderBehind {
            context.writeAndFlush(NIOAny(ByteBuffer(bytes: [0x88, 0x02] + payload)), promise: nil)
        } else {
            let close = WebSocketFrame(fin: true, opcode: .connectionClose, data: ByteBuffer(bytes: payload))
            context.writeAndFlush(wrapOutboundOut(close), promise: nil)
        }
        context.close(promise: nil)
    }

    /// Counts what the unfinished message holds now (past `HeldMessageBytes.free`) for the session's user, or for the
    /// sockets without a connection; `false` when that goes past their bound.
    private func holdUnfinished() -> Bool {
        guard let holds, messageRead > 0 || hold.bytes > 0 else { return true }
        return hold.update(messageRead, for: owner(), in: holds)
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
                if frameInMessage {
                    messageRead += skip
                    if payloadLeft == 0, frameEndsMessage { messageRead = 0 }
                }
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
            frameInMessage = opcode < 8
            guard opcode < 8 else { continue }
            if opcode != 0 {
                messageBytes = 0
                messageRead = 0
            }
            messageBytes = length > UInt64.max - messageBytes ? UInt64.max : messageBytes + length
            if messageBytes > limit && !connected() { return false }
            frameEndsMessage = fin
            messageRead += needed
            if fin {
                messageBytes = 0
                if length == 0 { messageRead = 0 }
            }
        }
        return true
    }
}
