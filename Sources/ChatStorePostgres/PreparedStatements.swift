import ChatCore
import Logging
import PostgresNIO

/// The statements of the hot paths (a send's commit, another node's read-back), prepared once per connection and
/// then only bound and executed: parsing and planning was 40 % of PostgreSQL's CPU per send when they were sent as
/// text every time (`perf` on the server at 500 msgs/s; Benchmarks/README.md).
enum PreparedStatements {
    /// Locks the threads a batch writes, in id order (so that committers on any node never deadlock), with their
    /// positions, companies and members versions: one row of four arrays (empty when no thread is found), so that the
    /// answer is one row whatever the batch (`CollectedRows` says why a prepared statement returns one row).
    struct LockThreads: PostgresPreparedStatement {
        static let name = "chat_lock_threads_v3"
        static let sql = """
            SELECT coalesce(array_agg(id), '{}'), coalesce(array_agg(last_seq), '{}'), coalesce(array_agg(company_id), '{}'),
                   coalesce(array_agg(members_version), '{}')
            FROM (SELECT id, last_seq, company_id, members_version FROM chat.threads WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE) AS locked
            """
        typealias Row = ([String], [Int64], [String], [Int64])
        let threads: [String]

        func makeBindings() throws -> PostgresBindings {
            var bindings = PostgresBindings(capacity: 1)
            bindings.append(threads)
            return bindings
        }

        func decodeRow(_ row: PostgresRow) throws -> Row { try row.decode(Row.self) }
    }

    /// `$first`, `$first + 1`, … for `count` parameters.
    private static func parameters(from first: Int, _ count: Int) -> [String] { (first..<first + count).map { "$\($0)" } }

    /// ` <keyword> <condition>` when the statement runs only if `condition` holds (the one-statement commit's check,
    /// `commitSQL`), else nothing.
    private static func clause(_ keyword: String, _ condition: String?) -> String { condition.map { " \(keyword) \($0)" } ?? "" }

    /// New message rows, as 10 parallel arrays bound from `$first` on (`BatchPlan.MessageRows`; a `NULL` element is a
    /// `NULL` column). A row is keyed by its thread's number, found in `threads` (`chat.threads`, or the batch's
    /// locked rows: any relation with `id` and `no`); a thread missing there fails the statement (`thread_no` is
    /// `NOT NULL`) instead of dropping the row.
    static func insertMessages(from first: Int = 1, threads: String = "chat.threads", onlyIf condition: String? = nil) -> String {
        let p = parameters(from: first, 10)
        return """
            INSERT INTO chat.messages(thread_no, seq, id, sender_id, type, content, attachment_url, attachment_type, created_at, temp_id)
            SELECT th.no, s, i, se, ty, c, u, a, to_timestamp(ms::double precision / 1000), tmp
            FROM unnest(\(p[0])::text[], \(p[1])::bigint[], \(p[2])::text[], \(p[3])::text[], \(p[4])::text[], \(p[5])::text[], \(p[6])::text[],
                        \(p[7])::text[], \(p[8])::bigint[], \(p[9])::text[])
                 AS v(t, s, i, se, ty, c, u, a, ms, tmp)
            LEFT JOIN \(threads) th ON th.id = v.t\(clause("WHERE", condition))
            """
    }

    /// Receipt watermarks, only ever raised: 4 arrays from `$first` (`BatchPlan.Rows.bindMarks`).
    static func raiseMarks(from first: Int, onlyIf condition: String? = nil) -> String {
        let p = parameters(from: first, 4)
        return """
            UPDATE chat.members m SET delivered_seq = GREATEST(m.delivered_seq, v.d), read_seq = GREATEST(m.read_seq, v.r)
            FROM unnest(\(p[0])::text[], \(p[1])::text[], \(p[2])::bigint[], \(p[3])::bigint[]) AS v(t, u, d, r)
            WHERE m.thread_id = v.t AND m.user_id = v.u\(clause("AND", condition))
            """
    }

