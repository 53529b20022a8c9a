import Testing

@testable import ChatServer

/// The batched histogram writes what a Prometheus histogram of the same buckets would: cumulative buckets, the sum in
/// seconds and the count.
struct BatchedDurationHistogramTests {
    @Test func bucketsAreCumulativeAndBoundsInclusive() {
        let histogram = BatchedDurationHistogram(name: "x_seconds", help: "Some latency", boundsInNanoseconds: [250_000, 1_000_000])
        histogram.record(nanoseconds: [100, 250_000, 250_001, 2_000_000_000])
        histogram.record(nanoseconds: [999_999])
        var out: [UInt8] = []
        histogram.emit(into: &out)
        #expect(
            String(decoding: out, as: UTF8.self) == """
                # HELP x_seconds Some latency
                # TYPE x_seconds histogram
                x_seconds_bucket{le="0.00025"} 2
                x_seconds_bucket{le="0.001"} 4
                x_seconds_bucket{le="+Inf"} 5
                x_seconds_sum 2.0015001
                x_seconds_count 5

                """)
    }
}
