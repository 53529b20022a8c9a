import ArgumentParser
import ChatServer
import ChatStoreSQLite
import Foundation
import Hummingbird
import Logging

/// `chat-broker`: run the broker (`serve`) or mint a development token (`token`).
@main
struct ChatBrokerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "chat-broker",
        abstract: "A real-time chat message broker speaking Socket.IO (drop-in for a NestJS ChatGateway).",
        subcommands: [Serve.self, Token.self],
        defaultSubcommand: Serve.self)
}

/// Options shared by `serve` and `token`; each falls back to its environment variable, then to the default.
struct CommonOptions: ParsableArguments {
    @Option(help: "Directory for the SQLite database and the generated secret (env CHAT_DATA_DIR).")
    var dataDir: String?
    @Option(help: "File holding the HS256 secret (env CHAT_JWT_SECRET_FILE; CHAT_JWT_SECRET holds the secret itself and wins).")
    var jwtSecretFile: String?
    @Option(help: "trace, debug, info, notice, warning, error or critical (env CHAT_LOG_LEVEL).")
    var logLevel: String?

    func env(_ name: String) -> String? {
        ProcessInfo.processInfo.environment[name].flatMap { $0.isEmpty ? nil : $0 }
    }

    var resolvedDataDir: String { dataDir ?? env("CHAT_DATA_DIR") ?? "./data" }

    var resolvedLogLevel: Logger.Level {
        Logger.Level(rawValue: (logLevel ?? env("CHAT_LOG_LEVEL") ?? "info").lowercased()) ?? .info
    }

