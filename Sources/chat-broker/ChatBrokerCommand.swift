import ArgumentParser
import ChatCore
import ChatServer
import ChatStorePostgres
import ChatStoreSQLite
import ChatWebhook
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
    @Option(help: "Directory for the SQLite database and the generated secret (env CHAT_DATA_DIR; default ./data).")
    var dataDir: String?
    @Option(help: "File holding the HS256 secret (env CHAT_JWT_SECRET_FILE; CHAT_JWT_SECRET holds the secret itself and wins).")
    var jwtSecretFile: String?
    @Option(help: "trace, debug, info, notice, warning, error or critical (env CHAT_LOG_LEVEL).")
    var logLevel: String?

    func env(_ name: String) -> String? {
        ProcessInfo.processInfo.environment[name].flatMap { $0.isEmpty ? nil : $0 }
    }

    var resolvedDataDir: String { dataDir ?? env("CHAT_DATA_DIR") ?? "./data" }

    func resolvedLogLevel() throws -> Logger.Level {
        let name = logLevel ?? env("CHAT_LOG_LEVEL") ?? "info"
        guard let level = Logger.Level(rawValue: name.lowercased()) else {
            throw ValidationError("--log-level (or CHAT_LOG_LEVEL) \"\(name.prefix(64))\" must be trace, debug, info, notice, warning, error or critical")
        }
        return level
    }

    /// The secret in `file`, without surrounding whitespace (the newline an editor adds): text as text (Unicode
    /// whitespace trimmed, as always), and a file that is not UTF-8 (a binary key) as its bytes, ASCII whitespace
    /// trimmed, instead of with each bad byte replaced.
    static func readSecret(_ file: String, what: String) throws -> [UInt8] {
        guard let data = FileManager.default.contents(atPath: file) else { throw ValidationError("cannot read \(what) \(file)") }
        return secretBytes(Array(data))
    }

    static func secretBytes(_ bytes: [UInt8]) -> [UInt8] {
        if let text = String(validating: bytes, as: UTF8.self) { return Array(text.trimmingCharacters(in: .whitespacesAndNewlines).utf8) }
        return trimmed(bytes)
    }

    /// `bytes` without leading and trailing ASCII whitespace.
    static func trimmed(_ bytes: [UInt8]) -> [UInt8] {
        let space: Set<UInt8> = [0x20, 0x09, 0x0A, 0x0B, 0x0C, 0x0D]
        guard let first = bytes.firstIndex(where: { !space.contains($0) }), let last = bytes.lastIndex(where: { !space.contains($0) }) else {
            return []
        }
        return Array(bytes[first...last])
    }

    /// The configured secret, or a generated one kept in `<data-dir>/jwt-secret` (mode 0600).
    func secret(logger: Logger, generate: Bool) throws -> [UInt8] {
        var configured: [UInt8]?
        if let inline = env("CHAT_JWT_SECRET") {
            configured = Array(inline.utf8)
        } else if let file = jwtSecretFile ?? env("CHAT_JWT_SECRET_FILE") {
            configured = try Self.readSecret(file, what: "the JWT secret file")
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
            let stored = Self.secretBytes(Array(data))
            guard stored.count >= ServerConfiguration.minimumSecretLength else {
                throw ValidationError("\(path) holds a secret shorter than \(ServerConfiguration.minimumSecretLength) bytes")
            }
            return stored
        }
        guard generate else { throw ValidationError("no JWT secret configured and none generated yet in \(path); start `serve` once or set CHAT_JWT_SECRET") }
        // A data directory made here is the owner's alone (0700): it holds the secret and, with SQLite, the chat.
        do {
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        } catch {
            throw ValidationError("--data-dir (or CHAT_DATA_DIR): cannot use \(dir) as the data directory: \(error.localizedDescription)")
        }
        var rng = SystemRandomNumberGenerator()
        let hex = Array("0123456789abcdef".utf8)
        var text: [UInt8] = []
        for _ in 0..<48 {
            let b = UInt8.random(in: 0...255, using: &rng)
            text.append(hex[Int(b >> 4)])
            text.append(hex[Int(b & 0xF)])
        }
        // Written whole to a file of its own, created with mode 0600 from the start (no moment when another user could
        // read it) and never through a link, flushed, then linked into place only if no other process made the secret
        // meanwhile (whose secret is then used): no crash or full disk leaves an empty or partial secret behind.
        let temporary = path + ".\(getpid()).tmp"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw ValidationError("--data-dir (or CHAT_DATA_DIR): cannot write \(temporary) (\(String(cString: strerror(errno))))") }
        defer { unlink(temporary) }
        let written = text.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        let flushed = fsync(fd) == 0
        close(fd)
        guard written == text.count, flushed else { throw ValidationError("cannot write \(temporary)") }
        guard link(temporary, path) == 0 else {
            if errno == EEXIST, let data = FileManager.default.contents(atPath: path) {
                let stored = Self.secretBytes(Array(data))
                if stored.count >= ServerConfiguration.minimumSecretLength { return stored }
            }
            throw ValidationError("cannot write \(path)")
        }
        logger.notice("generated a JWT secret", metadata: ["path": "\(path)"])
        return text
    }
}

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the broker.",
        discussion: """
            Every option can also be set by an environment variable: CHAT_ and the option's name in capitals with \
            '-' as '_' (--ping-interval: CHAT_PING_INTERVAL). The option wins over the variable. Every value is \
            checked at start-up; a bad one stops the broker with a message naming it (exit code 64).
            """)

    @OptionGroup var common: CommonOptions
    @Option(help: "Keep the chat in PostgreSQL (postgres://user:password@host:port/database?sslmode=disable|prefer|require|verify-full) instead of SQLite in --data-dir; several brokers may share one database.")
    var databaseUrl: String?
    @Option(help: "Address to listen on (default 127.0.0.1).") var host: String?
    @Option(parsing: .unconditional, help: "Port to listen on, 0 for any free port (default 3001).") var port: String?
    @Option(parsing: .unconditional, help: "Sustained chat:send/edit/delete per second per connection (default 50).") var ratePerSec: String?
    @Option(parsing: .unconditional, help: "Burst of sends per connection (default 100).") var rateBurst: String?
    @Option(parsing: .unconditional, help: "Sustained reads per second per connection: chat:history, chat:join, chat:leave, chat:sync (one per 10 threads); bursts of twice as many; also REST reads per user (default 200).")
    var readRatePerSec: String?
    @Option(parsing: .unconditional, help: "What one user's connections may do together, in connections' worth of each per-connection rate and burst (default 4).")
    var userRateConnections: String?
    @Option(parsing: .unconditional, help: "Largest message content in UTF-8 bytes (default 16384).") var maxContent: String?
    @Option(parsing: .unconditional, help: "Most message ids in one receipt (default 1000).") var maxReceiptIds: String?
    @Option(
        parsing: .unconditional,
        help: "MiB of history all active threads may hold together; past it the least recently active are unloaded early (default 1024; 0: no bound).")
    var threadMemoryBudget: String?
    @Option(parsing: .unconditional, help: "Most user ids in one request: memberIds, userIds (default 1000).") var maxMembersPerRequest: String?
    @Option(parsing: .unconditional, help: "Most edits of one message; a delete is always allowed (default 100).") var maxEditsPerMessage: String?
    @Option(parsing: .unconditional, help: "Outbound queue bound per connection in bytes (default 1048576).") var outboundLimit: String?
    @Option(parsing: .unconditional, help: "Engine.IO maxPayload in bytes (default 1000000).") var maxPayload: String?
    @Option(parsing: .unconditional, help: "Seconds between server pings (default 25).") var pingInterval: String?
    @Option(parsing: .unconditional, help: "Seconds a client has to answer a ping (default 20).") var pingTimeout: String?
    @Option(parsing: .unconditional, help: "Seconds after which a typist is announced as stopped (default 6).") var typingTimeout: String?
    @Option(parsing: .unconditional, help: "Most events per thread in one chat:sync page (default 1000).") var syncLimit: String?
    @Option(help: "full (fsync before ack, default) or process (survives a process crash, not a power loss).") var durability: String?
    @Option(help: "Offer permessage-deflate to clients that ask: on or off (default off).") var wsCompression: String?
    @Option(help: "Allowed CORS origins: * or a comma-separated list (default *).") var corsOrigins: String?
    @Option(parsing: .unconditional, help: "Seconds a transport may stay open without a Socket.IO CONNECT (default 45).") var connectTimeout: String?
    @Option(parsing: .unconditional, help: "Most sockets one user may hold at once (default 256).") var maxSocketsPerUser: String?
    @Option(parsing: .unconditional, help: "Most connections that may wait for their Socket.IO CONNECT at once (default 10000).") var maxPendingSessions: String?
    @Option(parsing: .unconditional, help: "Seconds a websocket has to complete the upgrade of a polling session (default 10).") var upgradeTimeout: String?
    @Option(parsing: .unconditional, help: "Seconds an HTTP connection has to send a request head, and may stay silent within a request body (default 30).")
    var requestReadTimeout: String?
    @Option(parsing: .unconditional, help: "Largest polling body, in bytes, of a session with no Socket.IO connection yet (default 65536).")
    var maxPayloadBeforeConnect: String?
    @Option(parsing: .unconditional, help: "Seconds a socket's queue may stay over --outbound-limit before it is closed (default 1).") var slowConsumerGrace: String?
    @Option(parsing: .unconditional, help: "Bytes per second of messages one connection may send, and of REST bodies one user may send; a connection over it is read more slowly, a REST write is refused with 429 (default 1000000).")
    var inboundBytesPerSec: String?
    @Option(parsing: .unconditional, help: "Burst of the same, in bytes (default 4000000).") var inboundBytesBurst: String?
    @Option(parsing: .unconditional, help: "Most TCP connections held at once; one past it is closed as it is accepted (default: the open-file limit, raised to its hard limit at start, less 256).")
    var maxConnections: String?
    @Option(parsing: .unconditional, help: "Seconds a shutdown waits for the events being worked on to be answered before it closes the sockets (default 5).")
    var shutdownGrace: String?
    @Option(help: "File holding a token (at least 32 bytes) that GET /metrics then requires as Authorization: Bearer; without it /metrics is open.")
    var metricsTokenFile: String?
    @Option(help: "POST a signed JSON notification to this http(s) URL for each member without a live socket when a message is stored.")
    var offlineWebhookUrl: String?
    @Option(help: "File holding the webhook's HMAC-SHA256 secret (at least 32 bytes; required with --offline-webhook-url).")
    var offlineWebhookSecretFile: String?
    @Option(parsing: .unconditional, help: "Seconds before a notification is sent; a user who reads the thread or comes online first is not notified (default 5).")
    var offlineWebhookDelay: String?
    @Option(parsing: .unconditional, help: "Characters of the message sent as its preview, 0 for none (default 100).") var offlineWebhookPreview: String?
    @Option(parsing: .unconditional, help: "Seconds a webhook request may take (default 10).") var offlineWebhookTimeout: String?
    @Option(parsing: .unconditional, help: "Seconds after its message past which a notification is dropped, never sent: no attempt, first or retry, starts later (default 3600).") var offlineWebhookMaxAge: String?
    @Option(parsing: .unconditional, help: "Most notifications in one webhook request (default 100).") var offlineWebhookBatch: String?
    @Option(parsing: .unconditional, help: "Seconds before the first retry of a failed request; each next one waits twice as long, up to 300 (default 1).")
    var offlineWebhookRetryDelay: String?

    /// Checks every option and variable before anything starts (a bad value exits with code 64).
    func validate() throws {
        _ = try common.resolvedLogLevel()
        _ = try configuration()
    }

    func run() async throws {
        let level = try common.resolvedLogLevel()
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "chat-broker")
        var config = try configuration()
        config.jwtSecret = try common.secret(logger: logger, generate: true)
        do {
            let broker = try await ChatApplication.make(configuration: config, logger: logger)
            try await broker.run()
        } catch let error as StartupError {
            // What the broker cannot use is a bad value of the flags that gave it: a usage error (64), named.
            let flags = error.options.map { "--\($0)" }.joined(separator: " and ")
            let variables = error.options.map { Settings.variable($0) }.joined(separator: ", ")
            throw ValidationError("\(flags) (or \(variables)): \(error.reason)")
        }
    }

    /// Every option and variable, parsed and checked: the first bad one throws a `ValidationError` naming it.
    func configuration() throws -> ServerConfiguration {
        var config = ServerConfiguration()
        let settings = Settings(env: common.env)
        config.host = try settings.text("host", host) ?? config.host
        config.port = try settings.integer("port", port, in: 0...65_535) ?? config.port
        config.dataDirectory = common.resolvedDataDir
        if let url = try settings.text("database-url", databaseUrl) {
            do { config.databaseURL = try DatabaseURL(url) } catch { throw ValidationError("--database-url (or CHAT_DATABASE_URL): \(error.description)") }
        }
        config.broker.ratePerSecond = try settings.number("rate-per-sec", ratePerSec, in: 0.001...1e6) ?? config.broker.ratePerSecond
        config.broker.rateBurst = try settings.number("rate-burst", rateBurst, in: 1...1e6) ?? config.broker.rateBurst
        config.broker.readRatePerSecond = try settings.number("read-rate-per-sec", readRatePerSec, in: 0.001...1e6) ?? config.broker.readRatePerSecond
        config.broker.userRateConnections =
            try settings.number("user-rate-connections", userRateConnections, in: 1...1e6) ?? config.broker.userRateConnections
        config.broker.maxContent = try settings.integer("max-content", maxContent, in: 1...(64 << 20)) ?? config.broker.maxContent
        config.broker.maxReceiptIds = try settings.integer("max-receipt-ids", maxReceiptIds, in: 1...1_000_000) ?? config.broker.maxReceiptIds
        if let mebibytes = try settings.integer("thread-memory-budget", threadMemoryBudget, in: 0...16_777_216) {
            config.broker.threadMemoryBudget = mebibytes == 0 ? nil : mebibytes << 20
        }
        config.broker.maxMembersPerRequest =
            try settings.integer("max-members-per-request", maxMembersPerRequest, in: 1...config.broker.maxMembers) ?? config.broker.maxMembersPerRequest
        config.broker.maxEditsPerMessage =
            try settings.integer("max-edits-per-message", maxEditsPerMessage, in: 1...100_000) ?? config.broker.maxEditsPerMessage
        config.broker.outboundLimit = try settings.integer("outbound-limit", outboundLimit, in: 1024...(1 << 30)) ?? config.broker.outboundLimit
        config.maxPayload = try settings.integer("max-payload", maxPayload, in: 1024...(256 << 20)) ?? config.maxPayload
        guard settings.raw("max-content", maxContent) == nil || config.broker.maxContent <= config.maxPayload else {
            throw ValidationError("--max-content (\(config.broker.maxContent)) must not exceed --max-payload (\(config.maxPayload)): no packet could carry such a message")
        }
        if let v = try settings.number("ping-interval", pingInterval, in: 0.001...86_400) { config.pingInterval = Int((v * 1000).rounded()) }
        if let v = try settings.number("ping-timeout", pingTimeout, in: 0.001...86_400) { config.pingTimeout = Int((v * 1000).rounded()) }
        config.broker.typingTimeout = try settings.number("typing-timeout", typingTimeout, in: 0.001...86_400) ?? config.broker.typingTimeout
        config.broker.syncLimit = try settings.integer("sync-limit", syncLimit, in: 1...1_000_000) ?? config.broker.syncLimit
        if let v = try settings.text("durability", durability) {
            guard let d = Durability(rawValue: v.lowercased()) else { throw settings.invalid("durability", v, "must be full or process") }
            config.durability = d
        }
        if let v = try settings.text("ws-compression", wsCompression) {
            switch v.lowercased() {
            case "on", "true", "1", "yes": config.webSocketCompression = true
            case "off", "false", "0", "no": config.webSocketCompression = false
            default: throw settings.invalid("ws-compression", v, "must be on or off")
            }
        }
        if let v = try settings.text("cors-origins", corsOrigins) {
            let entries = v.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
            guard !entries.isEmpty else { throw settings.invalid("cors-origins", v, "must be * or a list of origins") }
            config.corsOrigins = try entries.map { entry in
                guard let origin = ServerConfiguration.corsAllowListEntry(entry) else {
                    throw settings.invalid("cors-origins", v, "\(entry) is not an origin: an origin is scheme://host[:port], without a path")
                }
                return origin
            }
        }
        config.connectTimeout = try settings.number("connect-timeout", connectTimeout, in: 0.001...86_400) ?? config.connectTimeout
        config.broker.maxDevicesPerUser = try settings.integer("max-sockets-per-user", maxSocketsPerUser, in: 1...100_000) ?? config.broker.maxDevicesPerUser
        config.maxPendingSessions = try settings.integer("max-pending-sessions", maxPendingSessions, in: 1...10_000_000) ?? config.maxPendingSessions
        config.upgradeTimeout = try settings.number("upgrade-timeout", upgradeTimeout, in: 0.001...3600) ?? config.upgradeTimeout
        config.requestReadTimeout = try settings.number("request-read-timeout", requestReadTimeout, in: 0.001...3600) ?? config.requestReadTimeout
        config.maxPayloadBeforeConnect =
            try settings.integer("max-payload-before-connect", maxPayloadBeforeConnect, in: 1...1_000_000_000) ?? config.maxPayloadBeforeConnect
        config.broker.slowConsumerGrace = try settings.number("slow-consumer-grace", slowConsumerGrace, in: 0...3600) ?? config.broker.slowConsumerGrace
        config.inboundBytesPerSecond =
            try settings.number("inbound-bytes-per-sec", inboundBytesPerSec, in: 1024...1e12) ?? config.inboundBytesPerSecond
        config.inboundBytesBurst = try settings.number("inbound-bytes-burst", inboundBytesBurst, in: 1024...1e12) ?? config.inboundBytesBurst
        config.maxConnections = try settings.integer("max-connections", maxConnections, in: 1...100_000_000)
        config.shutdownGrace = try settings.number("shutdown-grace", shutdownGrace, in: 0...600) ?? config.shutdownGrace
        config.offlineWebhook = try offlineWebhook(settings)
        if let file = try settings.text("metrics-token-file", metricsTokenFile), let source = settings.raw("metrics-token-file", metricsTokenFile)?.source {
            let token = try CommonOptions.readSecret(file, what: "the metrics token file (\(source))")
            guard token.count >= ServerConfiguration.minimumSecretLength, token.allSatisfy({ (0x21...0x7E).contains($0) }) else {
                throw ValidationError(
                    "\(source): the metrics token must be at least \(ServerConfiguration.minimumSecretLength) printable ASCII characters without spaces (it is sent in a header)")
            }
            config.metricsToken = token
        }
        return config
    }

    /// The offline-delivery webhook, if a URL is configured: the URL must be http(s) and the secret file readable
    /// and long enough; the tuning options are refused without a URL (they would silently do nothing).
    func offlineWebhook(_ settings: Settings) throws -> OfflineWebhookConfiguration? {
        guard let url = try settings.text("offline-webhook-url", offlineWebhookUrl) else {
            let tuning: [(String, String?)] = [
                ("offline-webhook-secret-file", offlineWebhookSecretFile), ("offline-webhook-delay", offlineWebhookDelay),
                ("offline-webhook-preview", offlineWebhookPreview), ("offline-webhook-timeout", offlineWebhookTimeout),
                ("offline-webhook-max-age", offlineWebhookMaxAge), ("offline-webhook-batch", offlineWebhookBatch),
                ("offline-webhook-retry-delay", offlineWebhookRetryDelay),
            ]
            if let (name, _) = tuning.first(where: { settings.raw($0.0, $0.1) != nil }) {
                throw ValidationError("--\(name) needs --offline-webhook-url")
            }
            return nil
        }
        if let problem = OfflineWebhookConfiguration.problem(with: url) {
            throw settings.invalid("offline-webhook-url", url, problem)
        }
        guard let file = try settings.text("offline-webhook-secret-file", offlineWebhookSecretFile) else {
            throw ValidationError("--offline-webhook-url needs --offline-webhook-secret-file (the HMAC-SHA256 key of the signature header)")
        }
        let secret = try CommonOptions.readSecret(file, what: "the webhook secret file")
        guard secret.count >= OfflineWebhookConfiguration.minimumSecretLength else {
            throw ValidationError(
                "the webhook secret is \(secret.count) bytes; at least \(OfflineWebhookConfiguration.minimumSecretLength) are required")
        }
        var webhook = OfflineWebhookConfiguration(url: url, secret: secret)
        webhook.delay = try settings.number("offline-webhook-delay", offlineWebhookDelay, in: 0...86_400) ?? webhook.delay
        webhook.previewLength = try settings.integer("offline-webhook-preview", offlineWebhookPreview, in: 0...10_000) ?? webhook.previewLength
        webhook.timeout = try settings.number("offline-webhook-timeout", offlineWebhookTimeout, in: 0.1...600) ?? webhook.timeout
        webhook.maxAge = try settings.number("offline-webhook-max-age", offlineWebhookMaxAge, in: 1...(30 * 86_400)) ?? webhook.maxAge
        webhook.batchSize = try settings.integer("offline-webhook-batch", offlineWebhookBatch, in: 1...10_000) ?? webhook.batchSize
        webhook.retryDelay = try settings.number("offline-webhook-retry-delay", offlineWebhookRetryDelay, in: 0.01...3600) ?? webhook.retryDelay
        // No first attempt would start before the max age: every notice would be dropped unsent.
        guard webhook.delay < webhook.maxAge else {
            throw ValidationError(
                "--offline-webhook-delay (\(Settings.format(webhook.delay)) s) must be shorter than --offline-webhook-max-age (\(Settings.format(webhook.maxAge)) s): no notice would be sent")
        }
        return webhook
    }
}

