import ChatCore
import Logging
import PostgresNIO
import Synchronization

/// This node's part of cross-node presence: which users have a live device here (`chat.presence` rows tagged with
/// the node id) and that the node is alive (`chat.nodes.seen_at`, written every `heartbeat`). Changes are gathered
/// and written in one statement pair every `flushInterval`; each user's state is read when written, so the order in
/// which connects and disconnects reported it does not matter. Readers count a node whose heartbeat is older than
/// `expiry` as gone, so a node killed without saying goodbye stops counting by itself; its rows are removed later by
/// whichever node cleans up. Each heartbeat also notes whether another node is alive (`peersAlive`).
final class PresenceWriter: Sendable {
    static let heartbeat = Duration.seconds(5)
    static let expirySeconds = 15
    static let flushInterval = Duration.milliseconds(100)
    /// How long a heartbeat or a flush may take; at the deadline its connection is closed (`LeasedConnection`).
    static let callLimit = Duration.seconds(5)

    private let client: PostgresClient
    private let nodeId: String
    private let logger: Logger
    private let dirty = Mutex<[SessionKey: @Sendable () -> Bool]>([:])
    private let peers = Atomic<Bool>(true)

    /// Whether another node's heartbeat was fresh at this node's last heartbeat (`true` until the first one, and kept
    /// as it was while heartbeats fail). A hint for what to put in notices, never for correctness.
    var peersAlive: Bool { peers.load(ordering: .relaxed) }

    init(client: PostgresClient, nodeId: String, logger: Logger) {
        self.client = client
        self.nodeId = nodeId
        self.logger = logger
    }

    func changed(_ key: SessionKey, online: @escaping @Sendable () -> Bool) {
        dirty.withLock { $0[key] = online }
    }

    /// Heartbeats and flushes until cancelled; then removes this node's rows.
    func run() async {
        var sinceBeat = Self.heartbeat
        while !Task.isCancelled {
            if sinceBeat >= Self.heartbeat {
                await beat()
                sinceBeat = .zero
            }
            await flush()
            try? await Task.sleep(for: Self.flushInterval)
            sinceBeat += Self.flushInterval
        }
        // In a task of its own: this one is cancelled, and a query of a cancelled task fails at once (the rows then
        // stayed until the heartbeat expired: a user whose sockets were all here read online 15 s after a shutdown).
        // At most 2 s: a database that does not answer cannot hold up the shutdown (the heartbeat expires instead).
        let client = client, nodeId = nodeId, logger = logger
        await Task {
            await withTaskGroup(of: Void.self) { group in
                group.addTask {
                    _ = try? await client.query("DELETE FROM chat.presence WHERE node_id = \(nodeId)", logger: logger)
                    _ = try? await client.query("DELETE FROM chat.nodes WHERE id = \(nodeId)", logger: logger)
                }
                group.addTask { try? await Task.sleep(for: .seconds(2)) }
                await group.next()
                group.cancelAll()
            }
        }.value
    }

    private func beat() async {
        do {
            try await PostgresMessageStore.withConnection(client, within: Self.callLimit) { [self] db in try await beat(on: db) }
        } catch {
            logger.warning("presence heartbeat failed", metadata: ["error": "\(PostgresMessageStore.describe(error))"])
        }
    }

    private func beat(on db: PostgresConnection) async throws {
        try await db.query("INSERT INTO chat.nodes(id) VALUES (\(nodeId)) ON CONFLICT (id) DO UPDATE SET seen_at = now()", logger: logger)
        for try await others in try await db.collect(
            """
            SELECT count(*) FROM chat.nodes WHERE id <> \(nodeId) AND seen_at > now() - make_interval(secs => \(Self.expirySeconds))
            """, logger: logger
        ).decode(Int64.self) {
            peers.store(others > 0, ordering: .relaxed)
        }
        // Nodes gone for an hour: their presence rows and themselves.
        try await db.query(
            """
            DELETE FROM chat.presence p USING chat.nodes n WHERE p.node_id = n.id AND n.seen_at < now() - interval '1 hour'
            """, logger: logger)
        try await db.query("DELETE FROM chat.nodes WHERE seen_at < now() - interval '1 hour'", logger: logger)
    }

    private func flush() async {
        let taken = dirty.withLock { d in
            defer { d = [:] }
            return d
        }
        guard !taken.isEmpty else { return }
        var onCompany: [String] = [], onUser: [String] = [], offCompany: [String] = [], offUser: [String] = []
        for (key, online) in taken {
            if online() {
                onCompany.append(key.companyId); onUser.append(key.userId)
            } else {
                offCompany.append(key.companyId); offUser.append(key.userId)
            }
        }
        do {
            try await PostgresMessageStore.withConnection(client, within: Self.callLimit) { [self, onCompany, onUser, offCompany, offUser] db in
                try await write(on: db, onCompany: onCompany, onUser: onUser, offCompany: offCompany, offUser: offUser)
            }
        } catch {
            // Tried again at the next flush, with the state as it is then.
            dirty.withLock { d in for (key, online) in taken where d[key] == nil { d[key] = online } }
            logger.warning("presence write failed", metadata: ["error": "\(PostgresMessageStore.describe(error))"])
        }
    }

    private func write(on db: PostgresConnection, onCompany: [String], onUser: [String], offCompany: [String], offUser: [String]) async throws {
        if !onUser.isEmpty {
            try await db.query(
                """
                INSERT INTO chat.presence(company_id, user_id, node_id)
                SELECT c, u, \(nodeId) FROM unnest(\(onCompany)::text[], \(onUser)::text[]) AS v(c, u) ON CONFLICT DO NOTHING
                """, logger: logger)
        }
        if !offUser.isEmpty {
            try await db.query(
                """
                DELETE FROM chat.presence p USING unnest(\(offCompany)::text[], \(offUser)::text[]) AS v(c, u)
                WHERE p.company_id = v.c AND p.user_id = v.u AND p.node_id = \(nodeId)
                """, logger: logger)
        }
    }

    func onlineElsewhere(company: CompanyID, among users: [UserID], on db: PostgresConnection, logger: Logger) async throws -> Set<UserID> {
        var found = Set<UserID>()
        for try await user in try await db.collect(
            """
            SELECT DISTINCT p.user_id FROM chat.presence p JOIN chat.nodes n ON n.id = p.node_id
            WHERE p.company_id = \(company) AND p.user_id = ANY(\(users)) AND p.node_id <> \(nodeId)
              AND n.seen_at > now() - make_interval(secs => \(Self.expirySeconds))
            """, logger: logger
        ).decode(String.self) {
            found.insert(user)
        }
        return found
    }

    /// `onlineElsewhere`, with the newest heartbeat (milliseconds of the server's clock) of the nodes each user is on.
    func onlineElsewhereHeard(company: CompanyID, among users: [UserID], on db: PostgresConnection, logger: Logger) async throws -> [UserID: Timestamp] {
        var found: [UserID: Timestamp] = [:]
        for try await (user, millis) in try await db.collect(
            """
            SELECT p.user_id, (extract(epoch FROM max(n.seen_at)) * 1000)::bigint FROM chat.presence p JOIN chat.nodes n ON n.id = p.node_id
            WHERE p.company_id = \(company) AND p.user_id = ANY(\(users)) AND p.node_id <> \(nodeId)
              AND n.seen_at > now() - make_interval(secs => \(Self.expirySeconds))
            GROUP BY p.user_id
            """, logger: logger
        ).decode((String, Int64).self) {
            found[user] = Timestamp(millis: millis)
        }
        return found
    }
}
