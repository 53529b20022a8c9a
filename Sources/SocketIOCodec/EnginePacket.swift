/// An Engine.IO v4 packet type (the first character of a text packet).
public enum EnginePacketType: UInt8, Sendable {
    case open = 0x30, close, ping, pong, message, upgrade, noop
}

/// One Engine.IO v4 packet: its type and the text after the type character, or a binary message (a WebSocket
/// binary frame, or `b` + base64 in a polling payload) whose `payload` is the decoded bytes.
public struct EnginePacket: Sendable, Equatable {
    public var type: EnginePacketType
    public var payload: [UInt8]
    /// A binary `message`: `payload` is raw bytes, not text.
    public var isBinary: Bool

    public init(type: EnginePacketType, payload: [UInt8] = [], isBinary: Bool = false) {
        self.type = type
        self.payload = payload
        self.isBinary = isBinary
    }

    /// A binary message packet.
    public static func binary(_ bytes: [UInt8]) -> EnginePacket { EnginePacket(type: .message, payload: bytes, isBinary: true) }

    /// The packet's wire text.
    public var encoded: [UInt8] { [type.rawValue] + payload }
}

/// Why bytes were not an Engine.IO or Socket.IO packet.
public struct CodecError: Error, Sendable, Equatable, CustomStringConvertible {
    public let description: String
    /// An EVENT that was well formed but whose JSON held a string that is not stream-safe (`StreamSafeText`): refused
    /// for what its text holds, not as a protocol error, and its ack id (if any) can still be answered.
    public var isRefusedText = false
    /// The refused EVENT's namespace and ack id.
    public var namespace: String?
    public var ackId: Int?
    public init(_ description: String) { self.description = description }
}

/// Engine.IO v4 framing: single packets (one per WebSocket frame) and polling payloads (packets joined by the
/// record separator 0x1E).
public enum EngineCodec {
    public static let recordSeparator: UInt8 = 0x1E

    /// Decodes one text packet (a WebSocket text frame; binary messages come as binary frames there).
    public static func decode(_ bytes: some Collection<UInt8>) throws(CodecError) -> EnginePacket {
        guard let first = bytes.first else { throw CodecError("empty packet") }
        guard let type = EnginePacketType(rawValue: first) else { throw CodecError("unknown packet type") }
        return EnginePacket(type: type, payload: Array(bytes.dropFirst()))
    }

    /// Splits a polling body into packets; `b` + base64 is a binary message.
    public static func decodePayload(_ body: [UInt8]) throws(CodecError) -> [EnginePacket] {
        var packets: [EnginePacket] = []
        var reader = PayloadReader(body)
        while let packet = try reader.next() { packets.append(packet) }
        return packets
    }

    /// The packets of a polling body one at a time, each decoded when it is asked for: a body of many tiny packets
    /// costs its handler one packet's memory at a time, not a list of them all (about 56 bytes per packet, 28 times
    /// a body of 2-byte packets).
    public struct PayloadReader {
        private let body: [UInt8]
        private var start: Int?

        public init(_ body: [UInt8]) {
            self.body = body
            start = body.startIndex
        }

        /// The next packet; `nil` after the last one.
        public mutating func next() throws(CodecError) -> EnginePacket? {
            guard let from = start else { return nil }
            let end = body[from...].firstIndex(of: EngineCodec.recordSeparator) ?? body.endIndex
            start = end < body.endIndex ? end + 1 : nil
            let part = body[from..<end]
            if part.first == UInt8(ascii: "b") {
                guard let bytes = Base64.decode(part.dropFirst()) else { throw CodecError("binary packet is not base64") }
                return .binary(bytes)
            }
            return try EngineCodec.decode(part)
        }
    }

    /// Joins encoded packets into a polling body.
    public static func encodePayload(_ packets: [[UInt8]]) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(packets.reduce(0) { $0 + $1.count + 1 })
        for (i, packet) in packets.enumerated() {
            if i > 0 { out.append(recordSeparator) }
            out.append(contentsOf: packet)
        }
        return out
    }
}

/// Base64 decoding (RFC 4648, padding optional): the standard alphabet carries Engine.IO's binary messages over
/// polling, the URL-safe one a JWT's parts.
public enum Base64 {
    public enum Alphabet: Sendable {
        /// `+` and `/` (§4).
        case standard
        /// `-` and `_` (§5).
        case url
    }

    /// The bytes of `text`, or `nil` if it is not base64 of `alphabet`. Linear in its input. `canonical` takes only
    /// the one spelling of the bytes: no padding, and the bits past the last whole byte zero (RFC 7515's base64url).
    public static func decode(_ text: some Collection<UInt8>, alphabet: Alphabet = .standard, canonical: Bool = false) -> [UInt8]? {
        let (c62, c63) = alphabet == .standard ? (UInt8(ascii: "+"), UInt8(ascii: "/")) : (UInt8(ascii: "-"), UInt8(ascii: "_"))
        var out: [UInt8] = []
        out.reserveCapacity(text.count * 3 / 4)
        var accumulator: UInt32 = 0
        var bits = 0
        var padding = 0
        for c in text {
            let value: UInt32
            switch c {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"): value = UInt32(c - 65)
            case UInt8(ascii: "a")...UInt8(ascii: "z"): value = UInt32(c - 97 + 26)
            case UInt8(ascii: "0")...UInt8(ascii: "9"): value = UInt32(c - 48 + 52)
            case c62: value = 62
            case c63: value = 63
            case UInt8(ascii: "="):
                padding += 1
                continue
            default: return nil
            }
            if padding > 0 { return nil }
            accumulator = accumulator << 6 | value
            bits += 6
            if bits >= 8 {
                bits -= 8
                out.append(UInt8(truncatingIfNeeded: accumulator >> UInt32(bits)))
            }
        }
        guard padding <= 2, bits < 6 else { return nil }
        if canonical, padding > 0 || accumulator & (1 << UInt32(bits) - 1) != 0 { return nil }
        return out
    }
}
