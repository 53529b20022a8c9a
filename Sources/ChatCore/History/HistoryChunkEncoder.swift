import CLZ4
import CZlib

/// Builds one `HistoryChunk` an event at a time, in the current format (`"CBH3"`): each record is written as JSON
/// into a block buffer that is LZ4-compressed (and added to the running CRC-32) as soon as it holds `blockSize`
/// bytes, so sealing a chunk costs what its last block costs. `ThreadHistory` keeps one for the chunk its events
/// are filling (encoded as they leave the hot tail), and `HistoryChunk.seal` encodes a whole run at once.
///
/// Blocks are independent LZ4 blocks of about `blockSize` raw bytes: LZ4 never looks further back than 64 KiB, so
/// splitting at that size costs almost no compression.
struct HistoryChunkEncoder {
    static let blockSize = 64 << 10

    /// The seq of the first event.
    let firstSeq: Int
    /// How many events were appended (they are `firstSeq..<firstSeq + count`).
    private(set) var count = 0
    /// The raw JSON not compressed yet.
    private var raw: [UInt8] = []
    /// The header's room, then the compressed blocks, each after its raw and compressed lengths (u32 LE each).
    private var out: [UInt8]
    private var rawTotal = 0
    private var crc: UInt = 0

    init(firstSeq: Int) {
        self.firstSeq = firstSeq
        out = [UInt8](repeating: 0, count: HistoryChunk.headerSize)
        raw.append(UInt8(ascii: "["))
    }

    /// Appends the next event (its seq must be `firstSeq + count`).
    mutating func append(_ event: ThreadEvent) {
        precondition(event.seq == firstSeq + count, "a chunk's events are contiguous")
        if count > 0 { raw.append(UInt8(ascii: ",")) }
        if raw.capacity < Self.blockSize { raw.reserveCapacity(Self.blockSize + event.message.content.utf8.count + 512) }
        event.writeRecord(to: &raw)
        count += 1
        if raw.count >= Self.blockSize { compressBlock() }
    }

    /// Compresses the raw bytes held into one block.
    private mutating func compressBlock() {
        let rawCount = raw.count
        guard rawCount > 0 else { return }
        let bound = Int(LZ4_compressBound(Int32(rawCount)))
        let start = out.count
        out.append(contentsOf: repeatElement(0, count: 8 + bound))
        let written = raw.withUnsafeBytes { src in
            out.withUnsafeMutableBytes { dst in
                LZ4_compress_default(
                    src.baseAddress!.assumingMemoryBound(to: CChar.self),
                    (dst.baseAddress! + start + 8).assumingMemoryBound(to: CChar.self), Int32(rawCount), Int32(bound))
            }
        }
        precondition(written > 0, "LZ4 compression cannot fail within its bound")
        out.removeLast(bound - Int(written))
        HistoryChunk.put(UInt64(rawCount), at: start, 4, &out)
        HistoryChunk.put(UInt64(written), at: start + 4, 4, &out)
        crc = out.withUnsafeBufferPointer { CZlib.crc32(crc, $0.baseAddress! + start, UInt32(out.count - start)) }
        rawTotal += rawCount
        raw.removeAll(keepingCapacity: true)
    }

    /// The sealed chunk of the events appended (at least one).
    consuming func finish() -> HistoryChunk {
        precondition(count > 0, "a chunk holds at least one event")
        raw.append(UInt8(ascii: "]"))
        compressBlock()
        let lastSeq = firstSeq + count - 1
        for i in 0..<4 { out[i] = HistoryChunk.magic[i] }
        HistoryChunk.put(UInt64(firstSeq), at: 4, 8, &out)
        HistoryChunk.put(UInt64(lastSeq), at: 12, 8, &out)
        HistoryChunk.put(UInt64(rawTotal), at: 20, 4, &out)
        HistoryChunk.put(UInt64(crc), at: 24, 4, &out)
        // A copy of exactly the sealed bytes (`out` grew geometrically); a chunk stays in memory while its thread is
        // active.
        let exact = [UInt8](unsafeUninitializedCapacity: out.count) { buffer, n in n = buffer.initialize(fromContentsOf: out) }
        return HistoryChunk(firstSeq: firstSeq, lastSeq: lastSeq, data: exact)
    }
}
