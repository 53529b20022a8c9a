// swift-tools-version:6.1
// Micro benchmarks of ChatBroker's core hot paths (ordo-one/benchmark). Kept out of the broker's own build:
//   cd Benchmarks/Micro && swift package benchmark
import Foundation
import PackageDescription

/// A path dependency's identity is its folder's name, which is whatever the checkout is called.
let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
let rootPackage = root.lastPathComponent.lowercased()

let package = Package(
    name: "chat-broker-micro-benchmarks",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(path: "../.."),
        .package(url: "https://github.com/ordo-one/benchmark", from: "1.38.1", traits: ["MallocInterposer"]),
    ],
    targets: [
        .executableTarget(
            name: "CoreBenchmarks",
            dependencies: [
                .product(name: "Benchmark", package: "benchmark"),
                .product(name: "ChatCore", package: rootPackage),
                .product(name: "ChatJSON", package: rootPackage),
                .product(name: "ChatStoreSQLite", package: rootPackage),
            ],
            path: "Benchmarks/CoreBenchmarks",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        )
    ]
)
