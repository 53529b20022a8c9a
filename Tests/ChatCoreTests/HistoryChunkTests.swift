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

    /// A chunk in an earlier format: one LZ4 block of the whole raw JSON after the header, with a CRC-32 of the block
    /// (`"CBH2"`) or an FNV-1a checksum of the raw bytes (`"CBH1"`), as those versions sealed them.
    func earlierFormat(_ events: [ThreadEvent], magic: String, checksum: ([UInt8], ArraySlice<UInt8>) -> UInt32) -> [UInt8] {
        var raw: [UInt8] = [UInt8(ascii: "[")]
        for (i, event) in events.enumerated() {
            if i > 0 { raw.append(UInt8(ascii: ",")) }
            event.writeRecord(to: &raw)
        }
        raw.append(UInt8(ascii: "]"))
        let bound = Int(LZ4_compressBound(Int32(raw.count)))
        var block = [UInt8](repeating: 0, count: bound)
        let n = raw.withUnsafeBytes { src in
            block.withUnsafeMutableBytes { dst in
                LZ4_compress_default(
                    src.baseAddress!.assumingMemoryBound(to: CChar.self), dst.baseAddress!.assumingMemoryBound(to: CChar.self),
                    Int32(raw.count), Int32(bound))
            }
        }
        block.removeLast(bound - Int(n))
        var out = Array(magic.utf8) + [UInt8](repeating: 0, count: HistoryChunk.headerSize - 4) + block
        HistoryChunk.put(UInt64(events.first!.seq), at: 4, 8, &out)
        HistoryChunk.put(UInt64(events.last!.seq), at: 12, 8, &out)
        HistoryChunk.put(UInt64(raw.count), at: 20, 4, &out)
        HistoryChunk.put(UInt64(checksum(raw, out[HistoryChunk.headerSize...])), at: 24, 4, &out)
        return out
    }

    /// Chunks sealed by earlier versions (`"CBH2"`, `"CBH1"`) are still read, and their checksums still verified.
    @Test func earlierFormatChunksStillRead() throws {
        let original = events(64)
        #expect(Array(HistoryChunk.seal(original).data[0..<4]) == Array("CBH3".utf8))
        for (magic, checksum) in [
            ("CBH2", { (_: [UInt8], block: ArraySlice<UInt8>) in HistoryChunk.crc32(block) }),
            ("CBH1", { (raw: [UInt8], _: ArraySlice<UInt8>) in HistoryChunk.fnv1a(raw) }),
        ] {
            var data = earlierFormat(original, magic: magic, checksum: checksum)
            #expect(try HistoryChunk(firstSeq: 1, lastSeq: 64, data: data).events() == original, "\(magic)")
            data[24] ^= 1
            #expect(throws: HistoryChunkError.self, "\(magic)") { try HistoryChunk(firstSeq: 1, lastSeq: 64, data: data).events() }
        }
    }

    /// Large messages span several blocks; every block is checked (lengths, checksum, content) and nothing wrong is
    /// ever returned, whichever byte is damaged.
    @Test func aChunkOfLargeMessagesIsSeveralCheckedBlocks() throws {
        func content(_ i: Int) -> String {
            // Printable ASCII from 33 on (with `"` and `\`, which are escaped), varied enough to compress little.
            let bytes: [UInt8] = (0..<8_000).map { (j: Int) -> UInt8 in UInt8(33 + (i * 31 + j * j) % 90) }
            return String(decoding: bytes, as: UTF8.self)
        }
        var original: [ThreadEvent] = []
        for i in 1...40 {
            let message = Message(
                id: "m\(i)", threadId: "t", seq: 100 + i, senderId: "alice", type: .text, content: content(i),
                createdAt: Timestamp(millis: 1_790_000_000_000 + Int64(i)))
            original.append(ThreadEvent(seq: 100 + i, kind: .message, message: message))
        }
        let chunk = HistoryChunk.seal(original)
        #expect(try chunk.events() == original)
        // Walk the blocks: they add up to the raw length, and each holds about `blockSize` raw bytes.
        var offset = HistoryChunk.headerSize
        var raws: [Int] = []
        while offset < chunk.data.count {
            raws.append(Int(HistoryChunk.get(chunk.data, offset, 4)))
            offset += 8 + Int(HistoryChunk.get(chunk.data, offset + 4, 4))
        }
        #expect(offset == chunk.data.count)
        #expect(raws.count >= 4)
        #expect(raws.reduce(0, +) == Int(HistoryChunk.get(chunk.data, 20, 4)))
        #expect(raws.dropLast().allSatisfy { $0 >= HistoryChunkEncoder.blockSize && $0 < HistoryChunkEncoder.blockSize + 9_000 })
        // Damage: a flipped byte anywhere after the header, a block length, a truncation at each block boundary.
        for position in stride(from: HistoryChunk.headerSize, to: chunk.data.count, by: 997) {
            var damaged = chunk.data
            damaged[position] ^= 0x20
            #expect(throws: HistoryChunkError.self) { try HistoryChunk(firstSeq: 101, lastSeq: 140, data: damaged).events() }
        }
        // Block structure damaged behind a correct checksum (what a bug, not a bit flip, would write): each is refused.
        func refused(_ edit: (inout [UInt8]) -> Void, _ what: String) {
            var d = chunk.data
            edit(&d)
            HistoryChunk.put(UInt64(HistoryChunk.crc32(d[HistoryChunk.headerSize...])), at: 24, 4, &d)
            #expect(throws: HistoryChunkError.self, "\(what)") { try HistoryChunk(firstSeq: 101, lastSeq: 140, data: d).events() }
        }
        let h = HistoryChunk.headerSize
        refused({ HistoryChunk.put(HistoryChunk.get($0, h, 4) + 1, at: h, 4, &$0) }, "a block's raw length one more")
        refused({ HistoryChunk.put(HistoryChunk.get($0, h, 4) - 1, at: h, 4, &$0) }, "a block's raw length one less")
        refused({ HistoryChunk.put(0, at: h, 4, &$0) }, "a block of no raw bytes")
        refused({ HistoryChunk.put(0, at: h + 4, 4, &$0) }, "a block of no compressed bytes")
        refused({ HistoryChunk.put(UInt64(UInt32.max), at: h + 4, 4, &$0) }, "a compressed length past the end")
        refused({ $0 += [1, 0, 0, 0, 1] }, "fewer than 8 bytes after the last block")
        refused({ $0 += [1, 0, 0, 0, 1, 0, 0, 0, 0x10] }, "a block past the raw length")
        refused({ HistoryChunk.put(HistoryChunk.get($0, 20, 4) + 1, at: 20, 4, &$0) }, "blocks short of the raw length")
        var cut = h
        for _ in raws.dropLast() {
            cut += 8 + Int(HistoryChunk.get(chunk.data, cut + 4, 4))
            let end = cut
            refused({ $0.removeSubrange(end...) }, "truncated after a block")
        }
    }

    @Test func timestampsRoundTrip() {
        let t = Timestamp(millis: 1_795_000_123_456)
        #expect(t.iso8601 == "2026-11-18T11:08:43.456Z")
        #expect(Timestamp(iso8601: t.iso8601) == t)
    }
}
