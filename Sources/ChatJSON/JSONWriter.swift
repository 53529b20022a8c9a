/// Serialises `JSONValue`s to compact UTF-8 JSON, appending to a byte array.
public enum JSONWriter {
    /// The compact UTF-8 encoding of `value`.
    public static func encode(_ value: JSONValue) -> [UInt8] {
        var out: [UInt8] = []
        out.reserveCapacity(128)
        write(value, to: &out)
        return out
    }

    public static func encodeString(_ value: JSONValue) -> String {
        String(decoding: encode(value), as: UTF8.self)
    }

    public static func write(_ value: JSONValue, to out: inout [UInt8]) {
        switch value {
        case .null: out.append(contentsOf: [0x6E, 0x75, 0x6C, 0x6C])
        case .bool(let b): out.append(contentsOf: b ? Array("true".utf8) : Array("false".utf8))
        case .number(let d): writeNumber(d, to: &out)
        case .string(let s): writeString(s, to: &out)
        case .array(let items):
            out.append(UInt8(ascii: "["))
            for (i, item) in items.enumerated() {
                if i > 0 { out.append(UInt8(ascii: ",")) }
                write(item, to: &out)
            }
            out.append(UInt8(ascii: "]"))
        case .object(let object):
            out.append(UInt8(ascii: "{"))
            for (i, member) in object.members.enumerated() {
                if i > 0 { out.append(UInt8(ascii: ",")) }
                writeString(member.key, to: &out)
                out.append(UInt8(ascii: ":"))
                write(member.value, to: &out)
            }
            out.append(UInt8(ascii: "}"))
        }
    }

    static func writeNumber(_ d: Double, to out: inout [UInt8]) {
        if d.isFinite, d.rounded(.towardZero) == d, abs(d) < 9.007_199_254_740_992e15 {
            writeInt(Int(d), to: &out)
        } else if d.isFinite {
            out.append(contentsOf: Array("\(d)".utf8))
        } else {
            out.append(contentsOf: [0x6E, 0x75, 0x6C, 0x6C])
        }
    }

    /// Appends an integer in decimal.
    public static func writeInt(_ value: Int, to out: inout [UInt8]) {
        if value == 0 {
            out.append(UInt8(ascii: "0"))
            return
        }
        var v = value.magnitude
        if value < 0 { out.append(UInt8(ascii: "-")) }
        var digits: (UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8,
            UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8, UInt8) =
            (0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        var count = 0
        withUnsafeMutableBytes(of: &digits) { buffer in
            while v > 0 {
                buffer[count] = UInt8(v % 10) + 0x30
                v /= 10
                count += 1
            }
            for i in stride(from: count - 1, through: 0, by: -1) { out.append(buffer[i]) }
        }
    }

    private static let hex: [UInt8] = Array("0123456789abcdef".utf8)

    /// Appends `s` as a JSON string. Eight bytes at a time are checked for anything to escape (a control
    /// character, `"` or `\`) and copied in runs, so long text without escapes costs a fraction of a byte-by-byte
    /// scan (the history chunks of 8 KB messages spent most of their sealing time here).
    public static func writeString(_ s: String, to out: inout [UInt8]) {
        out.append(UInt8(ascii: "\""))
        var s = s
        s.withUTF8 { bytes in
            guard let base = bytes.baseAddress else { return }
            let count = bytes.count
            // Grow once for a long string, geometrically (an exact `reserveCapacity` per string would reallocate
            // again for each of many short ones).
            if out.capacity - out.count < count + 1 { out.reserveCapacity(max(out.count + count + 1, 2 * out.capacity)) }
            var start = 0
            var i = 0
            while i < count {
                if count - i >= 8 {
                    let word = UInt64(littleEndian: UnsafeRawPointer(base + i).loadUnaligned(as: UInt64.self))
                    if !mayNeedEscape(word) {
                        i += 8
                        continue
                    }
                }
                let c = base[i]
                if c >= 0x20 && c != 0x22 && c != 0x5C {
                    i += 1
                    continue
                }
                if start < i { out.append(contentsOf: UnsafeBufferPointer(start: base + start, count: i - start)) }
                out.append(0x5C)
                switch c {
                case 0x22: out.append(0x22)
                case 0x5C: out.append(0x5C)
                case 0x0A: out.append(0x6E)
                case 0x0D: out.append(0x72)
                case 0x09: out.append(0x74)
                case 0x08: out.append(0x62)
                case 0x0C: out.append(0x66)
                default:
                    out.append(0x75)
                    out.append(0x30)
                    out.append(0x30)
                    out.append(hex[Int(c >> 4)])
                    out.append(hex[Int(c & 0xF)])
                }
                i += 1
                start = i
            }
            if start < count { out.append(contentsOf: UnsafeBufferPointer(start: base + start, count: count - start)) }
        }
        out.append(UInt8(ascii: "\""))
    }

    /// The bytes `writeString` writes for `s` (quotes included): a control character takes up to six (`\u0001`),
    /// `"` and `\` two. Scans eight bytes at a time like `writeString`.
    public static func writtenLength(_ s: String) -> Int {
        var s = s
        return s.withUTF8 { bytes -> Int in
            guard let base = bytes.baseAddress else { return 2 }
            let count = bytes.count
            var length = count + 2
            var i = 0
            while i < count {
                if count - i >= 8, !mayNeedEscape(UInt64(littleEndian: UnsafeRawPointer(base + i).loadUnaligned(as: UInt64.self))) {
                    i += 8
                    continue
                }
                switch base[i] {
                case 0x22, 0x5C, 0x0A, 0x0D, 0x09, 0x08, 0x0C: length += 1
                case ..<0x20: length += 5
                default: break
                }
                i += 1
            }
            return length
        }
    }

    /// Whether any of the 8 bytes of `word` is below 0x20, `"` or `\` (exact: bytes of
    /// multi-byte UTF-8 sequences, 0x80 and up, never match).
    @inline(__always)
    static func mayNeedEscape(_ word: UInt64) -> Bool {
        let ones: UInt64 = 0x0101_0101_0101_0101
        let highs: UInt64 = 0x8080_8080_8080_8080
        let control = (word &- ones &* 0x20) & ~word & highs
        let quote = word ^ (ones &* 0x22)
        let backslash = word ^ (ones &* 0x5C)
        let quotes = (quote &- ones) & ~quote & highs
        let backslashes = (backslash &- ones) & ~backslash & highs
        return (control | quotes | backslashes) != 0
    }
}
