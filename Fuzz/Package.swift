// swift-tools-version:6.1
// libFuzzer targets for ChatBroker's decoders. Not part of the broker's build: build and run them with
// scripts/reliability/fuzz.sh (swift build -Xswiftc -sanitize=fuzzer,address -Xswiftc -parse-as-library).
import PackageDescription

let broker: Package.Dependency = .package(name: "chat-broker", path: "..")

func fuzzTarget(_ name: String, _ products: [String]) -> Target {
    .executableTarget(
        name: name,
        dependencies: products.map { .product(name: $0, package: "chat-broker") },
        path: "Sources/\(name)")
}

let package = Package(
    name: "chat-broker-fuzz",
    platforms: [.macOS(.v15)],
    dependencies: [broker],
    targets: [
        fuzzTarget("FuzzEngineCodec", ["SocketIOCodec"]),
        fuzzTarget("FuzzSocketCodec", ["SocketIOCodec", "ChatJSON"]),
        fuzzTarget("FuzzJSONParser", ["ChatJSON"]),
        fuzzTarget("FuzzClientCommand", ["ChatCore", "ChatJSON"]),
        fuzzTarget("FuzzHistoryChunk", ["ChatCore"]),
    ]
)
