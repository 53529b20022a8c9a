import ChatCore
import ChatJSON
import Dispatch
import Foundation
import GRDB
import GRDBSQLite
import Logging
import Synchronization

/// The embedded `MessageStore`: one SQLite file in WAL mode through GRDB.
///
/// Group commit: `submit` only queues; one committer on a dedicated queue takes everything queued, writes it
/// in a single transaction (one fsync with `Durability.full`), then completes every unit in order. While a
/// commit runs, new writes gather for the next one, so throughput grows with load instead of collapsing to one
/// fsync per message. A unit whose seq does not follow the thread's last committed seq is refused, so a failed
/// write never leaves a gap that a later one could cross. Completions run on a queue of their own, in commit
/// order, while the next batch commits. WAL checkpoints run on a second connection and queue
/// (passive, at most every `checkpointInterval`), so copying pages back into the database and its fsyncs never
/// stall a commit.
public final class SQLiteMessageStore: MessageStore {
    typealias Unit = GroupCommitQueue.Unit

    let pool: DatabasePool
    /// This process's claim on the database file, held until `shutdown`.
    private let fileLock: DatabaseFileLock
    private let logger: Logger
    private let queue = GroupCommitQueue()
    private let committer = DispatchQueue(label: "chat.store.committer", qos: .userInitiated)
    /// Runs the completions of each committed batch, in commit order, off the committer.
    private let completer = DispatchQueue(label: "chat.store.completer", qos: .userInitiated)
    /// Last committed seq and number of each thread written since the store opened; touched only on the
    /// committer queue.
    private nonisolated(unsafe) var committedPositions: [ThreadID: ThreadPosition] = [:]
    /// Most units folded into one transaction.
    public let maxBatch: Int
    /// How far each commit goes before it completes.
    public let durability: Durability
    private let commitObserver: (@Sendable (_ units: Int, _ seconds: Double, _ ok: Bool) -> Void)?
    private let checkpointConnection: DatabaseQueue
    private let checkpointQueue = DispatchQueue(label: "chat.store.checkpointer", qos: .utility)
    private let checkpointState = Mutex<(running: Bool, last: UInt64, restartWanted: Bool)>((false, 0, false))
    /// Flushes the pages each background checkpoint copied, so that the committer's WAL restart does not.
    private let databaseFlusher: DatabaseFileFlusher?
    /// Least time between two background checkpoints, in nanoseconds (default 200 ms).
    public let checkpointInterval: UInt64
    /// WAL frames (pages) above which the committer restarts the WAL between two batches (default 8,192, 32 MiB).
    /// Larger values and rarer checkpoints (32,768 and 1 s, 65,536 and 2 s) made no difference to send throughput
    /// in an A/B that rotated the order of the runs.
    public let walRestartFrames: Int

    /// Opens (creating if needed) the database at `path`.
    public init(
        path: String, durability: Durability = .full, maxBatch: Int = 4096, walRestartFrames: Int = 8192, checkpointInterval: Double = 0.2,
        logger: Logger = Logger(label: "chat.store"), commitObserver: (@Sendable (_ units: Int, _ seconds: Double, _ ok: Bool) -> Void)? = nil
    ) throws {
        fileLock = try DatabaseFileLock(path: path)
        var config = Configuration()
        let synchronous = durability == .full ? "FULL" : "NORMAL"
        config.prepareDatabase { db in
            try db.execute(sql: "PRAGMA synchronous = \(synchronous)")
        }
        config.busyMode = .timeout(5)
        pool = try DatabasePool(path: path, configuration: config)
        // GRDB switches a pool's writer to `synchronous=NORMAL` when it enables WAL, after `prepareDatabase`
        // ran; set the level again on the writer (the only connection that commits) and check it took.
        let level = durability == .full ? 2 : 1
        try pool.writeWithoutTransaction { db in
            try db.execute(sql: "PRAGMA synchronous = \(synchronous)")
            // Checkpoints run on their own connection (see `checkpointIfDue`), never inside a commit.
            try db.execute(sql: "PRAGMA wal_autocheckpoint = 0")
            // After a restart the WAL file is cut back to 64 MiB at most.
            try db.execute(sql: "PRAGMA journal_size_limit = 67108864")
            let actual = try Int.fetchOne(db, sql: "PRAGMA synchronous") ?? -1
            guard actual == level else {
                throw StoreError("SQLite kept synchronous=\(actual) instead of \(synchronous)")
            }
        }
        self.durability = durability
        try SQLiteSchema.migrator.migrate(pool)
        checkpointConnection = try DatabaseQueue(path: path, configuration: config)
        databaseFlusher = DatabaseFileFlusher(path: path)
        self.logger = logger
        self.maxBatch = maxBatch
        self.walRestartFrames = walRestartFrames
        self.checkpointInterval = UInt64(checkpointInterval * 1e9)
        self.commitObserver = commitObserver
    }

