import GRDB

/// The store's migrations. Threads, members (with receipt watermarks), messages (current state, one row per
/// message, holding its seq), edit/delete events, and sealed LZ4 history chunks.
enum SQLiteSchema {
    static var migrator: DatabaseMigrator {
        var migrator = DatabaseMigrator()
        migrator.registerMigration("v1") { db in
            try db.execute(
                sql: """
                    CREATE TABLE threads(
                        id TEXT PRIMARY KEY NOT NULL,
                        company_id TEXT NOT NULL,
                        name TEXT,
                        kind TEXT NOT NULL,
                        created_by TEXT NOT NULL,
                        created_at INTEGER NOT NULL,
                        last_seq INTEGER NOT NULL DEFAULT 0,
                        direct_key TEXT
                    );
                    CREATE UNIQUE INDEX threads_direct ON threads(company_id, direct_key) WHERE direct_key IS NOT NULL;
                    CREATE TABLE members(
                        thread_id TEXT NOT NULL,
                        user_id TEXT NOT NULL,
                        position INTEGER NOT NULL,
                        delivered_seq INTEGER NOT NULL DEFAULT 0,
                        read_seq INTEGER NOT NULL DEFAULT 0,
                        PRIMARY KEY(thread_id, user_id)
                    ) WITHOUT ROWID;
                    CREATE INDEX members_user ON members(user_id, thread_id);
                    CREATE TABLE messages(
                        id TEXT PRIMARY KEY NOT NULL,
                        thread_id TEXT NOT NULL,
                        seq INTEGER NOT NULL,
                        sender_id TEXT NOT NULL,
                        type TEXT NOT NULL,
                        content TEXT NOT NULL,
                        attachment_url TEXT,
                        attachment_type TEXT,
                        created_at INTEGER NOT NULL,
                        edited_at INTEGER,
                        deleted_at INTEGER,
                        temp_id TEXT
                    );
                    CREATE UNIQUE INDEX messages_seq ON messages(thread_id, seq);
                    CREATE TABLE events(
                        thread_id TEXT NOT NULL,
                        seq INTEGER NOT NULL,
                        kind TEXT NOT NULL,
                        message_id TEXT NOT NULL,
                        PRIMARY KEY(thread_id, seq)
                    ) WITHOUT ROWID;
                    CREATE TABLE chunks(
                        thread_id TEXT NOT NULL,
                        first_seq INTEGER NOT NULL,
                        last_seq INTEGER NOT NULL,
                        data BLOB NOT NULL,
                        PRIMARY KEY(thread_id, first_seq)
                    ) WITHOUT ROWID;
                    """)
        }
        // v2: a thread's last seq is no longer written with every message (one row update less per send); it is
        // read once per thread as the largest seq of its messages and events.
        migrator.registerMigration("v2") { db in
            try db.execute(sql: "ALTER TABLE threads DROP COLUMN last_seq")
        }
        // v3: a thread has a number (`threads.no`), and message rows and their (thread, seq) index use it instead of
        // the thread's 36-character id: smaller rows and index entries, fewer pages written per group commit
        // (Benchmarks/Micro/sqlite-key-experiment.py). `no` is a column of its own because an implicit rowid may
        // change in a VACUUM.
        migrator.registerMigration("v3") { db in
            try db.execute(
                sql: """
                    ALTER TABLE threads ADD COLUMN no INTEGER;
                    UPDATE threads SET no = rowid;
                    CREATE UNIQUE INDEX threads_no ON threads(no);
                    ALTER TABLE messages ADD COLUMN thread_no INTEGER NOT NULL DEFAULT 0;
                    UPDATE messages SET thread_no = (SELECT no FROM threads WHERE threads.id = messages.thread_id);
                    DROP INDEX messages_seq;
                    ALTER TABLE messages DROP COLUMN thread_id;
                    CREATE UNIQUE INDEX messages_seq ON messages(thread_no, seq);
                    """)
        }
        // v4: the offline-delivery outbox. One row per (thread, message, user) written with the message, until the
        // webhook dispatcher sends, coalesces or drops it; `due_at` (ms) is when it is next claimable.
        migrator.registerMigration("v4") { db in
            try db.execute(
                sql: """
                    CREATE TABLE offline_notices(
                        thread_id TEXT NOT NULL,
                        message_id TEXT NOT NULL,
                        user_id TEXT NOT NULL,
                        due_at INTEGER NOT NULL,
                        attempts INTEGER NOT NULL DEFAULT 0,
                        queued_at INTEGER NOT NULL,
                        PRIMARY KEY(thread_id, message_id, user_id)
                    ) WITHOUT ROWID;
                    CREATE INDEX offline_notices_due ON offline_notices(due_at);
                    """)
        }
        // v5: a tempId, and the edits of a message, are found without the thread's index in memory (an active
        // thread keeps only its newest messages indexed): a partial index, since most sends carry a tempId but not
        // all, and an index of the (rare) edit events by message.
        migrator.registerMigration("v5") { db in
            try db.execute(
                sql: """
                    CREATE INDEX messages_temp ON messages(thread_no, temp_id) WHERE temp_id IS NOT NULL;
                    CREATE INDEX events_message ON events(thread_id, message_id);
                    """)
        }
        return migrator
    }
}
