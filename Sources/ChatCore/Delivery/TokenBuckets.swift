/// One token bucket per key, for keys that come and go (REST callers, by user). A bucket that has refilled is the
/// same as a new one, so whenever the table has doubled since it last looked it drops every such bucket: it holds
/// only keys that spent tokens lately, not every key ever seen, and the clean-up costs O(1) per call amortized.
public struct TokenBuckets<Key: Hashable & Sendable>: Sendable {
    public let rate: Double
    public let burst: Double
    private var buckets: [Key: TokenBucket] = [:]
    private let minimumPruneSize: Int
    private var pruneAt: Int

    public init(rate: Double, burst: Double, minimumPruneSize: Int = 1024) {
        self.rate = rate
        self.burst = burst
        self.minimumPruneSize = minimumPruneSize
        pruneAt = minimumPruneSize
    }

    /// Keys with a bucket kept.
    public var count: Int { buckets.count }

    /// Spends `count` more tokens of `key`'s bucket, into debt if need be (`TokenBucket.charge`). A bucket in debt is
    /// not full, so it is kept until the debt is paid.
    public mutating func charge(_ key: Key, _ count: Double, now: UInt64 = monotonicNanos()) {
        _ = chargeReturningWait(key, count, now: now)
    }

    /// `charge`, returning how long until `key`'s debt is paid (0 if there is none).
    public mutating func chargeReturningWait(_ key: Key, _ count: Double, now: UInt64 = monotonicNanos()) -> UInt64 {
        let wait = buckets[key, default: TokenBucket(rate: rate, burst: burst, now: now)].charge(count, now: now)
        pruneIfDoubled(now: now)
        return wait
    }

    /// Takes `count` tokens from `key`'s bucket if it has that many.
    public mutating func take(_ key: Key, _ count: Double = 1, now: UInt64 = monotonicNanos()) -> Bool {
        let ok = buckets[key, default: TokenBucket(rate: rate, burst: burst, now: now)].take(count, now: now)
        pruneIfDoubled(now: now)
        return ok
    }

    private mutating func pruneIfDoubled(now: UInt64) {
        guard buckets.count >= pruneAt else { return }
        buckets = buckets.filter { !$0.value.isFull(now: now) }
        // Twice what is left (so a clean-up comes after as many calls as it looked at), never less than the
        // minimum: after a burst of callers the next clean-up comes as soon as the table doubles from what is left.
        pruneAt = max(minimumPruneSize, 2 * buckets.count)
    }
}