    public func submit(_ writes: [StoreWrite], completion: @escaping @Sendable (Result<Void, any Error>) -> Void) {
        if queue.submit(writes, completion: completion) { committer.async { self.drain() } }
    }

    private func drain() {
        // Take everything queued at once (no shifting of what is left), then commit it in slices of `maxBatch`.
        while let taken = queue.take() {
            var start = taken.startIndex
            while start < taken.endIndex {
                let end = min(start + maxBatch, taken.endIndex)
                commitBatch(taken[start..<end])
                start = end
            }
        }
    }

    private func commitBatch(_ batch: ArraySlice<Unit>) {
        let started = monotonicNanos()
        var refusals: [(index: Int, error: StoreError)] = []
        var failure: (any Error)?
        var seqs = SeqTracker(committed: committedPositions)
        do {
            try pool.writeWithoutTransaction { db in
                try db.inTransaction(.immediate) {
                    let insert = try db.cachedStatement(sql: Self.insertMessageSQL)
                    for i in batch.indices {
                        if let refusal = try Self.checkContinuity(batch[i].writes, seqs: &seqs, db: db) {
                            refusals.append((i, refusal))
                            continue
                        }
                        try batch[i].writes.withUnsafeBufferPointer { writes in
                            for j in writes.indices { try Self.apply(writes[j], insert: insert, seqs: seqs, db: db) }
                        }
                    }
                    return .commit
                }
            }
            // Kept only once committed: a rolled-back thread's seq and number may be taken again.
            committedPositions = seqs.finish()
            checkpointIfDue()
        } catch {
            logger.error("store commit failed; nothing in this batch was acknowledged", metadata: ["error": "\(error)", "units": "\(batch.count)"])
            failure = error
        }
        commitObserver?(batch.count, Double(monotonicNanos() - started) / 1e9, failure == nil && refusals.isEmpty)
        // Completions run on their own serial queue (in commit order), so the committer goes on with the next
        // batch while the acks of this one go out.
        let failed = failure
        let refused = refusals
        completer.async {
            var refused = refused.makeIterator()
            var nextRefusal = refused.next()
            for i in batch.indices {
                if let failed {
                    batch[i].completion(.failure(failed))
                } else if let refusal = nextRefusal, refusal.index == i {
                    batch[i].completion(.failure(refusal.error))
                    nextRefusal = refused.next()
                } else {
                    batch[i].completion(.success(()))
                }
            }
        }
        restartWALIfWanted()
    }

