import Logging
import PostgresNIO

extension PostgresConnection {
    /// `body` between BEGIN and COMMIT, rolled back if it throws, except on a connection that is gone: postgres-nio
    /// (1.33) never answers a statement sent on a connection that was reset, so its own `withTransaction`, which
    /// sends ROLLBACK after any error, can hang for good when PostgreSQL dies in the middle of a transaction. A lost
    /// connection rolls the transaction back by itself; the pool discards the connection.
    /// `begin` starts it (a plain BEGIN unless it says otherwise: an isolation level, read only).
    func transaction<T: Sendable>(_ begin: PostgresQuery = "BEGIN", logger: Logger, _ body: (PostgresConnection) async throws -> T) async throws -> T {
        try await query(begin, logger: logger)
        do {
            let value = try await body(self)
            try await query("COMMIT", logger: logger)
            return value
        } catch {
            if !Self.lostConnection(error), !isClosed {
                do { try await query("ROLLBACK", logger: logger) } catch {
                    // Never hand the pool a connection still inside a transaction.
                    logger.debug("rollback failed; closing the connection", metadata: ["error": "\(error)"])
                    try? await close()
                }
            }
            throw error
        }
    }

    /// Whether `error` means the connection itself is gone (reset, closed by either side, or broken by bytes it could
    /// not read), as opposed to a statement the server refused.
    static func lostConnection(_ error: any Error) -> Bool {
        guard let psql = error as? PSQLError else { return false }
        switch psql.code {
        case .connectionError, .serverClosedConnection, .clientClosedConnection, .uncleanShutdown, .messageDecodingFailure,
            .unexpectedBackendMessage:
            return true
        default:
            return false
        }
    }
}
