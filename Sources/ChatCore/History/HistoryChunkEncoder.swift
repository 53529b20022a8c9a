import CLZ4
import CZlib

/// Builds one `HistoryChunk` a run of events at a time, in the current format (`"CBH3"`): the events' records are
/// written as JSON and LZ4-compressed in blocks of about `blockSize` raw bytes, and only the compressed blocks (with
/// a running CRC-32) are kept between calls. `ThreadHistory` keeps one for the chunk its events are filling and adds
/// a block's worth of events whenever that many have left the hot tail, so sealing a chunk costs what its last block
/// costs; `HistoryChunk.seal` encodes a whole run at once.
///
/// Blocks are independent LZ4 blocks: LZ4 never looks further back than 64 KiB, so splitting at about that size
/// costs almost no compression.
struct HistoryChunkEncoder {
    static let blockSize = 64 << 10

    /// The seq of the first event.
    let firstSeq: Int
    /// How many events were added (they are `firstSeq..<firstSeq + count`).
    private(set) var count = 0
    /// The header's room, then the compressed blocks, each after its raw and compressed lengths (u32 LE each).
    private var out: [UInt8]
    private var rawTotal = 0
    private var crc: UInt = 0

    init(firstSeq: Int) {
        self.firstSeq = firstSeq
        out = [UInt8](repeating: 0, count: HistoryChunk.headerSize)
    }

    /// Adds the next `events` (their seqs follow on from `firstSeq + count`), compressed in blocks of about `blockSize` raw bytes; with
    /// `last`, the JSON array is closed after them.
    mutating func append(_ events: some Collection<ThreadEvent>, last: Bool = false) {
        var raw: [UInt8] = []
        raw.reserveCapacity(min(Self.blockSize, events.reduce(2) { $0 + 300 + $1.message.content.utf8.count }))
        if count == 0 { raw.append(UInt8(ascii: "[")) }
        // Events are expected contiguous; a gap (a corrupt snapshot) is not trapped here: the chunk records its range
        // from `firstSeq` and `count`, so reading it back reports the mismatch (`HistoryChunkError`).
        for event in events {
            if count > 0 { raw.append(UInt8(ascii: ",")) }
            event.writeRecord(to: &raw)
            count += 1
            if raw.count >= Self.blockSize {
                compressBlock(raw)
                raw.removeAll(keepingCapacity: true)
            }
        }
        if last { raw.append(UInt8(ascii: "]")) }
        if !raw.isEmpty { compressBlock(raw) }
    }

    /// Compresses `raw` into one block. It is compressed into a scratch buffer of LZ4's bound first: grown in place,
    /// `out` would keep that bound (about the raw size) as capacity while the chunk fills.
    private mutating func compressBlock(_ raw: [UInt8]) {
        let rawCount = raw.count
        let bound = Int(LZ4_compressBound(Int32(rawCount)))
        var block = [UInt8](unsafeUninitializedCapacity: 8 + bound) { buffer, n in
            buffer.baseAddress!.initialize(repeating: 0, count: 8)  // the lengths, written below
            let written = raw.withUnsafeBytes { src in
                LZ4_compress_default(
                    src.baseAddress!.assumingMemoryBound(to: CChar.self),
                    UnsafeMutableRawPointer(buffer.baseAddress! + 8).assumingMemoryBound(to: CChar.self), Int32(rawCount), Int32(bound))
            }
            precondition(written > 0, "LZ4 compression cannot fail within its bound")
            n = 8 + Int(written)
        }
        HistoryChunk.put(UInt64(rawCount), at: 0, 4, &block)
        HistoryChunk.put(UInt64(block.count - 8), at: 4, 4, &block)
        out.append(contentsOf: block)
        crc = block.withUnsafeBufferPointer { CZlib.crc32(crc, $0.baseAddress!, UInt32($0.count)) }
        rawTotal += rawCount
    }

    /// The sealed chunk: the events added and then `rest` (at least one event in all).
    consuming func finish(with rest: some Collection<ThreadEvent>) -> HistoryChunk {
        precondition(count + rest.count > 0, "a chunk holds at least one event")
        append(rest, last: true)
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
