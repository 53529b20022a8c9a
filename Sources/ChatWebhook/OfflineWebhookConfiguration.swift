import Foundation

/// Where and how offline notices are sent (`serve --offline-webhook-url …`).
public struct OfflineWebhookConfiguration: Sendable {
    /// The receiver: an `http` or `https` URL that takes a POST.
    public var url: String
    /// The HMAC-SHA256 key of the signature header (at least 32 bytes).
    public var secret: [UInt8]
    /// Seconds after a message is stored before its notices are due: a user who reads it, gets it on a device or
    /// comes online meanwhile is not notified.
    public var delay: Double = 5
    /// Characters of the message content sent as `preview` (0: none).
    public var previewLength: Int = 100
    /// Seconds a request may take (connect, send and answer) before it counts as failed.
    public var timeout: Double = 10
    /// Seconds after a notice was queued during which failed requests are retried; after that it is dropped (and
    /// counted).
    public var maxAge: Double = 3600
    /// Most notifications in one request.
    public var batchSize: Int = 100
    /// The first retry waits about this many seconds; each further one twice as long (with jitter), up to `maxRetryDelay`.
    public var retryDelay: Double = 1
    public var maxRetryDelay: Double = 300
    /// Seconds between two looks at the outbox while nothing is due.
    public var pollInterval: Double = 0.25
    /// Requests in flight at once.
    public var concurrency: Int = 4
    /// Seconds a claim's lease adds to two request timeouts (the longest a request takes: its answer's head, then
    /// its body); the presence lookups of a round may use half of it (`OfflineWebhookDispatcher.round`).
    public var leaseMargin: Double = 10

    public init(url: String, secret: [UInt8]) {
        self.url = url
        self.secret = secret
    }

    /// The minimum secret length, as for the JWT secret.
    public static let minimumSecretLength = 32

    /// Why `url` cannot be the receiver, or `nil` if it can: an `http` or `https` URL with a host, a port (if given)
    /// of 1–65535, and no fragment or credentials (the requests are signed; a password would show in the process's
    /// arguments). A port past 65535 made the HTTP client stop the process (a trap in `SocketAddress`) with an IP
    /// address, and wrap to another port with a host name (found by an outside probe).
    public static func problem(with url: String) -> String? {
        if url.utf8.contains(where: { $0 <= 0x20 || $0 == 0x7F }) { return "must not contain spaces or control characters" }
        guard let parsed = URL(string: url), let scheme = parsed.scheme?.lowercased(), scheme == "http" || scheme == "https",
            let host = parsed.host, !host.isEmpty, !host.contains("%")
        else { return "must be an http:// or https:// URL with a host" }
        // The port as written: `URL.port` is nil for a number past `Int`, and the client would then use the default port.
        let authority = url.split(separator: "/", maxSplits: 2, omittingEmptySubsequences: false).dropFirst(2).first?
            .prefix { $0 != "/" && $0 != "?" && $0 != "#" } ?? ""
        let hostAndPort = authority.split(separator: "@").last ?? authority
        let afterHost = hostAndPort.hasPrefix("[") ? hostAndPort.drop { $0 != "]" }.dropFirst() : hostAndPort.drop { $0 != ":" }
        if afterHost.hasPrefix(":") {
            let digits = afterHost.dropFirst()
            guard !digits.isEmpty, digits.allSatisfy(\.isASCII), digits.allSatisfy(\.isNumber), let port = Int(digits), (1...65_535).contains(port)
            else { return "has port \(digits.prefix(24)); a port is 1-65535" }
        }
        if parsed.fragment != nil { return "must not have a fragment (#...)" }
        if parsed.user != nil || parsed.password != nil { return "must not hold credentials (the requests are signed)" }
        return nil
    }
}