/// Reads one option or, without it, its environment variable (`CHAT_` + the name in capitals, `-` as `_`), and
/// checks it: a value that is not a number, not finite, or outside its range is refused with the option's or
/// the variable's name.
struct Settings {
    let env: (String) -> String?

    static func variable(_ name: String) -> String { "CHAT_" + name.uppercased().replacingOccurrences(of: "-", with: "_") }

    /// The raw value and where it came from.
    func raw(_ name: String, _ flag: String?) -> (value: String, source: String)? {
        if let flag { return (flag, "--\(name)") }
        let variable = Self.variable(name)
        return env(variable).map { ($0, variable) }
    }

    func invalid(_ name: String, _ value: String, _ rule: String) -> ValidationError {
        ValidationError("--\(name) (or \(Self.variable(name))) \"\(value.prefix(64))\" \(rule)")
    }

    func text(_ name: String, _ flag: String?) throws -> String? {
        guard let (value, source) = raw(name, flag) else { return nil }
        guard !value.trimmingCharacters(in: .whitespaces).isEmpty else { throw ValidationError("\(source) must not be empty") }
        return value
    }

    func integer(_ name: String, _ flag: String?, in range: ClosedRange<Int>) throws -> Int? {
        try parsed(name, flag, in: range, kind: "a whole number", parse: { Int($0) }, show: { String($0) })
    }

