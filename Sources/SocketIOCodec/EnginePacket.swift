/// An Engine.IO v4 packet type (the first character of a text packet).
public enum EnginePacketType: UInt8, Sendable {
    case open = 0x30, close, ping, pong, message, upgrade, noop
}

/// One Engine.IO v4 text packet: its type and the text after the type character.
public struct EnginePacket: Sendable, Equatable {
    public var type: EnginePacketType
    public var payload: [UInt8]

    public init(type: EnginePacketType, payload: [UInt8] = []) {
        self.type = type
        self.payload = payload
    }

    /// The packet's wire text.
    public var encoded: [UInt8] { [type.rawValue] + payload }
}

/// Why bytes were not an Engine.IO or Socket.IO packet.
public struct CodecError: Error, Sendable, Equatable, CustomStringConvertible {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// Engine.IO v4 framing: single packets (one per WebSocket frame) and polling payloads (packets joined by the
/// record separator 0x1E).
public enum EngineCodec {
    public static let recordSeparator: UInt8 = 0x1E

    /// Decodes one text packet.
    public static func decode(_ bytes: some Collection<UInt8>) throws(CodecError) -> EnginePacket {
        guard let first = bytes.first else { throw CodecError("empty packet") }
        if first == UInt8(ascii: "b") { throw CodecError("binary packets are not supported") }
        guard let type = EnginePacketType(rawValue: first) else { throw CodecError("unknown packet type") }
        return EnginePacket(type: type, payload: Array(bytes.dropFirst()))
    }

    /// Splits a polling body into packets.
    public static func decodePayload(_ body: [UInt8]) throws(CodecError) -> [EnginePacket] {
        var packets: [EnginePacket] = []
        for part in body.split(separator: recordSeparator, omittingEmptySubsequences: false) {
            packets.append(try decode(part))
        }
        return packets
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
