import CLZ4
import CZlib
import ChatJSON

/// Why a sealed history chunk could not be read: it is reported, never trusted.
public struct HistoryChunkError: Error, Sendable, Equatable, CustomStringConvertible {
    public let description: String
}

/// A sealed, LZ4-compressed run of a thread's events `firstSeq...lastSeq` (the history snapshot).
///
/// Layout (`"CBH3"`): the magic, firstSeq (u64 LE), lastSeq (u64 LE), raw length (u32 LE), CRC-32 (zlib) of
/// everything after the header (u32 LE), then LZ4 blocks, each after its raw and compressed lengths (u32 LE each).
/// The blocks' raw bytes, one after the other, are a JSON array of `{"k":kind,"s":seq,"m":message}`; a block holds
/// about 64 KiB of it (`HistoryChunkEncoder`). Chunks of the earlier formats are still read: `"CBH2"` (one LZ4
/// block after the header, CRC-32 of it) and `"CBH1"` (the same with an FNV-1a checksum of the raw bytes). Decoding
/// checks every field, so a truncated or corrupt chunk is a `HistoryChunkError`, never wrong data.
public struct HistoryChunk: Sendable, Equatable {
    public let firstSeq: Int
    public let lastSeq: Int
    /// The compressed, self-describing bytes (what the store persists).
    public let data: [UInt8]

    static let magic: [UInt8] = Array("CBH3".utf8)
    /// The second format: one LZ4 block for the whole chunk (sealing a chunk of large messages took milliseconds in
    /// one actor turn).
    static let magicV2: [UInt8] = Array("CBH2".utf8)
    /// The first format: the checksum is FNV-1a over the raw bytes (a byte at a time, a quarter of a seal's time).
    static let magicV1: [UInt8] = Array("CBH1".utf8)
    static let headerSize = 28

    /// The raw (decoded) size its header states: what decoding it, or sealing it again, handles.
    public var rawSize: Int { data.count >= Self.headerSize ? Int(Self.get(data, 20, 4)) : 0 }
    /// The largest raw size accepted when decoding (guards against hostile length fields).
    public static let maxRawSize = 256 << 20

    public init(firstSeq: Int, lastSeq: Int, data: [UInt8]) {
        self.firstSeq = firstSeq
        self.lastSeq = lastSeq
        self.data = data
    }

    /// Seals `events` (contiguous seqs, at least one).
    public static func seal(_ events: some Collection<ThreadEvent>) -> HistoryChunk {
        precondition(!events.isEmpty, "a chunk holds at least one event")
        return HistoryChunkEncoder(firstSeq: events.first!.seq).finish(with: events)
    }

