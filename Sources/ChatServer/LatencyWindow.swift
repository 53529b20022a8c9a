import ChatCore
import Histogram
import Synchronization

/// The latencies of the last whole second, for the console (Prometheus histograms keep totals since start, with
/// coarse buckets): samples go into the current second's histogram, and a read returns p50/p99/max of the second
/// before. The writer records a batch of frames under one lock.
final class LatencyWindow: Sendable {
    private struct State {
        var current = Histogram<UInt64>(lowestDiscernibleValue: 1, highestTrackableValue: 60_000_000, numberOfSignificantValueDigits: .two)
        var previous = Histogram<UInt64>(lowestDiscernibleValue: 1, highestTrackableValue: 60_000_000, numberOfSignificantValueDigits: .two)
        var second = monotonicNanos() / 1_000_000_000

        /// Moves to the present second: what was current becomes the last whole second (or nothing, after a quiet one).
        mutating func roll() {
            let now = monotonicNanos() / 1_000_000_000
            guard now != second else { return }
            if now == second + 1 {
                swap(&current, &previous)
            } else {
                previous.reset()
            }
            current.reset()
            second = now
        }
    }

    /// The last whole second: percentiles in milliseconds and how many samples they are of.
    struct Summary {
        var p50: Double
        var p99: Double
        var max: Double
        var count: Int
    }

    private let state = Mutex(State())

    /// Records latencies given in nanoseconds (kept in microseconds, up to a minute).
    func record<S: Sequence>(nanoseconds samples: S) where S.Element == UInt64 {
        state.withLock { s in
            s.roll()
            for sample in samples { _ = s.current.record(min(sample / 1000, 60_000_000)) }
        }
    }

    func record(nanoseconds sample: UInt64) { record(nanoseconds: CollectionOfOne(sample)) }

    func lastSecond() -> Summary {
        state.withLock { s in
            s.roll()
            let h = s.previous
            guard h.totalCount > 0 else { return Summary(p50: 0, p99: 0, max: 0, count: 0) }
            return Summary(
                p50: Double(h.valueAtPercentile(50)) / 1000, p99: Double(h.valueAtPercentile(99)) / 1000, max: Double(h.maxRecorded) / 1000,
                count: Int(h.totalCount))
        }
    }
}