    func number(_ name: String, _ flag: String?, in range: ClosedRange<Double>) throws -> Double? {
        // Decimal only: Swift's `Double` also reads hexadecimal (`0x10` was 16, found by an outside probe).
        try parsed(
            name, flag, in: range, kind: "a finite decimal number",
            parse: { text in text.allSatisfy { "0123456789+-.eE".contains($0) } ? Double(text).flatMap { $0.isFinite ? $0 : nil } : nil },
            show: Self.format)
    }

    /// The value of `name` read by `parse` (`nil`: not `kind`) and checked against `range`.
    private func parsed<T: Comparable>(
        _ name: String, _ flag: String?, in range: ClosedRange<T>, kind: String, parse: (String) -> T?, show: (T) -> String
    ) throws -> T? {
        guard let (value, source) = raw(name, flag) else { return nil }
        guard let n = parse(value.trimmingCharacters(in: .whitespaces)) else {
            throw ValidationError("\(source) \"\(value.prefix(64))\" is not \(kind)")
        }
        guard range.contains(n) else {
            throw ValidationError("\(source) is \(value.prefix(64)); it must be between \(show(range.lowerBound)) and \(show(range.upperBound))")
        }
        return n
    }

    static func format(_ n: Double) -> String { n == n.rounded() && abs(n) < 1e15 ? String(Int(n)) : String(n) }
}

