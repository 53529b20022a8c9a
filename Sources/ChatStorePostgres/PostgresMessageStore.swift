import ChatCore
import ChatJSON
import Foundation
import Logging
import NIOCore
import NIOPosix
import NIOSSL
import PostgresNIO
import Synchronization

/// The shared `MessageStore`: PostgreSQL through PostgresNIO, for one or several broker nodes on one database.
///
/// Group commit, as in the SQLite store: `submit` only queues; one committer takes everything queued and writes it
/// in one transaction, then completes every unit in order, while new writes gather for the next commit. The
/// database is the arbiter of each thread's order: the commit locks the rows of the threads it writes
/// (`SELECT … FOR UPDATE`, in id order so concurrent committers cannot deadlock), refuses a unit whose first seq
/// does not follow the thread's `last_seq`, and moves `last_seq` in the same transaction. So no seq is ever
/// taken twice or skipped, whichever node writes, and a node whose idea of a thread is stale gets a refusal,
/// never a corrupt history. Rows are written with one statement per table per batch (`unnest` of arrays); a batch
/// of plain sends, receipts and chunks is one procedure call in all, which locks, checks, writes and commits in one
/// round trip (`BatchPlan.singleStatement`). A unit is acknowledged only once PostgreSQL has answered its commit.
///
/// As a `SharedStore`, each commit announces what it changed (`pg_notify` in the same transaction), and one
/// dedicated connection per node LISTENs and hands other nodes' announcements to the supervisor, reconnecting by
/// itself (then `.resync`).
public final class PostgresMessageStore: SharedStore {
    typealias Unit = GroupCommitQueue.Unit

    let client: PostgresClient
    private let clientTask: Task<Void, Never>
    let logger: Logger
    /// One group-commit queue per committer; a thread's writes always go to the same one (by its id), so each
    /// thread's order holds while committers write disjoint threads in transactions of their own, side by side.
    private let queues: [GroupCommitQueue]
    private let fences = WriterFences()
    private let paths = Mutex(CommitPaths())
    /// This store's commits and reads that are still running past their deadline.
    let stalled = StalledCalls()
    /// Threads of commits whose outcome this node never learnt (`commitWithin`).
    let abandoned: AbandonedCommits
    public let nodeId: String
    private let feed: ChangeFeed
    private let listenerTask: Task<Void, Never>
    private let publisher: AsyncStream<[ClusterChange]>.Continuation
    private let publisherTask: Task<Void, Never>
    private let presence: PresenceWriter
    private let presenceTask: Task<Void, Never>
    private let commitObserver: (@Sendable (_ units: Int, _ seconds: Double, _ ok: Bool) -> Void)?
    /// Most units folded into one transaction.
    public let maxBatch: Int
    /// How long one commit may take before its units are failed (sends answered `internal`).
    public let commitTimeout: Duration
    public let url: DatabaseURL
    /// `full`: a commit is acknowledged once PostgreSQL flushed it (`synchronous_commit` on); `process`: once
    /// PostgreSQL has it (`synchronous_commit` off).
    public let durability: Durability

    /// Connects to `url`, migrates the schema (under an advisory lock) and starts the connection pool. Throws a
    /// `StoreSetupError` naming the problem (unreachable, refused login, schema from a newer binary) within
    /// `connectTimeout`.
    public static func open(
        url: DatabaseURL, durability: Durability = .full, maxBatch: Int = 4096, maxConnections: Int = 8, connectTimeout: Duration = .seconds(10),
        commitTimeout: Duration = .seconds(5), committers: Int = 2,
        logger: Logger = Logger(label: "chat.store"),
        commitObserver: (@Sendable (_ units: Int, _ seconds: Double, _ ok: Bool) -> Void)? = nil
    ) async throws -> PostgresMessageStore {
        // One connection of its own first: its failure says why (refused, wrong password, unknown database), where a
        // pool would keep retrying; it also runs the migrations. The LISTEN connection uses the same configuration.
        let single: PostgresConnection.Configuration
        var serverVersion = 0
        do {
            var direct = PostgresConnection.Configuration(
                host: url.host, port: url.port, username: url.user, password: url.password, database: url.database, tls: try connectionTLS(url))
            direct.options.connectTimeout = .nanoseconds(Int64(connectTimeout.components.seconds) * 1_000_000_000)
            let probe = direct
            single = direct
            let connection = try await withDeadline(connectTimeout + .seconds(2)) {
                try await PostgresConnection.connect(configuration: probe, id: 0, logger: logger)
            }
            do {
                for try await version in try await connection.collect("SELECT current_setting('server_version_num')::int", logger: logger).decode(Int.self) {
                    serverVersion = version
                }
                // Not under the connect deadline: a migration may copy a large table, or wait for another node's.
                try await PostgresSchema.migrate(connection, logger: logger)
            } catch {
                try? await connection.close()
                throw error
            }
            try await connection.close()
        } catch {
            throw StoreSetupError("cannot use the database \(url.redacted): \(describe(error))")
        }
        if url.tlsUnverified, !url.isLocal {
            logger.warning(
                "the database's certificate is not checked: someone on the network could read the chat and the password; use sslmode=verify-full (with sslrootcert=FILE for a private CA)",
                metadata: ["database": "\(url.redacted)"])
        }
        var configuration = PostgresClient.Configuration(
            host: url.host, port: url.port, username: url.user, password: url.password, database: url.database, tls: try tls(url))
        configuration.options.maximumConnections = maxConnections
        configuration.options.connectTimeout = connectTimeout
        // The hot statements are prepared once per connection (`PreparedStatements`); a generic plan serves every
        // execution instead of planning again each time with the values bound (their plans do not depend on them:
        // lookups by thread and seq).
        configuration.options.additionalStartupParameters = [("plan_cache_mode", "force_generic_plan")]
        // A call that loses to its deadline closes its connection (`LeasedConnection`); PostgreSQL notices a closed
        // client only when it next reads or writes the socket, so a statement still waiting (on a lock) would keep its
        // server process, and a new one comes with each deadline. From PostgreSQL 14 on the server checks the socket
        // every second while a statement runs, and ends such a process (rolling back what it had not committed).
        if serverVersion >= 140_000 { configuration.options.additionalStartupParameters.append(("client_connection_check_interval", "1000")) }
        let client = PostgresClient(configuration: configuration, backgroundLogger: logger)
        let clientTask = Task { await client.run() }
        let store = PostgresMessageStore(
            client: client, clientTask: clientTask, listen: single, url: url, durability: durability, maxBatch: maxBatch,
            commitTimeout: commitTimeout, committers: committers, logger: logger, commitObserver: commitObserver)
        // Announcements committed from now on reach this node: LISTEN is active before the broker serves anyone. A
        // LISTEN connection that cannot be opened (the role's or the server's connections used up, the server gone
        // since the checks above) stops the start-up with the reason instead of waiting for ever.
        let listenLimit = connectTimeout * 3
        do {
            try await withDeadline(listenLimit) { await store.feed.waitUntilListening() }
        } catch {
            await store.shutdown()
            throw StoreSetupError("cannot LISTEN on the database \(url.redacted) within \(listenLimit.components.seconds) s: \(describe(error))")
        }
        return store
    }