    /// Sealed chunks: 5 arrays from `$first` (`BatchPlan.Rows.bindChunks`). A chunk reflects every event up to its
    /// `as_of`: the newest wins, whichever node wrote it last.
    static func upsertChunks(from first: Int, onlyIf condition: String? = nil) -> String {
        let p = parameters(from: first, 5)
        return """
            INSERT INTO chat.chunks AS c (thread_id, first_seq, last_seq, data, as_of)
            SELECT * FROM unnest(\(p[0])::text[], \(p[1])::bigint[], \(p[2])::bigint[], \(p[3])::bytea[], \(p[4])::bigint[])\(clause("WHERE", condition))
            ON CONFLICT (thread_id, first_seq) DO UPDATE SET last_seq = EXCLUDED.last_seq, data = EXCLUDED.data, as_of = EXCLUDED.as_of
            WHERE c.as_of <= EXCLUDED.as_of
            """
    }

    /// Offline-delivery notices, due after each one's delay: 4 arrays from `$first` (`BatchPlan.Rows.bindNotices`).
    static func insertOfflineNotices(from first: Int, onlyIf condition: String? = nil) -> String {
        let p = parameters(from: first, 4)
        return """
            INSERT INTO chat.offline_notices(thread_id, message_id, user_id, due_at)
            SELECT t, m, u, now() + make_interval(secs => d)
            FROM unnest(\(p[0])::text[], \(p[1])::text[], \(p[2])::text[], \(p[3])::float8[]) AS v(t, m, u, d)\(clause("WHERE", condition))
            ON CONFLICT DO NOTHING
            """
    }

    /// Message rows on their own (a batch whose edits touch messages it inserts writes them first).
    ///
    /// It answers a row (the count) rather than none: postgres-nio's `execute` of a statement without rows reads the
    /// command tag when the statement has begun, which stops the process if it has not completed by then (seen when
    /// this statement was the first of a transaction).
    struct InsertMessages: PostgresPreparedStatement {
        static let name = "chat_insert_messages_v4"
        static let sql = "WITH ins AS (\(PreparedStatements.insertMessages()) RETURNING 1) SELECT count(*) FROM ins"
        typealias Row = Int64
        let rows: BatchPlan.MessageRows

        func makeBindings() throws -> PostgresBindings {
            var b = PostgresBindings(capacity: 10)
            rows.bind(to: &b)
            return b
        }

        func decodeRow(_ row: PostgresRow) throws -> Row { try row.decode(Int64.self) }
    }

    /// A batch's last statement when it inserts messages: the rows, the threads' new positions and the notifications.
    struct InsertAdvanceNotify: PostgresPreparedStatement {
        static let name = "chat_insert_advance_notify_v3"
        static let sql = """
            WITH ins AS (\(PreparedStatements.insertMessages()) RETURNING 1),
            upd AS (
                UPDATE chat.threads t SET last_seq = v.s FROM unnest($11::text[], $12::bigint[]) AS v(i, s) WHERE t.id = v.i
                RETURNING 1)
            SELECT (SELECT count(*) FROM ins) + (SELECT count(*) FROM upd)
                   + (SELECT count(pg_notify($13::text, p)) FROM unnest($14::text[]) AS p)
            """
        typealias Row = Int64
        let rows: BatchPlan.MessageRows
        let threads: [String], seqs: [Int64], channel: String, payloads: [String]

