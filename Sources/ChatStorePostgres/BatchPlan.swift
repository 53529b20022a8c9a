import ChatCore
import Logging
import NIOCore
import PostgresNIO

/// One group commit, planned and written inside its transaction: the rows of the threads it writes are locked and
/// read first, each unit's seqs are checked against them in order (a unit that does not follow is refused, the
/// rest go on), structural writes (threads, members) run one by one under a savepoint each, and every other row
/// is written with one statement per table. Last, the commit announces what it changed to the other nodes with
/// `pg_notify` (positions with the events themselves when they fit, and small facts; delivered by PostgreSQL only if
/// the transaction commits, in commit order).
struct BatchPlan {
    let units: ArraySlice<PostgresMessageStore.Unit>
    let fences: WriterFences
    let nodeId: String
    /// Whether the notices carry the events (only worth it while another node listens: a node also receives, and
    /// skips, its own notices).
    let carryEvents: Bool
    /// Units refused, by index in `units`, with why; and units stored at later seqs (`StoreRebased`).
    private(set) var refusals: [Int: any Error] = [:]

    init(_ units: ArraySlice<PostgresMessageStore.Unit>, fences: WriterFences, nodeId: String, carryEvents: Bool = true) {
        self.units = units
        self.fences = fences
        self.nodeId = nodeId
        self.carryEvents = carryEvents
    }

    /// New message rows as the 10 columns `PreparedStatements.insertMessages` binds (`BinaryArrayColumn`).
    struct MessageRows: Sendable {
        var thread = BinaryArrayColumn<String>(), seq = BinaryArrayColumn<Int64>(), id = BinaryArrayColumn<String>()
        var sender = BinaryArrayColumn<String>(), type = BinaryArrayColumn<String>(), content = BinaryArrayColumn<String>()
        var url = BinaryArrayColumn<String>(), attachmentType = BinaryArrayColumn<String>(), created = BinaryArrayColumn<Int64>()
        var tempId = BinaryArrayColumn<String>()

        var isEmpty: Bool { id.isEmpty }

        mutating func append(_ m: Message) {
            thread.append(m.threadId); seq.append(Int64(m.seq)); id.append(m.id); sender.append(m.senderId); type.append(m.type.rawValue)
            content.append(m.content); url.append(m.attachmentUrl); attachmentType.append(m.attachmentType)
            created.append(m.createdAt.millis); tempId.append(m.tempId)
        }
    }

    /// The rows and notices a batch writes, gathered from its units' writes (after their seqs were checked).
    struct Rows: Sendable {
        var inserts = MessageRows()
        var updates: [String: Message] = [:]  // by message id: the last state wins
        var updateOrder: [String] = []
        var events: (thread: [String], seq: [Int64], kind: [String], message: [String]) = ([], [], [], [])
        var marks: [ThreadAndUser: MemberMarks] = [:]
        /// Where each member's watermarks stood before the batch's receipts, as their writers knew (`nil`: not said).
        var marksFrom: [ThreadAndUser: MemberMarks] = [:]
        var markOrder: [ThreadAndUser] = []
        var chunks: [ThreadAndSeq: (chunk: HistoryChunk, asOf: Int)] = [:]
        var moved: [ThreadID: Int] = [:]
        var firstMoved: [ThreadID: Int] = [:]
        var movedOrder: [ThreadID] = []
        var carried: [ThreadID: [ThreadEvent]] = [:]
        var membership: [ClusterChange] = []
        var notices: (thread: [String], message: [String], user: [String], delay: [Double]) = ([], [], [], [])

        private mutating func noteMoved(_ thread: ThreadID, _ seq: Int) {
            if moved[thread] == nil { movedOrder.append(thread) }
            moved[thread] = seq
            if firstMoved[thread] == nil { firstMoved[thread] = seq }
        }

