import ChatCore
import ChatJSON

let configuration = BrokerConfiguration()
let events = [
    "chat:send", "chat:join", "chat:leave", "chat:delivered", "chat:mark-read", "chat:typing:start", "chat:typing:stop",
    "chat:edit", "chat:delete", "chat:history", "chat:sync", "chat:unknown",
]

/// First byte picks the event, the rest is the JSON payload: `ClientCommand.parse` must return a command or
/// throw a `ChatError`, never crash.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzClientCommand(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    guard size > 0 else { return 0 }
    let event = events[Int(data[0]) % events.count]
    let bytes = Array(UnsafeBufferPointer(start: data + 1, count: size - 1))
    guard let json = try? JSONParser.parse(bytes) else { return 0 }
    do {
        let command = try ClientCommand.parse(event: event, data: json, configuration: configuration)
        _ = command.rateClass
    } catch {
        _ = error.code
    }
    return 0
}

// A debug `swift build` links executables with `--defsym main=FuzzClientCommand_main` (testable executables); this entry
// point hands control to libFuzzer's driver, so debug and release builds both run as ordinary fuzzers.
@_silgen_name("LLVMFuzzerRunDriver")
func LLVMFuzzerRunDriver(
    _ argc: UnsafeMutablePointer<CInt>, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
    _ callback: @convention(c) (UnsafePointer<UInt8>, Int) -> CInt) -> CInt

@_cdecl("FuzzClientCommand_main")
public func FuzzClientCommandMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    var argc = argc
    var argv = argv
    return LLVMFuzzerRunDriver(&argc, &argv, fuzzClientCommand)
}
