import ChatCore

/// The bytes one user's sockets may make the broker read and decode, shared by all of them: `--user-rate-connections`
/// connections' worth of `--inbound-bytes-per-sec` and `--inbound-bytes-burst`. A connected session is charged its
/// own budget and its user's (`EngineSession.chargeInbound`), so a user gets no more decoding by opening many sockets
/// (up to `--max-sockets-per-user`) or by reconnecting for fresh ones (a user's bucket outlives their sockets until it
/// has refilled). Before its CONNECT a session has only its own budget (and the smaller pre-connect payload limit).
///
/// Split into shards by user (`KeyShards`): every message of every socket comes here.
final class UserInboundBudget: Sendable {
    private let shards: KeyShards<SessionKey, TokenBuckets<SessionKey>>

    init(bytesPerSecond: Double, burst: Double, connections: Double, shards count: Int = 16) {
        shards = KeyShards(count: count) {
            TokenBuckets(rate: bytesPerSecond * connections, burst: burst * connections, minimumPruneSize: 256)
        }
    }

    /// Charges `bytes` to `user`'s budget; returns how long until its debt is paid (0 within the budget).
    func charge(_ user: SessionKey, _ bytes: Int) -> UInt64 {
        shards.withLock(user) { $0.chargeReturningWait(user, Double(bytes)) }
    }
}
