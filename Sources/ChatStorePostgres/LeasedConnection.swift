import PostgresNIO
import Synchronization

/// The pool connection one bounded call runs on (`PostgresMessageStore.withConnection`), so that the call's deadline
/// can close it. A statement whose connection went silent without a reset (the database's host lost power, a
/// failover moved its address) is never answered and nothing tells this machine's kernel: postgres-nio cannot cancel
/// it, and the pool sets no TCP keepalive, so its body would run, and hold its connection, forever. Closing the
/// connection fails the statement at once: the body ends, it is no longer counted as stalled, and the pool opens a
/// new connection for the next call. A connection that was only slow (a statement behind a row lock) is closed too:
/// PostgreSQL notices only when it next uses the socket, or within a second on 14 and later (the pool sets
/// `client_connection_check_interval`), and then rolls back what it had not committed; a statement that got its lock
/// first may still commit. Either way the outcome is unknown here, and handled as any other (`AbandonedCommits`).
final class LeasedConnection: Sendable {
    private struct State {
        var connection: PostgresConnection?
        var closed = false
    }
    private let state = Mutex(State())

    /// The call got `connection` from the pool; throws (and closes it) if its deadline passed while it waited.
    func hold(_ connection: PostgresConnection) throws {
        let late = state.withLock { s -> Bool in
            if s.closed { return true }
            s.connection = connection
            return false
        }
        if late {
            Self.close(connection)
            throw CancellationError()
        }
    }

    /// The call is done with its connection; `true` if its deadline closed it meanwhile (the caller waits for the
    /// close to complete before the pool gets it back, so the pool never lends a connection that is about to close).
    func release() -> Bool {
        state.withLock { s in
            s.connection = nil
            return s.closed
        }
    }

    /// The call's deadline passed: its connection, if it holds one, is closed (under the lock: a connection already
    /// released, and perhaps lent to another call, is never touched).
    func close() {
        state.withLock { s in
            s.closed = true
            if let connection = s.connection { Self.close(connection) }
            s.connection = nil
        }
    }

    /// Closes the connection's channel now, without waiting (the pool learns it is closed and replaces it).
    private static func close(_ connection: PostgresConnection) {
        let _: EventLoopFuture<Void> = connection.close()
    }
}
