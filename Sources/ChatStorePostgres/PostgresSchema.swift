import Logging
import PostgresNIO

/// The store's tables, in a schema of their own (`chat`), each keyed by the thread first so the data can later be
/// distributed by thread (Citus): `chat.messages` by the thread's number since version 7, the others by its id, so
/// co-locating them takes one more column (the number in the others), not a redesign:
///
/// - `chat.threads(id, company_id, name, kind, created_by, created_at, direct_key, last_seq, no, members_version)`:
///   `last_seq` is the arbiter of each thread's order: a commit locks the row (`FOR UPDATE`), checks that every new
///   seq follows it and moves it, in the transaction that stores the events, so two writers can never take one seq.
///   `members_version` (since version 11) is set by every membership change to a token of its own; a commit checks
///   it as it checks `last_seq`, so a message is stored only by a writer that knew the thread's current members.
/// - `chat.members(thread_id, user_id, position, delivered_seq, read_seq, added_at)`: receipt state is two
///   watermarks per member; `added_at` (since version 8) is when the member was added, by the server's clock.
/// - `chat.messages(thread_no, seq, id, …, stored_at)`: a message's current state, keyed by `(thread_no, seq)`, the
///   thread's number (`threads.no`, since version 7; an integer key is cheaper to store and compare than the text
///   id). No foreign key to `threads` since version 4: every commit that inserts messages holds its thread's row
///   locked (so the thread exists), threads are never deleted, and the key's check per row was a third of
///   PostgreSQL's CPU per send at full load.
///   `messages_id` finds a message by id, and the partial unique index `messages_temp_once(thread_no, temp_id,
///   sender_id)` (since version 10; `messages_temp(thread_no, temp_id)` before) a tempId, for the messages an active
///   thread no longer indexes in memory. Being unique, it stores a sender's tempId in a thread once: a resend that
///   reaches a thread actor which does not know the original yet (its commit outlasted its deadline, or it was
///   written on another node) is refused by the database instead of stored twice.
/// - `chat.events(thread_id, seq, kind, message_id, stored_at)`: edits and deletes (they take a seq of their own);
///   `events_message` finds a message's edits. In both, `stored_at` (since version 8) is when the row was inserted,
///   by the server's clock: what a node that lost its LISTEN connection may have missed (`missed(by:since:)`).
/// - `chat.chunks(thread_id, first_seq, last_seq, data, as_of)`: sealed LZ4 history chunks (`bytea`); `as_of` is the
///   seq the chunk reflects every event up to (a later reseal for an edit wins over an older seal from another node).
/// - `chat.member_changes(thread_id, id, as_of, members_version, added, removed, stored_at)` (since version 12): each
///   member change with the thread's position before it, kept an hour, replayed by a node that lost its LISTEN
///   connection (`PostgresMessageStore.memberChanges`).
/// - `chat.broadcasts(id, created_at, body)`: cluster changes too big for one NOTIFY payload (short-lived rows).
/// - `chat.offline_notices(thread_id, message_id, user_id, due_at, attempts, queued_at)`: the offline-delivery outbox
///   (pending webhook notifications, written with their message).
/// - `chat.nodes(id, started_at, seen_at)` and `chat.presence(company_id, user_id, node_id)`: which users have a live
///   device on which node; a node that stops writing its heartbeat (`seen_at`) for 15 s counts as gone.
///
/// Migrations are numbered and run at start under an advisory lock, so nodes starting at once migrate once; a
/// database migrated by a newer binary is refused.
enum PostgresSchema {
    /// Held (per session) while migrating: any number, the same on every node.
    static let migrationLock: Int64 = 0x6368_6174_6272_6B01

