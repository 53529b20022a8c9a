/// Why a JSON text was refused.
public struct JSONParseError: Error, Sendable, Equatable, CustomStringConvertible {
    public let description: String
    public let offset: Int
    /// The text was valid JSON up to a string whose text is refused: not stream-safe (`StreamSafeText`), or a `\u`
    /// escape of a lone surrogate (valid by RFC 8259's grammar, and made by JavaScript's `JSON.stringify` of a string
    /// cut inside an emoji, but no Unicode text). Refused for what the string holds, not for its syntax.
    public var refusedText = false

    public init(description: String, offset: Int, refusedText: Bool = false) {
        self.description = description
        self.offset = offset
        self.refusedText = refusedText
    }
}

/// A strict RFC 8259 parser over UTF-8 bytes with explicit bounds on nesting depth,
/// so hostile input (deep nesting, truncated text, bad escapes) fails with an error, never a crash.
public struct JSONParser {
    /// The deepest nesting of arrays and objects accepted.
    public static let defaultMaxDepth = 64
    /// The most members one object may have (no chat payload comes near it; a hostile one is refused early).
    public static let defaultMaxObjectMembers = 10_000

    /// `streamSafe` (the default, for anything that comes from outside) refuses a string with more than 30 combining
    /// marks in a row (`StreamSafeText`); the broker's own stored or encoded JSON is read with it off, so text stored
    /// before the rule existed stays readable.
    ///
    /// A key repeated in an object keeps its last value, as in `JSON.parse`, unless `refusingDuplicateKeys`: then it
    /// is an error (for a token, whose claims another reader may take the first of: JWTKit does).
    public static func parse(
        _ bytes: some Collection<UInt8>, maxDepth: Int = defaultMaxDepth, maxObjectMembers: Int = defaultMaxObjectMembers,
        streamSafe: Bool = true, refusingDuplicateKeys: Bool = false
    ) throws(JSONParseError) -> JSONValue {
        let array = Array(bytes)
        return try array.withUnsafeBufferPointer { buffer throws(JSONParseError) in
            var parser = Parser(bytes: buffer, maxDepth: maxDepth, maxObjectMembers: maxObjectMembers, streamSafe: streamSafe)
            parser.refusesDuplicateKeys = refusingDuplicateKeys
            parser.skipWhitespace()
            let value = try parser.parseValue(depth: 0)
            parser.skipWhitespace()
            guard parser.index == buffer.count else { throw parser.error("unexpected data after JSON value") }
            return value
        }
    }

    public static func parse(
        _ text: String, maxDepth: Int = defaultMaxDepth, maxObjectMembers: Int = defaultMaxObjectMembers, streamSafe: Bool = true
    ) throws(JSONParseError) -> JSONValue {
        try parse(Array(text.utf8), maxDepth: maxDepth, maxObjectMembers: maxObjectMembers, streamSafe: streamSafe)
    }

    struct Parser {
        let bytes: UnsafeBufferPointer<UInt8>
        let maxDepth: Int
        let maxObjectMembers: Int
        let streamSafe: Bool
        var refusesDuplicateKeys = false
        var index = 0

        init(bytes: UnsafeBufferPointer<UInt8>, maxDepth: Int, maxObjectMembers: Int, streamSafe: Bool) {
            self.bytes = bytes
            self.maxDepth = maxDepth
            self.maxObjectMembers = maxObjectMembers
            self.streamSafe = streamSafe
        }

        func error(_ message: String) -> JSONParseError { JSONParseError(description: message, offset: index) }

        /// An error for a string's text rather than the syntax around it (`JSONParseError.refusedText`).
        func textRefusal(_ message: String) -> JSONParseError { JSONParseError(description: message, offset: index, refusedText: true) }

        /// Refuses a string with more than `StreamSafeText.maxNonStarters` combining marks in a row (see there).
        func requireStreamSafe(_ s: String) throws(JSONParseError) {
            guard !streamSafe || StreamSafeText.isStreamSafe(s) else {
                throw textRefusal("a string has more than \(StreamSafeText.maxNonStarters) combining marks in a row (not stream-safe, UAX #15)")
            }
        }

        mutating func skipWhitespace() {
            while index < bytes.count {
                switch bytes[index] {
                case 0x20, 0x09, 0x0A, 0x0D: index += 1
                default: return
                }
            }
        }