    /// A passive checkpoint on another connection copies pages back but can never let the WAL start over while
    /// commits keep coming (the log restarts only when a commit begins with every frame copied), so under steady
    /// load the WAL would grow without end. When the background checkpoint sees more than `walRestartFrames`
    /// frames, the committer runs a RESTART checkpoint between two batches:
    /// most pages are already copied, so it is short, and the next commit writes the WAL from the top.
    private func restartWALIfWanted() {
        let wanted = checkpointState.withLock { s -> Bool in
            defer { s.restartWanted = false }
            return s.restartWanted
        }
        guard wanted else { return }
        do {
            // RESTART waits for readers still on the old WAL; bound that wait to 50 ms (instead of the pool's 5 s) so
            // a long read never stalls commits. If it times out, the next checkpoint asks again.
            _ = try pool.writeWithoutTransaction { db in
                try db.execute(sql: "PRAGMA busy_timeout = 50")
                defer { try? db.execute(sql: "PRAGMA busy_timeout = 5000") }
                return try db.checkpoint(.restart)
            }
        } catch {
            logger.warning("WAL restart failed; it is retried after the next checkpoint", metadata: ["error": "\(error)"])
        }
    }

    /// Starts a passive checkpoint on the checkpoint connection if none is running and the last one is older
    /// than `checkpointInterval`. Passive: it copies what no reader still needs and never waits for, or blocks,
    /// the committer; the writer restarts the WAL from the top once everything was copied.
    private func checkpointIfDue() {
        let now = monotonicNanos()
        let due = checkpointState.withLock { s -> Bool in
            guard !s.running, now &- s.last >= checkpointInterval else { return false }
            s.running = true
            s.last = now
            return true
        }
        guard due else { return }
        checkpointQueue.async { [self] in
            do {
                let frames = try walFrameCount()
                // The copied pages go to disk here, off the commit path; the restart then flushes only the
                // few written since (DatabaseFileFlusher).
                databaseFlusher?.flush()
                if frames > walRestartFrames { checkpointState.withLock { $0.restartWanted = true } }
            } catch {
                logger.warning("WAL checkpoint failed; it is retried after the next commits", metadata: ["error": "\(error)"])
            }
            checkpointState.withLock { $0.running = false }
        }
    }

    private static func checkContinuity(_ writes: [StoreWrite], seqs: inout SeqTracker, db: Database) throws -> StoreError? {
        // A unit's seqs are normally of one thread (a thread actor's write): keep that one without allocating,
        // and only a unit that spans threads pays for a dictionary.
        var single: (thread: ThreadID, position: ThreadPosition)?
        var others: [ThreadID: ThreadPosition] = [:]
        func pending(_ thread: ThreadID) -> ThreadPosition? {
            if let single, single.thread == thread { return single.position }
            return others[thread]
        }
        for k in writes.indices {
            guard let (thread, seq) = writes[k].seq else { continue }
            var position: ThreadPosition
            if let known = pending(thread) ?? seqs.last(of: thread) {
                position = known
            } else if let row = try Row.fetchOne(
                db.cachedStatement(
                    sql: """
                        SELECT t.no,
                               max(ifnull((SELECT max(seq) FROM messages WHERE thread_no = t.no), 0),
                                   ifnull((SELECT max(seq) FROM events WHERE thread_id = t.id), 0))
                        FROM threads t WHERE t.id = ?1
                        """), arguments: [thread])
            {
                // First write of this thread since the store opened: its number and last seq, read once through
                // the (thread_no, seq) and (thread_id, seq) indexes, then kept in `committedPositions`.
                position = ThreadPosition(seq: row[1], no: row[0])
            } else {
                return StoreError("unknown thread \(thread)")
            }
            guard seq == position.seq + 1 else { return StoreError("seq \(seq) of thread \(thread) does not follow \(position.seq)") }
            position.seq = seq
            if single == nil || single?.thread == thread { single = (thread, position) } else { others[thread] = position }
        }
        if let single { seqs.set(single.thread, single.position) }
        for (thread, position) in others { seqs.set(thread, position) }
        return nil
    }

    static let insertMessageSQL = """
        INSERT INTO messages(id, thread_no, seq, sender_id, type, content, attachment_url, attachment_type, created_at, temp_id)
        VALUES (?,?,?,?,?,?,?,?,?,?)
        """