        /// Adds one write that has passed its check; `company` and `before` are the locked threads' (for membership
        /// notices, which carry the thread's position before the change's unit: the other nodes apply a change after
        /// the events before it and before those after it, as `changes` says).
        mutating func add(_ write: StoreWrite, carry: Bool, company: [ThreadID: CompanyID], before: [ThreadID: Int]) {
            switch write {
            case .insertMessage(let m):
                inserts.append(m)
                noteMoved(m.threadId, m.seq)
                if carry { carried[m.threadId, default: []].append(ThreadEvent(seq: m.seq, kind: .message, message: m)) }
            case .updateMessage(let m, let seq, let kind):
                if updates.updateValue(m, forKey: m.id) == nil { updateOrder.append(m.id) }
                events.thread.append(m.threadId); events.seq.append(Int64(seq)); events.kind.append(kind.rawValue); events.message.append(m.id)
                noteMoved(m.threadId, seq)
                if carry { carried[m.threadId, default: []].append(ThreadEvent(seq: seq, kind: kind, message: m)) }
            case .marks(let thread, let user, let new, let from):
                let key = ThreadAndUser(thread: thread, user: user)
                let old = marks[key] ?? MemberMarks()
                if marks[key] == nil {
                    markOrder.append(key)
                    marksFrom[key] = from
                } else if let earlier = marksFrom[key] {
                    // Two receipts of one member in a batch: the notice covers both, from the lower starting point.
                    marksFrom[key] = from.map { MemberMarks(deliveredSeq: min($0.deliveredSeq, earlier.deliveredSeq), readSeq: min($0.readSeq, earlier.readSeq)) }
                }
                marks[key] = MemberMarks(deliveredSeq: max(old.deliveredSeq, new.deliveredSeq), readSeq: max(old.readSeq, new.readSeq))
            case .putChunk(let thread, let chunk, let asOf):
                let key = ThreadAndSeq(thread: thread, seq: chunk.firstSeq)
                if let existing = chunks[key], existing.asOf > asOf { return }
                chunks[key] = (chunk, asOf)
            case .createThread(let info, let users):
                membership.append(.membership(info.id, company: info.companyId, asOf: 0, created: true, added: users, removed: [], membersVersion: 0))
            // The thread's row is locked: its company, and its position before this unit.
            case .addMembers(let thread, let users, let version):
                if let companyId = company[thread], let asOf = before[thread] {
                    membership.append(
                        .membership(thread, company: companyId, asOf: asOf, created: false, added: users, removed: [], membersVersion: version))
                }
            case .removeMember(let thread, let user, let version):
                if let companyId = company[thread], let asOf = before[thread] {
                    membership.append(
                        .membership(thread, company: companyId, asOf: asOf, created: false, added: [], removed: [user], membersVersion: version))
                }
            case .offlineNotice(let thread, let messageId, let users, let delay):
                for user in users {
                    notices.thread.append(thread); notices.message.append(messageId); notices.user.append(user); notices.delay.append(delay)
                }
            case .notePosition(let thread, let position):
                if let seq = before[thread] { position.set(seq) }
            case .fence, .rebasable:
                break
            }
        }

        /// What the commit announces: membership changes, each thread's advance (with its events as committed,
        /// renumbered ones at their stored seqs, so the other nodes need not read them back), and receipts.
        ///
        /// Membership comes first: the other nodes queue each change at its `asOf` (the thread's position before the
        /// change's unit: after the events of earlier commits, however late those reach them, and of the units before
        /// it in this one) and apply it just before the first event after that, as the writing node does with its own
        /// change (after the sends it was asked for after), so every node delivers the same.
        func changes(carry: Bool) -> [ClusterChange] {
            var changes = membership
            changes += movedOrder.map { .advanced($0, first: firstMoved[$0]!, last: moved[$0]!, events: carry ? carried[$0] : nil) }
            changes += markOrder.map { .marks($0.thread, $0.user, marks[$0]!, from: marksFrom[$0]) }
            return changes
        }

        /// The receipts as 4 parallel arrays (thread, user, delivered, read), in the order
        /// `PreparedStatements.raiseMarks` binds them.
        func bindMarks(to b: inout PostgresBindings) {
            let keys = Array(marks.keys)
            b.append(keys.map(\.thread)); b.append(keys.map(\.user))
            b.append(keys.map { Int64(marks[$0]!.deliveredSeq) }); b.append(keys.map { Int64(marks[$0]!.readSeq) })
        }

        /// The chunks as 5 parallel arrays (thread, first seq, last seq, data, as of), in the order
        /// `PreparedStatements.upsertChunks` binds them.
        func bindChunks(to b: inout PostgresBindings) {
            let keys = Array(chunks.keys)
            b.append(keys.map(\.thread)); b.append(keys.map { Int64($0.seq) }); b.append(keys.map { Int64(chunks[$0]!.chunk.lastSeq) })
            b.append(keys.map { ByteBuffer(bytes: chunks[$0]!.chunk.data) }); b.append(keys.map { Int64(chunks[$0]!.asOf) })
        }