        mutating func expect(_ literal: StaticString, value: JSONValue) throws(JSONParseError) -> JSONValue {
            let count = literal.utf8CodeUnitCount
            guard index + count <= bytes.count else { throw error("truncated literal") }
            let p = literal.utf8Start
            for i in 0..<count where bytes[index + i] != p[i] { throw error("invalid literal") }
            index += count
            return value
        }

        mutating func parseValue(depth: Int) throws(JSONParseError) -> JSONValue {
            guard index < bytes.count else { throw error("unexpected end of JSON") }
            switch bytes[index] {
            case UInt8(ascii: "{"): return try parseObject(depth: depth + 1)
            case UInt8(ascii: "["): return try parseArray(depth: depth + 1)
            case UInt8(ascii: "\""): return .string(try parseString())
            case UInt8(ascii: "t"): return try expect("true", value: .bool(true))
            case UInt8(ascii: "f"): return try expect("false", value: .bool(false))
            case UInt8(ascii: "n"): return try expect("null", value: .null)
            case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return try parseNumber()
            default: throw error("unexpected character")
            }
        }

        mutating func parseObject(depth: Int) throws(JSONParseError) -> JSONValue {
            guard depth <= maxDepth else { throw error("JSON nested too deeply") }
            index += 1
            var members: [(key: String, value: JSONValue)] = []
            // A duplicate key replaces the earlier value (as JavaScript's JSON.parse does). Small objects are
            // checked by a scan; past `indexThreshold` members a hash index keeps each check O(1), so an object's
            // parse stays linear in its size however many keys a hostile sender puts in it.
            var keyIndex: [JSONKey: Int]?
            var keysRead = 0
            skipWhitespace()
            if index < bytes.count, bytes[index] == UInt8(ascii: "}") {
                index += 1
                return .object(JSONObject(members))
            }
            while true {
                skipWhitespace()
                guard index < bytes.count, bytes[index] == UInt8(ascii: "\"") else { throw error("expected object key") }
                let key = try parseString()
                skipWhitespace()
                guard index < bytes.count, bytes[index] == UInt8(ascii: ":") else { throw error("expected ':'") }
                index += 1
                skipWhitespace()
                let value = try parseValue(depth: depth)
                // Every key counts toward the bound, repeated ones too: a hostile object is refused as early either way.
                keysRead += 1
                guard keysRead <= maxObjectMembers else { throw error("object has more than \(maxObjectMembers) members") }
                if let position = Self.position(of: key, in: members, index: &keyIndex) {
                    if refusesDuplicateKeys { throw error("an object names a key twice") }
                    members[position].value = value
                } else {
                    members.append((key: key, value: value))
                    keyIndex?[JSONKey(key)] = members.count - 1
                }
                skipWhitespace()
                guard index < bytes.count else { throw error("unterminated object") }
                if bytes[index] == UInt8(ascii: ",") {
                    index += 1
                    continue
                }
                if bytes[index] == UInt8(ascii: "}") {
                    index += 1
                    return .object(JSONObject(members))
                }
                throw error("expected ',' or '}'")
            }
        }

        /// Members up to which a duplicate check scans instead of hashing.
        static let indexThreshold = 16

        /// Where `key` already is among `members`, building the hash index once the object outgrows a scan.
        static func position(of key: String, in members: [(key: String, value: JSONValue)], index: inout [JSONKey: Int]?) -> Int? {
            if let index { return index[JSONKey(key)] }
            if members.count < indexThreshold { return members.firstIndex { JSONKey.same($0.key, key) } }
            var built = [JSONKey: Int](minimumCapacity: members.count * 2)
            for (i, member) in members.enumerated() { built[JSONKey(member.key)] = i }
            index = built
            return built[JSONKey(key)]
        }

        mutating func parseArray(depth: Int) throws(JSONParseError) -> JSONValue {
            guard depth <= maxDepth else { throw error("JSON nested too deeply") }
            index += 1
            var items: [JSONValue] = []
            skipWhitespace()
            if index < bytes.count, bytes[index] == UInt8(ascii: "]") {
                index += 1
                return .array(items)
            }
            while true {
                skipWhitespace()
                items.append(try parseValue(depth: depth))
                skipWhitespace()
                guard index < bytes.count else { throw error("unterminated array") }
                if bytes[index] == UInt8(ascii: ",") {
                    index += 1
                    continue
                }
                if bytes[index] == UInt8(ascii: "]") {
                    index += 1
                    return .array(items)
                }
                throw error("expected ',' or ']'")
            }
        }