    /// Applies one write; `insert` is the message insert, looked up once per batch rather than per message, and
    /// `seqs` knows the number of every thread whose unit passed `checkContinuity`.
    private static func apply(_ write: StoreWrite, insert: Statement, seqs: SeqTracker, db: Database) throws {
        switch write {
        case .createThread(let info, let members):
            let directKey = info.kind == .direct ? Self.directKey(members) : nil
            try db.cachedStatement(
                sql: """
                    INSERT INTO threads(id, company_id, name, kind, created_by, created_at, direct_key, no)
                    VALUES (?,?,?,?,?,?,?, (SELECT ifnull(max(no), 0) + 1 FROM threads))
                    """)
                .execute(arguments: [info.id, info.companyId, info.name, info.kind.rawValue, info.createdBy, info.createdAt.millis, directKey])
            try insertMembers(info.id, members, db: db)
        case .addMembers(let thread, let users, _):
            try insertMembers(thread, users, db: db)
        case .removeMember(let thread, let user, _):
            try db.cachedStatement(sql: "DELETE FROM members WHERE thread_id = ? AND user_id = ?").execute(arguments: [thread, user])
        case .insertMessage(let m):
            guard let no = seqs.last(of: m.threadId)?.no else { throw StoreError("unknown thread \(m.threadId)") }
            try insert.stepOnce(
                db,
                [
                    .text(m.id), .int(no), .int(Int64(m.seq)), .text(m.senderId), .text(m.type.rawValue), .text(m.content),
                    .text(m.attachmentUrl), .text(m.attachmentType), .int(m.createdAt.millis), .text(m.tempId),
                ])
        case .updateMessage(let m, let seq, let kind):
            try db.cachedStatement(
                sql: "UPDATE messages SET content = ?, attachment_url = ?, attachment_type = ?, edited_at = ?, deleted_at = ? WHERE id = ?"
            ).execute(arguments: [m.content, m.attachmentUrl, m.attachmentType, m.editedAt?.millis, m.deletedAt?.millis, m.id])
            try db.cachedStatement(sql: "INSERT INTO events(thread_id, seq, kind, message_id) VALUES (?,?,?,?)")
                .execute(arguments: [m.threadId, seq, kind.rawValue, m.id])
        case .marks(let thread, let user, let marks, _):
            try db.cachedStatement(
                sql: "UPDATE members SET delivered_seq = max(delivered_seq, ?), read_seq = max(read_seq, ?) WHERE thread_id = ? AND user_id = ?"
            ).execute(arguments: [marks.deliveredSeq, marks.readSeq, thread, user])
        case .putChunk(let thread, let chunk, _):
            try db.cachedStatement(sql: "INSERT OR REPLACE INTO chunks(thread_id, first_seq, last_seq, data) VALUES (?,?,?,?)")
                .execute(arguments: [thread, chunk.firstSeq, chunk.lastSeq, Data(chunk.data)])
        case .offlineNotice(let thread, let messageId, let users, let delay):
            let now = Timestamp.now().millis
            let due = now + Int64((delay * 1000).rounded())
            let statement = try db.cachedStatement(
                sql: "INSERT OR IGNORE INTO offline_notices(thread_id, message_id, user_id, due_at, queued_at) VALUES (?,?,?,?,?)")
            for user in users { try statement.execute(arguments: [thread, messageId, user, due, now]) }
        case .fence, .rebasable, .notePosition:
            break  // one writer: nothing to fence or renumber
        }
    }

    /// An unambiguous key for the pair of a direct thread: the sorted ids as a JSON array (SQLite text must not
    /// hold NUL separators, and ids may contain any other character).
    static func directKey(_ members: [UserID]) -> String {
        JSONWriter.encodeString(.array(members.sorted().map { .string($0) }))
    }

