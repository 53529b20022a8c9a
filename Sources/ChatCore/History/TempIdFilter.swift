/// The tempIds that left a thread's in-memory index (their messages' chunks were released), as a Bloom filter: it
/// answers "certainly never sent" in memory, and "maybe" for every tempId it holds and a few it does not (0.06 % of
/// tempIds never sent, measured over 300,000 held in four segments), which the thread then looks up in the store. It
/// costs 2.5 bytes per tempId, against about 100 for the exact index entry it replaces.
///
/// It grows in segments, each four times the previous one, so a thread with few released messages keeps a small
/// filter and a thread with millions probes a handful of segments. Each probe touches one 64-byte block of a segment
/// (a blocked Bloom filter): one cache miss per segment, whatever the number of bits set.
struct TempIdFilter {
    private struct Segment {
        var words: [UInt64]
        let capacity: Int
        var count = 0

        init(capacity: Int) {
            self.capacity = capacity
            let blocks = max(1, capacity * TempIdFilter.bitsPerItem / 512)
            words = [UInt64](repeating: 0, count: blocks * 8)
        }

        var blocks: Int { words.count / 8 }

        /// The block of `hash`, and the 9-bit positions of its bits inside the block, from two mixes of the hash.
        func positions(_ hash: UInt64) -> (block: Int, bits: (UInt64, UInt64)) {
            let block = Int(hash.multipliedFullWidth(by: UInt64(blocks)).high)
            let first = (hash ^ (hash >> 29)) &* 0xBF58_476D_1CE4_E5B9
            let second = (first ^ (first >> 32)) &* 0x94D0_49BB_1331_11EB
            return (block, (first, second))
        }

        /// The bit of probe `i` (0..<14): seven 9-bit fields from each mix.
        static func bit(_ i: Int, _ bits: (UInt64, UInt64)) -> Int {
            Int(((i < 7 ? bits.0 : bits.1) >> UInt64(9 * (i % 7))) & 511)
        }

        mutating func insert(_ hash: UInt64) {
            let (block, bits) = positions(hash)
            for i in 0..<TempIdFilter.probes {
                let bit = Self.bit(i, bits)
                words[block * 8 + (bit >> 6)] |= 1 << UInt64(bit & 63)
            }
            count += 1
        }

        func contains(_ hash: UInt64) -> Bool {
            let (block, bits) = positions(hash)
            for i in 0..<TempIdFilter.probes {
                let bit = Self.bit(i, bits)
                if words[block * 8 + (bit >> 6)] & (1 << UInt64(bit & 63)) == 0 { return false }
            }
            return true
        }
    }

    static let bitsPerItem = 20
    static let probes = 10
    static let firstCapacity = 4_096
    static let largestCapacity = 4 << 20

    private var segments: [Segment] = []

    /// Adds a tempId's hash.
    mutating func insert(_ hash: Int) {
        if segments.isEmpty || segments[segments.count - 1].count >= segments[segments.count - 1].capacity {
            let next = segments.last.map { min($0.capacity * 4, Self.largestCapacity) } ?? Self.firstCapacity
            segments.append(Segment(capacity: next))
        }
        segments[segments.count - 1].insert(UInt64(bitPattern: Int64(hash)))
    }

    /// `false` if `hash` was certainly never inserted.
    func mayContain(_ hash: Int) -> Bool {
        let value = UInt64(bitPattern: Int64(hash))
        return segments.contains { $0.count > 0 && $0.contains(value) }
    }

    /// How many hashes it holds.
    var count: Int { segments.reduce(0) { $0 + $1.count } }

    /// Bytes of its bit arrays.
    var bytes: Int { segments.reduce(0) { $0 + $1.words.count * 8 } }
}
