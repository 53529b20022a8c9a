/// Unicode's stream-safe text format (UAX #15): no more than 30 non-starters (scalars whose canonical combining
/// class is not 0, such as combining accents) in a row. Comparing or hashing a Swift `String` normalizes it, and the
/// standard library sorts each run of non-starters by insertion, so a run of n marks costs about n² steps: 64 KB of
/// marks in one JSON string or header value was seconds of CPU in one `==`. Text that no language needs and that no
/// compare may see is refused wherever strings come in (JSON strings, request heads), which keeps every later compare,
/// hash and normalization linear in its input. Checking is itself linear and touches only non-ASCII text.
public enum StreamSafeText {
    /// The longest run of non-starters accepted (UAX #15's limit).
    public static let maxNonStarters = 30

    /// Whether `text` has no run of more than `maxNonStarters` non-starters.
    public static func isStreamSafe(_ text: some StringProtocol) -> Bool {
        // ASCII holds no non-starter; most text is checked byte by byte without decoding, over its contiguous UTF-8
        // where it has one (walked through the generic view, which is not specialized in callers of other modules,
        // a request head's 8 KB of ASCII cost about 40 µs: a third of the CPU of a flood of such heads, found by
        // profiling one).
        if let ascii = text.utf8.withContiguousStorageIfAvailable(isASCII) {
            return ascii || scalarsAreStreamSafe(text.unicodeScalars)
        }
        var utf8 = text.utf8.makeIterator()
        while let byte = utf8.next() {
            if byte >= 0x80 { return scalarsAreStreamSafe(text.unicodeScalars) }
        }
        return true
    }

    /// Whether `bytes` are all ASCII.
    private static func isASCII(_ bytes: UnsafeBufferPointer<UInt8>) -> Bool {
        var any: UInt8 = 0
        for byte in bytes { any |= byte }
        return any < 0x80
    }

    private static func scalarsAreStreamSafe(_ scalars: some Sequence<Unicode.Scalar>) -> Bool {
        var run = 0
        for scalar in scalars {
            let nonStarters: Int
            switch scalar.value {
            case 0..<0x300: nonStarters = 0  // every scalar below U+0300 is a starter: no lookup for Latin text
            // UAX #15's non-starter decompositions: each decomposes into two non-starters, though three of them have
            // combining class 0 themselves.
            case 0x0344, 0x0F73, 0x0F75, 0x0F81: nonStarters = 2
            default: nonStarters = scalar.properties.canonicalCombiningClass.rawValue != 0 ? 1 : 0
            }
            if nonStarters > 0 {
                run += nonStarters
                if run > maxNonStarters { return false }
            } else {
                run = 0
            }
        }
        return true
    }
}
