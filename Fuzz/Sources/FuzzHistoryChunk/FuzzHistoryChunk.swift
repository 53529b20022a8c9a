import ChatCore

/// Bytes as a stored history chunk: `HistoryChunk.events()` must throw a `HistoryChunkError` on garbage, never
/// crash. Two modes, picked by the first byte:
/// - odd: the rest is a whole chunk; firstSeq/lastSeq come from its header (as a consistent store row would),
///   so the fuzzer gets past the range check into LZ4 and checksum decoding (for `CBH1`; `CBH2` and `CBH3` check a
///   CRC-32 of everything after the header first, so a mutation rarely gets further: mode 2 below is for that);
/// - 0 or 4 modulo 4: the rest (after two bytes choosing firstSeq and the event count) is the chunk's raw JSON,
///   wrapped in a valid header, a literal-only LZ4 block and a correct FNV-1a checksum, so the fuzzer reaches the
///   JSON and message decoding behind the checksum;
/// - 2 modulo 4: the rest (after the same two bytes and a u32 LE raw length, capped at 1 MiB) is the body of a
///   `CBH3` chunk, its blocks after their lengths, under a header with a correct CRC-32, so the fuzzer reaches the
///   block walk and LZ4 behind the checksum.
/// Whole chunks whose header claims more than 1 MiB of raw bytes are skipped: `events()` allocates (and zeroes)
/// the claimed size before LZ4 can fail, which under ASan in a debug build takes about a minute for the 256 MiB
/// maximum (that cost is reported on its own in docs/RELIABILITY.md).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzHistoryChunk(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    guard size > 0 else { return 0 }
    let bytes = Array(UnsafeBufferPointer(start: data + 1, count: size - 1))
    if data[0] & 1 == 1 {
        var first = 1
        var last = 1
        if bytes.count >= 24 {
            first = Int(truncatingIfNeeded: le(bytes, 4, 8))
            last = Int(truncatingIfNeeded: le(bytes, 12, 8))
            if le(bytes, 20, 4) > 1 << 20 { return 0 }
        }
        for (f, l) in [(first, last), (1, 1), (1, 3)] { check(HistoryChunk(firstSeq: f, lastSeq: l, data: bytes)) }
    } else if data[0] & 3 == 2 {
        guard bytes.count >= 6 else { return 0 }
        let first = 1 + Int(bytes[0])
        let last = first + Int(bytes[1] % 8)
        let rawCount = le(bytes, 2, 4) & 0xF_FFFF
        check(HistoryChunk(firstSeq: first, lastSeq: last, data: wrapBlocks(Array(bytes[6...]), first: first, last: last, rawCount: rawCount)))
    } else if bytes.count >= 2 {
        let first = 1 + Int(bytes[0])
        let last = first + Int(bytes[1] % 8)
        check(HistoryChunk(firstSeq: first, lastSeq: last, data: wrap(Array(bytes[2...]), first: first, last: last)))
    }
    return 0
}

func check(_ chunk: HistoryChunk) {
    guard let events = try? chunk.events() else { return }
    precondition(events.count == chunk.lastSeq - chunk.firstSeq + 1, "event count does not match the seq range")
    for (i, e) in events.enumerated() { precondition(e.seq == chunk.firstSeq + i, "seq out of order") }
}

/// A `CBH1` chunk around `raw`: header, then one LZ4 block holding `raw` as literals.
func wrap(_ raw: [UInt8], first: Int, last: Int) -> [UInt8] {
    var out = Array("CBH1".utf8)
    func put(_ v: UInt64, _ width: Int) { for i in 0..<width { out.append(UInt8(truncatingIfNeeded: v >> (8 * UInt64(i)))) } }
    put(UInt64(first), 8)
    put(UInt64(last), 8)
    put(UInt64(raw.count), 4)
    var h: UInt32 = 0x811C_9DC5
    for b in raw { h = (h ^ UInt32(b)) &* 0x0100_0193 }
    put(UInt64(h), 4)
    if raw.count < 15 {
        out.append(UInt8(raw.count << 4))
    } else {
        out.append(0xF0)
        var rest = raw.count - 15
        while rest >= 255 { out.append(255); rest -= 255 }
        out.append(UInt8(rest))
    }
    return out + raw
}

/// A `CBH3` chunk whose body is `body` (blocks, each after its raw and compressed lengths, as the fuzzer made them),
/// with the given raw length and a correct CRC-32 of the body.
func wrapBlocks(_ body: [UInt8], first: Int, last: Int, rawCount: UInt64) -> [UInt8] {
    var out = Array("CBH3".utf8)
    func put(_ v: UInt64, _ width: Int) { for i in 0..<width { out.append(UInt8(truncatingIfNeeded: v >> (8 * UInt64(i)))) } }
    put(UInt64(first), 8)
    put(UInt64(last), 8)
    put(rawCount, 4)
    put(UInt64(crc32(body)), 4)
    return out + body
}

/// CRC-32 (IEEE, as zlib's `crc32`), a bit at a time: the harness has no zlib of its own.
func crc32(_ bytes: [UInt8]) -> UInt32 {
    var c: UInt32 = 0xFFFF_FFFF
    for b in bytes {
        c ^= UInt32(b)
        for _ in 0..<8 { c = c & 1 == 1 ? (c >> 1) ^ 0xEDB8_8320 : c >> 1 }
    }
    return ~c
}

func le(_ b: [UInt8], _ offset: Int, _ width: Int) -> UInt64 {
    var v: UInt64 = 0
    for i in 0..<width { v |= UInt64(b[offset + i]) << (8 * UInt64(i)) }
    return v
}

// A debug `swift build` links executables with `--defsym main=FuzzHistoryChunk_main` (testable executables); this entry
// point hands control to libFuzzer's driver, so debug and release builds both run as ordinary fuzzers.
@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(
    _ argc: UnsafeMutablePointer<CInt>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
    _ callback: @convention(c) (UnsafePointer<UInt8>, Int) -> CInt) -> CInt

@_cdecl("FuzzHistoryChunk_main")
public func FuzzHistoryChunkMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    var argc = argc
    var argv = argv
    return LLVMFuzzerRunDriver(&argc, &argv, fuzzHistoryChunk)
}