    private init(
        client: PostgresClient, clientTask: Task<Void, Never>, listen: PostgresConnection.Configuration, url: DatabaseURL, durability: Durability,
        maxBatch: Int, commitTimeout: Duration, committers: Int, logger: Logger,
        commitObserver: (@Sendable (_ units: Int, _ seconds: Double, _ ok: Bool) -> Void)?
    ) {
        self.commitTimeout = commitTimeout
        queues = (0..<max(1, committers)).map { _ in GroupCommitQueue() }
        self.client = client
        self.clientTask = clientTask
        self.url = url
        self.durability = durability
        self.maxBatch = maxBatch
        self.logger = logger
        self.commitObserver = commitObserver
        let nodeId = Identifier.uuid()
        self.nodeId = nodeId
        let feed = ChangeFeed { [stalled] in stalled.databaseAnswered() }
        self.feed = feed
        let abandoned = AbandonedCommits()
        self.abandoned = abandoned
        listenerTask = Task {
            await ChangeListener(configuration: listen, client: client, nodeId: nodeId, feed: feed, abandoned: abandoned, logger: logger).run()
        }
        // After a call's deadline passed: whether the database answers, on a connection of its own (the pool's may be
        // waiting out a reconnection back-off). Any answer of the server counts, a refusal too (too many connections,
        // a password changed): only a connection that cannot be made or gets no answer is an outage, during which
        // calls fail at once (`StalledCalls`). The connection's own timeout ends the attempt before the deadline, so
        // attempts never pile up on a server that accepts connections and says nothing.
        let probeLimit = Duration.nanoseconds(listen.options.connectTimeout.nanoseconds) + .seconds(2)
        stalled.setProbe {
            do {
                try await Self.withDeadline(probeLimit) {
                    let connection = try await PostgresConnection.connect(configuration: listen, id: 2, logger: logger)
                    defer { Task { try? await connection.close() } }
                    _ = try await connection.collect("SELECT 1", logger: logger)
                }
                return true
            } catch {
                return Self.serverError(error) != nil
            }
        }
        let presence = PresenceWriter(client: client, nodeId: nodeId, logger: logger)
        self.presence = presence
        presenceTask = Task { await presence.run() }
        let (published, publisher) = AsyncStream.makeStream(of: [ClusterChange].self, bufferingPolicy: .bufferingNewest(10_000))
        self.publisher = publisher
        publisherTask = Task {
            for await changes in published {
                do {
                    try await Self.withConnection(client, within: .seconds(5)) { db in try await ClusterNotice.announce(changes, node: nodeId, on: db, logger: logger) }
                } catch {
                    logger.warning("could not tell the other nodes (typing or an emitted event is lost)", metadata: ["error": "\(Self.describe(error))"])
                }
            }
        }
    }

    /// The TLS configuration of `verify-full`: the system's trust roots, or those of `sslrootcert`.
    static func verifying(_ url: DatabaseURL) -> TLSConfiguration {
        var tls = TLSConfiguration.makeClientConfiguration()
        if let file = url.rootCertificates { tls.trustRoots = .file(file) }
        return tls
    }

    static func tls(_ url: DatabaseURL) throws -> PostgresClient.Configuration.TLS {
        switch url.tls {
        case .disable: return .disable
        case .prefer, .require:
            var tls = TLSConfiguration.makeClientConfiguration()
            tls.certificateVerification = .none
            return url.tls == .prefer ? .prefer(tls) : .require(tls)
        case .verifyFull: return .require(verifying(url))
        }
    }

    static func connectionTLS(_ url: DatabaseURL) throws -> PostgresConnection.Configuration.TLS {
        var unverified = TLSConfiguration.makeClientConfiguration()
        unverified.certificateVerification = .none
        switch url.tls {
        case .disable: return .disable
        case .prefer: return .prefer(try NIOSSLContext(configuration: unverified))
        case .require: return .require(try NIOSSLContext(configuration: unverified))
        case .verifyFull: return .require(try NIOSSLContext(configuration: verifying(url)))
        }
    }

