import Logging
import NIOCore
import PostgresNIO

/// Every row of one statement, read on the connection's event loop before the caller sees the first.
///
/// Why not postgres-nio's own row sequence: it holds the socket's reads until its consumer asks for more rows, and
/// when the server closes the connection inside that window without an error message (an immediate shutdown, a proxy
/// or a network cut), postgres-nio 1.33.2 stops the whole process on a precondition
/// (`RowStreamStateMachine.channelReadComplete`: a node crashed so when PostgreSQL was restarted with `-m immediate`
/// under load; reproduced by a proxy that cuts a large answer part-way). Collected rows are asked for as they arrive,
/// on the event loop, so that window never opens. Every statement of this module that can return more than one row
/// runs through `PostgresConnection.collect`, except two prepared statements of the hot paths, which postgres-nio
/// runs only through its sequence (planned each time, they cost several times as much): `LockThreads` answers one
/// row of arrays, and `ReadEvents` runs prepared only for a live read-back's few events
/// (`PostgresMessageStore.preparedReadBackSpan`). Their answers arrive in one flush as a rule; one cut exactly
/// between its rows and its end, while the reader's demand is on its way, still meets the precondition.
/// An `AsyncSequence` only so that postgres-nio's `decode` reads it as it reads its own.
struct CollectedRows: AsyncSequence, Sendable {
    let rows: [PostgresRow]

    struct AsyncIterator: AsyncIteratorProtocol {
        var base: IndexingIterator<[PostgresRow]>
        mutating func next() async -> PostgresRow? { base.next() }
    }

    func makeAsyncIterator() -> AsyncIterator { AsyncIterator(base: rows.makeIterator()) }
}

extension PostgresConnection {
    /// `query`'s rows, all of them read before this returns (`CollectedRows`).
    func collect(_ query: PostgresQuery, logger: Logger) async throws -> CollectedRows {
        let result: EventLoopFuture<PostgresQueryResult> = self.query(query, logger: logger)
        return CollectedRows(rows: try await result.get().rows)
    }
}
