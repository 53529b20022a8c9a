import ChatJSON
import SocketIOCodec

/// Socket.IO packets (the text of an Engine.IO message): `SocketCodec.decode` must throw or return a packet,
/// never crash; a decoded packet encodes and decodes again to the same packet, except when its data is a bare
/// number (`4` + `2` + `42` cannot tell an ack id from the data: see Fuzz/Crashes/FuzzSocketCodec, a leniency
/// of the decoder reported in docs/RELIABILITY.md, harmless because the broker never encodes such packets).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzSocketCodec(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    guard let packet = try? SocketCodec.decode(bytes) else { return 0 }
    _ = packet.event
    if case .number = packet.data { return 0 }
    let encoded = SocketCodec.encode(packet)
    let again: SocketPacket
    do { again = try SocketCodec.decode(encoded) } catch {
        preconditionFailure("re-encoded packet does not decode: \(error) \(String(decoding: encoded, as: UTF8.self))")
    }
    precondition(again.type == packet.type && again.namespace == packet.namespace && again.ackId == packet.ackId,
                 "re-encoded packet differs")
    return 0
}

// A debug `swift build` links executables with `--defsym main=FuzzSocketCodec_main` (testable executables); this entry
// point hands control to libFuzzer's driver, so debug and release builds both run as ordinary fuzzers.
@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(
    _ argc: UnsafeMutablePointer<CInt>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
    _ callback: @convention(c) (UnsafePointer<UInt8>, Int) -> CInt) -> CInt

@_cdecl("FuzzSocketCodec_main")
public func FuzzSocketCodecMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    var argc = argc
    var argv = argv
    return LLVMFuzzerRunDriver(&argc, &argv, fuzzSocketCodec)
}
