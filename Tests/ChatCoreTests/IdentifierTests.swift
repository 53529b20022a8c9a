@testable import ChatCore
import ChatCoreTesting
import ChatJSON
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

    /// The inverse of `Identifier.mix` (SplitMix64's finalizer, public): what an outsider could apply to an id.
    static func unmix(_ value: UInt64) -> UInt64 {
        func inverse(_ a: UInt64) -> UInt64 {
            var x = a
            for _ in 0..<6 { x = x &* (2 &- a &* x) }
            return x
        }
        var z = value
        z = z ^ (z >> 31) ^ (z >> 62)
        z = z &* inverse(0x94D0_49BB_1331_11EB)
        z = z ^ (z >> 27) ^ (z >> 54)
        z = z &* inverse(0xBF58_476D_1CE4_E5B9)
        z = z ^ (z >> 30) ^ (z >> 60)
        return z
    }

    /// The 64 counter bits of an id, as `timeOrderedBits` lays them out.
    static func mixedBits(_ id: String) -> UInt64 {
        let hex = String(id.filter { $0 != "-" })
        let high = UInt64(hex.prefix(16), radix: 16)!, low = UInt64(hex.suffix(16), radix: 16)!
        return (high & 0xFFF) << 52 | (low & 0x000F_FFFF_FFFF_FFFF)
    }

    /// Ids do not tell how many were made between two of them: inverting the public mixer on two ids made one after
    /// the other does not give counters a small number of steps apart (it did when the counter went through the mixer
    /// alone; other tests making ids meanwhile only add steps).
    @Test func idsDoNotRevealTheCounter() {
        #expect(Self.unmix(Identifier.mix(0x0123_4567_89AB_CDEF)) == 0x0123_4567_89AB_CDEF, "the inverse is right")
        // The counter's step, and its inverse modulo 2^64.
        let step: UInt64 = 0x9E37_79B9_7F4A_7C15
        var inverse = step
        for _ in 0..<6 { inverse = inverse &* (2 &- step &* inverse) }
        var previous = Self.unmix(Self.mixedBits(Identifier.timeOrderedUUID()))
        for _ in 0..<8 {
            let next = Self.unmix(Self.mixedBits(Identifier.timeOrderedUUID()))
            let counted = (next &- previous) &* inverse
            #expect(counted > 1_000_000_000, "ids made one after the other seem \(counted) apart")
            previous = next
        }
    }

    /// Ids of one millisecond from consecutive counter values never repeat (a sample of a million).
    @Test func noRepeatWithinOneMillisecond() {
        var seen = Set<String>()
        for _ in 0..<1_000_000 { seen.insert(Identifier.timeOrderedUUID(millis: 1_795_000_000_000)) }
        #expect(seen.count == 1_000_000)
    }

    /// Ids must be in Unicode NFC: Swift's `==` takes canonically equivalent spellings as one string, the stores
    /// compare bytes. Each pair below is one string to Swift; only the first of each is NFC.
    @Test func onlyNFCIdsAreAccepted() throws {
        let pairs = [
            ("caf\u{E9}", "cafe\u{301}"), ("K", "\u{212A}"), ("\u{AC00}", "\u{1100}\u{1161}"),
            ("\u{1E0C}\u{307}", "\u{1E0A}\u{323}"), ("\u{E1}\u{302}", "a\u{301}\u{302}"),
        ]
        for (nfc, other) in pairs {
            #expect(nfc == other)
            #expect(ClientCommand.isNFC(nfc))
            #expect(!ClientCommand.isNFC(other))
            #expect(try ClientCommand.id(.object(["threadId": .string(nfc)]), "threadId") == nfc)
            #expect(throws: ChatError.self) { try ClientCommand.id(.object(["threadId": .string(other)]), "threadId") }
            #expect(throws: ChatError.self) { try ClientCommand.pathId(other) }
            #expect(throws: ChatError.self) {
                try ClientCommand.idList(.object(["userIds": .array([.string("bob"), .string(other)])]), "userIds", max: 10, allowEmpty: false)
            }
        }
        #expect(ClientCommand.isNFC("0190f3c2-7e4b-7a1c-9d2e-123456789abc"))
        #expect(ClientCommand.isNFC(""))
    }

    /// A principal whose ids are not NFC cannot connect, whoever built it (a token verifier refuses it first).
    @Test func aPrincipalWithAnIdNotInNFCCannotConnect() async throws {
        let broker = ChatTestBroker()
        let supervisor = broker.supervisor
        await #expect(throws: ChatError.self) { _ = try await supervisor.connect(Principal(userId: "bob", companyId: "cafe\u{301}")) }
        await #expect(throws: ChatError.self) { _ = try await supervisor.connect(Principal(userId: "zoe\u{308}", companyId: "acme")) }
        _ = try await supervisor.connect(Principal(userId: "zo\u{EB}", companyId: "caf\u{E9}"))
        await broker.close()
    }
}
