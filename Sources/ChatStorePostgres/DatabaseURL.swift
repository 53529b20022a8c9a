import Foundation

/// A `postgres://user:password@host:port/database?sslmode=…` URL, read into what the client needs. `sslmode`
/// follows libpq's names: `disable`, `prefer` (the default) and `require` encrypt without checking the server's
/// certificate, as libpq does (an attacker on the network can then read the traffic, and the password if the server
/// asks for it in clear: the broker logs a warning); `verify-full` also checks it and the host name, against the
/// system's trust roots or, with `sslrootcert=PATH`, against the CA certificates (PEM) in that file, as libpq does.
public struct DatabaseURL: Sendable, Equatable {
    public enum TLSMode: String, Sendable {
        case disable, prefer, require
        case verifyFull = "verify-full"
    }

    public var host: String
    public var port: Int
    public var user: String
    public var password: String?
    public var database: String
    public var tls: TLSMode
    /// `sslrootcert`: a PEM file of the CA certificates that `verify-full` trusts instead of the system's.
    public var rootCertificates: String?

    /// Why a URL was refused (the message names the part that is wrong, never the password).
    public struct Invalid: Error, Sendable, CustomStringConvertible {
        public let description: String
    }

    public init(_ text: String) throws(Invalid) {
        guard let components = URLComponents(string: text), let scheme = components.scheme, ["postgres", "postgresql"].contains(scheme.lowercased())
        else { throw Invalid(description: "the database URL must look like postgres://user:password@host:port/database") }
        // An IPv6 literal comes in brackets (`[::1]`); the client wants the address alone.
        guard let bracketed = components.host, !bracketed.isEmpty else { throw Invalid(description: "the database URL has no host") }
        let host = bracketed.hasPrefix("[") && bracketed.hasSuffix("]") ? String(bracketed.dropFirst().dropLast()) : bracketed
        guard let user = components.user, !user.isEmpty else { throw Invalid(description: "the database URL has no user") }
        let port = components.port ?? 5432
        guard (1...65_535).contains(port) else { throw Invalid(description: "the database URL's port \(port) is not between 1 and 65535") }
        let database = String(components.path.drop { $0 == "/" })
        guard !database.isEmpty else { throw Invalid(description: "the database URL names no database (…/database)") }
        var tls = TLSMode.prefer
        var rootCertificates: String?
        for item in components.queryItems ?? [] {
            switch item.name {
            case "sslmode":
                guard let value = item.value, let mode = TLSMode(rawValue: value) else {
                    throw Invalid(description: "sslmode must be disable, prefer, require or verify-full")
                }
                tls = mode
            case "sslrootcert":
                guard let value = item.value, !value.isEmpty else { throw Invalid(description: "sslrootcert must name a file") }
                // libpq's `system` means the system's CAs, which verify-full uses anyway.
                rootCertificates = value == "system" ? nil : value
            default:
                throw Invalid(description: "unknown database URL parameter \(item.name.prefix(64)) (only sslmode and sslrootcert are read)")
            }
        }
        if components.queryItems?.contains(where: { $0.name == "sslrootcert" }) == true, tls != .verifyFull {
            throw Invalid(description: "sslrootcert is read with sslmode=verify-full only (the other modes check no certificate)")
        }
        // `URLComponents` gives the user, password and path percent-decoded already.
        self.host = host
        self.port = port
        self.user = user
        self.password = components.password
        self.database = database
        self.tls = tls
        self.rootCertificates = rootCertificates
    }

    /// Whether the connection may go unencrypted or to a server whose certificate is not checked.
    public var tlsUnverified: Bool { tls != .verifyFull }

    /// Whether the host is this machine (where no one on a network sits between the broker and the database).
    public var isLocal: Bool { ["127.0.0.1", "::1", "localhost"].contains(host.lowercased()) }

    /// The URL without its password, for logs and messages.
    public var redacted: String { "postgres://\(user)@\(host):\(port)/\(database)?sslmode=\(tls.rawValue)" }
}
