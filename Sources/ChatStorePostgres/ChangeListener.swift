import ChatCore
import Foundation
import Logging
import PostgresNIO
import Synchronization

/// The hand-over of other nodes' changes to the one consumer (the supervisor): changes accumulate in commit order and
/// `next()` takes everything accumulated at once, so a consumer that fell behind catches up in one step (one read
/// of the store for many commits) instead of one commit at a time. Bounded: past `limit` changes waiting, the
/// buffer is replaced by one `.resync`, which makes the consumer re-read from the store what they announced (an
/// announcement is a hint, the tables are the truth).
///
/// It also notes the server's clock at each answer of the LISTEN connection (`noteAlive`): every announcement of a
/// commit stored well before an answer has been heard. When the connection drops or the buffer overflows, the
/// `.resync` handed over carries the server time from which changes may have been missed (`hearingMarginMillis`
/// before the last answer heard, or before the last answer when the consumer last took a batch).
final class ChangeFeed: Sendable {
    private struct State {
        var buffer: [ClusterChange] = []
        var consumer: CheckedContinuation<[ClusterChange]?, Never>?
        var finished = false
        var listening = false
        /// The LISTEN connection is up (from its LISTEN until it is found dead or dropped).
        var listeningNow = false
        var listeningWaiters: [CheckedContinuation<Void, Never>] = []
        /// The server's clock up to which the listener has handled every announcement (`noteHandled`; kept across
        /// reconnections).
        var aliveAt: Timestamp?
        /// The server's clock at the first answer of the first LISTEN connection: what was committed before it was
        /// never announced to this node.
        var firstAliveAt: Date?
        /// `aliveAt` when the consumer last took a batch.
        var takenAliveAt: Timestamp?
        /// Since when changes may be unheard, for the `.resync` of the reconnection to come.
        var lostSince: Timestamp?
    }

    /// How long before the connection's last answer a commit's rows may have been stored without its announcement
    /// having arrived: a commit stores its rows, then commits within the store's 5 s deadline, and its announcement
    /// reaches every listener at once (milliseconds).
    static let hearingMarginMillis: Int64 = 10_000

    private let limit: Int
    private let state = Mutex(State())
    /// Told at each answer of a LISTEN connection: the database answers (`StalledCalls.databaseAnswered`).
    private let onAlive: @Sendable () -> Void

    init(limit: Int = 100_000, onAlive: @escaping @Sendable () -> Void = {}) {
        self.limit = limit
        self.onAlive = onAlive
    }

    /// Adds changes for the consumer.
    func yield(_ changes: [ClusterChange]) {
        let wake: (CheckedContinuation<[ClusterChange]?, Never>, [ClusterChange])? = state.withLock { s in
            guard !s.finished else { return nil }
            if s.buffer.count + changes.count > limit {
                // Everything after the consumer's last batch is dropped (a `.resync` among it included).
                var since = Self.margin(before: s.takenAliveAt ?? s.aliveAt)
                for case .resync(let earlier) in s.buffer + changes { since = Self.earliest(since, earlier) }
                s.buffer = [.resync(since: since)]
            } else {
                s.buffer += changes
            }
            guard let consumer = s.consumer else { return nil }
            s.consumer = nil
            s.takenAliveAt = s.aliveAt
            defer { s.buffer = [] }
            return (consumer, s.buffer)
        }
        if let (consumer, batch) = wake { consumer.resume(returning: batch) }
    }

    /// Everything announced since the last call, in commit order (waits while there is nothing); `nil` once finished.
    /// A cancelled consumer gets `nil`.
    func next() async -> [ClusterChange]? {
        await withTaskCancellationHandler {
            await withCheckedContinuation { (cont: CheckedContinuation<[ClusterChange]?, Never>) in
                let now: [ClusterChange]?? = state.withLock { s in
                    if !s.buffer.isEmpty {
                        defer { s.buffer = [] }
                        s.takenAliveAt = s.aliveAt
                        return .some(s.buffer)
                    }
                    if s.finished || Task.isCancelled { return .some(nil) }
                    s.consumer = cont
                    return .none
                }
                if let now { cont.resume(returning: now) }
            }
        } onCancel: {
            let consumer = state.withLock { s in
                defer { s.consumer = nil }
                return s.consumer
            }
            consumer?.resume(returning: nil)
        }
    }

    /// The LISTEN connection answered the watchdog's query at `serverTime`: the database answers, and the first
    /// answer says from when this node hears announcements (`heardFrom`).
    func noteAlive(_ serverTime: Date) {
        state.withLock { s in
            if s.firstAliveAt == nil { s.firstAliveAt = serverTime }
        }
        onAlive()
    }

