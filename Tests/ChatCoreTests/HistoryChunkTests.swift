import CLZ4
@testable import ChatCore
import Testing

@Suite struct HistoryChunkTests {
    func events(_ n: Int) -> [ThreadEvent] {
        (1...n).map { i in
            ThreadEvent(seq: i, kind: .message, message: Message(
                id: "m\(i)", threadId: "t", seq: i, senderId: i % 2 == 0 ? "alice" : "bob", type: .text,
                content: "Hey, are we still on for the design review at \(i % 12 + 1)pm? I moved the notes to the shared doc.",
                createdAt: Timestamp(millis: 1_790_000_000_000 + Int64(i) * 1000)))
        }
    }

    @Test func sealAndReadBack() throws {
        let original = events(256)
        let chunk = HistoryChunk.seal(original)
        #expect(chunk.firstSeq == 1 && chunk.lastSeq == 256)
        #expect(try chunk.events() == original)
        #expect(chunk.data.count * 3 < 256 * 250)
        // The chunk holds its sealed bytes only, not the compression bound's worth of capacity.
        #expect(chunk.data.capacity < chunk.data.count + chunk.data.count / 4)
    }

    @Test func corruptionIsAnErrorNeverWrongData() throws {
        let chunk = HistoryChunk.seal(events(32))
        var flipped = chunk.data
        flipped[flipped.count / 2] ^= 0x5A
        #expect(throws: HistoryChunkError.self) { try HistoryChunk(firstSeq: 1, lastSeq: 32, data: flipped).events() }
        #expect(throws: HistoryChunkError.self) { try HistoryChunk(firstSeq: 1, lastSeq: 32, data: Array(chunk.data.prefix(40))).events() }
        #expect(throws: HistoryChunkError.self) { try HistoryChunk(firstSeq: 1, lastSeq: 32, data: []).events() }
        #expect(throws: HistoryChunkError.self) { try HistoryChunk(firstSeq: 2, lastSeq: 33, data: chunk.data).events() }
    }

    /// A chunk sealed by an earlier version ("CBH1": FNV-1a of the raw bytes) is still read, and still checked.
    @Test func firstFormatChunksStillRead() throws {
        let original = events(64)
        let current = HistoryChunk.seal(original)
        #expect(Array(current.data[0..<4]) == Array("CBH2".utf8))
        let rawCount = (20..<24).reduce(0) { $0 | Int(current.data[$1]) << (8 * ($1 - 20)) }
        var raw = [UInt8](repeating: 0, count: rawCount)
        let block = Array(current.data[HistoryChunk.headerSize...])
        let n = block.withUnsafeBytes { src in
            raw.withUnsafeMutableBytes { dst in
                LZ4_decompress_safe(
                    src.baseAddress!.assumingMemoryBound(to: CChar.self), dst.baseAddress!.assumingMemoryBound(to: CChar.self),
                    Int32(block.count), Int32(rawCount))
            }
        }
        #expect(Int(n) == rawCount)
        var v1 = current.data
        v1.replaceSubrange(0..<4, with: Array("CBH1".utf8))
        HistoryChunk.put(UInt64(HistoryChunk.fnv1a(raw)), at: 24, 4, &v1)
        #expect(try HistoryChunk(firstSeq: 1, lastSeq: 64, data: v1).events() == original)
        // Its checksum is still verified: a chunk whose raw bytes do not match it is refused.
        HistoryChunk.put(UInt64(HistoryChunk.fnv1a(raw) ^ 1), at: 24, 4, &v1)
        #expect(throws: HistoryChunkError.self) { try HistoryChunk(firstSeq: 1, lastSeq: 64, data: v1).events() }
    }

    @Test func timestampsRoundTrip() {
        let t = Timestamp(millis: 1_795_000_123_456)
        #expect(t.iso8601 == "2026-11-18T11:08:43.456Z")
        #expect(Timestamp(iso8601: t.iso8601) == t)
    }
}
