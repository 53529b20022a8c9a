import ChatJSON

/// `JSONParser.parse` must throw or return a value, never crash; what it returns writes back to JSON that
/// parses to the same value.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzJSONParser(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = Array(UnsafeBufferPointer(start: data, count: size))
    guard let value = try? JSONParser.parse(bytes) else { return 0 }
    let written = JSONWriter.encode(value)
    let again: JSONValue
    do { again = try JSONParser.parse(written) } catch {
        preconditionFailure("writer output does not parse: \(error) \(String(decoding: written, as: UTF8.self))")
    }
    precondition(again == value || hasNonFinite(value), "JSON does not round-trip")
    return 0
}

func hasNonFinite(_ v: JSONValue) -> Bool {
    switch v {
    case .number(let d): return !d.isFinite || d.isNaN
    case .array(let a): return a.contains(where: hasNonFinite)
    case .object(let o): return o.members.contains { hasNonFinite($0.value) }
    default: return false
    }
}

// A debug `swift build` links executables with `--defsym main=FuzzJSONParser_main` (testable executables); this entry
// point hands control to libFuzzer's driver, so debug and release builds both run as ordinary fuzzers.
@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(
    _ argc: UnsafeMutablePointer<CInt>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
    _ callback: @convention(c) (UnsafePointer<UInt8>, Int) -> CInt) -> CInt

@_cdecl("FuzzJSONParser_main")
public func FuzzJSONParserMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    var argc = argc
    var argv = argv
    return LLVMFuzzerRunDriver(&argc, &argv, fuzzJSONParser)
}
