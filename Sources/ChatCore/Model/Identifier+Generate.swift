import Synchronization

/// Identifiers for threads, messages and sessions.
public enum Identifier {
    private static let hex: [UInt8] = Array("0123456789abcdef".utf8)

    /// A random (version 4) UUID in lowercase text form, from the system's secure generator. Use it where an id
    /// must not be guessable (session ids).
    public static func uuid() -> String {
        var g = SystemRandomNumberGenerator()
        return format(high: g.next(), low: g.next(), version: 4)
    }

    private static let seed: UInt64 = {
        var g = SystemRandomNumberGenerator()
        return g.next()
    }()
    private static let counter = Atomic<UInt64>(0)

    /// A time-ordered (version 7) UUID: 48 bits of Unix milliseconds, then 74 bits that never repeat within the
    /// process (a random seed mixed with a counter through SplitMix64, a bijection). Unique, cheap (no system
    /// call), and increasing with time, so the store's primary-key index grows at its right edge instead of
    /// splitting pages all over. Not secret: ids of messages are only usable together with membership checks.
    public static func timeOrderedUUID(millis: Int64 = Timestamp.now().millis) -> String {
        var z = seed &+ counter.wrappingAdd(1, ordering: .relaxed).newValue &* 0x9E37_79B9_7F4A_7C15
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        z ^= z >> 31
        let high = UInt64(UInt64(bitPattern: millis) << 16) | (z >> 48)
        return format(high: high, low: z << 16 | (z >> 48), version: 7)
    }

    /// Lays out 128 bits as `xxxxxxxx-xxxx-Vxxx-yxxx-xxxxxxxxxxxx`, setting the version nibble and the RFC 9562
    /// variant bits.
    private static func format(high: UInt64, low: UInt64, version: UInt64) -> String {
        text(high: (high & ~0xF000) | (version << 12), low: (low & 0x3FFF_FFFF_FFFF_FFFF) | 0x8000_0000_0000_0000)
    }

    /// The canonical lowercase text of 128 bits, `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, as they are.
    static func text(high: UInt64, low: UInt64) -> String {
        String(unsafeUninitializedCapacity: 36) { out in
            var i = 0
            for n in 0..<32 {
                if n == 8 || n == 12 || n == 16 || n == 20 {
                    out[i] = UInt8(ascii: "-")
                    i += 1
                }
                let word = n < 16 ? high : low
                let nibble = (word >> UInt64(60 - 4 * (n % 16))) & 0xF
                out[i] = hex[Int(nibble)]
                i += 1
            }
            return i
        }
    }
}
