/// The rate buckets one user's connections share, per rate class: each holds `BrokerConfiguration.userRateConnections`
/// connections' worth of that class's per-connection rate and burst. A connection takes from its own bucket and then
/// from its user's, so a user gets no more by opening many sockets, or by reconnecting for fresh ones (a user's
/// buckets outlive their connections until they have refilled). Split into shards by user (`KeyShards`).
final class UserRateLimits: Sendable {
    private struct Shard {
        var write: TokenBuckets<SessionKey>
        var signal: TokenBuckets<SessionKey>
        var read: TokenBuckets<SessionKey>

        /// Runs `body` on the buckets of `rateClass`.
        mutating func withBuckets<T>(_ rateClass: ClientCommand.RateClass, _ body: (inout TokenBuckets<SessionKey>) -> T) -> T {
            switch rateClass {
            case .write: body(&write)
            case .signal: body(&signal)
            case .read: body(&read)
            }
        }
    }

    private let shards: KeyShards<SessionKey, Shard>

    init(_ configuration: BrokerConfiguration, shards count: Int = 16) {
        let share = configuration.userRateConnections
        shards = KeyShards(count: count) {
            Shard(
                write: TokenBuckets(rate: configuration.ratePerSecond * share, burst: configuration.rateBurst * share, minimumPruneSize: 256),
                signal: TokenBuckets(
                    rate: configuration.signalRatePerSecond * share, burst: configuration.signalBurst * share, minimumPruneSize: 256),
                read: TokenBuckets(
                    rate: configuration.readRatePerSecond * share, burst: configuration.readBurst * share, minimumPruneSize: 256))
        }
    }

    /// Spends `count` more of `key`'s tokens of `rateClass`, into debt if need be (work done already: history
    /// decoded or resealed).
    func charge(_ key: SessionKey, _ rateClass: ClientCommand.RateClass, _ count: Double) {
        shards.withLock(key) { $0.withBuckets(rateClass) { $0.charge(key, count) } }
    }

    /// Takes `cost` tokens from `key`'s bucket of `rateClass` if it has that many.
    func take(_ key: SessionKey, _ rateClass: ClientCommand.RateClass, cost: Double) -> Bool {
        shards.withLock(key) { $0.withBuckets(rateClass) { $0.take(key, cost) } }
    }
}
