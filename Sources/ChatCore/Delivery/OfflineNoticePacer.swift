import Synchronization

/// Spreads the offline notices each company queues on this node over time, so that the webhook dispatcher, which
/// claims due notices oldest first for every company together, reaches each company's in turn. A send's notices are
/// due at the configured delay while the company's earlier ones, counted at `perSecond` a second, are within `burst`
/// (one send's own count is not held against it: a send to a thread of 10,000 offline members is due on time); past
/// that, they are made due later, by the time the company's earlier ones take at that rate. Another company's
/// notices are due on time, so they are claimed before the excess. (Claimed in due order with no pacing, one user's
/// 44,000 notices for made-up members queued in 20 s, within the user's rate limits, held another company's notice
/// for 28 s instead of 5; found by an outside probe.)
///
/// Shared by a node's thread actors; a company idle for a while is forgotten.
public final class OfflineNoticePacer: Sendable {
    private let nanosPerNotice: Double
    private let burstNanos: UInt64
    /// Per company: when its notices queued so far would all have come due at `perSecond` (monotonic nanoseconds).
    private let ends = Mutex<[CompanyID: UInt64]>([:])

    public init(perSecond: Double, burst: Double) {
        nanosPerNotice = 1e9 / max(perSecond, 1e-3)
        burstNanos = UInt64(min(max(0, burst) * nanosPerNotice, 1e18))
    }

    /// The delay, in seconds, of `count` notices of `company` queued now by one send: `base`, plus however far the
    /// company's earlier notices run past its burst at its rate.
    public func delay(of count: Int, for company: CompanyID, base: Double, now: UInt64 = monotonicNanos()) -> Double {
        let ahead = ends.withLock { ends in
            if ends.count > 4_096 { ends = ends.filter { $0.value > now } }
            let end = max(ends[company] ?? now, now), added = UInt64(min(Double(count) * nanosPerNotice, 1e18))
            ends[company] = end > UInt64.max - added ? UInt64.max : end + added
            return end - now
        }
        return base + Double(ahead > burstNanos ? ahead - burstNanos : 0) / 1e9
    }
}