    static let migrations: [String] = [
        // 1
        """
        CREATE TABLE chat.threads(
            id text PRIMARY KEY,
            company_id text NOT NULL,
            name text,
            kind text NOT NULL CHECK (kind IN ('direct', 'group')),
            created_by text NOT NULL,
            created_at timestamptz NOT NULL,
            direct_key text,
            last_seq bigint NOT NULL DEFAULT 0
        );
        CREATE UNIQUE INDEX threads_direct ON chat.threads(company_id, direct_key) WHERE direct_key IS NOT NULL;
        CREATE TABLE chat.members(
            thread_id text NOT NULL REFERENCES chat.threads(id),
            user_id text NOT NULL,
            position integer NOT NULL,
            delivered_seq bigint NOT NULL DEFAULT 0,
            read_seq bigint NOT NULL DEFAULT 0,
            PRIMARY KEY (thread_id, user_id)
        );
        CREATE INDEX members_user ON chat.members(user_id, thread_id);
        CREATE TABLE chat.messages(
            thread_id text NOT NULL REFERENCES chat.threads(id),
            seq bigint NOT NULL,
            id text NOT NULL,
            sender_id text NOT NULL,
            type text NOT NULL,
            content text NOT NULL,
            attachment_url text,
            attachment_type text,
            created_at timestamptz NOT NULL,
            edited_at timestamptz,
            deleted_at timestamptz,
            temp_id text,
            PRIMARY KEY (thread_id, seq)
        );
        CREATE INDEX messages_id ON chat.messages(id);
        CREATE TABLE chat.events(
            thread_id text NOT NULL REFERENCES chat.threads(id),
            seq bigint NOT NULL,
            kind text NOT NULL CHECK (kind IN ('edited', 'deleted')),
            message_id text NOT NULL,
            PRIMARY KEY (thread_id, seq)
        );
        CREATE TABLE chat.chunks(
            thread_id text NOT NULL REFERENCES chat.threads(id),
            first_seq bigint NOT NULL,
            last_seq bigint NOT NULL,
            data bytea NOT NULL,
            PRIMARY KEY (thread_id, first_seq)
        );
        """,
        // 2: several nodes. A chunk remembers the seq it reflects events up to, so that the newest version wins
        // whichever node writes last; changes too big for a NOTIFY payload travel through `broadcasts`.
        """
        ALTER TABLE chat.chunks ADD COLUMN as_of bigint NOT NULL DEFAULT 0;
        CREATE TABLE chat.broadcasts(
            id bigserial PRIMARY KEY,
            created_at timestamptz NOT NULL DEFAULT now(),
            body text NOT NULL
        );
        CREATE TABLE chat.nodes(
            id text PRIMARY KEY,
            started_at timestamptz NOT NULL DEFAULT now(),
            seen_at timestamptz NOT NULL DEFAULT now()
        );
        CREATE TABLE chat.presence(
            company_id text NOT NULL,
            user_id text NOT NULL,
            node_id text NOT NULL,
            PRIMARY KEY (company_id, user_id, node_id)
        );
        """,
        // 3: the offline-delivery outbox, one row per (thread, message, user), written in the transaction of its
        // message and removed once sent, coalesced or dropped. `due_at` is when a dispatcher (any node) may next claim it.
        """
        CREATE TABLE chat.offline_notices(
            thread_id text NOT NULL REFERENCES chat.threads(id),
            message_id text NOT NULL,
            user_id text NOT NULL,
            due_at timestamptz NOT NULL,
            attempts integer NOT NULL DEFAULT 0,
            queued_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (thread_id, message_id, user_id)
        );
        CREATE INDEX offline_notices_due ON chat.offline_notices(due_at)
        """,
        // 4: the messages' foreign key to their thread goes (see above): the row lock of every commit that inserts
        // messages already proves the thread exists, and the check per row cost a third of PostgreSQL's CPU per send.
        """
        ALTER TABLE chat.messages DROP CONSTRAINT IF EXISTS messages_thread_id_fkey
        """,
        // 5: a tempId, and the edits of a message, are found without the thread's index in memory (an active thread
        // keeps only its newest messages indexed): a partial index, since most sends carry a tempId but not all, and
        // an index of the (rare) edit events by message.
        """
        CREATE INDEX IF NOT EXISTS messages_temp ON chat.messages(thread_id, temp_id) WHERE temp_id IS NOT NULL;
        CREATE INDEX IF NOT EXISTS events_message ON chat.events(thread_id, message_id)
        """,
        // 6: ids compare as bytes. Every key and index starts with a text id, and under the database's collation each
        // comparison in a B-tree descent went through `strcoll` (2-3 % of PostgreSQL's CPU per send with `C.UTF-8`,
        // about 10 % with ICU `en-US`). Ids are opaque ASCII, so byte order is the order they need, the one SQLite's
        // BINARY gives too. The rows are not rewritten; every index is rebuilt, under each table's exclusive lock.
        // Nodes of an older binary must be stopped first: their prepared statements return these columns, and
        // PostgreSQL refuses to run a prepared statement whose result type (collation included) changed.
        """
        ALTER TABLE chat.threads ALTER COLUMN id TYPE text COLLATE "C", ALTER COLUMN company_id TYPE text COLLATE "C",
            ALTER COLUMN direct_key TYPE text COLLATE "C", ALTER COLUMN created_by TYPE text COLLATE "C";
        ALTER TABLE chat.members ALTER COLUMN thread_id TYPE text COLLATE "C", ALTER COLUMN user_id TYPE text COLLATE "C";
        ALTER TABLE chat.messages ALTER COLUMN thread_id TYPE text COLLATE "C", ALTER COLUMN id TYPE text COLLATE "C",
            ALTER COLUMN temp_id TYPE text COLLATE "C", ALTER COLUMN sender_id TYPE text COLLATE "C";
        ALTER TABLE chat.events ALTER COLUMN thread_id TYPE text COLLATE "C", ALTER COLUMN message_id TYPE text COLLATE "C";
        ALTER TABLE chat.chunks ALTER COLUMN thread_id TYPE text COLLATE "C";
        ALTER TABLE chat.offline_notices ALTER COLUMN thread_id TYPE text COLLATE "C",
            ALTER COLUMN message_id TYPE text COLLATE "C", ALTER COLUMN user_id TYPE text COLLATE "C";
        ALTER TABLE chat.presence ALTER COLUMN company_id TYPE text COLLATE "C", ALTER COLUMN user_id TYPE text COLLATE "C",
            ALTER COLUMN node_id TYPE text COLLATE "C";
        ALTER TABLE chat.nodes ALTER COLUMN id TYPE text COLLATE "C"
        """,
        // 7: message rows are keyed by their thread's number (`threads.no`) instead of its 36-character id, in the
        // row and in the `(thread, seq)` and tempId indexes: a message takes 404 bytes with its indexes instead of
        // 539, and less CPU to insert (7-18 % per row in Benchmarks/pg-key-experiment.sh; 6 % per send with a tempId
        // in the broker). The column list restates migration 1's (with v6's collations), as the table is made anew:
        // `chat.messages` is copied once into its new shape (O(rows), at the first start of the new binary; stop the
        // nodes of older binaries first, as for v6). A message whose thread row is missing stops the migration (its
        // `thread_no` would be NULL) rather than being left behind. Grants on the old table do not carry over.
        """
        ALTER TABLE chat.threads ADD COLUMN no bigint GENERATED ALWAYS AS IDENTITY;
        CREATE UNIQUE INDEX threads_no ON chat.threads(no);
        CREATE TABLE chat.messages_v7(
            thread_no bigint NOT NULL,
            seq bigint NOT NULL,
            id text COLLATE "C" NOT NULL,
            sender_id text COLLATE "C" NOT NULL,
            type text NOT NULL,
            content text NOT NULL,
            attachment_url text,
            attachment_type text,
            created_at timestamptz NOT NULL,
            edited_at timestamptz,
            deleted_at timestamptz,
            temp_id text COLLATE "C"
        );
        INSERT INTO chat.messages_v7
            SELECT t.no, m.seq, m.id, m.sender_id, m.type, m.content, m.attachment_url, m.attachment_type, m.created_at,
                   m.edited_at, m.deleted_at, m.temp_id
            FROM chat.messages m LEFT JOIN chat.threads t ON t.id = m.thread_id;
        DROP TABLE chat.messages;
        ALTER TABLE chat.messages_v7 RENAME TO messages;
        ALTER TABLE chat.messages ADD CONSTRAINT messages_pkey PRIMARY KEY (thread_no, seq);
        CREATE INDEX messages_id ON chat.messages(id);
        CREATE INDEX messages_temp ON chat.messages(thread_no, temp_id) WHERE temp_id IS NOT NULL;
        ANALYZE chat.messages
        """,
        // 8: when each event row and member row was stored, by the server's clock (`clock_timestamp()` as the row
        // is inserted), so that a node whose LISTEN connection dropped can tell what other nodes wrote meanwhile
        // (`PostgresMessageStore.missed(by:since:)`). Rows from before are `NULL` (older than any outage); no row is
        // rewritten: a column added without a default is instant, and the default then applies to new rows only.
        """
        ALTER TABLE chat.messages ADD COLUMN stored_at timestamptz;
        ALTER TABLE chat.messages ALTER COLUMN stored_at SET DEFAULT clock_timestamp();
        ALTER TABLE chat.events ADD COLUMN stored_at timestamptz;
        ALTER TABLE chat.events ALTER COLUMN stored_at SET DEFAULT clock_timestamp();
        ALTER TABLE chat.members ADD COLUMN added_at timestamptz;
        ALTER TABLE chat.members ALTER COLUMN added_at SET DEFAULT clock_timestamp()
        """,
        // 9: the one-statement commits become procedures that commit inside the `CALL`
        // (`PreparedStatements.commitProcedure`): a commit is acknowledged only once PostgreSQL has committed it, in
        // one round trip. Nothing is rewritten.
        PreparedStatements.commitProcedure(extras: false) + ";\n" + PreparedStatements.commitProcedure(extras: true),
        // 10: one message per thread, sender and tempId, enforced by the database (`messages_temp_once`). It replaces
        // `messages_temp` (its first two columns serve the same look-ups), so a commit maintains as many indexes as
        // before. A database that already holds such duplicates (stored before this version) keeps them: the unique
        // index then covers only the rows stored from now on, and `messages_temp` stays for the older ones. The table
        // is locked against writes first (nodes of an older binary may still write), then read once and indexed:
        // O(rows), at the first start of the new binary. An index of that name made beforehand (`CONCURRENTLY`, by a
        // DBA who would rather not lock a large table) is kept.
        """
        LOCK TABLE chat.messages IN SHARE MODE;
        DO $tempids$
        BEGIN
            -- An index of that name built beforehand is kept only if it is valid (a CONCURRENTLY build that failed
            -- leaves an invalid one) and unique.
            IF EXISTS (SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_namespace n ON n.oid = c.relnamespace
                       WHERE n.nspname = 'chat' AND c.relname = 'messages_temp_once' AND NOT (i.indisvalid AND i.indisunique)) THEN
                DROP INDEX chat.messages_temp_once;
            END IF;
            IF EXISTS (SELECT 1 FROM chat.messages WHERE temp_id IS NOT NULL GROUP BY thread_no, temp_id, sender_id HAVING count(*) > 1) THEN
                EXECUTE format('CREATE UNIQUE INDEX IF NOT EXISTS messages_temp_once ON chat.messages(thread_no, temp_id, sender_id) '
                    'WHERE temp_id IS NOT NULL AND stored_at > %L::timestamptz', clock_timestamp());
            ELSE
                CREATE UNIQUE INDEX IF NOT EXISTS messages_temp_once ON chat.messages(thread_no, temp_id, sender_id) WHERE temp_id IS NOT NULL;
                DROP INDEX IF EXISTS chat.messages_temp;
            END IF;
        END
        $tempids$
        """,
        // 11: a thread's members version (`StoreWrite.fence`): every membership change sets it to a token of its own,
        // and a commit writes a unit's messages only if the thread's version is the one its writer knew, so a node
        // that has not heard of a member's removal yet cannot store that member's message. The commit procedures
        // take the versions as one more parameter: new ones are made beside the old ones, which stay for nodes of
        // the older binary during a rolling restart (they check no version; drop them once every node runs this
        // one). Instant: the column has a constant default, so no row is rewritten.
        """
        ALTER TABLE chat.threads ADD COLUMN members_version bigint NOT NULL DEFAULT 0;
        """ + PreparedStatements.commitProcedure(extras: false) + ";\n" + PreparedStatements.commitProcedure(extras: true),
        // 12: a log of member changes with the thread's position before each (`as_of`, as its announcement says), kept
        // an hour: a node that lost its LISTEN connection replays the changes it did not hear at their places in the
        // catch-up (a member removed meanwhile gets the messages before the removal, one added none of them), instead
        // of taking the newest members list before it. Keyed by the thread first, as every table.
        """
        CREATE TABLE IF NOT EXISTS chat.member_changes(
            thread_id text COLLATE "C" NOT NULL,
            id bigserial NOT NULL,
            as_of bigint NOT NULL,
            members_version bigint NOT NULL,
            added text[] NOT NULL DEFAULT '{}',
            removed text[] NOT NULL DEFAULT '{}',
            stored_at timestamptz NOT NULL DEFAULT clock_timestamp(),
            PRIMARY KEY (thread_id, id)
        );
        CREATE INDEX IF NOT EXISTS member_changes_stored ON chat.member_changes(stored_at)
        """,
    ]

