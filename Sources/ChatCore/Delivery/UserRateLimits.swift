import Synchronization

/// The rate buckets one user's connections share, per rate class: each holds `BrokerConfiguration.userRateConnections`
/// connections' worth of that class's per-connection rate and burst. A connection takes from its own bucket and then
/// from its user's, so a user gets no more by opening many sockets, or by reconnecting for fresh ones (a user's
/// buckets outlive their connections until they have refilled).
///
/// Every socket event of every connection comes here, so the table is split into shards by user, each under its own
/// lock: events of different users rarely wait for each other, and a shard's clean-up (`TokenBuckets` drops refilled
/// buckets when its table has doubled) holds up only that shard's users.
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

    /// One shard and its lock (a `Mutex` cannot sit in an array itself).
    private final class Locked: Sendable {
        let shard: Mutex<Shard>
        init(_ shard: Shard) { self.shard = Mutex(shard) }
    }

    private let shards: [Locked]

    init(_ configuration: BrokerConfiguration, shards count: Int = 16) {
        let share = configuration.userRateConnections
        shards = (0..<max(1, count)).map { _ in
            Locked(Shard(
                write: TokenBuckets(rate: configuration.ratePerSecond * share, burst: configuration.rateBurst * share, minimumPruneSize: 256),
                signal: TokenBuckets(
                    rate: configuration.signalRatePerSecond * share, burst: configuration.signalBurst * share, minimumPruneSize: 256),
                read: TokenBuckets(
                    rate: configuration.readRatePerSecond * share, burst: configuration.readBurst * share, minimumPruneSize: 256)))
        }
    }

    /// Spends `count` more of `key`'s tokens of `rateClass`, into debt if need be (work done already: history
    /// decoded or resealed).
    func charge(_ key: SessionKey, _ rateClass: ClientCommand.RateClass, _ count: Double) {
        shard(of: key).shard.withLock { $0.withBuckets(rateClass) { $0.charge(key, count) } }
    }

    /// Takes `cost` tokens from `key`'s bucket of `rateClass` if it has that many.
    func take(_ key: SessionKey, _ rateClass: ClientCommand.RateClass, cost: Double) -> Bool {
        shard(of: key).shard.withLock { $0.withBuckets(rateClass) { $0.take(key, cost) } }
    }

    /// The shard holding `key`'s buckets.
    private func shard(of key: SessionKey) -> Locked {
        shards[Int(UInt(bitPattern: key.hashValue) % UInt(shards.count))]
    }
}