        /// The offline notices as 4 parallel arrays (thread, message, user, delay), in the order
        /// `PreparedStatements.insertOfflineNotices` binds them.
        func bindNotices(to b: inout PostgresBindings) {
            b.append(notices.thread); b.append(notices.message); b.append(notices.user); b.append(notices.delay)
        }

        /// A `PreparedStatements` text run on its own by the general path, with the arrays `bind` appends (from `$1`).
        static func statement(_ sql: String, _ bind: (inout PostgresBindings) -> Void) -> PostgresQuery {
            var b = PostgresBindings()
            bind(&b)
            return PostgresQuery(unsafeSQL: sql, binds: b)
        }
    }

    /// The whole batch as one procedure call (lock, check, write, notify and commit in one round trip; the call
    /// answers only after the commit), when it can be: only new messages, receipts, chunks and offline notices, each
    /// thread's seqs following on from the batch's first one for it, no fenced writer, every notice within a
    /// payload, every writer of a thread knowing the same members version. The statement locks the threads in id
    /// order and writes only if each stands where the batch expects it (`last_seq` just before its first seq, and the
    /// members version its writers knew); if one does not (another node wrote it or changed its members meanwhile),
    /// it writes nothing and answers `false`, and the batch takes the general path (`write(on:logger:)`), which
    /// refuses or renumbers as usual.
    func singleStatement(relaxed: Bool) -> PreparedStatements.CommitPlan? {
        var expected: [ThreadID: Int] = [:]
        var next: [ThreadID: Int] = [:]
        var versions: [ThreadID: Int64] = [:]
        var locked = Set<ThreadID>()
        var rows = Rows()
        for unit in units {
            var rebasable = Set<ThreadID>()
            for write in unit.writes { if case .rebasable(let thread) = write { rebasable.insert(thread) } }
            for write in unit.writes {
                switch write {
                case .insertMessage, .marks, .putChunk, .offlineNotice, .rebasable: break
                case .fence(let thread, let epoch, let version):
                    // A stopped epoch (a write of it failed) is refused by the general path (`check`), rebasable or
                    // not. Checked here too: the procedure does not know of stopped epochs, and stored a later send of
                    // a writer whose earlier send had failed whenever another node had filled the failed one's seq;
                    // the writer then answered the failed send as if stored (an outside probe: an acknowledged send
                    // lost across a PostgreSQL restart, 7 runs in 21).
                    if fences.isStopped(thread, epoch: epoch) { return nil }
                    if !rebasable.contains(thread), fences.isFenced(thread, epoch: epoch) { return nil }
                    if let known = versions.updateValue(version, forKey: thread), known != version { return nil }
                case .updateMessage, .createThread, .addMembers, .removeMember, .notePosition: return nil
                }
                if let thread = write.lockedThread { locked.insert(thread) }
                if let (thread, seq) = write.seq {
                    if let current = next[thread] {
                        guard seq == current + 1 else { return nil }
                    } else {
                        expected[thread] = seq - 1
                    }
                    next[thread] = seq
                }
                rows.add(write, carry: carryEvents, company: [:], before: [:])
            }
        }
        let (payloads, oversized) = ClusterNotice.pack(node: nodeId, changes: rows.changes(carry: carryEvents))
        guard oversized.isEmpty else { return nil }
        var membersVersions = BinaryArrayColumn<Int64>()
        for thread in rows.movedOrder { membersVersions.append(versions[thread]) }
        return PreparedStatements.CommitPlan(
            locked: locked.sorted(), moved: rows.movedOrder, expected: rows.movedOrder.map { Int64(expected[$0]!) },
            last: rows.movedOrder.map { Int64(rows.moved[$0]!) }, membersVersions: membersVersions, rows: rows,
            channel: ClusterNotice.channel, payloads: payloads, relaxed: relaxed)
    }

