/// The rate buckets one user's connections share, per rate class: each holds `BrokerConfiguration.userRateConnections`
/// connections' worth of that class's per-connection rate and burst. A connection takes from its own bucket and then
/// from its user's, so a user gets no more by opening many sockets, or by reconnecting for fresh ones (a user's
/// buckets outlive their connections until they have refilled).
struct UserRateLimits: Sendable {
    private var write: TokenBuckets<SessionKey>
    private var signal: TokenBuckets<SessionKey>
    private var read: TokenBuckets<SessionKey>

    init(_ configuration: BrokerConfiguration) {
        let share = configuration.userRateConnections
        write = TokenBuckets(rate: configuration.ratePerSecond * share, burst: configuration.rateBurst * share)
        signal = TokenBuckets(rate: configuration.signalRatePerSecond * share, burst: configuration.signalRatePerSecond * 2 * share)
        read = TokenBuckets(rate: configuration.readRatePerSecond * share, burst: configuration.readRatePerSecond * 2 * share)
    }

    /// Takes `cost` tokens from `key`'s bucket of `rateClass` if it has that many.
    mutating func take(_ key: SessionKey, _ rateClass: ClientCommand.RateClass, cost: Double) -> Bool {
        switch rateClass {
        case .write: write.take(key, cost)
        case .signal: signal.take(key, cost)
        case .read: read.take(key, cost)
        }
    }
}
