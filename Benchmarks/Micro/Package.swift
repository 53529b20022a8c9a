// swift-tools-version:6.1
// Micro benchmarks of ChatBroker's core hot paths (ordo-one/benchmark). Kept out of the broker's own build:
//   cd Benchmarks/Micro && swift package benchmark
import Foundation
import PackageDescription

/// A path dependency's identity is its folder's name, which is whatever the checkout is called.
let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
let rootPackage = root.lastPathComponent.lowercased()

/// The broker's executable links mimalloc (see the root Package.swift); `send-load` links it too, so it measures
/// the allocator the broker ships with. The ordo-one suite does not: its malloc interposer (which counts
/// allocations) and mimalloc crashed together once in three runs.
let brokerAllocator: [LinkerSetting] = [.linkedLibrary("mimalloc", .when(platforms: [.linux]))]

let package = Package(
    name: "chat-broker-micro-benchmarks",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(path: "../.."),
        .package(url: "https://github.com/ordo-one/benchmark", from: "1.38.1", traits: ["MallocInterposer"]),
    ],
    targets: [
        .target(
            name: "MicroSupport",
            dependencies: [
                .product(name: "ChatCore", package: rootPackage),
                .product(name: "ChatJSON", package: rootPackage),
            ]
        ),
        .executableTarget(
            name: "send-load",
            dependencies: [
                "MicroSupport",
                .product(name: "ChatCore", package: rootPackage),
                .product(name: "ChatStoreSQLite", package: rootPackage),
                .product(name: "ChatStorePostgres", package: rootPackage),
            ],
            linkerSettings: brokerAllocator
        ),
        .executableTarget(
            name: "CoreBenchmarks",
            dependencies: [
                "MicroSupport",
                .product(name: "Benchmark", package: "benchmark"),
                .product(name: "ChatCore", package: rootPackage),
                .product(name: "ChatJSON", package: rootPackage),
                .product(name: "SocketIOCodec", package: rootPackage),
                .product(name: "ChatStoreSQLite", package: rootPackage),
            ],
            path: "Benchmarks/CoreBenchmarks",
            plugins: [.plugin(name: "BenchmarkPlugin", package: "benchmark")]
        )
    ]
)