    private static func insertMembers(_ thread: ThreadID, _ users: [UserID], db: Database) throws {
        var position = try Int.fetchOne(db, sql: "SELECT COALESCE(MAX(position), -1) FROM members WHERE thread_id = ?", arguments: [thread]) ?? -1
        for user in users {
            position += 1
            try db.cachedStatement(sql: "INSERT OR IGNORE INTO members(thread_id, user_id, position) VALUES (?,?,?)")
                .execute(arguments: [thread, user, position])
        }
    }

    // MARK: - Reads

    /// A `chunks` row (`first_seq`, `last_seq`, `data`).
    private static func chunk(_ row: Row) -> HistoryChunk {
        HistoryChunk(firstSeq: row["first_seq"], lastSeq: row["last_seq"], data: [UInt8](row["data"] as Data))
    }

    public func chunks(of thread: ThreadID, overlapping seqs: ClosedRange<Int>) async throws -> [HistoryChunk] {
        try await pool.read { db in
            // The chunks starting in the range, and the one before it (which may reach into it): two index ranges.
            try Row.fetchAll(
                db, sql: """
                    SELECT first_seq, last_seq, data FROM chunks WHERE thread_id = ?1 AND first_seq BETWEEN ?2 AND ?3
                    UNION ALL
                    SELECT * FROM (SELECT first_seq, last_seq, data FROM chunks WHERE thread_id = ?1 AND first_seq < ?2
                                   ORDER BY first_seq DESC LIMIT 1) WHERE last_seq >= ?2
                    ORDER BY first_seq
                    """,
                arguments: [thread, seqs.lowerBound, seqs.upperBound]
            ).map(Self.chunk)
        }
    }

    public func eventSeqs(of thread: ThreadID, messages ids: [MessageID]) async throws -> [MessageID: [Int]] {
        guard !ids.isEmpty else { return [:] }
        return try await pool.read { db in
            var out: [MessageID: [Int]] = [:]
            let marks = Array(repeating: "?", count: ids.count).joined(separator: ",")
            let rows = try Row.fetchAll(
                db, sql: "SELECT id, seq FROM messages WHERE thread_no = (SELECT no FROM threads WHERE id = ?) AND id IN (\(marks))",
                arguments: StatementArguments([thread] + ids))
            for row in rows { out[row["id"]] = [row["seq"]] }
            guard !out.isEmpty else { return out }
            let edits = try Row.fetchAll(
                db, sql: "SELECT message_id, seq FROM events WHERE thread_id = ? AND message_id IN (\(marks)) ORDER BY seq",
                arguments: StatementArguments([thread] + ids))
            for row in edits { out[row["message_id"]]?.append(row["seq"]) }
            return out
        }
    }

    public func messageSeq(of thread: ThreadID, sender: UserID, tempId: String) async throws -> Int? {
        try await pool.read { db in
            try Int.fetchOne(
                db,
                sql: """
                    SELECT min(seq) FROM messages
                    WHERE thread_no = (SELECT no FROM threads WHERE id = ?) AND temp_id = ? AND sender_id = ?
                    """, arguments: [thread, tempId, sender])
        }
    }

    /// The condition on `messages` of `unreadCount` and `messagesBySender` (arguments: thread, first, last, reader).
    private static let unreadRows = """
        FROM messages WHERE thread_no = (SELECT no FROM threads WHERE id = ?) AND seq BETWEEN ? AND ?
        AND sender_id <> ? AND deleted_at IS NULL
        """

    public func unreadCount(of thread: ThreadID, reader: UserID, in seqs: ClosedRange<Int>) async throws -> Int {
        try await pool.read { db in
            try Int.fetchOne(db, sql: "SELECT count(*) \(Self.unreadRows)", arguments: [thread, seqs.lowerBound, seqs.upperBound, reader]) ?? 0
        }
    }