    mutating func write(on db: PostgresConnection, logger: Logger) async throws {
        // Every thread this batch writes, locked in id order: two committers (on any nodes) lock in the same order,
        // and every other row a batch touches (members, chunks, messages) belongs to a thread it holds, so they
        // cannot deadlock. The lock also makes `last_seq` the arbiter of each thread's order.
        var touched = Set<ThreadID>()
        for unit in units { for write in unit.writes { if let thread = write.lockedThread { touched.insert(thread) } } }
        var last: [ThreadID: Int] = [:]
        var company: [ThreadID: CompanyID] = [:]
        var versions: [ThreadID: Int64] = [:]
        if !touched.isEmpty {
            for try await (ids, seqs, companies, memberVersions) in try await db.execute(
                PreparedStatements.LockThreads(threads: Array(touched)), logger: logger)
            {
                guard seqs.count == ids.count, companies.count == ids.count, memberVersions.count == ids.count else {
                    throw StoreError("the locked threads' columns differ in length")
                }
                for (i, id) in ids.enumerated() {
                    last[id] = Int(seqs[i])
                    company[id] = companies[i]
                    versions[id] = memberVersions[i]
                }
            }
        }
        var rows = Rows()
        for i in units.indices {
            var writes = units[i].writes
            // Where each thread's log stands before this unit: a member change takes effect after the events of the
            // units committed before it (this batch's too, written ahead of it by the same writer) and before the
            // events after it.
            let before = last
            let structural = writes.contains(where: \.isStructural)
            // What `check` notes for this unit (a thread it creates) is undone if the database refuses the unit.
            let lastBefore = structural ? last : [:]
            switch check(writes, last: &last, versions: versions) {
            case .refused(let refusal):
                refusals[i] = refusal
                continue
            case .rebased(let renumbered):
                writes = renumbered
                refusals[i] = StoreRebased()
            case .follows:
                break
            }
            if structural {
                do {
                    try await db.query("SAVEPOINT unit", logger: logger)
                    for write in writes where write.isStructural { try await Self.applyStructural(write, before: before, db: db, logger: logger) }
                    try await db.query("RELEASE SAVEPOINT unit", logger: logger)
                    // The units after this one are checked against the members version it set.
                    for case let (thread, version)? in writes.map(\.membersVersionSet) { versions[thread] = version }
                } catch let error as PSQLError where error.code == .server {
                    try await db.query("ROLLBACK TO SAVEPOINT unit", logger: logger)
                    last = lastBefore
                    refusals[i] = StoreError("refused by the database: \(error.serverInfo?[.message] ?? "constraint")")
                    continue
                }
            }
            for write in writes { rows.add(write, carry: carryEvents, company: company, before: before) }
        }
        let inserts = rows.inserts

        // Edits in this batch may touch messages it inserts: then the rows go in first, on their own; otherwise they go
        // in with the threads' new positions and the notifications, in the batch's last statement.
        let insertsLast = rows.updateOrder.isEmpty
        if !inserts.isEmpty && !insertsLast {
            for try await _ in try await db.execute(PreparedStatements.InsertMessages(rows: inserts), logger: logger) {}
        }
        if !rows.notices.thread.isEmpty {
            try await db.query(Rows.statement(PreparedStatements.insertOfflineNotices(from: 1), rows.bindNotices), logger: logger)
        }
        if !rows.updateOrder.isEmpty {
            var thread = BinaryArrayColumn<String>(), id = BinaryArrayColumn<String>(), content = BinaryArrayColumn<String>()
            var url = BinaryArrayColumn<String>(), attachmentType = BinaryArrayColumn<String>()
            var edited = BinaryArrayColumn<Int64>(), deleted = BinaryArrayColumn<Int64>()
            for key in rows.updateOrder {
                let m = rows.updates[key]!
                thread.append(m.threadId); id.append(m.id); content.append(m.content)
                url.append(m.attachmentUrl); attachmentType.append(m.attachmentType)
                edited.append(m.editedAt?.millis); deleted.append(m.deletedAt?.millis)
            }
            let events = rows.events
            try await db.query(
                """
                UPDATE chat.messages m SET content = v.c, attachment_url = v.u, attachment_type = v.a,
                    edited_at = to_timestamp(v.e::double precision / 1000), deleted_at = to_timestamp(v.d::double precision / 1000)
                FROM unnest(\(thread)::text[], \(id)::text[], \(content)::text[], \(url)::text[], \(attachmentType)::text[],
                            \(edited)::bigint[], \(deleted)::bigint[]) AS v(t, i, c, u, a, e, d)
                JOIN chat.threads th ON th.id = v.t
                WHERE m.thread_no = th.no AND m.id = v.i
                """, logger: logger)
            try await db.query(
                """
                INSERT INTO chat.events(thread_id, seq, kind, message_id)
                SELECT * FROM unnest(\(events.thread)::text[], \(events.seq)::bigint[], \(events.kind)::text[], \(events.message)::text[])
                """, logger: logger)
        }
        if !rows.marks.isEmpty {
            try await db.query(Rows.statement(PreparedStatements.raiseMarks(from: 1), rows.bindMarks), logger: logger)
        }
        if !rows.chunks.isEmpty {
            try await db.query(Rows.statement(PreparedStatements.upsertChunks(from: 1), rows.bindChunks), logger: logger)
        }
        let (payloads, oversized) = ClusterNotice.pack(node: nodeId, changes: rows.changes(carry: carryEvents))
        try await Self.finish(
            inserts: insertsLast && !inserts.isEmpty ? inserts : nil, threads: rows.movedOrder,
            seqs: rows.movedOrder.map { Int64(rows.moved[$0]!) }, payloads: payloads, db: db, logger: logger)
        try await ClusterNotice.announceStored(oversized, node: nodeId, on: db, logger: logger)
    }