    /// The unique index that refuses a second message with a sender's tempId in a thread (schema version 10).
    static let tempIdIndex = "messages_temp_once"

    /// The statements of one migration: split at each `;` that is not inside a dollar-quoted body (`$tag$ … $tag$`,
    /// as a procedure's).
    static func statements(of migration: String) -> [String] {
        var statements: [String] = []
        var current = ""
        var quote: Substring?
        var rest = migration[...]
        while let c = rest.first {
            if c == "$", let end = rest.dropFirst().firstIndex(of: "$"),
                rest[rest.index(after: rest.startIndex)..<end].allSatisfy({ $0.isLetter || $0.isNumber || $0 == "_" })
            {
                let tag = rest[...end]
                if quote == nil {
                    quote = tag
                } else if quote == tag {
                    quote = nil
                }
                current += tag
                rest = rest[rest.index(after: end)...]
                continue
            }
            rest = rest.dropFirst()
            if c == ";", quote == nil {
                statements.append(current)
                current = ""
            } else {
                current.append(c)
            }
        }
        statements.append(current)
        return statements.filter { !$0.allSatisfy(\.isWhitespace) }
    }

    /// Brings the schema to the newest version this binary knows, or throws if the database is newer.
    static func migrate(_ connection: PostgresConnection, logger: Logger) async throws {
        do {
            _ = try await connection.collect("SELECT pg_advisory_lock(\(migrationLock))", logger: logger)
            do {
                try await connection.query("CREATE SCHEMA IF NOT EXISTS chat", logger: logger)
                try await connection.query("CREATE TABLE IF NOT EXISTS chat.schema_version(version integer NOT NULL)", logger: logger)
                var current = 0
                for try await version in try await connection.collect("SELECT coalesce(max(version), 0) FROM chat.schema_version", logger: logger)
                    .decode(Int.self)
                {
                    current = version
                }
                guard current <= migrations.count else {
                    throw StoreSetupError(
                        "the database's schema is version \(current), newer than this broker's \(migrations.count): upgrade the broker")
                }
                for version in (current + 1)...max(current + 1, migrations.count) where version <= migrations.count {
                    logger.notice("migrating the database schema (a large database may take a while)", metadata: ["version": "\(version)"])
                    try await connection.transaction(logger: logger) { tx in
                        for statement in statements(of: migrations[version - 1]) {
                            try await tx.query(PostgresQuery(unsafeSQL: statement), logger: logger)
                        }
                        try await tx.query("INSERT INTO chat.schema_version(version) VALUES (\(version))", logger: logger)
                    }
                    logger.notice("database schema migrated", metadata: ["version": "\(version)"])
                }
            } catch {
                _ = try? await connection.collect("SELECT pg_advisory_unlock(\(migrationLock))", logger: logger)
                throw error
            }
            _ = try await connection.collect("SELECT pg_advisory_unlock(\(migrationLock))", logger: logger)
        }
    }
}

/// Why the store could not start (unreachable server, refused login, a schema from a newer binary).
public struct StoreSetupError: Error, Sendable, CustomStringConvertible {
    public let description: String
    init(_ description: String) { self.description = description }
}
