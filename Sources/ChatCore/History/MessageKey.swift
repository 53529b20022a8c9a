/// A message id as the index keeps it: 16 bytes for the canonical lowercase UUID text the broker generates,
/// the text itself for anything else, so the index holds no string per message.
enum MessageKey: Hashable {
    case uuid(UInt64, UInt64)
    case text(String)

    init(_ id: MessageID) {
        var high: UInt64 = 0
        var low: UInt64 = 0
        var nibbles = 0
        var canonical = id.utf8.count == 36
        if canonical {
            for (i, c) in id.utf8.enumerated() {
                if i == 8 || i == 13 || i == 18 || i == 23 {
                    if c != UInt8(ascii: "-") { canonical = false; break }
                    continue
                }
                guard let v = Self.hexValue(c) else {
                    canonical = false
                    break
                }
                if nibbles < 16 { high = high << 4 | UInt64(v) } else { low = low << 4 | UInt64(v) }
                nibbles += 1
            }
        }
        self = canonical ? .uuid(high, low) : .text(id)
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