        mutating func parseNumber() throws(JSONParseError) -> JSONValue {
            let start = index
            let negative = bytes[index] == UInt8(ascii: "-")
            var isInteger = true
            if negative { index += 1 }
            guard index < bytes.count, isDigit(bytes[index]) else { throw error("invalid number") }
            if bytes[index] == UInt8(ascii: "0") {
                index += 1
            } else {
                while index < bytes.count, isDigit(bytes[index]) { index += 1 }
            }
            if index < bytes.count, bytes[index] == UInt8(ascii: ".") {
                isInteger = false
                index += 1
                guard index < bytes.count, isDigit(bytes[index]) else { throw error("invalid number") }
                while index < bytes.count, isDigit(bytes[index]) { index += 1 }
            }
            if index < bytes.count, bytes[index] == UInt8(ascii: "e") || bytes[index] == UInt8(ascii: "E") {
                isInteger = false
                index += 1
                if index < bytes.count, bytes[index] == UInt8(ascii: "+") || bytes[index] == UInt8(ascii: "-") { index += 1 }
                guard index < bytes.count, isDigit(bytes[index]) else { throw error("invalid number") }
                while index < bytes.count, isDigit(bytes[index]) { index += 1 }
            }
            // Any length is valid JSON (JavaScript's JSON.parse reads 10^400 as Infinity), but the text is converted
            // only when short: a whole number of more than 309 digits is past every Double (the command takes it as
            // "beyond everything", as 10^100), and a longer fraction or exponent form is converted from its first
            // significant digits (`longNumber`). An outside probe saw 311 digits anywhere in an event close the socket.
            if isInteger, index - start - (negative ? 1 : 0) > 309 { return .number(negative ? -.infinity : .infinity) }
            if !isInteger, index - start > 64 { return .number(longNumber(start, index, negative: negative)) }
            // Integers of up to 15 digits (every id, seq and count) are exact in a Double: no text conversion.
            if isInteger, index - start - (negative ? 1 : 0) <= 15 {
                var value = 0
                for i in (start + (negative ? 1 : 0))..<index { value = value &* 10 &+ Int(bytes[i] &- 0x30) }
                return .number(negative ? -Double(value) : Double(value))
            }
            let text = String(decoding: UnsafeBufferPointer(rebasing: bytes[start..<index]), as: UTF8.self)
            guard let value = Double(text) else { throw error("invalid number") }
            return .number(value)
        }

        func isDigit(_ c: UInt8) -> Bool { c >= 0x30 && c <= 0x39 }

        /// The value of the valid JSON number `bytes[start..<end]` (a fraction or exponent form), from its first 800
        /// significant digits (a Double's correct rounding needs at most 767), a `1` after them if any digit dropped is
        /// not zero (so that a tie is not taken for one), and its decimal exponent (saturated at 2^40, past anything a
        /// payload's digits can move it), converted from a string of bounded length: linear in the number's length,
        /// however long (a conversion of the whole text is not).
        func longNumber(_ start: Int, _ end: Int, negative: Bool) -> Double {
            let kept = 800
            var digits: [UInt8] = []
            digits.reserveCapacity(kept + 1)
            var dropped = false
            // The value is 0.<digits> × 10^exponent.
            var exponent = 0
            var seenNonZero = false, inFraction = false
            var i = start + (negative ? 1 : 0)
            while i < end, bytes[i] != UInt8(ascii: "e"), bytes[i] != UInt8(ascii: "E") {
                let c = bytes[i]
                i += 1
                if c == UInt8(ascii: ".") {
                    inFraction = true
                } else if c == UInt8(ascii: "0") && !seenNonZero {
                    if inFraction { exponent -= 1 }
                } else {
                    seenNonZero = true
                    if !inFraction { exponent += 1 }
                    if digits.count < kept { digits.append(c) } else if c != UInt8(ascii: "0") { dropped = true }
                }
            }
            if i < end {
                i += 1
                let minus = bytes[i] == UInt8(ascii: "-")
                if bytes[i] == UInt8(ascii: "-") || bytes[i] == UInt8(ascii: "+") { i += 1 }
                var written = 0
                while i < end {
                    written = Swift.min(written * 10 + Int(bytes[i] &- 0x30), 1 << 40)
                    i += 1
                }
                exponent += minus ? -written : written
            }
            guard seenNonZero else { return negative ? -0.0 : 0 }
            if dropped { digits.append(UInt8(ascii: "1")) }
            let text = "0." + String(decoding: digits, as: UTF8.self) + "e" + String(exponent)
            let magnitude = Double(text) ?? (exponent > 0 ? .infinity : 0)
            return negative ? -magnitude : magnitude
        }

