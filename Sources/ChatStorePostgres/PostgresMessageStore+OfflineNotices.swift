import ChatCore
import PostgresNIO

/// The offline-delivery outbox in PostgreSQL (`chat.offline_notices`), shared by every node's dispatcher: a claim
/// takes due rows with `FOR UPDATE SKIP LOCKED` and moves their `due_at` past the lease in the same statement, so two
/// nodes never claim one notice at once, and a node that dies mid-request leaves its notices to be claimed again
/// when the lease ends. Times are the database's clock, so nodes whose clocks differ still agree.
extension PostgresMessageStore: OfflineNoticeStore {
    public func claimOfflineNotices(limit: Int, lease: Double) async throws -> [OfflineNotice] {
        try await bounded { db in
            var notices: [OfflineNotice] = []
            for try await row in try await db.collect(
                """
                WITH due AS (
                    SELECT thread_id, message_id, user_id FROM chat.offline_notices
                    WHERE due_at <= now() ORDER BY due_at LIMIT \(limit) FOR UPDATE SKIP LOCKED),
                claimed AS (
                    UPDATE chat.offline_notices o SET due_at = now() + make_interval(secs => \(lease)::float8)
                    FROM due WHERE o.thread_id = due.thread_id AND o.message_id = due.message_id AND o.user_id = due.user_id
                    RETURNING o.thread_id, o.message_id, o.user_id, o.attempts, o.queued_at)
                SELECT c.thread_id, c.message_id, c.user_id, c.attempts, \(unescaped: Self.millis("c.queued_at")), t.company_id,
                       mb.delivered_seq, mb.read_seq, \(unescaped: Self.messageColumns(qualified: "m"))
                FROM claimed c
                JOIN chat.threads t ON t.id = c.thread_id
                LEFT JOIN chat.members mb ON mb.thread_id = c.thread_id AND mb.user_id = c.user_id
                LEFT JOIN chat.messages m ON m.thread_no = t.no AND m.id = c.message_id
                """, logger: self.logger
            ) {
                let cells = row.makeRandomAccess()
                let key = OfflineNoticeKey(
                    thread: try cells[0].decode(String.self), messageId: try cells[1].decode(String.self), userId: try cells[2].decode(String.self))
                let delivered = try cells[6].decode(Int64?.self), read = try cells[7].decode(Int64?.self)
                let hasMessage = try cells[8].decode(Int64?.self) != nil
                notices.append(
                    OfflineNotice(
                        key: key, companyId: try cells[5].decode(String.self),
                        message: hasMessage ? try Self.message(row, threadId: key.thread, skipping: 8) : nil,
                        marks: delivered.map { MemberMarks(deliveredSeq: Int($0), readSeq: Int(read ?? 0)) },
                        attempts: Int(try cells[3].decode(Int32.self)), queuedAt: Timestamp(millis: try cells[4].decode(Int64.self))))
            }
            return notices
        }
    }

    public func settleOfflineNotices(done: [OfflineNoticeKey], retry: [(key: OfflineNoticeKey, after: Double)]) async throws {
        guard !done.isEmpty || !retry.isEmpty else { return }
        try await bounded { connection in
            try await connection.transaction(logger: self.logger) { db in
                if !done.isEmpty {
                    try await db.query(
                        """
                        DELETE FROM chat.offline_notices o
                        USING unnest(\(done.map(\.thread))::text[], \(done.map(\.messageId))::text[], \(done.map(\.userId))::text[]) AS v(t, m, u)
                        WHERE o.thread_id = v.t AND o.message_id = v.m AND o.user_id = v.u
                        """, logger: self.logger)
                }
                if !retry.isEmpty {
                    try await db.query(
                        """
                        UPDATE chat.offline_notices o SET attempts = o.attempts + 1, due_at = now() + make_interval(secs => v.a)
                        FROM unnest(\(retry.map(\.key.thread))::text[], \(retry.map(\.key.messageId))::text[], \(retry.map(\.key.userId))::text[],
                                    \(retry.map(\.after))::float8[]) AS v(t, m, u, a)
                        WHERE o.thread_id = v.t AND o.message_id = v.m AND o.user_id = v.u
                        """, logger: self.logger)
                }
            }
        }
    }

    public func pendingOfflineNotices() async throws -> Int {
        try await bounded { db in
            for try await count in try await db.collect("SELECT count(*) FROM chat.offline_notices", logger: self.logger).decode(Int64.self) {
                return Int(count)
            }
            return 0
        }
    }
}