    public func messagesBySender(
        of thread: ThreadID, in seqs: ClosedRange<Int>, excluding reader: UserID
    ) async throws -> [(sender: UserID, ids: [MessageID])] {
        try await pool.read { db in
            // Read through a cursor by column index: fetching every row as a copy, each column found by its name (a
            // lowercased comparison per column per row), was most of a long receipt's cost (35 % of the broker's CPU
            // in an outside probe's rejoin-and-read loop).
            let rows = try Row.fetchCursor(
                db, sql: "SELECT sender_id, id \(Self.unreadRows) ORDER BY seq", arguments: [thread, seqs.lowerBound, seqs.upperBound, reader])
            var pairs: [(sender: UserID, id: MessageID)] = []
            while let row = try rows.next() { pairs.append((sender: row[0], id: row[1])) }
            return groupedBySender(pairs)
        }
    }

    public func loadThread(_ id: ThreadID, recentChunks: Int) async throws -> ThreadSnapshot? {
        try await pool.read { db in
            guard let row = try Row.fetchOne(db, sql: "SELECT * FROM threads WHERE id = ?", arguments: [id]) else { return nil }
            guard let kind = ThreadKind(rawValue: row["kind"]) else { throw StoreError("thread \(id) has an unknown kind") }
            let info = ThreadInfo(
                id: row["id"], companyId: row["company_id"], name: row["name"], kind: kind, createdBy: row["created_by"],
                createdAt: Timestamp(millis: row["created_at"]))
            let no: Int64 = row["no"]
            let members = try Row.fetchAll(
                db, sql: "SELECT user_id, delivered_seq, read_seq FROM members WHERE thread_id = ? ORDER BY position", arguments: [id]
            ).map { (userId: $0["user_id"] as String, marks: MemberMarks(deliveredSeq: $0["delivered_seq"], readSeq: $0["read_seq"])) }
            // The newest chunks only (the thread reads older ones back on demand), and where the omitted ones end.
            let chunks = try Row.fetchAll(
                db, sql: "SELECT first_seq, last_seq, data FROM chunks WHERE thread_id = ? ORDER BY first_seq DESC LIMIT ?",
                arguments: [id, Int64(max(recentChunks, 1))]
            ).map(Self.chunk).reversed()
            let sealed = chunks.last?.lastSeq ?? 0
            let omittedThrough = (chunks.first?.firstSeq ?? 1) - 1
            let index = try Row.fetchAll(
                db, sql: "SELECT id, seq, sender_id, deleted_at IS NOT NULL AS deleted, temp_id FROM messages WHERE thread_no = ? ORDER BY seq",
                arguments: [no]
            ).map { MessageIndexEntry(seq: $0["seq"], id: $0["id"], senderId: $0["sender_id"], deleted: $0["deleted"], tempId: $0["temp_id"]) }
            let edits = try Row.fetchAll(db, sql: "SELECT seq, kind, message_id FROM events WHERE thread_id = ? ORDER BY seq", arguments: [id])
                .compactMap { row -> (seq: Int, kind: EventKind, messageId: MessageID)? in
                    guard let kind = EventKind(rawValue: row["kind"]) else { return nil }
                    return (row["seq"], kind, row["message_id"])
                }
            var messages = try Row.fetchAll(db, sql: "SELECT * FROM messages WHERE thread_no = ? AND seq > ? ORDER BY seq", arguments: [no, sealed])
                .map { Self.message($0, threadId: id) }
            var byId: [MessageID: Message] = [:]
            for m in messages { byId[m.id] = m }
            for edit in edits where edit.seq > sealed && byId[edit.messageId] == nil {
                if let row = try Row.fetchOne(db, sql: "SELECT * FROM messages WHERE id = ?", arguments: [edit.messageId]) {
                    byId[edit.messageId] = Self.message(row, threadId: id)
                }
            }
            messages.sort { $0.seq < $1.seq }
            let tail = ThreadSnapshot.tail(afterSeq: sealed, messages: messages, edits: edits) { byId[$0] }
            var snapshot = ThreadSnapshot(
                info: info, members: members, chunks: Array(chunks), tail: tail, index: index,
                editEvents: edits.map { ($0.seq, $0.messageId) })
            if omittedThrough > 0 {
                snapshot.omittedThrough = omittedThrough
                snapshot.newestOmittedMessage = try Row.fetchOne(
                    db, sql: "SELECT * FROM messages WHERE thread_no = ? AND seq <= ? ORDER BY seq DESC LIMIT 1", arguments: [no, omittedThrough]
                ).map { Self.message($0, threadId: id) }
            }
            return snapshot
        }
    }

