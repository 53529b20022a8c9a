@testable import ChatCore
import Testing

@Suite struct IdentifierTests {
    /// Every bit of the mixed counter reaches the id: flipping any one of the 64 bits changes the id within the same
    /// millisecond (the variant and version bits overwrite none of them).
    @Test func everyMixedBitIsKept() {
        let millis: Int64 = 1_795_000_000_000
        for sample: UInt64 in [0, .max, 0x0123_4567_89AB_CDEF, 0xC000_0000_0000_0000, 0x0000_C000_0000_0000] {
            let base = Identifier.timeOrderedBits(millis: millis, mixed: sample)
            for bit in 0..<64 {
                let flipped = Identifier.timeOrderedBits(millis: millis, mixed: sample ^ (1 << UInt64(bit)))
                #expect(flipped != base, "bit \(bit) of \(sample) is lost")
            }
        }
    }

    @Test func layoutIsVersion7WithTheRFCVariantAndTheMillisecond() {
        let millis: Int64 = 1_795_000_123_456
        let id = Identifier.timeOrderedUUID(millis: millis)
        let hex = String(id.filter { $0 != "-" })
        #expect(hex.count == 32)
        #expect(Array(hex)[12] == "7")
        #expect("89ab".contains(Array(hex)[16]))
        #expect(Int64(String(hex.prefix(12)), radix: 16) == millis)
    }

    /// Ids of one millisecond from consecutive counter values never repeat (a sample of a million).
    @Test func noRepeatWithinOneMillisecond() {
        var seen = Set<String>()
        for _ in 0..<1_000_000 { seen.insert(Identifier.timeOrderedUUID(millis: 1_795_000_000_000)) }
        #expect(seen.count == 1_000_000)
    }
}
