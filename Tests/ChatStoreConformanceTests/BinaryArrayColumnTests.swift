import Logging
import PostgresNIO
import Testing

@testable import ChatStorePostgres

/// `BinaryArrayColumn` writes PostgreSQL's binary array format itself: the server must read back exactly what was
/// appended, `NULL`s, empty strings and multi-byte text included.
@Suite(.enabled(if: testDatabaseURL != nil, "CHAT_TEST_DATABASE_URL is not set: no PostgreSQL to test against"))
struct BinaryArrayColumnTests {
    static func withConnection<T>(_ body: (PostgresConnection) async throws -> T) async throws -> T {
        let url = try DatabaseURL(testDatabaseURL ?? "")
        let configuration = PostgresConnection.Configuration(
            host: url.host, port: url.port, username: url.user, password: url.password, database: url.database,
            tls: try PostgresMessageStore.connectionTLS(url))
        let connection = try await PostgresConnection.connect(configuration: configuration, id: 1, logger: Logger(label: "test"))
        do {
            let result = try await body(connection)
            try await connection.close()
            return result
        } catch {
            try? await connection.close()
            throw error
        }
    }

    @Test func textElementsComeBackAsTheyWent() async throws {
        let values: [String?] = ["alpha", nil, "", "héllo 👋 世界", String(repeating: "x", count: 70_000), nil, "last"]
        var column = BinaryArrayColumn<String>()
        for value in values { column.append(value) }
        let back = try await Self.withConnection { db in
            var rows: [(Int, String?)] = []
            for try await row in try await db.query(
                "SELECT n::int, v FROM unnest(\(column)::text[]) WITH ORDINALITY AS t(v, n) ORDER BY n", logger: Logger(label: "test"))
            {
                rows.append(try row.decode((Int, String?).self))
            }
            return rows
        }
        #expect(back.map(\.0) == Array(1...values.count))
        #expect(back.map(\.1) == values)
    }

    @Test func integersAndTheEmptyArray() async throws {
        let values: [Int64?] = [0, 1, nil, -1, .max, .min, 1_733_200_000_000]
        var numbers = BinaryArrayColumn<Int64>()
        for value in values { numbers.append(value) }
        let empty = BinaryArrayColumn<String>()
        let (back, emptyCount) = try await Self.withConnection { db in
            var rows: [Int64?] = []
            for try await row in try await db.query(
                "SELECT v FROM unnest(\(numbers)::bigint[]) WITH ORDINALITY AS t(v, n) ORDER BY n", logger: Logger(label: "test"))
            {
                rows.append(try row.decode(Int64?.self))
            }
            var count = -1
            for try await row in try await db.query("SELECT cardinality(\(empty)::text[])::int", logger: Logger(label: "test")) {
                count = try row.decode(Int.self)
            }
            return (rows, count)
        }
        #expect(back == values)
        #expect(emptyCount == 0)
    }
}
