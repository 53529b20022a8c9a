import ChatCore

/// Bytes as a stored history chunk: `HistoryChunk.events()` must throw a `HistoryChunkError` on garbage, never
/// crash. The chunk's firstSeq/lastSeq come from the header itself (as a consistent store row would), so the
/// fuzzer gets past the range check and into LZ4, checksum and JSON decoding.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzHistoryChunk(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    var first = 1
    var last = 1
    if bytes.count >= 20 {
        first = Int(truncatingIfNeeded: le(bytes, 4))
        last = Int(truncatingIfNeeded: le(bytes, 12))
    }
    for (f, l) in [(first, last), (1, 1), (1, 3)] {
        let chunk = HistoryChunk(firstSeq: f, lastSeq: l, data: bytes)
        if let events = try? chunk.events() {
            precondition(events.count == l - f + 1, "event count does not match the seq range")
            for (i, e) in events.enumerated() { precondition(e.seq == f + i, "seq out of order") }
        }
    }
    return 0
}

func le(_ b: [UInt8], _ offset: Int) -> UInt64 {
    var v: UInt64 = 0
    for i in 0..<8 { v |= UInt64(b[offset + i]) << (8 * UInt64(i)) }
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
