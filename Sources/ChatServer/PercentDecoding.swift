/// `%XX` escapes in request targets, query strings and path segments, decoded in one place (linear in the input).
///
/// Three readings share it: a form query (`+` is a space, a stray `%` stays, as WHATWG's urlencoded parser reads it),
/// a request target checked before routing (a stray `%` stays), and a path segment (a stray `%` or bytes that are not
/// UTF-8 are an error, as Foundation's `removingPercentEncoding` has it).
enum PercentDecoding {
    /// The bytes `text` names: every `%` followed by two hex digits is the byte they spell, `+` is 0x20 when
    /// `plusIsSpace`. `wellFormed` is false when some `%` was not followed by two hex digits (it is kept as it is).
    static func decode(_ text: some Collection<UInt8>, plusIsSpace: Bool = false) -> (bytes: [UInt8], wellFormed: Bool) {
        var out: [UInt8] = []
        out.reserveCapacity(text.count)
        var wellFormed = true
        var i = text.startIndex
        while i < text.endIndex {
            let byte = text[i]
            i = text.index(after: i)
            if byte == UInt8(ascii: "%") {
                if i < text.endIndex, let high = hexValue(text[i]) {
                    let next = text.index(after: i)
                    if next < text.endIndex, let low = hexValue(text[next]) {
                        out.append(high << 4 | low)
                        i = text.index(after: next)
                        continue
                    }
                }
                wellFormed = false
                out.append(byte)
            } else if plusIsSpace, byte == UInt8(ascii: "+") {
                out.append(0x20)
            } else {
                out.append(byte)
            }
        }
        return (out, wellFormed)
    }

    /// `text` with its escapes decoded; bytes that are not UTF-8 become U+FFFD. `text` itself when it has no `%`.
    static func lenient(_ text: String, plusIsSpace: Bool = false) -> String {
        guard plusIsSpace || text.utf8.contains(UInt8(ascii: "%")) else { return text }
        return String(decoding: decode(text.utf8, plusIsSpace: plusIsSpace).bytes, as: UTF8.self)
    }

    /// `text` with its escapes decoded, or `nil` if a `%` is not followed by two hex digits or the bytes are not UTF-8.
    static func strict(_ text: String) -> String? {
        guard text.utf8.contains(UInt8(ascii: "%")) else { return text }
        let (bytes, wellFormed) = decode(text.utf8)
        guard wellFormed else { return nil }
        return String(validating: bytes, as: UTF8.self)
    }

    private static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): byte - UInt8(ascii: "A") + 10
        default: nil
        }
    }
}