        func makeBindings() throws -> PostgresBindings {
            var b = PostgresBindings(capacity: 14)
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

    /// The text of a whole batch in one statement (the body of a commit procedure, `commitProcedure`): locks the
    /// threads it touches in id order ($1), and only if every moved thread ($2) stands at the `last_seq` expected ($3)
    /// and at the members version its writers knew ($5; `NULL`: not checked) writes the messages ($6–$15) and the new
    /// positions ($4), with `extras` the receipts ($16–$19), chunks ($20–$24) and offline notices ($25–$28), and sends
    /// the notifications; the channel, the payloads and the durability flag come last. Answers whether it wrote
    /// (`into`: the PL/pgSQL variables that take the answer). Without `extras` PostgreSQL opens only the threads' and
    /// messages' tables and indexes, not those of three more tables that a batch of plain sends leaves alone.
    private static func commitSQL(extras: Bool, into: String) -> String {
        // Every write waits for the check (and so for the locks it takes).
        let gate = "(SELECT ok FROM ok)"
        let tail = parameters(from: extras ? 29 : 16, 3)
        let extraWrites = extras ? """
            ,
            mk AS (\(raiseMarks(from: 16, onlyIf: gate)) RETURNING 1),
            ch AS (\(upsertChunks(from: 20, onlyIf: gate)) RETURNING 1),
            nt AS (\(insertOfflineNotices(from: 25, onlyIf: gate)) RETURNING 1)
            """ : ""
        let extraCounts = extras ? " + (SELECT count(*) FROM mk) + (SELECT count(*) FROM ch) + (SELECT count(*) FROM nt)" : ""
        return """
            WITH locked AS (SELECT id, no, last_seq, members_version FROM chat.threads WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE),
            ok AS (
                SELECT (SELECT count(*) FROM locked) = cardinality($1::text[])
                       AND NOT EXISTS (SELECT 1 FROM unnest($2::text[], $3::bigint[], $5::bigint[]) AS e(t, x, v) LEFT JOIN locked l ON l.id = e.t
                                       WHERE l.last_seq IS DISTINCT FROM e.x
                                          OR (e.v IS NOT NULL AND l.members_version IS DISTINCT FROM e.v)) AS ok),
            ins AS (\(insertMessages(from: 6, threads: "locked", onlyIf: gate)) RETURNING 1),
            upd AS (
                UPDATE chat.threads t SET last_seq = v.s FROM unnest($2::text[], $4::bigint[]) AS v(i, s)
                WHERE t.id = v.i AND \(gate) RETURNING 1)\(extraWrites)
            SELECT ok.ok,
                   (SELECT count(*) FROM ins) + (SELECT count(*) FROM upd)\(extraCounts)
                   + (SELECT count(pg_notify(\(tail[0])::text, p)) FROM unnest(\(tail[1])::text[]) AS p WHERE ok.ok),
                   CASE WHEN \(tail[2])::bool AND ok.ok THEN set_config('synchronous_commit', 'off', true) END
            INTO \(into)
            FROM ok
            """
    }

    /// The parameter types of the commit procedures, in order (`commitSQL`'s $1…).
    static func commitParameterTypes(extras: Bool) -> [String] {
        let positions = ["text[]", "text[]", "bigint[]", "bigint[]", "bigint[]"]
        let messages = ["text[]", "bigint[]", "text[]", "text[]", "text[]", "text[]", "text[]", "text[]", "bigint[]", "text[]"]
        let others = extras
            ? ["text[]", "text[]", "bigint[]", "bigint[]"] + ["text[]", "bigint[]", "bigint[]", "bytea[]", "bigint[]"]
                + ["text[]", "text[]", "text[]", "float8[]"]
            : []
        return positions + messages + others + ["text", "text[]", "boolean"]
    }

    /// The procedure that commits a batch in one round trip (schema version 9; 11 added the members versions):
    /// `commitSQL` and then `COMMIT`, inside
    /// the procedure, so that PostgreSQL answers the `CALL` only after the commit, and an error raised at commit (a
    /// deferred constraint, a full NOTIFY queue, a serialization failure) fails the `CALL` instead of following a
    /// statement that already answered. (The statement on its own would be an implicit transaction committed at the
    /// protocol's Sync, after its rows were sent: postgres-nio reports success at the rows, and the units would be
    /// acknowledged before the commit could fail.) `stored` says whether it wrote. A change to `commitSQL` needs a
    /// new schema version that replaces the procedures.
    static func commitProcedure(extras: Bool) -> String {
        let parameters = commitParameterTypes(extras: extras).joined(separator: ", ")
        return """
            CREATE OR REPLACE PROCEDURE \(commitProcedureName(extras: extras))(\(parameters), INOUT stored boolean DEFAULT NULL)
            LANGUAGE plpgsql AS $commit$
            DECLARE
                written_rows bigint;
                sync_setting text;
            BEGIN
            \(commitSQL(extras: extras, into: "stored, written_rows, sync_setting"));
            COMMIT;
            END
            $commit$
            """
    }

    /// `CALL` of a commit procedure, every parameter cast to its declared type and `NULL` for `stored`.
    private static func callCommit(extras: Bool) -> String {
        let types = commitParameterTypes(extras: extras)
        let arguments = types.enumerated().map { "$\($0.offset + 1)::\($0.element)" } + ["NULL"]
        return "CALL \(commitProcedureName(extras: extras))(\(arguments.joined(separator: ", ")))"
    }

    static func commitProcedureName(extras: Bool) -> String { extras ? "chat.commit_batch" : "chat.commit_messages" }

    /// A batch with receipts, chunks or offline notices, committed by one `CALL` (`commitProcedure(extras: true)`).
    struct CommitBatch: PostgresPreparedStatement {
        static let name = "chat_call_commit_batch_v2"
        static let sql = callCommit(extras: true)
        typealias Row = Bool
        let plan: CommitPlan

        func makeBindings() throws -> PostgresBindings { plan.bindings(extras: true) }
        func decodeRow(_ row: PostgresRow) throws -> Row { try row.decode(Bool.self) }
    }

    /// A batch of plain sends, committed by one `CALL` (`commitProcedure(extras: false)`): the common case under load.
    struct CommitMessages: PostgresPreparedStatement {
        static let name = "chat_call_commit_messages_v2"
        static let sql = callCommit(extras: false)
        typealias Row = Bool
        let plan: CommitPlan

        func makeBindings() throws -> PostgresBindings { plan.bindings(extras: false) }
        func decodeRow(_ row: PostgresRow) throws -> Row { try row.decode(Bool.self) }
    }

    /// What a one-statement commit binds (`BatchPlan.singleStatement`).
    struct CommitPlan: Sendable {
        let locked: [String], moved: [String], expected: [Int64], last: [Int64]
        /// The members version each moved thread's writers knew (`NULL`: a unit without a fence, not checked).
        let membersVersions: BinaryArrayColumn<Int64>
        let rows: BatchPlan.Rows
        let channel: String, payloads: [String]
        /// `process` durability: the commit does not wait for the WAL flush.
        let relaxed: Bool

        /// Whether the batch writes anything besides messages and positions.
        var hasExtras: Bool { !rows.marks.isEmpty || !rows.chunks.isEmpty || !rows.notices.thread.isEmpty }

        func bindings(extras: Bool) -> PostgresBindings {
            var b = PostgresBindings(capacity: extras ? 31 : 18)
            b.append(locked); b.append(moved); b.append(expected); b.append(last); b.append(membersVersions)
            rows.inserts.bind(to: &b)
            if extras {
                rows.bindMarks(to: &b)
                rows.bindChunks(to: &b)
                rows.bindNotices(to: &b)
            }
            b.append(channel); b.append(payloads); b.append(relaxed)
            return b
        }

        /// Commits the batch on `db` (outside any transaction: the procedure commits itself): whether it wrote
        /// (`false`: a thread was not where it was expected, and nothing was written).
        func run(on db: PostgresConnection, logger: Logger) async throws -> Bool {
            var stored = false
            if hasExtras {
                for try await ok in try await db.execute(CommitBatch(plan: self), logger: logger) { stored = ok }
            } else {
                for try await ok in try await db.execute(CommitMessages(plan: self), logger: logger) { stored = ok }
            }
            return stored
        }
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
    /// one statement (so one snapshot), each with the message as it is now. Prepared for the few events of a live
    /// read-back; a longer read (a catch-up) runs its text through `PostgresConnection.collect` (`CollectedRows`).
    struct ReadEvents: PostgresPreparedStatement {
        static let name = "chat_read_events_v2"
        static let sql = """
            SELECT r.t, m.seq, 'message', \(PostgresMessageStore.messageColumns(qualified: "m"))
            FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS r(t, a, u)
            JOIN chat.threads th ON th.id = r.t
            JOIN chat.messages m ON m.thread_no = th.no AND m.seq > r.a AND m.seq <= r.u
            UNION ALL
            SELECT r.t, e.seq, e.kind, \(PostgresMessageStore.messageColumns(qualified: "m"))
            FROM unnest($1::text[], $2::bigint[], $3::bigint[]) AS r(t, a, u)
            JOIN chat.events e ON e.thread_id = r.t AND e.seq > r.a AND e.seq <= r.u
            JOIN chat.threads th ON th.id = r.t
            JOIN chat.messages m ON m.thread_no = th.no AND m.id = e.message_id
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
    /// The 10 arrays, in the order `PreparedStatements.insertMessages` binds them.
    func bind(to b: inout PostgresBindings) {
        b.append(thread); b.append(seq); b.append(id); b.append(sender); b.append(type); b.append(content); b.append(url)
        b.append(attachmentType); b.append(created); b.append(tempId)
    }
}