    /// The configured secret, or a generated one kept in `<data-dir>/jwt-secret` (mode 0600).
    func secret(logger: Logger, generate: Bool) throws -> [UInt8] {
        var configured: [UInt8]?
        if let inline = env("CHAT_JWT_SECRET") {
            configured = Array(inline.utf8)
        } else if let file = jwtSecretFile ?? env("CHAT_JWT_SECRET_FILE") {
            guard let data = FileManager.default.contents(atPath: file) else { throw ValidationError("cannot read the JWT secret file \(file)") }
            configured = Array(String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines).utf8)
        }
        if let configured {
            guard configured.count >= ServerConfiguration.minimumSecretLength else {
                throw ValidationError("the JWT secret is \(configured.count) bytes; at least \(ServerConfiguration.minimumSecretLength) are required")
            }
            return configured
        }
        let dir = resolvedDataDir
        let path = dir + "/jwt-secret"
        if let data = FileManager.default.contents(atPath: path) {
            let stored = Array(String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines).utf8)
            guard stored.count >= ServerConfiguration.minimumSecretLength else {
                throw ValidationError("\(path) holds a secret shorter than \(ServerConfiguration.minimumSecretLength) bytes")
            }
            return stored
        }
        guard generate else { throw ValidationError("no JWT secret configured and none generated yet in \(path); start `serve` once or set CHAT_JWT_SECRET") }
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        var rng = SystemRandomNumberGenerator()
        let hex = Array("0123456789abcdef".utf8)
        var text: [UInt8] = []
        for _ in 0..<48 {
            let b = UInt8.random(in: 0...255, using: &rng)
            text.append(hex[Int(b >> 4)])
            text.append(hex[Int(b & 0xF)])
        }
        guard FileManager.default.createFile(atPath: path, contents: Data(text), attributes: [.posixPermissions: 0o600]) else {
            throw ValidationError("cannot write \(path)")
        }
        logger.notice("generated a JWT secret", metadata: ["path": "\(path)"])
        return text
    }
}

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Run the broker.")

    @OptionGroup var common: CommonOptions
    @Option(help: "Address to listen on (env CHAT_HOST).") var host: String?
    @Option(help: "Port to listen on (env CHAT_PORT).") var port: Int?
    @Option(help: "Sustained chat:send/edit/delete per second per connection.") var ratePerSec: Double?
    @Option(help: "Burst of sends per connection.") var rateBurst: Double?
    @Option(help: "Largest message content in UTF-8 bytes.") var maxContent: Int?
    @Option(help: "Most message ids in one receipt.") var maxReceiptIds: Int?
    @Option(help: "Outbound queue bound per connection in bytes.") var outboundLimit: Int?
    @Option(help: "Engine.IO maxPayload in bytes.") var maxPayload: Int?
    @Option(help: "Seconds between server pings.") var pingInterval: Double?
    @Option(help: "Seconds a client has to answer a ping.") var pingTimeout: Double?
    @Option(help: "Seconds after which a typist is announced as stopped.") var typingTimeout: Double?
    @Option(help: "Most events per thread in one chat:sync page.") var syncLimit: Int?
    @Option(help: "full (fsync before ack) or process (survives a process crash, not a power loss).") var durability: String?
    @Option(help: "Offer permessage-deflate to clients that ask (on/off).") var wsCompression: String?
    @Option(help: "Allowed CORS origins: * or a comma-separated list (env CHAT_CORS_ORIGINS).") var corsOrigins: String?
    @Option(help: "Seconds a transport may stay open without a Socket.IO CONNECT (default 45).") var connectTimeout: Double?
    @Option(help: "Most sockets one user may hold at once (default 256).") var maxSocketsPerUser: Int?
    @Option(help: "Seconds a socket's queue may stay over --outbound-limit before it is closed (default 1).") var slowConsumerGrace: Double?

    func run() async throws {
        let level = common.resolvedLogLevel
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "chat-broker")
        var config = ServerConfiguration()
        config.host = host ?? common.env("CHAT_HOST") ?? "127.0.0.1"
        config.port = port ?? common.env("CHAT_PORT").flatMap(Int.init) ?? 3001
        config.dataDirectory = common.resolvedDataDir
        config.jwtSecret = try common.secret(logger: logger, generate: true)
        if let v = ratePerSec { config.broker.ratePerSecond = v }
        if let v = rateBurst { config.broker.rateBurst = v }
        if let v = maxContent { config.broker.maxContent = v }
        if let v = maxReceiptIds { config.broker.maxReceiptIds = v }
        if let v = outboundLimit { config.broker.outboundLimit = v }
        if let v = maxPayload { config.maxPayload = v }
        if let v = pingInterval { config.pingInterval = Int(v * 1000) }
        if let v = pingTimeout { config.pingTimeout = Int(v * 1000) }
        if let v = typingTimeout { config.broker.typingTimeout = v }
        if let v = syncLimit { config.broker.syncLimit = v }
        if let v = durability {
            guard let d = Durability(rawValue: v) else { throw ValidationError("--durability must be full or process") }
            config.durability = d
        }
        if let v = connectTimeout { config.connectTimeout = v }
        if let v = maxSocketsPerUser { config.broker.maxDevicesPerUser = v }
        if let v = slowConsumerGrace { config.broker.slowConsumerGrace = v }
        if let v = wsCompression { config.webSocketCompression = ["on", "true", "1", "yes"].contains(v.lowercased()) }
        if let v = corsOrigins ?? common.env("CHAT_CORS_ORIGINS") {
            config.corsOrigins = v.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
        }
        guard config.broker.maxContent > 0, config.broker.outboundLimit > 0, config.maxPayload > 0, config.broker.syncLimit > 0 else {
            throw ValidationError("limits must be positive")
        }
        let broker = try await ChatApplication.make(configuration: config, logger: logger)
        try await broker.run()
    }
}

struct Token: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print an HS256 token signed with the configured secret.")

    @OptionGroup var common: CommonOptions
    @Option(help: "The user id (sub claim).") var user: String
    @Option(help: "The company id (companyId claim).") var company: String
    @Option(help: "Seconds until the token expires.") var ttl: Double = 3600
    @Option(help: "Optional role claim (\"service\" for service tokens).") var role: String?

    func run() async throws {
        let logger = Logger(label: "chat-broker")
        let secret = try common.secret(logger: logger, generate: false)
        let verifier = await TokenVerifier(secret: secret)
        print(try await verifier.mint(user: user, company: company, ttl: ttl, role: role))
    }
}