struct Token: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Print an HS256 token signed with the configured secret.")

    @OptionGroup var common: CommonOptions
    @Option(help: "The user id (sub claim).") var user: String
    @Option(help: "The company id (companyId claim).") var company: String
    @Option(parsing: .unconditional, help: "Seconds until the token expires.") var ttl: Double = 3600
    @Option(help: "Optional role claim (\"service\" for service tokens).") var role: String?

    func validate() throws {
        guard ttl.isFinite, ttl > 0, ttl <= 366 * 86_400 else { throw ValidationError("--ttl must be more than 0 and at most 31622400 seconds") }
        // A token the broker would refuse is not printed.
        for (name, value) in [("user", user), ("company", company)] where !TokenVerifier.isUsableId(value) {
            // Shown with the characters it may not hold escaped, so that the message says which one it is.
            let shown = value.prefix(64).unicodeScalars.map { ClientCommand.isControlOrInvisible($0) ? "\\u{\(String($0.value, radix: 16))}" : String($0) }
            throw ValidationError(
                "--\(name) \"\(shown.joined())\" must be a non-empty id of at most 256 bytes, in Unicode NFC, without control or invisible characters (the broker refuses tokens with any other)")
        }
        // The broker knows one role: any other would print a plain user's token that looks like something more
        // (`--role Service`, `admin`; an outside probe).
        if let role, role != "service" {
            throw ValidationError("--role \"\(role.prefix(64))\" is not a role the broker knows: it knows \"service\" only (leave --role out for a user's token)")
        }
        _ = try common.resolvedLogLevel()
    }

    func run() async throws {
        let logger = Logger(label: "chat-broker")
        let secret = try common.secret(logger: logger, generate: false)
        let verifier = await TokenVerifier(secret: secret)
        print(try await verifier.mint(user: user, company: company, ttl: ttl, role: role))
    }
}