    /// The batch's last statement: the new messages (when they go last), the threads' new positions and the
    /// notifications, in one prepared statement instead of three statements parsed and planned each time.
    private static func finish(
        inserts: MessageRows?, threads: [String], seqs: [Int64], payloads: [String], db: PostgresConnection, logger: Logger
    ) async throws {
        let channel = ClusterNotice.channel
        switch (inserts, threads.isEmpty) {
        case (let rows?, false):
            let statement = PreparedStatements.InsertAdvanceNotify(rows: rows, threads: threads, seqs: seqs, channel: channel, payloads: payloads)
            for try await _ in try await db.execute(statement, logger: logger) {}
        case (nil, false):
            let statement = PreparedStatements.AdvanceNotify(threads: threads, seqs: seqs, channel: channel, payloads: payloads)
            for try await _ in try await db.execute(statement, logger: logger) {}
        case (_, true):
            // Messages always move their thread, so there are none here; only notifications (receipts, membership).
            guard !payloads.isEmpty else { return }
            for try await _ in try await db.execute(PreparedStatements.Notify(channel: channel, payloads: payloads), logger: logger) {}
        }
    }

    /// Refuses a unit whose seqs do not each follow their thread's last (the database's, as moved by the units
    /// before it in this batch); on success the unit's seqs become the last.
    ///
    /// A seq that does not follow is a conflict (another node wrote the thread first): the unit's writer epoch is
    /// fenced, so its later pipelined writes are refused too instead of landing after another node's events. So is a
    /// unit whose writer knew another members version than the thread's (`versions`, as locked and changed by the
    /// units before it): the members changed since, and the writer must apply the change before it writes again.
    private enum Check {
        case follows
        case refused(StoreError)
        /// Stored at later seqs: the unit's writes renumbered.
        case rebased([StoreWrite])
    }

    private func check(_ writes: [StoreWrite], last: inout [ThreadID: Int], versions: [ThreadID: Int64]) -> Check {
        var next = last
        var epochs: [ThreadID: Int] = [:]
        var rebasable = Set<ThreadID>()
        for write in writes {
            if case .rebasable(let thread) = write { rebasable.insert(thread) }
        }
        var renumbered: [StoreWrite]?
        for (index, write) in writes.enumerated() {
            if case .fence(let thread, let epoch, let version) = write {
                epochs[thread] = epoch
                if fences.isStopped(thread, epoch: epoch) {
                    return .refused(StoreError("writer epoch \(epoch) of thread \(thread) is stopped after a failed write"))
                }
                if !rebasable.contains(thread), fences.isFenced(thread, epoch: epoch) {
                    return .refused(StoreError("writer epoch \(epoch) of thread \(thread) is fenced after a conflict", conflict: true))
                }
                if let current = versions[thread], current != version {
                    fences.fence(thread, epoch: epoch)
                    return .refused(StoreError("the members of thread \(thread) changed since its writer read them", conflict: true))
                }
            }
            if case .createThread(let info, _) = write, next[info.id] == nil { next[info.id] = 0 }
            guard let (thread, seq) = write.seq else { continue }
            guard let current = next[thread] else { return .refused(StoreError("unknown thread \(thread)")) }
            if seq != current + 1 {
                // Another node wrote first. New messages that may move are renumbered to follow; anything else is a
                // conflict, and the writer's epoch is fenced.
                if rebasable.contains(thread), case .insertMessage(var message) = write {
                    message.seq = current + 1
                    if renumbered == nil { renumbered = writes }
                    renumbered![index] = .insertMessage(message)
                } else {
                    if let epoch = epochs[thread] { fences.fence(thread, epoch: epoch) }
                    return .refused(StoreError("seq \(seq) of thread \(thread) does not follow \(current)", conflict: epochs[thread] != nil))
                }
            } else if let moved = renumbered, case .insertMessage(var message) = write {
                // Once one message of the unit moved, the ones after it follow it.
                message.seq = current + 1
                var copy = moved
                copy[index] = .insertMessage(message)
                renumbered = copy
            }
            next[thread] = current + 1
        }
        last = next
        return renumbered.map { .rebased($0) } ?? .follows
    }