    /// `body`, or a `StoreError` once `limit` has passed, `body` then cancelled: a server that does not answer (or a
    /// pool waiting for a connection to one) must not hang start-up, a commit, a read or the LISTEN connection.
    ///
    /// Not a task group: a group waits for its children before it returns, and a postgres-nio call that ignores
    /// cancellation (a statement on a connection that was reset is never answered) would keep the caller past the
    /// deadline. The caller is answered at the deadline (or when it is cancelled); an abandoned `body` ends whenever
    /// it does. With `stalled` (a store's pool calls), a body that lost to the deadline is counted there until it
    /// ends, and while `stalled.limit` of them run, calls fail at once (`StalledCalls`).
    static func withDeadline<T: Sendable>(
        _ limit: Duration, stalled: StalledCalls? = nil, onDeadline: (@Sendable () -> Void)? = nil,
        _ body: @escaping @Sendable () async throws -> T
    ) async throws -> T {
        if let refusal = stalled?.refusal() { throw refusal }
        let timeout = StoreError("the database did not answer within \(limit.components.seconds) s")
        let race = DeadlineRace<T>(stalled: stalled, onDeadline: onDeadline)
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<T, any Error>) in
                race.start(continuation, body: body, limit: limit, timeout: timeout)
            }
        } onCancel: {
            race.finish(.failure(CancellationError()), by: .cancelled)
        }
    }

    /// `body` on a connection of `client`'s pool, answered within `limit` (`withDeadline`); at the deadline the
    /// connection is closed (`LeasedConnection`), so that a statement the server will never answer ends too.
    static func withConnection<T: Sendable>(
        _ client: PostgresClient, within limit: Duration, stalled: StalledCalls? = nil,
        _ body: @escaping @Sendable (PostgresConnection) async throws -> T
    ) async throws -> T {
        let lease = LeasedConnection()
        return try await withDeadline(limit, stalled: stalled, onDeadline: { lease.close() }) {
            try await client.withConnection { connection in
                try lease.hold(connection)
                let result: Result<T, any Error>
                do { result = .success(try await body(connection)) } catch { result = .failure(error) }
                if lease.release() { try? await connection.closeFuture.get() }
                return try result.get()
            }
        }
    }

    /// A readable cause: PostgresNIO keeps its errors' descriptions generic, so the server's message (wrong
    /// password, unknown database) and the underlying connection error are read out of it.
    static func describe(_ error: any Error) -> String {
        if let setup = error as? StoreSetupError { return setup.description }
        if let transaction = error as? PostgresTransactionError, let inner = transaction.beginError ?? transaction.closureError ?? transaction.commitError {
            return describe(inner)
        }
        guard let psql = error as? PSQLError else { return "\(error)" }
        var parts = ["\(psql.code)"]
        if let message = psql.serverInfo?[.message] { parts.append(message) }
        if let underlying = psql.underlying { parts.append("\(underlying)") }
        return parts.joined(separator: ": ")
    }

    // MARK: - Writes

    public func submit(_ writes: [StoreWrite], completion: @escaping @Sendable (Result<Void, any Error>) -> Void) {
        let index = queues.count == 1 ? 0 : Int(UInt(bitPattern: (writes.first?.partitionThread ?? "").hashValue) % UInt(queues.count))
        let queue = queues[index]
        if queue.submit(writes, completion: completion) { Task { await self.drain(queue) } }
    }

    /// Commits batches until nothing is queued (one drainer at a time: the queue says who starts it).
    private func drain(_ queue: GroupCommitQueue) async {
        while let taken = queue.take() {
            var start = taken.startIndex
            while start < taken.endIndex {
                let end = min(start + maxBatch, taken.endIndex)
                await commitBatch(taken[start..<end])
                start = end
            }
        }
    }

    private func commitBatch(_ batch: ArraySlice<Unit>) async {
        let started = ContinuousClock.now
        let outcomes = await commitUnits(batch)
        let elapsed = ContinuousClock.now - started
        let ok = outcomes.allSatisfy { if case .success = $0 { true } else { false } }
        commitObserver?(batch.count, Double(elapsed.components.seconds) + Double(elapsed.components.attoseconds) / 1e18, ok)
        for (unit, outcome) in zip(batch, outcomes) { unit.completion(outcome) }
    }

    /// Commits `batch` and says what became of each unit, in order.
    private func commitUnits(_ batch: ArraySlice<Unit>) async -> [Result<Void, any Error>] {
        let outcomes: [Result<Void, any Error>]
        switch await commit(batch) {
        case .success(let refusals):
            outcomes = batch.indices.map { i in refusals[i].map { .failure($0) } ?? .success(()) }
            for (unit, outcome) in zip(batch, outcomes) { stopWriters(after: unit, outcome) }
        case .failure(let error) where batch.count == 1 && Self.isRepeatedTempId(error):
            outcomes = [.failure(repeatedTempId(batch[batch.startIndex]))]
        case .failure(let error) where Self.isRepeatedTempId(error):
            // A message repeats a tempId stored meanwhile (a resend, written through another node or after its
            // original's deadline): its unit is refused as a conflict, found with one read, and the others are
            // committed together again, not one by one, so that one user's resend does not cost everyone's batch a
            // commit per unit.
            var byIndex: [Int: Result<Void, any Error>] = [:]
            if let repeating = try? await unitsRepeatingStoredTempIds(batch), !repeating.isEmpty {
                let others = batch.indices.filter { !repeating.contains($0) }
                if !others.isEmpty {
                    let rest = await commitUnits(ArraySlice(others.map { batch[$0] }))
                    for (i, outcome) in zip(others, rest) { byIndex[i] = outcome }
                }
                // Fenced after the others are committed: a write of the same writer before the repeat still lands.
                for i in repeating { byIndex[i] = .failure(repeatedTempId(batch[i])) }
                outcomes = batch.indices.map { byIndex[$0]! }
            } else {
                outcomes = await commitOneByOne(batch, after: error)
            }
        case .failure(let error) where Self.refusesData(error) && batch.count > 1:
            outcomes = await commitOneByOne(batch, after: error)
        case .failure(let error):
            logger.error("store commit failed; nothing in this batch was acknowledged", metadata: ["error": "\(Self.describe(error))", "units": "\(batch.count)"])
            outcomes = Array(repeating: .failure(error), count: batch.count)
            for unit in batch { stopWriters(after: unit, .failure(error)) }
        }
        return outcomes
    }

    /// The indices of `batch`'s units that insert a message whose sender's tempId is stored in its thread already.
    private func unitsRepeatingStoredTempIds(_ batch: ArraySlice<Unit>) async throws -> Set<Int> {
        var threads: [String] = [], tempIds: [String] = [], senders: [String] = [], units: [Int64] = []
        for i in batch.indices {
            for case .insertMessage(let message) in batch[i].writes {
                guard let tempId = message.tempId else { continue }
                threads.append(message.threadId); tempIds.append(tempId); senders.append(message.senderId); units.append(Int64(i))
            }
        }
        guard !units.isEmpty else { return [] }
        return try await bounded { [threads, tempIds, senders, units] db in
            var found = Set<Int>()
            for try await unit in try await db.collect(
                """
                SELECT u.i FROM unnest(\(threads)::text[], \(tempIds)::text[], \(senders)::text[], \(units)::bigint[]) AS u(t, temp, sender, i)
                JOIN chat.threads th ON th.id = u.t
                JOIN chat.messages m ON m.thread_no = th.no AND m.temp_id = u.temp AND m.sender_id = u.sender
                """, logger: self.logger
            ).decode(Int64.self) {
                found.insert(Int(unit))
            }
            return found
        }
    }

    /// After the database refused `batch` as a whole (data it cannot hold, a constraint): one unit must not take the
    /// whole batch down, so each unit is committed on its own and only the one at fault is refused.
    private func commitOneByOne(_ batch: ArraySlice<Unit>, after error: any Error) async -> [Result<Void, any Error>] {
        logger.warning("batch refused by the database; committing its units one by one", metadata: ["error": "\(Self.describe(error))"])
        var each: [Result<Void, any Error>] = []
        for i in batch.indices {
            switch await commit(batch[i...i]) {
            case .success(let refusals): each.append(refusals[i].map { .failure($0) } ?? .success(()))
            case .failure(let error) where Self.isRepeatedTempId(error): each.append(.failure(repeatedTempId(batch[i])))
            case .failure(let error): each.append(.failure(error))
            }
            // Before the next unit is checked: a unit of the same writer after this one must see the stop.
            stopWriters(after: batch[i], each[each.count - 1])
        }
        return each
    }

    /// Whether the database refused what a transaction writes (SQLSTATE classes 22, data it cannot hold; 23, a
    /// constraint; 54, a limit such as an index row's size): one of its units may be at fault. Any other error says
    /// nothing about the units (a connection cut by an administrator or a shutdown, 57P01; too many connections;
    /// a disk full): committed again one by one, each unit waited out the commit deadline for a connection (found by a
    /// review: eight sends answered after eight deadlines).
    static func refusesData(_ error: any Error) -> Bool {
        guard let state = serverError(error)?.serverInfo?[.sqlState] else { return false }
        return ["22", "23", "54"].contains(state.prefix(2))
    }

    /// Whether the database refused a message because its sender's tempId is stored in its thread already
    /// (`PostgresSchema.tempIdIndex`).
    static func isRepeatedTempId(_ error: any Error) -> Bool {
        guard let info = serverError(error)?.serverInfo else { return false }
        return info[.sqlState] == "23505" && info[.constraintName] == PostgresSchema.tempIdIndex
    }

    /// The refusal of a unit whose message repeats a tempId stored meanwhile (its original outlasted its deadline,
    /// or came through another node): a conflict, like a seq another node took first, so the writer catches up (and
    /// then finds the original by its tempId and answers with it) instead of failing; its epoch is fenced, as after
    /// any conflict.
    private func repeatedTempId(_ unit: Unit) -> StoreError {
        for case .fence(let thread, let epoch, _) in unit.writes { fences.fence(thread, epoch: epoch) }
        logger.notice("a resent message was refused: its tempId is stored in its thread already")
        return StoreError("a message with this tempId is stored in the thread already", conflict: true)
    }

    /// A unit that failed (not stored, and not as a conflict or a move) stops its writers' epochs (`WriterFences`),
    /// before the next batch is checked.
    private func stopWriters(after unit: Unit, _ outcome: Result<Void, any Error>) {
        guard case .failure(let error) = outcome, !(error is StoreRebased), !((error as? StoreError)?.isConflict ?? false) else { return }
        for case .fence(let thread, let epoch, _) in unit.writes { fences.stop(thread, epoch: epoch) }
    }

    /// One transaction for `units`: the refusals by index, or why the whole transaction failed.
    private func commit(_ units: ArraySlice<Unit>) async -> Result<[Int: any Error], any Error> {
        // A deadlock or serialization failure is PostgreSQL asking for the transaction again: up to 4 attempts.
        var attempt = 0
        while true {
            attempt += 1
            let result = await commitWithin(commitTimeout, units)
            guard case .failure(let error) = result, attempt < 4,
                let state = Self.serverError(error)?.serverInfo?[.sqlState], state == "40P01" || state == "40001"
            else { return result }
            logger.notice("commit retried", metadata: ["sqlState": "\(state)", "attempt": "\(attempt)"])
            try? await Task.sleep(for: .milliseconds(Int.random(in: 1...(5 * attempt))))
        }
    }

    /// `commitOnce`, or a failure once `limit` has passed (PostgreSQL down or unreachable: the pool would wait for
    /// a connection indefinitely, and sends must be answered `internal` in bounded time instead). The abandoned
    /// attempt is cancelled; if it committed after all, nothing was acknowledged, and its announcement is applied
    /// here as another node's would be (`AbandonedCommits`). A commit that failed otherwise than by the server's
    /// refusal is listed too: a connection lost after the statement went out leaves the outcome just as unknown.
    private func commitWithin(_ limit: Duration, _ units: ArraySlice<Unit>) async -> Result<[Int: any Error], any Error> {
        // Refused before anything was sent (the database is not answering): nothing to list as abandoned.
        if let refusal = stalled.refusal() { return .failure(refusal) }
        let result: Result<[Int: any Error], any Error>
        do {
            result = try await Self.withConnection(client, within: limit, stalled: stalled) { db in await self.commitOnce(units, on: db) }
        } catch {
            result = .failure(error)
        }
        if case .failure(let error) = result, Self.outcomeUnknown(error) { abandoned.note(units.lazy.flatMap(\.writes)) }
        return result
    }

    /// Whether a failed commit may have committed all the same: any failure but the server's refusal of a statement,
    /// and an administrator's or a shutdown's end of the connection (SQLSTATE class 57, 08, or a FATAL): PostgreSQL
    /// holds interrupts while it flushes a commit and acts on one right after, so a fast shutdown can end a
    /// connection whose procedure has just committed, reporting the error "at COMMIT" (an outside probe saw it there).
    static func outcomeUnknown(_ error: any Error) -> Bool {
        guard let info = serverError(error)?.serverInfo else { return true }
        if let state = info[.sqlState], state.hasPrefix("57") || state.hasPrefix("08") { return true }
        return info[.severity] == "FATAL" || info[.severity] == "PANIC"
    }

    /// `body` (a read) on a connection of the pool, or a failure once `commitTimeout` has passed: while PostgreSQL is
    /// unreachable the pool waits for a connection indefinitely, and a command waiting on a read must be answered in
    /// bounded time. At the deadline the connection is closed (`withConnection`).
    func bounded<T: Sendable>(_ body: @escaping @Sendable (PostgresConnection) async throws -> T) async throws -> T {
        try await Self.withConnection(client, within: commitTimeout, stalled: stalled, body)
    }

    public func loadThread(_ id: ThreadID, recentChunks: Int) async throws -> ThreadSnapshot? {
        try await bounded { db in try await self.loadThreadUnbounded(id, recentChunks: recentChunks, db: db) }
    }

    public func threadIDs(of key: SessionKey) async throws -> [ThreadID] {
        try await bounded { db in try await self.threadIDsUnbounded(of: key, db: db) }
    }

    public func directThread(company: CompanyID, between a: UserID, and b: UserID) async throws -> ThreadID? {
        try await bounded { db in try await self.directThreadUnbounded(company: company, between: a, and: b, db: db) }
    }

    public func threadID(ofMessage id: MessageID, company: CompanyID) async throws -> ThreadID? {
        try await bounded { db in try await self.threadIDUnbounded(ofMessage: id, company: company, db: db) }
    }

    public func threadHead(of id: ThreadID, reader: UserID, company: CompanyID?) async throws -> ThreadHead? {
        try await bounded { db in
            // Another company's row is passed over before its members are read, as a missing one is.
            let query: PostgresQuery =
                if let company {
                    """
                    SELECT t.company_id, t.last_seq, EXISTS (SELECT 1 FROM chat.members m WHERE m.thread_id = t.id AND m.user_id = \(reader))
                    FROM chat.threads t WHERE t.id = \(id) AND t.company_id = \(company)
                    """
                } else {
                    """
                    SELECT t.company_id, t.last_seq, EXISTS (SELECT 1 FROM chat.members m WHERE m.thread_id = t.id AND m.user_id = \(reader))
                    FROM chat.threads t WHERE t.id = \(id)
                    """
                }
            for try await (company, last, member) in try await db.collect(query, logger: self.logger).decode((String, Int64, Bool).self) {
                return ThreadHead(company: company, lastSeq: Int(last), isMember: member)
            }
            return nil
        }
    }

    /// The chunks of a query whose rows are `first_seq, last_seq, data`.
    static func chunks(_ rows: CollectedRows) async throws -> [HistoryChunk] {
        var chunks: [HistoryChunk] = []
        for try await (first, last, data) in rows.decode((Int64, Int64, ByteBuffer).self) {
            chunks.append(HistoryChunk(firstSeq: Int(first), lastSeq: Int(last), data: Array(buffer: data)))
        }
        return chunks
    }

    public func chunks(of thread: ThreadID, overlapping seqs: ClosedRange<Int>) async throws -> [HistoryChunk] {
        try await bounded { db in
            try await Self.chunks(try await db.collect(
                // The chunks starting in the range, and the one before it (which may reach into it): two index ranges.
                """
                SELECT first_seq, last_seq, data FROM chat.chunks
                WHERE thread_id = \(thread) AND first_seq BETWEEN \(seqs.lowerBound) AND \(seqs.upperBound)
                UNION ALL
                SELECT * FROM (SELECT first_seq, last_seq, data FROM chat.chunks WHERE thread_id = \(thread) AND first_seq < \(seqs.lowerBound)
                               ORDER BY first_seq DESC LIMIT 1) AS b WHERE last_seq >= \(seqs.lowerBound)
                ORDER BY first_seq
                """, logger: self.logger))
        }
    }

    public func eventSeqs(of thread: ThreadID, messages ids: [MessageID]) async throws -> [MessageID: [Int]] {
        guard !ids.isEmpty else { return [:] }
        return try await bounded { db in
            // One statement, one snapshot: each message's seq, then its edit and delete events' seqs.
            var out: [MessageID: [Int]] = [:]
            for try await (id, seq) in try await db.collect(
                """
                SELECT id, seq FROM (
                    SELECT id, seq, 0 AS event FROM chat.messages WHERE thread_no = (SELECT no FROM chat.threads WHERE id = \(thread)) AND id = ANY(\(ids))
                    UNION ALL
                    SELECT message_id, seq, 1 FROM chat.events WHERE thread_id = \(thread) AND message_id = ANY(\(ids))
                ) AS found ORDER BY event, seq
                """, logger: self.logger
            ).decode((String, Int64).self) {
                if out[id] != nil {
                    out[id]!.append(Int(seq))
                } else {
                    out[id] = [Int(seq)]
                }
            }
            return out
        }
    }

    public func messageSeq(of thread: ThreadID, sender: UserID, tempId: String) async throws -> Int? {
        try await bounded { db in
            for try await seq in try await db.collect(
                """
                SELECT seq FROM chat.messages WHERE thread_no = (SELECT no FROM chat.threads WHERE id = \(thread)) AND temp_id = \(tempId) AND sender_id = \(sender)
                ORDER BY seq LIMIT 1
                """, logger: self.logger
            ).decode(Int64.self) {
                return Int(seq)
            }
            return nil
        }
    }

    public func unreadCount(of thread: ThreadID, reader: UserID, in seqs: ClosedRange<Int>) async throws -> Int {
        try await bounded { db in
            for try await count in try await db.collect(
                """
                SELECT count(*) FROM chat.messages WHERE thread_no = (SELECT no FROM chat.threads WHERE id = \(thread)) AND seq BETWEEN \(seqs.lowerBound) AND \(seqs.upperBound)
                AND sender_id <> \(reader) AND deleted_at IS NULL
                """, logger: self.logger
            ).decode(Int64.self) {
                return Int(count)
            }
            return 0
        }
    }

    public func messagesBySender(
        of thread: ThreadID, in seqs: ClosedRange<Int>, excluding reader: UserID
    ) async throws -> [(sender: UserID, ids: [MessageID])] {
        try await bounded { db in
            var rows: [(sender: UserID, id: MessageID)] = []
            for try await (sender, id) in try await db.collect(
                """
                SELECT sender_id, id FROM chat.messages WHERE thread_no = (SELECT no FROM chat.threads WHERE id = \(thread)) AND seq BETWEEN \(seqs.lowerBound) AND \(seqs.upperBound)
                AND sender_id <> \(reader) AND deleted_at IS NULL ORDER BY seq
                """, logger: self.logger
            ).decode((String, String).self) {
                rows.append((sender, id))
            }
            return groupedBySender(rows)
        }
    }

    public func events(in ranges: [ThreadRange]) async throws -> [ThreadID: [ThreadEvent]] {
        guard !ranges.isEmpty else { return [:] }
        return try await bounded { db in try await self.eventsUnbounded(in: ranges, db: db) }
    }

    public func members(of thread: ThreadID) async throws -> ThreadMembers {
        try await bounded { db in try await Self.members(of: thread, db: db, logger: self.logger) }
    }

    /// From `chat.member_changes` (schema version 12), in the order of its ids: the thread's row lock orders its
    /// commits, so its rows' ids follow its commit order.
    public func memberChanges(of thread: ThreadID, company: CompanyID, from position: Int) async throws -> [ClusterChange] {
        try await bounded { db in try await Self.memberChanges(of: thread, company: company, from: position, db: db, logger: self.logger) }
    }

    /// Both reads in one REPEATABLE READ transaction, so one snapshot.
    public func memberLog(of thread: ThreadID, company: CompanyID, from position: Int) async throws -> MemberLog {
        try await bounded { db in
            try await db.transaction(Self.snapshotRead, logger: self.logger) { db in
                MemberLog(
                    changes: try await Self.memberChanges(of: thread, company: company, from: position, db: db, logger: self.logger),
                    members: try await Self.members(of: thread, db: db, logger: self.logger))
            }
        }
    }

    private static func memberChanges(
        of thread: ThreadID, company: CompanyID, from position: Int, db: PostgresConnection, logger: Logger
    ) async throws -> [ClusterChange] {
        var changes: [ClusterChange] = []
        for try await (asOf, version, added, removed) in try await db.collect(
            """
            SELECT as_of, members_version, added, removed FROM chat.member_changes
            WHERE thread_id = \(thread) AND as_of >= \(Int64(position)) ORDER BY id
            """, logger: logger
        ).decode((Int64, Int64, [String], [String]).self) {
            changes.append(.membership(thread, company: company, asOf: Int(asOf), created: false, added: added, removed: removed, membersVersion: version))
        }
        return changes
    }

    public func memberships(of threads: [ThreadID], alsoRemovedWithin window: Duration?) async throws -> [(thread: ThreadID, company: CompanyID, users: [UserID])] {
        try await bounded { db in try await self.membershipsUnbounded(of: threads, alsoRemovedWithin: window, db: db) }
    }

    public func onlineElsewhere(company: CompanyID, among users: [UserID]) async throws -> Set<UserID> {
        try await bounded { db in try await self.presence.onlineElsewhere(company: company, among: users, on: db, logger: self.logger) }
    }

    public func onlineElsewhereHeard(company: CompanyID, among users: [UserID]) async throws -> [UserID: Timestamp] {
        try await bounded { db in try await self.presence.onlineElsewhereHeard(company: company, among: users, on: db, logger: self.logger) }
    }

    /// `lastSeqStoredBeforeCut` with one cut for both tables: `age` before the server's clock. Rows stored before this
    /// node's feed was first heard from count as old too: they were never announced here, so none is on its way.
    /// While the feed may have lost announcements (its connection dropped, and the `.resync` that makes up for it is
    /// not taken yet), rows stored since then count as new whatever their age: theirs may never come.
    public func seqStored(before age: Duration, of thread: ThreadID) async throws -> Int {
        let seconds = Double(age.components.seconds) + Double(age.components.attoseconds) / 1e18
        let heardFrom = feed.heardFrom ?? .distantFuture, unheard = feed.unheardSince ?? .distantFuture
        return try await bounded { db in
            for try await seq in try await db.collect(
                """
                WITH cut(at) AS (SELECT least(greatest(clock_timestamp() - make_interval(secs => \(seconds)), \(heardFrom)), \(unheard)))
                SELECT \(unescaped: Self.lastSeqStoredBeforeCut) FROM chat.threads t, cut WHERE t.id = \(thread)
                """,
                logger: self.logger
            ).decode(Int64.self) {
                return Int(seq)
            }
            return 0
        }
    }

    /// SQL for the last seq of thread `t` among its events stored before `cut.at` (0 if none): the greater of a
    /// backward scan of its messages and one of its edit events, each stopping at the first older row (rows from
    /// before schema version 8 have no `stored_at` and count as older).
    private static let lastSeqStoredBeforeCut = """
        coalesce(greatest(
            (SELECT m.seq FROM chat.messages m WHERE m.thread_no = t.no AND (m.stored_at IS NULL OR m.stored_at < cut.at)
             ORDER BY m.seq DESC LIMIT 1),
            (SELECT e.seq FROM chat.events e WHERE e.thread_id = t.id AND (e.stored_at IS NULL OR e.stored_at < cut.at)
             ORDER BY e.seq DESC LIMIT 1)), 0)
        """

    /// The threads of `users` with an event or a member row stored from `since` on (the server's clock, `stored_at`
    /// and `added_at`): for each, the last seq of the events stored before then (a backward scan of the thread's key
    /// that stops at the first older row, so an unchanged thread costs two index probes and a look at its members)
    /// and the members added since.
    public func missed(by users: [SessionKey], since: Timestamp) async throws -> [MissedThread] {
        let start = Date(timeIntervalSince1970: Double(since.millis) / 1000)
        // 250 users per statement, each within the read deadline; a thread two statements name is kept once.
        var found: [ThreadID: MissedThread] = [:]
        var order: [ThreadID] = []
        for first in stride(from: 0, to: users.count, by: 250) {
            let part = Array(users[first..<min(first + 250, users.count)])
            for thread in try await bounded({ db in try await self.missedUnbounded(by: part, since: start, db: db) }) where found[thread.thread] == nil {
                order.append(thread.thread)
                found[thread.thread] = thread
            }
        }
        return order.map { found[$0]! }
    }

    /// The database's own refusal inside `error` (a statement it rejected), if that is what it is.
    static func serverError(_ error: any Error) -> PSQLError? {
        if let psql = error as? PSQLError { return psql.code == .server ? psql : nil }
        if let transaction = error as? PostgresTransactionError, let inner = transaction.closureError ?? transaction.commitError {
            return serverError(inner)
        }
        return nil
    }

    /// How this store's batches were committed so far.
    public struct CommitPaths: Sendable, Equatable {
        /// Batches written as one statement (`BatchPlan.singleStatement`).
        public var singleStatement = 0
        /// One-statement attempts that found a thread moved by another node, wrote nothing, and went on to the
        /// general path.
        public var moved = 0
        /// Batches written by the general path (BEGIN, lock, check, statements, COMMIT).
        public var general = 0
        /// Of the one-statement attempts (`singleStatement` and `moved`), those without receipts, chunks or offline
        /// notices, which take the leaner statement (`PreparedStatements.CommitMessages`).
        public var messagesOnly = 0

        public init(singleStatement: Int = 0, moved: Int = 0, general: Int = 0, messagesOnly: Int = 0) {
            self.singleStatement = singleStatement
            self.moved = moved
            self.general = general
            self.messagesOnly = messagesOnly
        }
    }

    public var commitPaths: CommitPaths { paths.withLock { $0 } }

    private func commitOnce(_ units: ArraySlice<Unit>, on db: PostgresConnection) async -> Result<[Int: any Error], any Error> {
        var plan = BatchPlan(units, fences: fences, nodeId: nodeId, carryEvents: presence.peersAlive)
        let relaxed = durability == .process
        do {
            if let statement = plan.singleStatement(relaxed: relaxed) {
                // One CALL of a procedure that commits before it answers (`PreparedStatements.commitProcedure`): the
                // answer comes after the commit, and an error raised at commit fails the call, so nothing is
                // acknowledged that PostgreSQL did not commit.
                let stored = try await statement.run(on: db, logger: self.logger)
                paths.withLock { paths in
                    if stored { paths.singleStatement += 1 } else { paths.moved += 1 }
                    if !statement.hasExtras { paths.messagesOnly += 1 }
                }
                if stored { return .success([:]) }
                // A thread was not where the batch expected it (another node wrote it): nothing was written.
            }
            paths.withLock { $0.general += 1 }
            try await db.transaction(logger: logger) { connection in
                // `process` durability: the commit returns before PostgreSQL flushes its WAL (a broker crash loses
                // nothing; a database crash may lose the last moments), as SQLite's synchronous=NORMAL.
                if relaxed { try await connection.query("SET LOCAL synchronous_commit = off", logger: logger) }
                try await plan.write(on: connection, logger: logger)
            }
            return .success(plan.refusals)
        } catch {
            return .failure(error)
        }
    }

    // MARK: - Reads

    private func loadThreadUnbounded(_ id: ThreadID, recentChunks: Int, db: PostgresConnection) async throws -> ThreadSnapshot? {
        // One snapshot for all the reads: other nodes commit to the thread meanwhile, and an index read before a
        // commit with a tail read after it would disagree.
        try await db.transaction(Self.snapshotRead, logger: logger) { db in try await self.readThread(id, recentChunks: recentChunks, db: db) }
    }

    /// Starts a transaction whose reads all see one snapshot.
    private static let snapshotRead: PostgresQuery = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"

    private func readThread(_ id: ThreadID, recentChunks: Int, db: PostgresConnection) async throws -> ThreadSnapshot? {
        var info: ThreadInfo?
        var no: Int64 = 0  // the thread's number, which keys its message rows
        for try await (tid, company, name, kind, createdBy, createdAt, number) in try await db.collect(
            "SELECT id, company_id, name, kind, created_by, \(unescaped: Self.millis("created_at")), no FROM chat.threads WHERE id = \(id)",
            logger: logger
        ).decode((String, String, String?, String, String, Int64, Int64).self) {
            guard let kind = ThreadKind(rawValue: kind) else { throw StoreError("thread \(id) has an unknown kind") }
            info = ThreadInfo(id: tid, companyId: company, name: name, kind: kind, createdBy: createdBy, createdAt: Timestamp(millis: createdAt))
            no = number
        }
        guard let info else { return nil }
        let members = try await Self.members(of: id, db: db, logger: logger)
        // The newest chunks only (the thread reads older ones back on demand), and where the omitted ones end.
        let chunks = try await Self.chunks(
            try await db.collect(
                "SELECT first_seq, last_seq, data FROM chat.chunks WHERE thread_id = \(id) ORDER BY first_seq DESC LIMIT \(Int64(max(recentChunks, 1)))",
                logger: logger)
        ).reversed()
        let sealed = chunks.last?.lastSeq ?? 0
        let omittedThrough = (chunks.first?.firstSeq ?? 1) - 1
        var index: [MessageIndexEntry] = []
        for try await (seq, mid, sender, deleted, tempId) in try await db.collect(
            "SELECT seq, id, sender_id, deleted_at IS NOT NULL, temp_id FROM chat.messages WHERE thread_no = \(no) ORDER BY seq",
            logger: logger
        ).decode((Int64, String, String, Bool, String?).self) {
            index.append(MessageIndexEntry(seq: Int(seq), id: mid, senderId: sender, deleted: deleted, tempId: tempId))
        }
        var edits: [(seq: Int, kind: EventKind, messageId: MessageID)] = []
        for try await (seq, kind, mid) in try await db.collect(
            "SELECT seq, kind, message_id FROM chat.events WHERE thread_id = \(id) ORDER BY seq", logger: logger
        ).decode((Int64, String, String).self) {
            if let kind = EventKind(rawValue: kind) { edits.append((Int(seq), kind, mid)) }
        }
        var messages: [Message] = []
        for try await row in try await db.collect(
            "SELECT \(unescaped: Self.messageColumns) FROM chat.messages WHERE thread_no = \(no) AND seq > \(Int64(sealed)) ORDER BY seq",
            logger: logger
        ) {
            messages.append(try Self.message(row, threadId: id))
        }
        var byId: [MessageID: Message] = [:]
        for m in messages { byId[m.id] = m }
        let missing = Array(Set(edits.filter { $0.seq > sealed && byId[$0.messageId] == nil }.map(\.messageId)))
        if !missing.isEmpty {
            for try await row in try await db.collect(
                "SELECT \(unescaped: Self.messageColumns) FROM chat.messages WHERE thread_no = \(no) AND id = ANY(\(missing))",
                logger: logger
            ) {
                let m = try Self.message(row, threadId: id)
                byId[m.id] = m
            }
        }
        let tail = ThreadSnapshot.tail(afterSeq: sealed, messages: messages, edits: edits) { byId[$0] }
        var snapshot = ThreadSnapshot(
            info: info, members: members.list, chunks: Array(chunks), tail: tail, index: index, editEvents: edits.map { ($0.seq, $0.messageId) })
        snapshot.membersVersion = members.version
        if omittedThrough > 0 {
            snapshot.omittedThrough = omittedThrough
            for try await row in try await db.collect(
                """
                SELECT \(unescaped: Self.messageColumns) FROM chat.messages WHERE thread_no = \(no) AND seq <= \(Int64(omittedThrough))
                ORDER BY seq DESC LIMIT 1
                """, logger: logger
            ) {
                snapshot.newestOmittedMessage = try Self.message(row, threadId: id)
            }
        }
        return snapshot
    }

    /// `column` (a `timestamptz`) as Unix milliseconds.
    static func millis(_ column: String) -> String { "round(extract(epoch FROM \(column)) * 1000)::bigint" }

    static let messageColumns = messageColumns(qualified: nil)

    /// The columns `message(_:threadId:)` reads, optionally qualified by a table alias.
    static func messageColumns(qualified alias: String?) -> String {
        let p = alias.map { $0 + "." } ?? ""
        return "\(p)seq, \(p)id, \(p)sender_id, \(p)type, \(p)content, \(p)attachment_url, \(p)attachment_type, \(millis(p + "created_at")), "
            + "\(millis(p + "edited_at")), \(millis(p + "deleted_at")), \(p)temp_id"
    }

    /// The message in `row`'s `messageColumns`, which start after `skipping` other columns.
    static func message(_ row: PostgresRow, threadId: ThreadID, skipping: Int = 0) throws -> Message {
        let cells = row.makeRandomAccess()
        let seq = try cells[skipping].decode(Int64.self), id = try cells[skipping + 1].decode(String.self)
        let sender = try cells[skipping + 2].decode(String.self), type = try cells[skipping + 3].decode(String.self)
        let content = try cells[skipping + 4].decode(String.self), url = try cells[skipping + 5].decode(String?.self)
        let attachmentType = try cells[skipping + 6].decode(String?.self), created = try cells[skipping + 7].decode(Int64.self)
        let edited = try cells[skipping + 8].decode(Int64?.self), deleted = try cells[skipping + 9].decode(Int64?.self)
        let tempId = try cells[skipping + 10].decode(String?.self)
        return Message(
            id: id, threadId: threadId, seq: Int(seq), senderId: sender, type: MessageType(rawValue: type) ?? .text, content: content,
            attachmentUrl: url, attachmentType: attachmentType, createdAt: Timestamp(millis: created), editedAt: edited.map(Timestamp.init(millis:)),
            deletedAt: deleted.map(Timestamp.init(millis:)), tempId: tempId)
    }

    private func threadIDsUnbounded(of key: SessionKey, db: PostgresConnection) async throws -> [ThreadID] {
        var ids: [ThreadID] = []
        for try await id in try await db.collect(
            """
            SELECT t.id FROM chat.members m JOIN chat.threads t ON t.id = m.thread_id
            WHERE m.user_id = \(key.userId) AND t.company_id = \(key.companyId) ORDER BY t.created_at, t.id
            """, logger: logger
        ).decode(String.self) {
            ids.append(id)
        }
        return ids
    }

    private func directThreadUnbounded(company: CompanyID, between a: UserID, and b: UserID, db: PostgresConnection) async throws -> ThreadID? {
        let key = Self.directKey([a, b])
        for try await id in try await db.collect(
            "SELECT id FROM chat.threads WHERE company_id = \(company) AND direct_key = \(key)", logger: logger
        ).decode(String.self) {
            return id
        }
        return nil
    }

    private func threadIDUnbounded(ofMessage id: MessageID, company: CompanyID, db: PostgresConnection) async throws -> ThreadID? {
        for try await thread in try await db.collect(
            "SELECT t.id FROM chat.messages m JOIN chat.threads t ON t.no = m.thread_no WHERE m.id = \(id) AND t.company_id = \(company) LIMIT 1",
            logger: logger
        ).decode(String.self) {
            return thread
        }
        return nil
    }

    /// An unambiguous key for the pair of a direct thread: the sorted ids as a JSON array.
    static func directKey(_ members: [UserID]) -> String {
        JSONWriter.encodeString(.array(members.sorted().map { .string($0) }))
    }

    /// Not ready while calls are refused (the database is taken for unreachable, or too many calls are stalled), while
    /// the LISTEN connection is down (this node would serve its sockets without the other nodes' changes until it
    /// is back and has re-read them), or when `SELECT 1` gets no answer within 2 s.
    public func unreadiness() async -> String? {
        if let refusal = stalled.refusal() { return refusal.description }
        if !feed.isListening { return "not listening to the other nodes' changes (the LISTEN connection is down)" }
        do {
            try await Self.withConnection(client, within: .seconds(2), stalled: stalled) { db in _ = try await db.collect("SELECT 1", logger: self.logger) }
            return nil
        } catch {
            return "the database did not answer: \(Self.describe(error))"
        }
    }

    /// Stops taking writes, waits for every queued write to commit, and closes the connections.
    public func shutdown() async {
        for queue in queues { await queue.closeAndWait() }
        presenceTask.cancel()
        await presenceTask.value
        publisher.finish()
        await publisherTask.value
        listenerTask.cancel()
        await listenerTask.value
        feed.finish()
        clientTask.cancel()
        await clientTask.value
    }

    // MARK: - Several nodes

    public func nextChanges() async -> [ClusterChange]? {
        await feed.next()
    }

    public func publish(_ changes: [ClusterChange]) {
        publisher.yield(changes)
    }

    public func presenceChanged(_ key: SessionKey, online: @escaping @Sendable () -> Bool) {
        presence.changed(key, online: online)
    }

    /// The most seqs a read-back may span and still run prepared, with its rows read through postgres-nio's sequence:
    /// a live read-back's few events answer in one flush. A longer one (a catch-up) is planned each time but read as
    /// `CollectedRows`: a large answer cut without an error while the sequence waits for its reader stopped the
    /// process (`CollectedRows`).
    static let preparedReadBackSpan: Int64 = 16

    private func eventsUnbounded(in ranges: [ThreadRange], db: PostgresConnection) async throws -> [ThreadID: [ThreadEvent]] {
        // One statement, so one snapshot: messages and edit/delete events in each range, each with the message as it
        // is now, for any number of threads at once.
        let threads = ranges.map(\.thread), after = ranges.map { Int64($0.after) }, upTo = ranges.map { Int64(min($0.upTo, Int(Int64.max))) }
        var events: [ThreadID: [ThreadEvent]] = [:]
        let statement = PreparedStatements.ReadEvents(threads: threads, after: after, upTo: upTo)
        var rows: [PostgresRow] = []
        if zip(after, upTo).reduce(0, { $0 + min(max(0, $1.1 - $1.0), Self.preparedReadBackSpan + 1) }) <= Self.preparedReadBackSpan {
            for try await row in try await db.execute(statement, logger: logger) { rows.append(row) }
        } else {
            rows = try await db.collect(PostgresQuery(unsafeSQL: PreparedStatements.ReadEvents.sql, binds: try statement.makeBindings()), logger: logger).rows
        }
        for row in rows {
            let cells = row.makeRandomAccess()
            let thread = try cells[0].decode(String.self)
            let at = try cells[1].decode(Int64.self)
            let kind = try cells[2].decode(String.self)
            guard let eventKind = EventKind(rawValue: kind) else { throw StoreError("thread \(thread) has an event of unknown kind \(kind)") }
            events[thread, default: []].append(ThreadEvent(seq: Int(at), kind: eventKind, message: try Self.message(row, threadId: thread, skipping: 3)))
        }
        return events
    }

    /// The thread's members and its members version, in one statement (one snapshot); no members and version 0 if
    /// the thread does not exist.
    static func members(of thread: ThreadID, db: PostgresConnection, logger: Logger) async throws -> ThreadMembers {
        var members = ThreadMembers([], version: 0)
        for try await (version, user, delivered, read) in try await db.collect(
            """
            SELECT t.members_version, m.user_id, m.delivered_seq, m.read_seq
            FROM chat.threads t LEFT JOIN chat.members m ON m.thread_id = t.id WHERE t.id = \(thread) ORDER BY m.position
            """, logger: logger
        ).decode((Int64, String?, Int64?, Int64?).self) {
            members.version = version
            guard let user else { continue }
            members.list.append((user, MemberMarks(deliveredSeq: Int(delivered ?? 0), readSeq: Int(read ?? 0))))
        }
        return members
    }

    private func missedUnbounded(by users: [SessionKey], since: Date, db: PostgresConnection) async throws -> [MissedThread] {
        let companies = users.map(\.companyId), ids = users.map(\.userId)
        var missed: [MissedThread] = []
        for try await (thread, company, before, last, added) in try await db.collect(
            """
            WITH cut(at) AS (SELECT \(since)::timestamptz)
            SELECT * FROM (
                SELECT t.id, t.company_id,
                       \(unescaped: Self.lastSeqStoredBeforeCut) AS before_seq,
                       t.last_seq,
                       ARRAY(SELECT a.user_id FROM chat.members a WHERE a.thread_id = t.id AND a.added_at >= cut.at ORDER BY a.position) AS added
                FROM chat.threads t, cut
                WHERE t.id IN (SELECT mb.thread_id FROM unnest(\(companies)::text[], \(ids)::text[]) AS o(company_id, user_id)
                               JOIN chat.members mb ON mb.user_id = o.user_id
                               JOIN chat.threads ot ON ot.id = mb.thread_id AND ot.company_id = o.company_id)
            ) x
            WHERE last_seq > before_seq OR cardinality(added) > 0
            """,
            logger: logger
        ).decode((String, String, Int64, Int64, [String]).self) {
            missed.append(MissedThread(thread: thread, company: company, before: Int(before), last: Int(last), added: added))
        }
        return missed
    }

    private func membershipsUnbounded(
        of threads: [ThreadID], alsoRemovedWithin window: Duration?, db: PostgresConnection
    ) async throws -> [(thread: ThreadID, company: CompanyID, users: [UserID])] {
        var found: [ThreadID: (company: CompanyID, users: [UserID])] = [:]
        var order: [ThreadID] = []
        let members: PostgresQuery = "SELECT t.id, t.company_id, m.user_id FROM chat.threads t JOIN chat.members m ON m.thread_id = t.id WHERE t.id = ANY(\(threads))"
        let seconds = window.map { Double($0.components.seconds) + Double($0.components.attoseconds) / 1e18 }
        // Users the log says were removed lately (`member_changes`, keyed by the thread first), a user listed twice
        // at most.
        let query: PostgresQuery = seconds.map { seconds in
            """
            SELECT t.id, t.company_id, m.user_id FROM chat.threads t JOIN chat.members m ON m.thread_id = t.id WHERE t.id = ANY(\(threads))
            UNION ALL
            SELECT t.id, t.company_id, r.user_id FROM chat.threads t JOIN chat.member_changes c ON c.thread_id = t.id
                CROSS JOIN LATERAL unnest(c.removed) AS r(user_id)
            WHERE t.id = ANY(\(threads)) AND c.stored_at > clock_timestamp() - make_interval(secs => \(seconds))
            """
        } ?? members
        for try await (thread, company, user) in try await db.collect(query, logger: logger).decode((String, String, String).self) {
            if found[thread] == nil {
                order.append(thread)
                found[thread] = (company, [])
            }
            found[thread]!.users.append(user)
        }
        return order.map { ($0, found[$0]!.company, found[$0]!.users) }
    }
}