    /// The listener handled this node's own marker (`ClusterNotice.marker`), sent by its watchdog after reading the
    /// server's clock at `serverTime`: every announcement of a commit made before then has been handled, since
    /// PostgreSQL delivers notifications in commit order. This, not the watchdog's answer, is what the hearing margin
    /// counts from: a listener held up by slow reads (a `chat.broadcasts` row per oversized event) may be seconds
    /// behind the watchdog, and the announcements queued behind it die with the connection.
    func noteHandled(upTo serverTime: Timestamp) {
        state.withLock { s in
            if (s.aliveAt?.millis ?? .min) < serverTime.millis { s.aliveAt = serverTime }
        }
    }

    /// The server's clock when this node's feed was first heard from (`nil` before): commits stored before it were
    /// never announced here.
    var heardFrom: Date? { state.withLock { $0.firstAliveAt } }

    /// Since when (the server's clock) announcements may have been lost and not made up for yet: from the drop of the
    /// LISTEN connection (or an overflow of the buffer) until the consumer takes the `.resync` that makes up for it;
    /// `nil` otherwise (or when unknown).
    var unheardSince: Date? {
        state.withLock { s in
            var since = s.lostSince
            for case .resync(let earlier) in s.buffer { since = Self.earliest(since, earlier) }
            return since.map { Date(timeIntervalSince1970: Double($0.millis) / 1000) }
        }
    }

    /// The LISTEN connection dropped: what was stored from `hearingMarginMillis` before its last answer on may be
    /// unheard (an earlier drop whose `.resync` is still to come keeps its earlier start).
    func connectionLost() {
        state.withLock { s in
            // Before the first marker was handled, the first answer of the first connection is where hearing began.
            let heard = s.aliveAt ?? s.firstAliveAt.map(Timestamp.init(roundingDown:))
            s.lostSince = Self.earliest(s.lostSince, Self.margin(before: heard))
            s.listeningNow = false
        }
    }

    /// Whether the LISTEN connection is up now (a dead one is found within the watchdog's 2 + 5 s).
    var isListening: Bool { state.withLock { $0.listeningNow } }

    /// Hands over the `.resync` of a reconnection, with the start of what the outage may have missed.
    func yieldResync() {
        let since = state.withLock { s in
            defer { s.lostSince = nil }
            return s.lostSince
        }
        yield([.resync(since: since)])
    }

    private static func margin(before answer: Timestamp?) -> Timestamp? {
        answer.map { Timestamp(millis: $0.millis - hearingMarginMillis) }
    }

    private static func earliest(_ a: Timestamp?, _ b: Timestamp?) -> Timestamp? {
        guard let a else { return b }
        guard let b else { return a }
        return min(a, b)
    }

    func markListening() {
        let waiters = state.withLock { s in
            s.listening = true
            s.listeningNow = true
            defer { s.listeningWaiters = [] }
            return s.listeningWaiters
        }
        for waiter in waiters { waiter.resume() }
    }

    /// Returns once the listener's first LISTEN is active (or at once if it already is).
    func waitUntilListening() async {
        await withCheckedContinuation { (cont: CheckedContinuation<Void, Never>) in
            let now = state.withLock { s in
                if s.listening { return true }
                s.listeningWaiters.append(cont)
                return false
            }
            if now { cont.resume() }
        }
    }

    func finish() {
        let consumer = state.withLock { s in
            s.finished = true
            defer { s.consumer = nil }
            return s.consumer
        }
        consumer?.resume(returning: nil)
        markListening()
    }
}

/// One node's LISTEN connection: a connection of its own (not from the pool), re-established by itself with backoff
/// when it drops (a PostgreSQL restart, a network cut), a `SELECT clock_timestamp()` every few seconds to notice a
/// dead peer (and to note the server's clock, `ChangeFeed.noteAlive`). After a reconnection the first thing handed
/// over is `.resync`, since announcements made meanwhile were lost. It also removes old `chat.broadcasts` rows now
/// and then.
struct ChangeListener {
    let configuration: PostgresConnection.Configuration
    let client: PostgresClient
    let nodeId: String
    let feed: ChangeFeed
    /// This node's own announcements are skipped, except for the threads listed here.
    let abandoned: AbandonedCommits
    let logger: Logger