    /// `before`: the locked threads' positions before this unit, which a member change's log row records (as its
    /// announcement does).
    private static func applyStructural(_ write: StoreWrite, before: [ThreadID: Int], db: PostgresConnection, logger: Logger) async throws {
        switch write {
        case .createThread(let info, let members):
            let directKey = info.kind == .direct ? PostgresMessageStore.directKey(members) : nil
            try await db.query(
                """
                INSERT INTO chat.threads(id, company_id, name, kind, created_by, created_at, direct_key)
                VALUES (\(info.id), \(info.companyId), \(info.name), \(info.kind.rawValue), \(info.createdBy),
                        to_timestamp(\(info.createdAt.millis)::double precision / 1000), \(directKey))
                """, logger: logger)
            try await db.query(
                """
                INSERT INTO chat.members(thread_id, user_id, position)
                SELECT \(info.id), u, p - 1 FROM unnest(\(members)::text[]) WITH ORDINALITY AS v(u, p) ON CONFLICT DO NOTHING
                """, logger: logger)
        case .addMembers(let thread, let users, let version):
            try await db.query(
                """
                INSERT INTO chat.members(thread_id, user_id, position)
                SELECT \(thread), u, b.base + p FROM unnest(\(users)::text[]) WITH ORDINALITY AS v(u, p),
                       (SELECT coalesce(max(position), -1) AS base FROM chat.members WHERE thread_id = \(thread)) b
                ON CONFLICT DO NOTHING
                """, logger: logger)
            try await db.query("UPDATE chat.threads SET members_version = \(version) WHERE id = \(thread)", logger: logger)
            let asOf = Int64(before[thread] ?? 0)
            try await db.query(
                "INSERT INTO chat.member_changes(thread_id, as_of, members_version, added) VALUES (\(thread), \(asOf), \(version), \(users))",
                logger: logger)
        case .removeMember(let thread, let user, let version):
            try await db.query("DELETE FROM chat.members WHERE thread_id = \(thread) AND user_id = \(user)", logger: logger)
            try await db.query("UPDATE chat.threads SET members_version = \(version) WHERE id = \(thread)", logger: logger)
            let asOf = Int64(before[thread] ?? 0)
            try await db.query(
                "INSERT INTO chat.member_changes(thread_id, as_of, members_version, removed) VALUES (\(thread), \(asOf), \(version), \([user]))",
                logger: logger)
        default:
            break
        }
    }
}

struct ThreadAndUser: Hashable {
    let thread: ThreadID
    let user: UserID
}

struct ThreadAndSeq: Hashable {
    let thread: ThreadID
    let seq: Int
}

extension StoreWrite {
    /// The thread a unit starting with this write belongs to (which committer takes it).
    var partitionThread: ThreadID? {
        if case .createThread(let info, _) = self { return info.id }
        return lockedThread
    }

    /// The existing thread whose row a batch with this write locks (`nil` for a thread being created).
    var lockedThread: ThreadID? {
        switch self {
        case .createThread: nil
        case .addMembers(let id, _, _), .removeMember(let id, _, _), .marks(let id, _, _, _), .putChunk(let id, _, _), .fence(let id, _, _), .rebasable(let id),
            .offlineNotice(let id, _, _, _), .notePosition(let id, _):
            id
        case .insertMessage(let m): m.threadId
        case .updateMessage(let m, _, _): m.threadId
        }
    }

    /// The thread whose members version this write sets, and to what (a new thread's is 0, the column's default).
    var membersVersionSet: (thread: ThreadID, version: Int64)? {
        switch self {
        case .addMembers(let thread, _, let version), .removeMember(let thread, _, let version): (thread, version)
        case .createThread(let info, _): (info.id, 0)
        default: nil
        }
    }

    /// Threads and members: written one statement at a time, under a savepoint per unit.
    var isStructural: Bool {
        switch self {
        case .createThread, .addMembers, .removeMember: true
        default: false
        }
    }
}
