import ChatCore
import ChatStorePostgres
import ChatStoreSQLite
import ChatWebhook

/// Everything `chat-broker serve` can be told, with the defaults of docs/PROTOCOL.md §5.
public struct ServerConfiguration: Sendable {
    public var host = "127.0.0.1"
    public var port = 3001
    public var dataDirectory = "./data"
    /// The PostgreSQL database to keep the chat in (several nodes may share it); `nil`: SQLite in `dataDirectory`.
    public var databaseURL: DatabaseURL?
    /// The HS256 secret (at least 32 bytes).
    public var jwtSecret: [UInt8] = []
    public var durability: Durability = .full
    /// Milliseconds between server pings.
    public var pingInterval = 25_000
    /// Milliseconds a client has to answer a ping.
    public var pingTimeout = 20_000
    /// Largest Engine.IO packet or polling body in bytes.
    public var maxPayload = 1_000_000
    /// Offer permessage-deflate when the client asks for it.
    public var webSocketCompression = false
    /// `*` or a list of allowed origins.
    public var corsOrigins: [String] = ["*"]
    /// Seconds a transport may stay open without a Socket.IO CONNECT.
    public var connectTimeout: Double = 45
    /// Seconds a websocket that upgrades a polling session has to complete the upgrade (`2probe`, then `5`), as
    /// engine.io's `upgradeTimeout`; it is closed after that, and the session stays on polling.
    public var upgradeTimeout: Double = 10
    /// Seconds an HTTP connection has to send a whole request head, from its opening or from the end of the last
    /// response (an idle keep-alive connection closes after it), and most seconds without a byte while a request
    /// body is read. What a client that sends nothing, or dribbles a request, can hold is bounded by it.
    public var requestReadTimeout: Double = 30
    /// Largest polling body of a session that has no Socket.IO connection yet (a client sends only its CONNECT
    /// then): what an unauthenticated client can make the broker buffer and decode per request.
    public var maxPayloadBeforeConnect = 65_536
    /// Most Engine.IO sessions that may wait for their Socket.IO CONNECT at once (what unauthenticated clients
    /// can hold); a handshake past it closes the oldest of them (`PendingSessions`).
    public var maxPendingSessions = 10_000
    /// Bytes of messages per second one connection (websocket messages or polling bodies) may make the broker read
    /// and decode, and one user's REST bodies; a connection over it is read again once the debt is paid, a REST write
    /// over it is refused (`429`) before its body is read. Parsing is linear but not free: without it a few sockets
    /// sending megabyte packets as fast as they can slowed everyone.
    public var inboundBytesPerSecond: Double = 1_000_000
    /// The burst of the same, in bytes.
    public var inboundBytesBurst: Double = 4_000_000
    /// Most TCP connections held at once (`ConnectionLimit`); `nil`: the open-file limit less 256.
    public var maxConnections: Int?
    /// Most sends of one connection awaiting durability at once (pipelining depth).
    public var maxPipelinedSends = 256
    /// Where notices for members without a live socket are POSTed; `nil`: no offline-delivery webhook.
    public var offlineWebhook: OfflineWebhookConfiguration?
    /// Seconds shutdown waits for the events being worked on to be answered (a send being committed, for its ack)
    /// before it closes the sockets; events that come meanwhile are refused (`EngineServer.shuttingDown`).
    public var shutdownGrace: Double = 5
    /// The bearer token `GET /metrics` requires (`MetricsAccess`); `nil`: it is open (keep it behind the proxy).
    public var metricsToken: [UInt8]?
    /// The core's bounds.
    public var broker = BrokerConfiguration()

    public init() {}

    /// The minimum secret length: HS256 with a shorter key is refused.
    public static let minimumSecretLength = 32

    /// `text` as an entry of the allow-list: `*`, or an origin as browsers send it (`scheme://host[:port]`, lower
    /// case, no path, query or user); `nil` for anything else (`https://app.example/` with its slash, or `null`,
    /// which sandboxed pages and local files send, would never match or match too much).
    public static func corsAllowListEntry(_ text: String) -> String? {
        if text == "*" { return text }
        let lower = text.lowercased()
        guard let separator = lower.range(of: "://") else { return nil }
        let scheme = lower[..<separator.lowerBound], authority = lower[separator.upperBound...]
        guard let first = scheme.unicodeScalars.first, ("a"..."z").contains(first),
            scheme.unicodeScalars.allSatisfy({ ("a"..."z").contains($0) || ("0"..."9").contains($0) || "+-.".unicodeScalars.contains($0) })
        else { return nil }
        var host = authority[...], port: Substring? = nil
        if let colon = authority.lastIndex(of: ":"), !authority[colon...].contains("]") {
            host = authority[..<colon]
            port = authority[authority.index(after: colon)...]
        }
        guard !host.isEmpty, host.unicodeScalars.allSatisfy({ $0.value > 0x20 && $0.value < 0x7f && !"/?#@\\,".unicodeScalars.contains($0) }) else {
            return nil
        }
        if let port {
            guard (1...5).contains(port.count), port.allSatisfy(\.isASCII), let number = Int(port), (1...65_535).contains(number) else { return nil }
        }
        return lower
    }
}