    func run() async {
        var connectedBefore = false
        var backoff = Duration.milliseconds(100)
        while !Task.isCancelled {
            do {
                let connection = try await PostgresConnection.connect(configuration: configuration, id: 1, logger: logger)
                let reconnected = connectedBefore
                do {
                    try await withThrowingTaskGroup(of: Void.self) { group in
                        group.addTask {
                            try await connection.listen(on: ClusterNotice.channel) { notifications in
                                if reconnected {
                                    logger.notice("LISTEN re-established; re-reading active threads")
                                    feed.yieldResync()
                                }
                                feed.markListening()
                                for try await notification in notifications { try await handle(notification.payload) }
                            }
                        }
                        group.addTask { try await watchdog(connection) }
                        try await group.next()
                        group.cancelAll()
                    }
                } catch {
                    if !Task.isCancelled { logger.warning("LISTEN connection lost", metadata: ["error": "\(PostgresMessageStore.describe(error))"]) }
                }
                feed.connectionLost()
                connectedBefore = true
                backoff = .milliseconds(100)
                try? await connection.close()
            } catch {
                if !Task.isCancelled {
                    logger.warning("cannot connect the LISTEN connection", metadata: ["error": "\(PostgresMessageStore.describe(error))"])
                }
            }
            if Task.isCancelled { break }
            try? await Task.sleep(for: backoff)
            backoff = min(backoff * 2, .seconds(2))
        }
    }

    private func handle(_ payload: String) async throws {
        if ClusterNotice.isFrom(nodeId, payload) {
            if let handled = ClusterNotice.markerTime(payload, node: nodeId) { return feed.noteHandled(upTo: handled) }
            guard !abandoned.isEmpty, case .changes(_, let changes) = ClusterNotice.decode(payload) else { return }
            let late = abandoned.ownChangesToApply(changes)
            if !late.isEmpty { feed.yield(late) }
            return
        }
        switch ClusterNotice.decode(payload) {
        case .changes(let node, let changes) where node != nodeId && !changes.isEmpty:
            feed.yield(changes)
        case .broadcast(let node, let id) where node != nodeId:
            // Bounded like every other wait of the listener: a pool that cannot lend a connection must not stall the
            // feed. Past the deadline the LISTEN starts over, and the active threads are read again.
            let client = self.client, logger = self.logger
            let bodies = try await PostgresMessageStore.withConnection(client, within: .seconds(5)) { db async throws -> [String] in
                var bodies: [String] = []
                for try await body in try await db.collect("SELECT body FROM chat.broadcasts WHERE id = \(id)", logger: logger).decode(String.self) {
                    bodies.append(body)
                }
                return bodies
            }
            for body in bodies { feed.yield(ClusterNotice.decodeStored(body)) }
        default:
            break
        }
    }

    /// Fails when the connection stops answering, which ends the LISTEN and makes `run` reconnect. Each answer
    /// carries the server's clock (`ChangeFeed.noteAlive`); the first round runs at once.
    private func watchdog(_ connection: PostgresConnection) async throws {
        var rounds = 0
        while !Task.isCancelled {
            if rounds > 0 { try await Task.sleep(for: .seconds(2)) }
            let serverTime = try await PostgresMessageStore.withDeadline(.seconds(5)) { () async throws -> Date in
                for try await now in try await connection.collect("SELECT clock_timestamp()", logger: logger).decode(Date.self) { return now }
                throw StoreError("SELECT clock_timestamp() returned no row")
            }
            feed.noteAlive(serverTime)
            // A marker through the announcements' own stream: once the handler reaches it, everything committed
            // before `serverTime` was handled (`ChangeFeed.noteHandled`).
            let marker = ClusterNotice.marker(node: nodeId, at: serverTime)
            try await PostgresMessageStore.withDeadline(.seconds(5)) {
                _ = try await connection.collect("SELECT pg_notify(\(ClusterNotice.channel), \(marker))", logger: logger)
            }
            rounds += 1
            if rounds % 30 == 0 {
                // Bounded too: a clean-up that hangs would stop the watchdog, and a dead LISTEN would go unnoticed.
                let client = self.client, logger = self.logger
                _ = try? await PostgresMessageStore.withConnection(client, within: .seconds(5)) { db in
                    _ = try await db.query("DELETE FROM chat.broadcasts WHERE created_at < now() - interval '10 minutes'", logger: logger)
                    _ = try await db.query("DELETE FROM chat.member_changes WHERE stored_at < now() - interval '1 hour'", logger: logger)
                }
            }
        }
    }
}

extension Timestamp {
    /// `date` to the millisecond, rounded down (never later than the server's clock said).
    init(roundingDown date: Date) {
        self.init(millis: Int64((date.timeIntervalSince1970 * 1000).rounded(.down)))
    }
}
