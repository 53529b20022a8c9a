import ChatJSON
import NIOCore

/// One encoded event, shared by every recipient: encoded once, the same bytes enqueued to every outbox.
public final class OutboundFrame: Sendable {
    /// The event name (`chat:message`, ...), or a transport-level tag such as `ack` for control frames.
    public let name: String
    /// The bytes written to the transport (for Socket.IO: `42/chat,["name",data]`).
    public let bytes: ByteBuffer
    /// Typing indicators may be dropped for a slow socket; nothing else is.
    public let droppable: Bool
    /// When the frame was made (monotonic ns), for delivery latency.
    public let createdAt: UInt64

    public init(name: String, bytes: ByteBuffer, droppable: Bool = false, createdAt: UInt64 = monotonicNanos()) {
        self.name = name
        self.bytes = bytes
        self.droppable = droppable
        self.createdAt = createdAt
    }
}

/// Encodes an event into a frame: `prefix ++ ["name",data]`.
public struct FrameEncoder: Sendable {
    public var prefix: [UInt8]

    public init(prefix: [UInt8]) { self.prefix = prefix }

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
        return OutboundFrame(name: name, bytes: ByteBuffer(bytes: out), droppable: droppable)
    }

    /// Reverses `encode`: the event name and data of a frame made by this encoder.
    public func decode(_ frame: OutboundFrame) -> (name: String, data: JSONValue)? {
        var buffer = frame.bytes
        guard let bytes = buffer.readBytes(length: buffer.readableBytes), bytes.starts(with: prefix),
            let value = try? JSONParser.parse(bytes[prefix.count...]),
            let array = value.arrayValue, array.count == 2, let name = array[0].stringValue
        else { return nil }
        return (name, array[1])
    }
}
