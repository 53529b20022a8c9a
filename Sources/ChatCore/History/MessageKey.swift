/// A message id as the index keeps it: 16 bytes for the canonical lowercase UUID text the broker generates,
/// the text itself for anything else, so the index holds no string per message.
enum MessageKey: Hashable {
    case uuid(UInt64, UInt64)
    case text(String)

    init(_ id: MessageID) {
        var text = id
        let parsed = text.withUTF8 { bytes -> (UInt64, UInt64)? in
            guard bytes.count == 36 else { return nil }
            var high: UInt64 = 0
            var low: UInt64 = 0
            var nibbles = 0
            for i in 0..<36 {
                let c = bytes[i]
                if i == 8 || i == 13 || i == 18 || i == 23 {
                    guard c == UInt8(ascii: "-") else { return nil }
                    continue
                }
                guard let v = Self.hexValue(c) else { return nil }
                if nibbles < 16 { high = high << 4 | UInt64(v) } else { low = low << 4 | UInt64(v) }
                nibbles += 1
            }
            return (high, low)
        }
        self = parsed.map { .uuid($0.0, $0.1) } ?? .text(id)
    }

    private static func hexValue(_ c: UInt8) -> UInt8? {
        switch c {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): c - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): c - UInt8(ascii: "a") + 10
        default: nil
        }
    }

    /// The id's text, exactly as it was given.
    var id: MessageID {
        switch self {
        case .text(let text): return text
        case .uuid(let high, let low): return Identifier.text(high: high, low: low)
        }
    }
}
