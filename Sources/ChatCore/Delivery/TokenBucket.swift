/// A token bucket: `rate` tokens per second, at most `burst` banked.
public struct TokenBucket: Sendable {
    public var rate: Double
    public var burst: Double
    private var tokens: Double
    private var last: UInt64

    public init(rate: Double, burst: Double, now: UInt64 = monotonicNanos()) {
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.last = now
    }

    /// Whether the bucket would be full at `now`: it is then the same as a new one.
    public func isFull(now: UInt64 = monotonicNanos()) -> Bool {
        tokens + Double(now &- last) / 1e9 * rate >= burst
    }

    /// Takes `count` tokens if there are that many (none otherwise). A request dearer than the whole burst takes a
    /// full bucket, so that it can always pass once the bucket has refilled.
    public mutating func take(_ count: Double = 1, now: UInt64 = monotonicNanos()) -> Bool {
        refill(now: now)
        let count = min(count, burst)
        guard tokens >= count else { return false }
        tokens -= count
        return true
    }

    /// Spends `count` tokens whether or not the bucket has them: for work whose cost is known only once it is done
    /// (a page's size). The debt is not capped, since it is work already done (requests sent in parallel all pass
    /// `take` before any is charged); later requests wait until it is paid at the bucket's rate, which the result
    /// says: nanoseconds until the bucket is out of debt (0 if it is not in debt).
    @discardableResult
    public mutating func charge(_ count: Double, now: UInt64 = monotonicNanos()) -> UInt64 {
        refill(now: now)
        tokens -= max(0, count)
        return tokens >= 0 ? 0 : UInt64((-tokens / rate * 1e9).rounded(.up))
    }

    /// Nanoseconds until `take(count)` would succeed (0 if it would now).
    public func wait(for count: Double = 1, now: UInt64 = monotonicNanos()) -> UInt64 {
        let have = min(burst, tokens + Double(now &- last) / 1e9 * rate)
        let missing = min(count, burst) - have
        return missing <= 0 ? 0 : UInt64((missing / rate * 1e9).rounded(.up))
    }

    /// Adds what the rate brought since the last call, up to a full bucket.
    private mutating func refill(now: UInt64) {
        tokens = min(burst, tokens + Double(now &- last) / 1e9 * rate)
        last = now
    }

    /// Gives back `count` tokens a `take` took, for a request refused further on (by another bucket), so that it
    /// costs nothing here.
    public mutating func giveBack(_ count: Double) {
        tokens = min(burst, tokens + min(count, burst))
    }
}
