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

    private static let seed: UInt64 = random()
    /// The keys of the permutation in `timeOrderedUUID`, secret to the process.
    private static let keys: (UInt64, UInt64, UInt64) = (random(), random(), random())
    private static let counter = Atomic<UInt64>(0)

    private static func random() -> UInt64 {
        var g = SystemRandomNumberGenerator()
        return g.next()
    }

    /// A time-ordered (version 7) UUID: 48 bits of Unix milliseconds, then the 74 other free bits. 64 of them are
    /// a per-process counter passed through a keyed permutation of 64-bit words (`permuted`), laid out so that none
    /// is overwritten by the version or variant bits; the other 10 are from the seed. Two ids of one process
    /// therefore differ in those 64 bits until the counter wraps (2^64 ids), even within one millisecond. Cheap (no
    /// system call), and increasing with time, so the store's primary-key index grows at its right edge instead of
    /// splitting pages all over. The permutation is keyed so that ids tell nothing of how many were made between two
    /// of them: with a public mixer alone, a user who reads two ids of their own could invert it and count every
    /// company's messages in between. Ids of messages are still not secrets: they are only usable together with
    /// membership checks.
    public static func timeOrderedUUID(millis: Int64 = Timestamp.now().millis) -> String {
        let (high, low) = timeOrderedBits(millis: millis, mixed: permuted(seed &+ counter.wrappingAdd(1, ordering: .relaxed).newValue &* 0x9E37_79B9_7F4A_7C15))
        return text(high: high, low: low)
    }

    /// A keyed permutation of 64-bit words: two rounds of SplitMix64's finalizer with secret keys added between them
    /// (an Even–Mansour construction). A bijection, so distinct counters stay distinct; without the keys, its outputs
    /// cannot be walked back to the counter.
    static func permuted(_ value: UInt64) -> UInt64 {
        mix(mix(value ^ keys.0) ^ keys.1) ^ keys.2
    }

    /// SplitMix64's finalizer: a bijection of 64-bit words.
    static func mix(_ value: UInt64) -> UInt64 {
        var z = value
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// The 128 bits of a version 7 UUID: `millis` (48 bits), version 7 (4), the top 12 bits of `mixed` (rand_a),
    /// the variant `10` (2), 10 bits of the seed, then the low 52 bits of `mixed`. Every bit of `mixed` is kept,
    /// so distinct `mixed` values give distinct ids for the same millisecond.
    static func timeOrderedBits(millis: Int64, mixed: UInt64) -> (high: UInt64, low: UInt64) {
        let high = UInt64(bitPattern: millis) << 16 | 0x7000 | mixed >> 52
        let low = 0x8000_0000_0000_0000 | (seed & 0x3FF) << 52 | (mixed & 0x000F_FFFF_FFFF_FFFF)
        return (high, low)
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
