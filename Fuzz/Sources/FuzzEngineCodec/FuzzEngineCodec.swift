import SocketIOCodec

/// Engine.IO polling bodies: `EngineCodec.decodePayload` must throw or return packets, never crash; every
/// decoded packet re-encodes to the bytes it came from.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzEngineCodec(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    if let packets = try? EngineCodec.decodePayload(bytes) {
        let again = EngineCodec.encodePayload(packets.map(\.encoded))
        precondition(again == bytes, "decodePayload/encodePayload do not round-trip")
    }
    _ = try? EngineCodec.decode(bytes)
    return 0
}

// A debug `swift build` links executables with `--defsym main=FuzzEngineCodec_main` (testable executables); this entry
// point hands control to libFuzzer's driver, so debug and release builds both run as ordinary fuzzers.
@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(
    _ argc: UnsafeMutablePointer<CInt>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
    _ callback: @convention(c) (UnsafePointer<UInt8>, Int) -> CInt) -> CInt

@_cdecl("FuzzEngineCodec_main")
public func FuzzEngineCodecMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    var argc = argc
    var argv = argv
    return LLVMFuzzerRunDriver(&argc, &argv, fuzzEngineCodec)
}
