// swift-tools-version:6.1
import Foundation
import PackageDescription

/// The broker allocates on actor threads and frees on the committer's (and back); glibc's malloc pays for that in
/// arena locks and chunk coalescing. mimalloc (apt: libmimalloc-dev) replaces malloc for the whole process when
/// linked into the executable (Benchmarks/Micro/README.md: about a quarter lower tail latency, 7–16 % more
/// throughput). It costs about 1 KiB per idle connection; `CHAT_BROKER_ALLOCATOR=system swift build …` builds
/// the broker on the system allocator instead.
let brokerLinkerSettings: [LinkerSetting] =
    ProcessInfo.processInfo.environment["CHAT_BROKER_ALLOCATOR"] == "system"
    ? [] : [.linkedLibrary("mimalloc", .when(platforms: [.linux]))]

let swiftSettings: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
]

let package = Package(
    name: "chat-broker",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "chat-broker", targets: ["chat-broker"]),
        .executable(name: "chat-bench", targets: ["chat-bench"]),
        .library(name: "ChatCore", targets: ["ChatCore"]),
        .library(name: "ChatCoreTesting", targets: ["ChatCoreTesting"]),
        .library(name: "ChatJSON", targets: ["ChatJSON"]),
        .library(name: "ChatStoreSQLite", targets: ["ChatStoreSQLite"]),
        .library(name: "ChatStorePostgres", targets: ["ChatStorePostgres"]),
        .library(name: "SocketIOCodec", targets: ["SocketIOCodec"]),
        .library(name: "ChatServer", targets: ["ChatServer"]),
        .library(name: "ChatWebhook", targets: ["ChatWebhook"]),
    ],
    dependencies: [
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
        .package(url: "https://github.com/hummingbird-project/hummingbird-websocket", from: "2.8.1"),
        .package(url: "https://github.com/adam-fowler/compress-nio", from: "1.5.0"),
        .package(url: "https://github.com/vapor/jwt-kit", from: "5.8.0"),
        .package(url: "https://github.com/groue/GRDB.swift", from: "7.10.0"),
        .package(url: "https://github.com/vapor/postgres-nio", from: "1.33.2"),
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.3"),
        .package(url: "https://github.com/apple/swift-nio-extras", from: "1.35.2"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-collections", from: "1.6.0"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.2.0"),
        .package(url: "https://github.com/swift-server/async-http-client", from: "1.37.0"),
        .package(url: "https://github.com/apple/swift-crypto", "4.1.0"..<"6.0.0"),
    ],
    targets: [
        .systemLibrary(name: "CLZ4", pkgConfig: "liblz4", providers: [.apt(["liblz4-dev"])]),
        .systemLibrary(name: "CZlib", pkgConfig: "zlib", providers: [.apt(["zlib1g-dev"])]),
        .target(name: "ChatJSON", swiftSettings: swiftSettings),
        .target(
            name: "ChatCore",
            dependencies: [
                "CLZ4",
                "CZlib",
                "ChatJSON",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "ChatStoreSQLite",
            dependencies: [
                "ChatCore",
                "ChatJSON",
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "GRDBSQLite", package: "GRDB.swift"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "ChatCoreTesting",
            dependencies: ["ChatCore", "ChatJSON", "ChatStoreSQLite"],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "ChatStorePostgres",
            dependencies: [
                "ChatCore",
                "ChatJSON",
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "ChatWebhook",
            dependencies: [
                "ChatCore",
                "ChatJSON",
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "SocketIOCodec",
            dependencies: ["ChatJSON"],
            swiftSettings: swiftSettings
        ),
        .target(
            name: "ChatServer",
            dependencies: [
                "ChatCore",
                "ChatStoreSQLite",
                "ChatStorePostgres",
                "ChatWebhook",
                "SocketIOCodec",
                .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "HummingbirdWebSocket", package: "hummingbird-websocket"),
                .product(name: "HummingbirdWSCompression", package: "hummingbird-websocket"),
                .product(name: "CompressNIO", package: "compress-nio"),
                .product(name: "JWTKit", package: "jwt-kit"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOHTTPTypes", package: "swift-nio-extras"),
                .product(name: "NIOHTTPTypesHTTP1", package: "swift-nio-extras"),
                .product(name: "DequeModule", package: "swift-collections"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
            ],
            // The REST API's OpenAPI document, served at GET /openapi.json (docs/openapi.json links to it), and the
            // live console page served at GET /console.
            resources: [.embedInCode("openapi.json"), .embedInCode("console.html")],
            swiftSettings: swiftSettings
        ),
        .executableTarget(
            name: "chat-broker",
            dependencies: [
                "ChatCore",
                "ChatServer",
                "ChatStorePostgres",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings,
            linkerSettings: brokerLinkerSettings
        ),
        .executableTarget(
            name: "chat-bench",
            dependencies: [
                "SocketIOCodec",
                "ChatJSON",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "JWTKit", package: "jwt-kit"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
            ],
            path: "Benchmarks/Sources/chat-bench",
            swiftSettings: swiftSettings
        ),
        .testTarget(
            name: "ChatCoreTests",
            dependencies: ["ChatCore", "ChatCoreTesting", "ChatJSON", "CLZ4", .product(name: "NIOCore", package: "swift-nio")],
            swiftSettings: swiftSettings),
        .testTarget(
            name: "ChatStoreSQLiteTests",
            dependencies: ["ChatCore", "ChatStoreSQLite", "ChatJSON", .product(name: "GRDB", package: "GRDB.swift")], swiftSettings: swiftSettings),
        .testTarget(
            name: "ChatStoreConformanceTests",
            dependencies: [
                "ChatCore", "ChatCoreTesting", "ChatJSON", "ChatStoreSQLite", "ChatStorePostgres",
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings),
        .testTarget(
            name: "ChatServerTests",
            dependencies: [
                "ChatCore", "ChatServer", "ChatJSON", "ChatWebhook", "ChatStoreSQLite",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "NIOWebSocket", package: "swift-nio"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "CompressNIO", package: "compress-nio"),
            ],
            swiftSettings: swiftSettings),
        .testTarget(name: "SocketIOCodecTests", dependencies: ["SocketIOCodec", "ChatJSON"], swiftSettings: swiftSettings),
    ]
)
