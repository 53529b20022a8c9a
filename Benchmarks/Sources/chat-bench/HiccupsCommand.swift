import ArgumentParser
import Foundation
import Histogram

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// The machine's own scheduling noise, with no broker involved: threads that sleep a fixed interval and record by how
/// much each wake-up came late. Run beside a load test, it shows the delays any thread of any process on this machine
/// saw at that time (another process's CPU use, the hypervisor taking the virtual CPU), which is the floor under
/// every latency percentile the load test reports.
struct HiccupsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "hiccups",
        abstract: "Measures how late sleeping threads wake up (the machine's scheduling noise), for comparison with a run's tail.",
        discussion: """
            Each of --threads threads sleeps --interval-us microseconds (nanosleep) in a \
            loop for --duration seconds and records how much later than asked it woke. The percentiles are those of \
            the wake-up delays; the CPU time used is negligible (one wake-up per interval per thread). Each wake-up is \
            one sample, so a long stall counts once (a load test sending every millisecond would feel it many times): \
            the percentiles understate how often the machine stalls, never how long.
            """)

    @Option(help: "Sleeping threads.")
    var threads = 2

    @Option(help: "Microseconds each sleep asks for.")
    var intervalUs = 1000

    @Option(help: "Seconds to measure.")
    var duration = 10.0

    @Option(help: "A name for the run in the output.")
    var label = "machine"

    @Flag(help: "Print the result as JSON on stdout (the table goes to stderr).")
    var json = false

    func run() throws {
        guard threads >= 1, intervalUs >= 1, duration > 0 else { throw ValidationError("--threads, --interval-us and --duration must be positive") }
        let interval = UInt64(intervalUs) * 1000
        let end = Self.now() + UInt64(duration * 1e9)
        let results = ResultBox(count: threads)
        let done = DispatchGroup()
        for index in 0..<threads {
            done.enter()
            let thread = Thread {
                var histogram = makeLatencyHistogram()
                var request = timespec(tv_sec: Int(interval / 1_000_000_000), tv_nsec: Int(interval % 1_000_000_000))
                while true {
                    let before = Self.now()
                    if before >= end { break }
                    _ = nanosleep(&request, nil)
                    let late = Self.now() &- before &- interval
                    histogram.recordMicros(Int64(bitPattern: late) > 0 ? late / 1000 : 0)
                }
                results.set(index, histogram)
                done.leave()
            }
            thread.start()
        }
        done.wait()
        var all = makeLatencyHistogram()
        for histogram in results.all { all.add(histogram) }
        var report = Report(scenario: "hiccups", target: "this machine", label: label)
        report.param("threads", threads)
        report.param("interval_us", intervalUs)
        report.param("duration", duration)
        report.latency("late", "wake-up delay", all)
        report.add("over_1ms", "wake-ups over 1 ms late", Double(all.count(above: 1000)))
        report.add("over_5ms", "wake-ups over 5 ms late", Double(all.count(above: 5000)))
        report.emit(json: json)
    }

    static func now() -> UInt64 {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
    }
}

/// The sleeping threads' histograms, each written once by its thread before the group is left.
private final class ResultBox: @unchecked Sendable {
    private let lock = NSLock()
    private var histograms: [Histogram<UInt64>]

    init(count: Int) { histograms = Array(repeating: makeLatencyHistogram(), count: count) }

    func set(_ index: Int, _ histogram: Histogram<UInt64>) { lock.withLock { histograms[index] = histogram } }

    var all: [Histogram<UInt64>] { lock.withLock { histograms } }
}

extension Histogram<UInt64> {
    /// Samples recorded above `value` (in the histogram's unit).
    func count(above value: UInt64) -> UInt64 {
        totalCount - count(within: 0...Swift.min(value, highestTrackableValue))
    }
}
