import ChatJSON
import NIOCore

/// One encoded event, shared by every recipient: encoded once, the same bytes enqueued to every outbox.
public final class OutboundFrame: Sendable {
    /// The event name (`chat:message`, ...), or a transport-level tag such as `ack` for control frames.
    public let name: String
    /// Whether `name` is a chat event (`chat:…`): its delivery latency is measured.
    public let isChatEvent: Bool
    /// The bytes written to the transport (for Socket.IO: `42/chat,["name",data]`).
    public let bytes: ByteBuffer
    /// Typing indicators may be dropped for a slow socket; nothing else is.
    public let droppable: Bool
    /// When the frame was made (monotonic ns), for delivery latency.
    public let createdAt: UInt64
    /// `bytes` as one unmasked WebSocket text frame (RFC 6455 header and payload in one buffer; `bytes` is a view of
    /// its payload), when the encoder made it: a server's frame is the same for every recipient, so a websocket
    /// writer sends these bytes as they are, without framing (and copying a header for) each recipient's copy.
    public let webSocketText: ByteBuffer?

    public init(name: String, bytes: ByteBuffer, droppable: Bool = false, createdAt: UInt64 = monotonicNanos()) {
        self.name = name
        isChatEvent = name.hasPrefix("chat:")
        self.bytes = bytes
        self.droppable = droppable
        self.createdAt = createdAt
        webSocketText = nil
    }

    /// A frame of `payload` kept as a WebSocket text frame, `bytes` being its payload.
    init(name: String, webSocketPayload payload: [UInt8], droppable: Bool) {
        var wire = ByteBuffer()
        wire.reserveCapacity(payload.count + 10)
        Self.writeTextFrameHeader(length: payload.count, to: &wire)
        let headerLength = wire.readableBytes
        wire.writeBytes(payload)
        self.name = name
        isChatEvent = name.hasPrefix("chat:")
        bytes = wire.getSlice(at: wire.readerIndex + headerLength, length: payload.count)!
        self.droppable = droppable
        createdAt = monotonicNanos()
        webSocketText = wire
    }

    /// The header of an unmasked, final WebSocket text frame of `length` payload bytes (RFC 6455 §5.2).
    public static func writeTextFrameHeader(length: Int, to buffer: inout ByteBuffer) {
        buffer.writeInteger(UInt8(0x81))  // FIN, opcode 1 (text)
        if length < 126 {
            buffer.writeInteger(UInt8(length))
        } else if length <= Int(UInt16.max) {
            buffer.writeInteger(UInt8(126))
            buffer.writeInteger(UInt16(length))
        } else {
            buffer.writeInteger(UInt8(127))
            buffer.writeInteger(UInt64(length))
        }
    }
}

/// Encodes an event into a frame: `prefix ++ ["name",data]`.
public struct FrameEncoder: Sendable {
    public var prefix: [UInt8]
    /// Make every frame a WebSocket text frame as well (`OutboundFrame.webSocketText`).
    public var webSocketText: Bool

    public init(prefix: [UInt8], webSocketText: Bool = false) {
        self.prefix = prefix
        self.webSocketText = webSocketText
    }

    public func encode(_ name: String, _ data: JSONValue, droppable: Bool = false) -> OutboundFrame {
        encode(name, droppable: droppable) { JSONWriter.write(data, to: &$0) }
    }

    /// Like `encode(_:_:)`, with the data written by `writeData` (a writer that skips building a `JSONValue`).
    public func encode(_ name: String, droppable: Bool = false, writeData: (inout [UInt8]) -> Void) -> OutboundFrame {
        var out: [UInt8] = prefix
        out.reserveCapacity(prefix.count + 512)
        out.append(UInt8(ascii: "["))
        JSONWriter.writeString(name, to: &out)
        out.append(UInt8(ascii: ","))
        writeData(&out)
        out.append(UInt8(ascii: "]"))
        if webSocketText { return OutboundFrame(name: name, webSocketPayload: out, droppable: droppable) }
        return OutboundFrame(name: name, bytes: ByteBuffer(bytes: out), droppable: droppable)
    }

    /// Reverses `encode`: the event name and data of a frame made by this encoder.
    public func decode(_ frame: OutboundFrame) -> (name: String, data: JSONValue)? {
        var buffer = frame.bytes
        guard let bytes = buffer.readBytes(length: buffer.readableBytes), bytes.starts(with: prefix),
            let value = try? JSONParser.parse(bytes[prefix.count...], streamSafe: false),
            let array = value.arrayValue, array.count == 2, let name = array[0].stringValue
        else { return nil }
        return (name, array[1])
    }
}