    /// A message row of thread `threadId` (rows carry the thread's number, not its id).
    static func message(_ row: Row, threadId: ThreadID) -> Message {
        Message(
            id: row["id"], threadId: threadId, seq: row["seq"], senderId: row["sender_id"],
            type: MessageType(rawValue: row["type"]) ?? .text, content: row["content"], attachmentUrl: row["attachment_url"],
            attachmentType: row["attachment_type"], createdAt: Timestamp(millis: row["created_at"]),
            editedAt: (row["edited_at"] as Int64?).map(Timestamp.init(millis:)),
            deletedAt: (row["deleted_at"] as Int64?).map(Timestamp.init(millis:)), tempId: row["temp_id"])
    }

    /// How many frames (pages) the WAL holds now, after a passive checkpoint on the checkpoint connection.
    public func walFrameCount() throws -> Int {
        try checkpointConnection.writeWithoutTransaction { db in try db.checkpoint(.passive).walFrameCount }
    }

    /// The `PRAGMA synchronous` level the committing connection runs with (2 = FULL, 1 = NORMAL).
    public func synchronousLevel() throws -> Int {
        try pool.writeWithoutTransaction { db in try Int.fetchOne(db, sql: "PRAGMA synchronous") ?? -1 }
    }

    public func threadIDs(of key: SessionKey) async throws -> [ThreadID] {
        try await pool.read { db in
            try String.fetchAll(
                db,
                sql: """
                    SELECT t.id FROM members m JOIN threads t ON t.id = m.thread_id
                    WHERE m.user_id = ? AND t.company_id = ? ORDER BY t.created_at, t.id
                    """, arguments: [key.userId, key.companyId])
        }
    }

    public func directThread(company: CompanyID, between a: UserID, and b: UserID) async throws -> ThreadID? {
        let key = Self.directKey([a, b])
        return try await pool.read { db in
            try String.fetchOne(db, sql: "SELECT id FROM threads WHERE company_id = ? AND direct_key = ?", arguments: [company, key])
        }
    }

    public func threadHead(of id: ThreadID, reader: UserID, company: CompanyID?) async throws -> ThreadHead? {
        try await pool.read { db in
            guard let row = try Row.fetchOne(
                db,
                sql: """
                    SELECT t.company_id AS company,
                           max(coalesce((SELECT max(seq) FROM messages WHERE thread_no = t.no), 0),
                               coalesce((SELECT max(seq) FROM events WHERE thread_id = t.id), 0)) AS last,
                           EXISTS (SELECT 1 FROM members WHERE thread_id = t.id AND user_id = ?2) AS member
                    FROM threads t WHERE t.id = ?1 AND (?3 IS NULL OR t.company_id = ?3)
                    """, arguments: [id, reader, company])
            else { return nil }
            return ThreadHead(company: row["company"], lastSeq: row["last"], isMember: row["member"])
        }
    }

    public func threadID(ofMessage id: MessageID, company: CompanyID) async throws -> ThreadID? {
        try await pool.read { db in
            try String.fetchOne(
                db, sql: "SELECT t.id FROM messages m JOIN threads t ON t.no = m.thread_no WHERE m.id = ? AND t.company_id = ?", arguments: [id, company])
        }
    }

