import ChatJSON

/// A Socket.IO v5 packet type.
public enum SocketPacketType: UInt8, Sendable {
    case connect = 0x30, disconnect, event, ack, connectError, binaryEvent, binaryAck
}

/// One Socket.IO v5 packet: `<type>[<attachments>-][<namespace>,][<ackId>][<JSON>]`.
public struct SocketPacket: Sendable, Equatable {
    public var type: SocketPacketType
    public var namespace: String
    public var ackId: Int?
    public var data: JSONValue?
    public var attachments: Int?

    public init(type: SocketPacketType, namespace: String = "/", ackId: Int? = nil, data: JSONValue? = nil, attachments: Int? = nil) {
        self.type = type
        self.namespace = namespace
        self.ackId = ackId
        self.data = data
        self.attachments = attachments
    }

    /// The event name and its first argument, for an EVENT whose data is `["name", arg?, ...]`.
    /// A numeric name (socket.io's parser accepts one) is given as its JSON text, so it is an unknown event, not a
    /// malformed packet.
    public var event: (name: String, argument: JSONValue?)? {
        guard type == .event || type == .binaryEvent, let items = data?.arrayValue, let name = items.first.flatMap(SocketCodec.eventName) else {
            return nil
        }
        return (name, items.count > 1 ? items[1] : nil)
    }
}

/// Encodes and decodes Socket.IO v5 packets (the text inside an Engine.IO `message` packet).
public enum SocketCodec {
    /// Largest ack id accepted (socket.io uses a counter; anything longer is hostile).
    static let maxAckDigits = 15
    /// Event names a client may not emit (socket.io's parser refuses them too).
    static let reservedEvents: Set<String> = ["connect", "connect_error", "disconnect", "disconnecting", "newListener", "removeListener"]

    /// Decodes a packet. `maxObjectMembers` bounds every JSON object in it: a server passes a small bound before the
    /// client authenticated (a CONNECT carries a token, not thousands of keys).
    public static func decode(
        _ bytes: [UInt8], maxDepth: Int = 32, maxObjectMembers: Int = JSONParser.defaultMaxObjectMembers
    ) throws(CodecError) -> SocketPacket {
        guard let first = bytes.first, let type = SocketPacketType(rawValue: first) else { throw CodecError("unknown Socket.IO packet type") }
        var i = 1
        var attachments: Int?
        if type == .binaryEvent || type == .binaryAck {
            var n = 0
            var digits = 0
            while i < bytes.count, bytes[i] >= 0x30 && bytes[i] <= 0x39, digits < 6 {
                n = n * 10 + Int(bytes[i] - 0x30)
                i += 1
                digits += 1
            }
            guard digits > 0, i < bytes.count, bytes[i] == UInt8(ascii: "-") else { throw CodecError("bad attachment count") }
            i += 1
            attachments = n
        }
        var namespace = "/"
        if i < bytes.count, bytes[i] == UInt8(ascii: "/") {
            let start = i
            while i < bytes.count, bytes[i] != UInt8(ascii: ",") { i += 1 }
            guard i - start <= 256 else { throw CodecError("namespace too long") }
            guard let ns = String(validating: bytes[start..<i], as: UTF8.self) else { throw CodecError("namespace is not UTF-8") }
            namespace = ns
            if i < bytes.count { i += 1 }
        }
        var ackId: Int?
        let digitsStart = i
        while i < bytes.count, bytes[i] >= 0x30 && bytes[i] <= 0x39 {
            guard i - digitsStart < maxAckDigits else { throw CodecError("ack id too long") }
            ackId = (ackId ?? 0) * 10 + Int(bytes[i] - 0x30)
            i += 1
        }
        if ackId != nil && ![.event, .ack, .binaryEvent, .binaryAck].contains(type) {
            throw CodecError("only EVENT and ACK packets carry an ack id")
        }
        var data: JSONValue?
        if i < bytes.count {
            guard bytes[i] == UInt8(ascii: "[") || bytes[i] == UInt8(ascii: "{") else {
                throw CodecError("packet data must be a JSON array or object")
            }
            do { data = try JSONParser.parse(bytes[i...], maxDepth: maxDepth, maxObjectMembers: maxObjectMembers) } catch {
                guard error.refusedText, type == .event else { throw CodecError("payload is not valid JSON: \(error.description)") }
                var refusal = CodecError("payload refused: \(error.description)")
                refusal.isRefusedText = true
                refusal.namespace = namespace
                refusal.ackId = ackId
                throw refusal
            }
        }
        switch type {
        case .event, .binaryEvent:
            guard let items = data?.arrayValue, let name = items.first.flatMap(eventName) else { throw CodecError("an EVENT needs [name, ...args]") }
            guard !reservedEvents.contains(name) else { throw CodecError("\(name) is a reserved event name") }
        case .ack, .binaryAck:
            guard ackId != nil, data?.arrayValue != nil else { throw CodecError("an ACK needs an id and an array") }
        case .connect:
            if let data, data.objectValue == nil { throw CodecError("CONNECT data must be an object") }
        case .connectError:
            guard data?.objectValue != nil else { throw CodecError("CONNECT_ERROR data must be an object") }
        case .disconnect:
            if data != nil { throw CodecError("DISCONNECT carries no data") }
        }
        return SocketPacket(type: type, namespace: namespace, ackId: ackId, data: data, attachments: attachments)
    }

    /// An EVENT's name: a string, or a number as socket.io's parser allows (given as its JSON text).
    static func eventName(_ value: JSONValue) -> String? {
        switch value {
        case .string(let name): name
        case .number: String(decoding: JSONWriter.encode(value), as: UTF8.self)
        default: nil
        }
    }

    public static func encode(_ packet: SocketPacket) -> [UInt8] {
        var out: [UInt8] = [packet.type.rawValue]
        if let attachments = packet.attachments {
            out.append(contentsOf: Array(String(attachments).utf8))
            out.append(UInt8(ascii: "-"))
        }
        if packet.namespace != "/" {
            out.append(contentsOf: Array(packet.namespace.utf8))
            out.append(UInt8(ascii: ","))
        }
        if let ackId = packet.ackId { out.append(contentsOf: Array(String(ackId).utf8)) }
        if let data = packet.data { JSONWriter.write(data, to: &out) }
        return out
    }
}
