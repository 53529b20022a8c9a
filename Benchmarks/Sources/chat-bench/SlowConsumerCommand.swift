import ArgumentParser
import NIOCore

struct SlowConsumerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "slow-consumer",
        abstract: "A share of recipients stop reading; compares the fast recipients' latency with a baseline phase.",
        discussion: """
            One set of connections, two measured phases of --duration seconds each at the same open-loop rate: \
            a baseline where everyone reads, then a phase where --slow-fraction of the receiving devices (never a \
            sender) stop reading their sockets. The latency of the other devices is compared between the phases; \
            the slow devices are left out of both. The broker should keep the fast p99 steady, bound its memory \
            and close the slow sockets (counted from /metrics: chat_slow_consumer_closes_total or \
            chat_slow_consumer_disconnects_total).
            """)

    @OptionGroup var common: CommonOptions

    @Option(help: "Threads.")
    var threads = 10

    @Option(help: "Members per thread.")
    var members = 20

    @Option(help: "Devices per user.")
    var devices = 1

    @Option(help: "Content bytes per message (large messages fill a slow socket's queue sooner).")
    var size = 8000

    @Option(help: "Total messages per second (open loop), over one sender per thread.")
    var rate = 500.0

    @Option(help: "Share of receiving devices that stop reading in the second phase.")
    var slowFraction = 0.1

    @Option(help: "Seconds per measured phase.")
    var duration = 20.0

    @Option(help: "Seconds of traffic before the baseline.")
    var warmup = 2.0

    func run() async throws {
        guard threads >= 1, members >= 2, devices >= 1, rate > 0, (0...0.9).contains(slowFraction) else {
            throw ValidationError("need threads ≥ 1, members ≥ 2, devices ≥ 1, rate > 0, slow fraction in 0…0.9")
        }
        let connections = threads * members * devices
        let settings = try common.settings(connections: connections)
        ProcessProbe.raiseFileLimit(to: connections + 4096)
        let progress = Progress(enabled: !common.quiet)
        let topology = Topology(threads: threads, members: members, devices: devices, users: threads * members, senders: threads)
        var report = Report(scenario: "slow-consumer", settings: settings)
        report.param("threads", threads)
        report.param("members", members)
        report.param("devices", devices)
        report.param("size", size)
        report.param("rate", fmt(rate, 0))
        report.param("slow_fraction", slowFraction)
        report.param("duration", duration)

        let (bench, all) = try await Bench.prepare(topology, settings: settings, progress: progress)
        let connected = await bench.connect(all)
        report.addConnect(connected)
        guard connected.failed == 0 else {
            await bench.shutdown()
            report.emit(json: settings.json)
            throw ExitCode(2)
        }
        try await bench.assignSenders(topology, devices: all, size: size)

        // Every k-th receiving device becomes slow; they are left out of the latency of both phases.
        let senderDevices = topology.senderDevices
        let receivers = all.filter { !senderDevices.contains($0.index) }
        let slowCount = Int((Double(receivers.count) * slowFraction).rounded())
        let step = slowCount > 0 ? Double(receivers.count) / Double(slowCount) : 0
        let slow = (0..<slowCount).map { receivers[Int(Double($0) * step)] }
        for ctx in bench.contexts {
            let mine = slow.filter { $0.ctx === ctx }
            _ = try await ctx.loop.submit { for d in mine { d.measured = false } }.get()
        }
        report.param("slow_devices", slowCount)

        let metricNames = ["chat_slow_consumer_closes_total", "chat_slow_consumer_disconnects_total"]
        let closesBefore = scrapeMetric(settings.endpoint, names: metricNames)
        let pid = settings.serverPid
        let rssStart = pid.flatMap { ProcessProbe.rss(pid: $0) }

        try await bench.start(.open(intervalNanos: UInt64(Double(threads) / rate * 1e9)), senderCount: threads)
        if warmup > 0 {
            _ = try await bench.observe(seconds: warmup, title: "warm-up")
            _ = try await bench.onLoops { $0.stats.resetMeasurements() }
        }
        var start = monotonicNanos()
        let baseline = try await bench.observe(seconds: duration, title: "baseline")
        let baselineTicks = bench.lastTicks.withLock { $0 }
        let baselineSeconds = Double(monotonicNanos() - start) / 1e9
        let rssBaseline = pid.flatMap { ProcessProbe.rss(pid: $0) }
        bench.peakRSS.withLock { $0 = 0 }

        try await bench.setPhase(1)
        for ctx in bench.contexts {
            let mine = slow.filter { $0.ctx === ctx }
            _ = try await ctx.loop.submit { for d in mine { d.stopReading() } }.get()
        }
        start = monotonicNanos()
        let cpu = CPUProbe(brokerPid: pid)
        let endpoint = settings.endpoint
        let slowPhase = try await bench.observe(seconds: duration, title: "\(slowCount) slow") {
            scrapeMetric(endpoint, names: metricNames).map { Int($0 - (closesBefore ?? 0)) }
        }
        let slowTicks = bench.lastTicks.withLock { $0 }
        let slowSeconds = Double(monotonicNanos() - start) / 1e9
        let usage = cpu.percent()
        let rssEnd = pid.flatMap { ProcessProbe.rss(pid: $0) }
        try await bench.stop()
        progress.line("draining…")
        let owed = try await bench.drain(timeout: 30)
        let final = try await bench.stats()
        let closesAfter = scrapeMetric(settings.endpoint, names: metricNames)
        progress.clear()

        let base = final.latency[0]
        let withSlow = final.latency[1]
        report.add("baseline_deliveries_per_s", "baseline deliveries/s", (Double(baseline.deliveriesByPhase[0]) / baselineSeconds).rounded())
        report.add("slow_deliveries_per_s", "with slow deliveries/s", (Double(slowPhase.deliveriesByPhase[1]) / slowSeconds).rounded())
        report.add("baseline_p50_ms", "baseline fast p50", base.millis(50), "ms")
        report.add("baseline_p99_ms", "baseline fast p99", base.millis(99), "ms")
        report.add("baseline_max_ms", "baseline fast max", base.maxMillis, "ms")
        report.add("slow_p50_ms", "with slow: fast p50", withSlow.millis(50), "ms")
        report.add("slow_p99_ms", "with slow: fast p99", withSlow.millis(99), "ms")
        report.add("slow_max_ms", "with slow: fast max", withSlow.maxMillis, "ms")
        if base.totalCount > 0, withSlow.totalCount > 0 {
            report.add("p99_change_pct", "fast p99 change", (withSlow.millis(99) / max(base.millis(99), 0.001) - 1) * 100, "%")
        }
        // Where in each phase the tail is: each second's fast p99 (and, in the slow phase, the slow sockets closed so
        // far), so that a change of the phase's p99 can be told apart from one bad second.
        report.param("baseline_p99_ms_by_second", baselineTicks.map { fmt($0.p99, 2) }.joined(separator: " "))
        report.param("slow_p99_ms_by_second", slowTicks.map { fmt($0.p99, 2) }.joined(separator: " "))
        report.param("slow_closes_by_second", slowTicks.map { $0.counter.map(String.init) ?? "?" }.joined(separator: " "))
        let medianTick = { (ticks: [Bench.Tick]) -> Double in
            let sorted = ticks.map(\.p99).sorted()
            return sorted.isEmpty ? 0 : sorted[sorted.count / 2]
        }
        report.add("baseline_median_second_p99_ms", "baseline: median of the seconds' fast p99", medianTick(baselineTicks), "ms")
        report.add("slow_median_second_p99_ms", "with slow: median of the seconds' fast p99", medianTick(slowTicks), "ms")
        if let closesBefore, let closesAfter {
            report.add("slow_closes", "slow-consumer closes (metrics)", closesAfter - closesBefore)
        } else {
            report.notes.append("the broker's /metrics has no slow-consumer counter")
        }
        if let rssStart { report.add("server_rss_start_mib", "server RSS at start", Double(rssStart) / 1048576, "MiB") }
        if let rssBaseline { report.add("server_rss_baseline_mib", "server RSS after baseline", Double(rssBaseline) / 1048576, "MiB") }
        let peak = bench.peakRSS.withLock { $0 }
        if peak > 0 { report.add("server_rss_peak_mib", "server RSS peak with slow", Double(peak) / 1048576, "MiB") }
        if let rssEnd { report.add("server_rss_end_mib", "server RSS at end", Double(rssEnd) / 1048576, "MiB") }
        report.check("gaps", "fast devices: missing events", owed.events)
        report.check("duplicates", "fast devices: duplicates", final.duplicates)
        report.check("reordered", "fast devices: out-of-order", final.reordered)
        report.check("unacked", "sends unacked after the drain", owed.acks + final.lostAcks)
        report.check("refused", "sends refused", final.failed)
        report.check("unexpected_closes", "fast connections closed", final.unexpectedCloses)
        report.add("harness_cpu", "harness CPU (of one core)", usage.own, "%")
        if let broker = usage.broker { report.add("server_cpu", "server CPU (of one core)", broker, "%") }
        await bench.shutdown()
        report.emit(json: settings.json)
        if !report.passed { throw ExitCode(2) }
    }
}
