import CLZ4
import CZlib
import ChatJSON

/// Why a sealed history chunk could not be read: it is reported, never trusted.
public struct HistoryChunkError: Error, Sendable, Equatable, CustomStringConvertible {
    public let description: String
}

/// A sealed, LZ4-compressed run of a thread's events `firstSeq...lastSeq` (the history snapshot).
///
/// Layout: `"CBH2"`, firstSeq (u64 LE), lastSeq (u64 LE), raw length (u32 LE), CRC-32 (zlib) of the compressed
/// block (u32 LE), then one LZ4 block whose raw form is a JSON array of `{"k":kind,"s":seq,"m":message}`.
/// Chunks sealed before (`"CBH1"`: an FNV-1a checksum of the raw bytes instead) are still read. Decoding checks
/// every field, so a truncated or corrupt chunk is a `HistoryChunkError`, never wrong data.
public struct HistoryChunk: Sendable, Equatable {
    public let firstSeq: Int
    public let lastSeq: Int
    /// The compressed, self-describing bytes (what the store persists).
    public let data: [UInt8]

    static let magic: [UInt8] = Array("CBH2".utf8)
    /// The first format: the checksum is FNV-1a over the raw bytes (a byte at a time, a quarter of a seal's time).
    static let magicV1: [UInt8] = Array("CBH1".utf8)
    static let headerSize = 28
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
        var raw: [UInt8] = []
        // Room for every record at once (the fields around the content take about 300 bytes), so a chunk of large
        // messages is not copied again and again as it grows.
        raw.reserveCapacity(events.reduce(2) { $0 + 300 + $1.message.content.utf8.count })
        raw.append(UInt8(ascii: "["))
        for (i, event) in events.enumerated() {
            if i > 0 { raw.append(UInt8(ascii: ",")) }
            event.writeRecord(to: &raw)
        }
        raw.append(UInt8(ascii: "]"))
        let first = events.first!.seq
        let last = first + events.count - 1
        let bound = Int(LZ4_compressBound(Int32(raw.count)))
        var out = [UInt8](repeating: 0, count: headerSize + bound)
        let written = raw.withUnsafeBufferPointer { src in
            out.withUnsafeMutableBufferPointer { dst in
                src.withMemoryRebound(to: CChar.self) { s in
                    UnsafeMutableRawPointer(dst.baseAddress! + headerSize).withMemoryRebound(to: CChar.self, capacity: bound) {
                        LZ4_compress_default(s.baseAddress, $0, Int32(raw.count), Int32(bound))
                    }
                }
            }
        }
        precondition(written > 0, "LZ4 compression cannot fail within its bound")
        out.removeLast(bound - Int(written))
        for i in 0..<4 { out[i] = magic[i] }
        put(UInt64(first), at: 4, 8, &out)
        put(UInt64(last), at: 12, 8, &out)
        put(UInt64(raw.count), at: 20, 4, &out)
        put(UInt64(Self.crc32(out[headerSize...])), at: 24, 4, &out)
        // A copy of exactly the sealed bytes: `out` keeps the capacity of the worst-case bound (about the raw
        // size), and a chunk stays in memory as long as its thread is active.
        let exact = [UInt8](unsafeUninitializedCapacity: out.count) { buffer, count in
            count = buffer.initialize(fromContentsOf: out)
        }
        return HistoryChunk(firstSeq: first, lastSeq: last, data: exact)
    }

    /// Reads the chunk's events back, checking structure, length, checksum and seq continuity.
    public func events() throws(HistoryChunkError) -> [ThreadEvent] {
        let d = data
        guard d.count >= Self.headerSize else { throw fail("bad header") }
        let version: Int
        switch Array(d[0..<4]) {
        case Self.magic: version = 2
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
        if version == 2, Self.crc32(d[Self.headerSize...]) != checksum { throw fail("checksum mismatch") }
        var raw = [UInt8](repeating: 0, count: rawCount)
        let compressedCount = d.count - Self.headerSize
        let n = d.withUnsafeBufferPointer { src in
            raw.withUnsafeMutableBufferPointer { dst in
                UnsafeRawPointer(src.baseAddress! + Self.headerSize).withMemoryRebound(to: CChar.self, capacity: compressedCount) { s in
                    UnsafeMutableRawPointer(dst.baseAddress!).withMemoryRebound(to: CChar.self, capacity: rawCount) {
                        LZ4_decompress_safe(s, $0, Int32(compressedCount), Int32(rawCount))
                    }
                }
            }
        }
        guard n == rawCount else { throw fail("LZ4 block is truncated or corrupt") }
        if version == 1, Self.fnv1a(raw) != checksum { throw fail("checksum mismatch") }
        guard let json = try? JSONParser.parse(raw, maxDepth: 8), let items = json.arrayValue else {
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