        mutating func parseString() throws(JSONParseError) -> String {
            index += 1
            let start = index
            var ascii = true
            // Fast path: no escapes.
            while index < bytes.count {
                let c = bytes[index]
                if c == UInt8(ascii: "\"") {
                    let slice = UnsafeBufferPointer(rebasing: bytes[start..<index])
                    guard let s = String(validating: slice, as: UTF8.self) else { throw error("invalid UTF-8 in string") }
                    if !ascii { try requireStreamSafe(s) }
                    index += 1
                    return s
                }
                if c >= 0x80 { ascii = false }
                if c == UInt8(ascii: "\\") { break }
                if c < 0x20 { throw error("control character in string") }
                index += 1
            }
            var out: [UInt8] = Array(UnsafeBufferPointer(rebasing: bytes[start..<index]))
            while index < bytes.count {
                let c = bytes[index]
                if c == UInt8(ascii: "\"") {
                    guard let s = String(validating: out, as: UTF8.self) else { throw error("invalid UTF-8 in string") }
                    try requireStreamSafe(s)
                    index += 1
                    return s
                }
                if c < 0x20 { throw error("control character in string") }
                if c != UInt8(ascii: "\\") {
                    out.append(c)
                    index += 1
                    continue
                }
                index += 1
                guard index < bytes.count else { throw error("unterminated escape") }
                let e = bytes[index]
                index += 1
                switch e {
                case UInt8(ascii: "\""): out.append(0x22)
                case UInt8(ascii: "\\"): out.append(0x5C)
                case UInt8(ascii: "/"): out.append(0x2F)
                case UInt8(ascii: "b"): out.append(0x08)
                case UInt8(ascii: "f"): out.append(0x0C)
                case UInt8(ascii: "n"): out.append(0x0A)
                case UInt8(ascii: "r"): out.append(0x0D)
                case UInt8(ascii: "t"): out.append(0x09)
                case UInt8(ascii: "u"):
                    var scalar = try parseHex4()
                    if scalar >= 0xD800 && scalar < 0xDC00 {
                        guard index + 1 < bytes.count, bytes[index] == UInt8(ascii: "\\"), bytes[index + 1] == UInt8(ascii: "u")
                        else { throw textRefusal("unpaired surrogate") }
                        index += 2
                        let low = try parseHex4()
                        guard low >= 0xDC00 && low < 0xE000 else { throw textRefusal("unpaired surrogate") }
                        scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                    } else if scalar >= 0xDC00 && scalar < 0xE000 {
                        throw textRefusal("unpaired surrogate")
                    }
                    guard let u = Unicode.Scalar(scalar) else { throw error("invalid unicode escape") }
                    UTF8.encode(u) { out.append($0) }  // no String made per escape
                default: throw error("invalid escape")
                }
            }
            throw error("unterminated string")
        }

        mutating func parseHex4() throws(JSONParseError) -> UInt32 {
            guard index + 4 <= bytes.count else { throw error("truncated unicode escape") }
            var v: UInt32 = 0
            for _ in 0..<4 {
                let c = bytes[index]
                let d: UInt32
                switch c {
                case 0x30...0x39: d = UInt32(c - 0x30)
                case 0x41...0x46: d = UInt32(c - 0x41 + 10)
                case 0x61...0x66: d = UInt32(c - 0x61 + 10)
                default: throw error("invalid unicode escape")
                }
                v = v << 4 | d
                index += 1
            }
            return v
        }
    }
}