    /// Stops taking writes, waits for every queued write to commit, and closes the database.
    public func shutdown() async {
        await queue.closeAndWait()
        // The last batch's completions run on the completer after the drainer went idle: wait for them too.
        await withCheckedContinuation { (cont: CheckedContinuation<Void, Never>) in
            committer.async { self.completer.async { cont.resume() } }
        }
        checkpointQueue.sync {}
        do { try checkpointConnection.close() } catch {
            logger.warning("closing the checkpoint connection failed", metadata: ["error": "\(error)"])
        }
        do { try pool.close() } catch { logger.warning("closing the database failed", metadata: ["error": "\(error)"]) }
        fileLock.release()
    }
}

/// A parameter value for `Statement.stepOnce`.
enum BoundValue {
    case text(String?)
    case int(Int64)
}

extension Statement {
    /// Binds `values` to parameters 1... straight through SQLite's C API and runs the statement once: the send
    /// path's insert builds no `StatementArguments` (an array of boxed values per message), and texts are bound
    /// in place (`SQLITE_STATIC`), without SQLite copying each into a buffer of its own. That is sound because the
    /// step, the reset and the clearing of every binding all happen while each text's bytes are borrowed.
    func stepOnce(_ db: Database, _ values: [BoundValue]) throws {
        let raw = sqliteStatement
        sqlite3_reset(raw)
        var code = SQLITE_OK
        var message: String?
        func bind(from index: Int) {
            guard index < values.count else {
                code = sqlite3_step(raw)
                if code != SQLITE_DONE { message = String(cString: sqlite3_errmsg(db.sqliteConnection)) }
                sqlite3_reset(raw)
                sqlite3_clear_bindings(raw)
                return
            }
            let position = Int32(index + 1)
            switch values[index] {
            case .int(let value):
                sqlite3_bind_int64(raw, position, value)
                bind(from: index + 1)
            case .text(nil):
                sqlite3_bind_null(raw, position)
                bind(from: index + 1)
            case .text(.some(var text)):
                text.withUTF8 { bytes in
                    // An empty text, not NULL: SQLite needs a valid pointer even for length 0.
                    let base = bytes.baseAddress.map { UnsafeRawPointer($0) } ?? UnsafeRawPointer(Self.emptyText)
                    sqlite3_bind_text(raw, position, base.assumingMemoryBound(to: CChar.self), Int32(bytes.count), Self.staticText)
                    bind(from: index + 1)
                }
            }
        }
        bind(from: 0)
        guard code == SQLITE_DONE else {
            throw DatabaseError(resultCode: ResultCode(rawValue: code), message: message, sql: sql)
        }
    }

    /// `SQLITE_STATIC`: the bytes stay valid (and unchanged) until the statement is reset.
    private static let staticText = unsafeBitCast(0, to: sqlite3_destructor_type.self)
    private nonisolated(unsafe) static let emptyText: UnsafeMutablePointer<CChar> = {
        let p = UnsafeMutablePointer<CChar>.allocate(capacity: 1)
        p.initialize(to: 0)
        return p
    }()
}

/// A thread's last committed seq and its number (`threads.no`, the key of its message rows).
struct ThreadPosition {
    var seq: Int
    let no: Int64
}

/// Each thread's position while a batch is checked and written. The thread of the latest unit is kept aside, so a
/// run of units of one thread (a thread actor's burst of sends) is checked and inserted without hashing its id.
struct SeqTracker {
    private var committed: [ThreadID: ThreadPosition]
    private var run: (thread: ThreadID, position: ThreadPosition)?

    init(committed: [ThreadID: ThreadPosition]) { self.committed = committed }

    func last(of thread: ThreadID) -> ThreadPosition? {
        if let run, run.thread == thread { return run.position }
        return committed[thread]
    }

    mutating func set(_ thread: ThreadID, _ position: ThreadPosition) {
        if let run, run.thread != thread { committed[run.thread] = run.position }
        run = (thread, position)
    }

    /// Every thread's position, the kept-aside one included.
    consuming func finish() -> [ThreadID: ThreadPosition] {
        if let run { committed[run.thread] = run.position }
        return committed
    }
}