    /// Reads the chunk's events back, checking structure, length, checksum and seq continuity.
    public func events() throws(HistoryChunkError) -> [ThreadEvent] {
        let d = data
        guard d.count >= Self.headerSize else { throw fail("bad header") }
        let version: Int
        switch Array(d[0..<4]) {
        case Self.magic: version = 3
        case Self.magicV2: version = 2
        case Self.magicV1: version = 1
        default: throw fail("bad header")
        }
        let first = Int(truncatingIfNeeded: Self.get(d, 4, 8))
        let last = Int(truncatingIfNeeded: Self.get(d, 12, 8))
        let rawCount = Int(Self.get(d, 20, 4))
        let checksum = UInt32(Self.get(d, 24, 4))
        guard first == firstSeq, last == lastSeq, first >= 1, last >= first else { throw fail("seq range mismatch") }
        guard rawCount > 0, rawCount <= Self.maxRawSize else { throw fail("bad raw length") }
        // LZ4 cannot expand a block more than 255:1; refuse a header that claims more before allocating it.
        guard rawCount <= 255 * (d.count - Self.headerSize) else { throw fail("raw length exceeds what the block can hold") }
        HistoryMeter.current?.addDecoded(rawCount)
        if version >= 2, Self.crc32(d[Self.headerSize...]) != checksum { throw fail("checksum mismatch") }
        // CBH3: the blocks, each after its raw and compressed lengths, as (offset, compressed, raw) once they are
        // checked to tile the data and add up to the raw length, before anything the size of `rawCount` is allocated.
        var blocks: [(offset: Int, compressed: Int, raw: Int)] = []
        if version == 3 {
            var offset = Self.headerSize
            var rawSum = 0
            while offset < d.count {
                guard d.count - offset >= 8 else { throw fail("block header is truncated") }
                let blockRaw = Int(Self.get(d, offset, 4))
                let blockCompressed = Int(Self.get(d, offset + 4, 4))
                offset += 8
                guard blockCompressed > 0, blockCompressed <= d.count - offset, blockRaw > 0, blockRaw <= rawCount - rawSum,
                    blockRaw <= 255 * blockCompressed
                else { throw fail("bad block lengths") }
                blocks.append((offset, blockCompressed, blockRaw))
                offset += blockCompressed
                rawSum += blockRaw
            }
            guard rawSum == rawCount else { throw fail("blocks do not add up to the raw length") }
        } else {
            blocks = [(Self.headerSize, d.count - Self.headerSize, rawCount)]
        }
        var raw = [UInt8](repeating: 0, count: rawCount)
        var rawOffset = 0
        for block in blocks {
            guard Self.decompress(d, at: block.offset, count: block.compressed, into: &raw, at: rawOffset, count: block.raw) else {
                throw fail("LZ4 block is truncated or corrupt")
            }
            rawOffset += block.raw
        }
        if version == 1, Self.fnv1a(raw) != checksum { throw fail("checksum mismatch") }
        guard let json = try? JSONParser.parse(raw, maxDepth: 8, streamSafe: false), let items = json.arrayValue else {
            throw fail("payload is not a JSON array")
        }
        guard items.count == last - first + 1 else { throw fail("event count does not match seq range") }
        var events: [ThreadEvent] = []
        events.reserveCapacity(items.count)
        for (i, item) in items.enumerated() {
            guard let event = ThreadEvent(record: item), event.seq == first + i else { throw fail("event \(i) is malformed") }
            events.append(event)
        }
        return events
    }

    /// Decompresses the LZ4 block `d[offset..<offset + count]` into `raw[rawOffset...]`; `true` if it filled exactly
    /// `rawCount` bytes.
    private static func decompress(_ d: [UInt8], at offset: Int, count: Int, into raw: inout [UInt8], at rawOffset: Int, count rawCount: Int) -> Bool {
        let n = d.withUnsafeBytes { src in
            raw.withUnsafeMutableBytes { dst in
                LZ4_decompress_safe(
                    (src.baseAddress! + offset).assumingMemoryBound(to: CChar.self),
                    (dst.baseAddress! + rawOffset).assumingMemoryBound(to: CChar.self), Int32(count), Int32(rawCount))
            }
        }
        return Int(n) == rawCount
    }

    private func fail(_ reason: String) -> HistoryChunkError {
        HistoryChunkError(description: "history chunk \(firstSeq)...\(lastSeq) is corrupt: \(reason)")
    }

    static func put(_ value: UInt64, at offset: Int, _ width: Int, _ out: inout [UInt8]) {
        for i in 0..<width { out[offset + i] = UInt8(truncatingIfNeeded: value >> (8 * UInt64(i))) }
    }

    static func get(_ d: [UInt8], _ offset: Int, _ width: Int) -> UInt64 {
        var v: UInt64 = 0
        for i in 0..<width { v |= UInt64(d[offset + i]) << (8 * UInt64(i)) }
        return v
    }

    /// CRC-32 of `bytes` (zlib's, several bytes per step).
    static func crc32(_ bytes: ArraySlice<UInt8>) -> UInt32 {
        bytes.withUnsafeBufferPointer { UInt32(CZlib.crc32(0, $0.baseAddress, UInt32($0.count))) }
    }

    static func fnv1a(_ bytes: [UInt8]) -> UInt32 {
        var h: UInt32 = 0x811C_9DC5
        for b in bytes {
            h ^= UInt32(b)
            h = h &* 0x0100_0193
        }
        return h
    }
}
