import ChatCore
import PostgresNIO

/// The statements of the hot paths (a send's commit, another node's read-back), prepared once per connection and
/// then only bound and executed: parsing and planning was 40 % of PostgreSQL's CPU per send when they were sent as
/// text every time (`perf` on the server at 500 msgs/s; Benchmarks/README.md).
enum PreparedStatements {
    /// Locks the threads a batch writes, in id order (so that committers on any node never deadlock), with their
    /// positions and companies.
    struct LockThreads: PostgresPreparedStatement {
        static let name = "chat_lock_threads_v1"
        static let sql = "SELECT id, last_seq, company_id FROM chat.threads WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE"
        typealias Row = (String, Int64, String)
        let threads: [String]

        func makeBindings() throws -> PostgresBindings {
            var bindings = PostgresBindings(capacity: 1)
            bindings.append(threads)
            return bindings
        }

        func decodeRow(_ row: PostgresRow) throws -> Row { try row.decode(Row.self) }
    }

    /// New message rows, as 13 parallel arrays bound as $1…$13 (`BatchPlan.MessageRows`).
    static let insertMessages = """
        INSERT INTO chat.messages(thread_id, seq, id, sender_id, type, content, attachment_url, attachment_type, created_at, temp_id)
        SELECT t, s, i, se, ty, c, CASE WHEN un THEN NULL ELSE u END, CASE WHEN an THEN NULL ELSE a END,
               to_timestamp(ms::double precision / 1000), CASE WHEN tn THEN NULL ELSE tmp END
        FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], $7::text[], $8::bool[],
                    $9::text[], $10::bool[], $11::bigint[], $12::text[], $13::bool[])
             AS v(t, s, i, se, ty, c, u, un, a, an, ms, tmp, tn)
        """

    /// Message rows on their own (a batch whose edits touch messages it inserts writes them first).
    struct InsertMessages: PostgresPreparedStatement {
        static let name = "chat_insert_messages_v1"
        static let sql = PreparedStatements.insertMessages
        typealias Row = ()
        let rows: BatchPlan.MessageRows

        func makeBindings() throws -> PostgresBindings {
            var b = PostgresBindings(capacity: 13)
            rows.bind(to: &b)
            return b
        }

        func decodeRow(_ row: PostgresRow) throws -> Row {}
    }

    /// A batch's last statement when it inserts messages: the rows, the threads' new positions and the notifications.
    struct InsertAdvanceNotify: PostgresPreparedStatement {
        static let name = "chat_insert_advance_notify_v1"
        static let sql = """
            WITH ins AS (\(PreparedStatements.insertMessages) RETURNING 1),
            upd AS (
                UPDATE chat.threads t SET last_seq = v.s FROM unnest($14::text[], $15::bigint[]) AS v(i, s) WHERE t.id = v.i
                RETURNING 1)
            SELECT (SELECT count(*) FROM ins) + (SELECT count(*) FROM upd)
                   + (SELECT count(pg_notify($16::text, p)) FROM unnest($17::text[]) AS p)
            """
        typealias Row = Int64
        let rows: BatchPlan.MessageRows
        let threads: [String], seqs: [Int64], channel: String, payloads: [String]

        func makeBindings() throws -> PostgresBindings {
            var b = PostgresBindings(capacity: 17)
            rows.bind(to: &b)
            b.append(threads); b.append(seqs); b.append(channel); b.append(payloads)
            return b
        }

        func decodeRow(_ row: PostgresRow) throws -> Row { try row.decode(Int64.self) }
    }

    /// A batch's last statement when it moves threads without inserting messages (edits, deletes).
    struct AdvanceNotify: PostgresPreparedStatement {
        static let name = "chat_advance_notify_v1"
        static let sql = """
            WITH upd AS (
                UPDATE chat.threads t SET last_seq = v.s FROM unnest($1::text[], $2::bigint[]) AS v(i, s) WHERE t.id = v.i
                RETURNING 1)
            SELECT (SELECT count(*) FROM upd) + (SELECT count(pg_notify($3::text, p)) FROM unnest($4::text[]) AS p)
            """
        typealias Row = Int64
        let threads: [String], seqs: [Int64], channel: String, payloads: [String]

        func makeBindings() throws -> PostgresBindings {
            var b = PostgresBindings(capacity: 4)
            b.append(threads); b.append(seqs); b.append(channel); b.append(payloads)
            return b
        }

        func decodeRow(_ row: PostgresRow) throws -> Row { try row.decode(Int64.self) }
    }

    /// Notifications only (receipts, membership changes).
    struct Notify: PostgresPreparedStatement {
        static let name = "chat_notify_v1"
        static let sql = "SELECT count(pg_notify($1::text, p)) FROM unnest($2::text[]) AS p"
        typealias Row = Int64
        let channel: String, payloads: [String]

        func makeBindings() throws -> PostgresBindings {
            var b = PostgresBindings(capacity: 2)
            b.append(channel); b.append(payloads)
            return b
        }

        func decodeRow(_ row: PostgresRow) throws -> Row { try row.decode(Int64.self) }
    }

    /// Another node's read-back: the messages and edit/delete events in each range, for any number of threads, in
    /// one statement (so one snapshot), each with the message as it is now.
    struct ReadEvents: PostgresPreparedStatement {
        static let name = "chat_read_events_v1"
        static let sql = """
            SELECT r.t, m.seq, 'message', \(PostgresMessageStore.messageColumns(qualified: "m"))
            FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS r(t, a, u)
            JOIN chat.messages m ON m.thread_id = r.t AND m.seq > r.a AND m.seq <= r.u
            UNION ALL
            SELECT r.t, e.seq, e.kind, \(PostgresMessageStore.messageColumns(qualified: "m"))
            FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS r(t, a, u)
            JOIN chat.events e ON e.thread_id = r.t AND e.seq > r.a AND e.seq <= r.u
            JOIN chat.messages m ON m.thread_id = e.thread_id AND m.id = e.message_id
            ORDER BY 1, 2
            """
        typealias Row = PostgresRow
        let threads: [String], after: [Int64], upTo: [Int64]

        func makeBindings() throws -> PostgresBindings {
            var b = PostgresBindings(capacity: 3)
            b.append(threads); b.append(after); b.append(upTo)
            return b
        }

        func decodeRow(_ row: PostgresRow) throws -> Row { row }
    }
}

extension BatchPlan.MessageRows {
    /// The 13 arrays, in the order `PreparedStatements.insertMessages` binds them.
    func bind(to b: inout PostgresBindings) {
        b.append(thread); b.append(seq); b.append(id); b.append(sender); b.append(type); b.append(content); b.append(url)
        b.append(urlNull); b.append(attachmentType); b.append(attachmentTypeNull); b.append(created); b.append(tempId)
        b.append(tempIdNull)
    }
}
