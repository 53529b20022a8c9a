import ChatCore
import Synchronization

/// The bytes one user's sockets may make the broker read and decode, shared by all of them: `--user-rate-connections`
/// connections' worth of `--inbound-bytes-per-sec` and `--inbound-bytes-burst`. A connected session is charged its
/// own budget and its user's (`EngineSession.chargeInbound`), so a user gets no more decoding by opening many sockets
/// (up to `--max-sockets-per-user`) or by reconnecting for fresh ones (a user's bucket outlives their sockets until it
/// has refilled).
///
/// Sessions before their CONNECT (no token checked yet) share one budget of the same size, as if they were one user:
/// what all of them together make the broker decode is bounded, not only what each does. (With a budget per session
/// only, 48 tokenless websockets sending 1-byte noop messages, each within its own budget, kept 1.5 of 2 cores busy
/// and made a connected user's reads 300 to 1,000 times slower; found by an outside probe.)
///
/// Split into shards by user (`KeyShards`): every message of every socket comes here.
final class UserInboundBudget: Sendable {
    private let shards: KeyShards<SessionKey, TokenBuckets<SessionKey>>
    private let beforeConnect: Mutex<TokenBucket>

    init(bytesPerSecond: Double, burst: Double, connections: Double, shards count: Int = 16) {
        shards = KeyShards(count: count) {
            TokenBuckets(rate: bytesPerSecond * connections, burst: burst * connections, minimumPruneSize: 256)
        }
        beforeConnect = Mutex(TokenBucket(rate: bytesPerSecond * connections, burst: burst * connections))
    }

    /// Charges `bytes` to `user`'s budget, or with no user (a session before its CONNECT) to the budget those share;
    /// returns how long until its debt is paid (0 within the budget).
    func charge(_ user: SessionKey?, _ bytes: Int) -> UInt64 {
        guard let user else { return beforeConnect.withLock { $0.charge(Double(bytes)) } }
        return shards.withLock(user) { $0.chargeReturningWait(user, Double(bytes)) }
    }
}
