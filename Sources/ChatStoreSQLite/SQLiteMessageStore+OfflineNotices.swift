import ChatCore
import GRDB

/// The offline-delivery outbox in SQLite: rows of `offline_notices`, written in the transaction of their message.
/// One process uses the file, so a claim is an update in one write transaction (the lease only keeps a notice from
/// being claimed again while its request runs).
extension SQLiteMessageStore: OfflineNoticeStore {
    public func claimOfflineNotices(limit: Int, lease: Double) async throws -> [OfflineNotice] {
        try await pool.write { db in
            let now = Timestamp.now().millis
            let rows = try Row.fetchAll(
                db,
                sql: """
                    SELECT o.thread_id AS notice_thread, o.message_id AS notice_message, o.user_id AS notice_user, o.attempts, o.queued_at,
                           t.company_id, mb.delivered_seq, mb.read_seq, m.*
                    FROM offline_notices o
                    JOIN threads t ON t.id = o.thread_id
                    LEFT JOIN members mb ON mb.thread_id = o.thread_id AND mb.user_id = o.user_id
                    LEFT JOIN messages m ON m.id = o.message_id AND m.thread_no = t.no
                    WHERE o.due_at <= ? ORDER BY o.due_at LIMIT ?
                    """, arguments: [now, limit])
            let leased = now + Int64((lease * 1000).rounded())
            let update = try db.cachedStatement(sql: "UPDATE offline_notices SET due_at = ? WHERE thread_id = ? AND message_id = ? AND user_id = ?")
            return try rows.map { row in
                let key = OfflineNoticeKey(thread: row["notice_thread"], messageId: row["notice_message"], userId: row["notice_user"])
                try update.execute(arguments: [leased, key.thread, key.messageId, key.userId])
                let delivered: Int? = row["delivered_seq"]
                let read: Int? = row["read_seq"]
                return OfflineNotice(
                    key: key, companyId: row["company_id"],
                    message: (row["id"] as String?) == nil ? nil : Self.message(row, threadId: key.thread),
                    marks: delivered.map { MemberMarks(deliveredSeq: $0, readSeq: read ?? 0) },
                    attempts: row["attempts"], queuedAt: Timestamp(millis: row["queued_at"]))
            }
        }
    }

    public func settleOfflineNotices(done: [OfflineNoticeKey], retry: [(key: OfflineNoticeKey, after: Double)]) async throws {
        guard !done.isEmpty || !retry.isEmpty else { return }
        try await pool.write { db in
            let delete = try db.cachedStatement(sql: "DELETE FROM offline_notices WHERE thread_id = ? AND message_id = ? AND user_id = ?")
            for key in done { try delete.execute(arguments: [key.thread, key.messageId, key.userId]) }
            let now = Timestamp.now().millis
            let update = try db.cachedStatement(
                sql: "UPDATE offline_notices SET attempts = attempts + 1, due_at = ? WHERE thread_id = ? AND message_id = ? AND user_id = ?")
            for (key, after) in retry {
                try update.execute(arguments: [now + Int64((after * 1000).rounded()), key.thread, key.messageId, key.userId])
            }
        }
    }

    public func pendingOfflineNotices() async throws -> Int {
        try await pool.read { db in try Int.fetchOne(db, sql: "SELECT count(*) FROM offline_notices") ?? 0 }
    }
}
