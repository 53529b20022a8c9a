import ArgumentParser
import NIOCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

@main
struct ChatBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "chat-bench",
        abstract: "Load harness for Socket.IO chat brokers that implement PROTOCOL.md (Engine.IO v4 / Socket.IO v5 over WebSocket).",
        discussion: """
            Give it a broker URL and the broker's JWT secret (--secret or CHAT_JWT_SECRET): it creates its threads \
            through the REST API, connects its users' devices and runs one scenario for a fixed time, then prints a \
            table (or JSON with --json). Exit status 2 when a correctness check fails (gaps, duplicates, reordering, \
            missed events, failed connections).
            """,
        subcommands: [
            FanoutCommand.self, ConnectionsCommand.self, SlowConsumerCommand.self, ReconnectCommand.self,
            EchoServerCommand.self, HiccupsCommand.self,
        ])
}

/// CPU seconds of this process and, when known, of the broker.
struct CPUProbe {
    let ownStart: Double
    let brokerStart: Double?
    let pid: Int?
    let at: UInt64

    init(brokerPid: Int?) {
        ownStart = ProcessProbe.cpuSeconds(pid: Int(getpid())) ?? 0
        pid = brokerPid
        brokerStart = brokerPid.flatMap { ProcessProbe.cpuSeconds(pid: $0) }
        at = monotonicNanos()
    }

    /// (harness %, broker %) of one core over the time since `init`.
    func percent() -> (own: Double, broker: Double?) {
        let elapsed = Double(monotonicNanos() - at) / 1e9
        let own = ((ProcessProbe.cpuSeconds(pid: Int(getpid())) ?? 0) - ownStart) / elapsed * 100
        var broker: Double?
        if let pid, let start = brokerStart, let now = ProcessProbe.cpuSeconds(pid: pid) { broker = (now - start) / elapsed * 100 }
        return (own, broker)
    }
}

extension Report {
    /// The numbers every traffic scenario reports.
    mutating func addTraffic(
        window: LoopStats, final: LoopStats, seconds: Double, owed: (acks: Int, events: Int), cpu: (own: Double, broker: Double?),
        saturated: Bool
    ) {
        add("sent", "sends", Double(window.sent))
        add("acked_per_s", "acked sends/s", (Double(window.acked) / seconds).rounded())
        add("deliveries_per_s", "deliveries/s", (Double(window.deliveries) / seconds).rounded())
        latency("latency", "end-to-end", final.latency[0])
        add("ack_p50_ms", "send→ack p50", final.ackLatency.millis(50), "ms")
        add("ack_p99_ms", "send→ack p99", final.ackLatency.millis(99), "ms")
        add("ack_max_ms", "send→ack max", final.ackLatency.maxMillis, "ms")
        check("gaps", "missing events (gaps)", owed.events)
        check("gap_jumps", "seq jumps seen live", final.gapJumps)
        check("duplicates", "duplicates", final.duplicates)
        check("reordered", "out-of-order seq", final.reordered)
        check("unacked", "sends unacked after the drain", owed.acks + final.lostAcks)
        check("refused", "sends refused", final.failed)
        check("unexpected_closes", "connections closed by the server", final.unexpectedCloses)
        if !final.failures.isEmpty {
            notes.append("refusals: " + final.failures.map { "\($0.key)=\($0.value)" }.sorted().joined(separator: ", "))
        }
        if final.foreignEvents > 0 { notes.append("\(final.foreignEvents) events of threads outside this run") }
        if final.maxSendLagNanos > 0 { add("send_lag_max_ms", "harness send lag max", Double(final.maxSendLagNanos) / 1e6, "ms") }
        add("harness_cpu", "harness CPU (of one core)", cpu.own, "%")
        if saturated, window.deliveries > 0 {
            // CPU the harness spent per delivery (sends, acks and checks included): its one-core ceiling is 1e6 / this.
            add("harness_us_per_delivery", "harness CPU µs per delivery", cpu.own / 100 * seconds / Double(window.deliveries) * 1e6, "µs")
        }
        if let broker = cpu.broker { add("server_cpu", "server CPU (of one core)", broker, "%") }
    }

    mutating func addConnect(_ c: ConnectResult) {
        add("connections", "connections", Double(c.established))
        add("connect_per_s", "connects/s", (Double(c.established) / max(c.seconds, 1e-9)).rounded())
        check("connect_failures", "failed connections", c.failed)
        if c.failed > 0 { notes.append("connect errors: \(c.summary)") }
    }
}

struct FanoutCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "fanout",
        abstract: "T threads × M members × D devices; S senders at a total rate (or closed loop); latency, rates, order checks.")

    @OptionGroup var common: CommonOptions
    @OptionGroup var shape: TopologyOptions

    @Option(help: "Total messages per second over all senders (open loop); 0 = closed loop (each sender keeps --inflight unacked).")
    var rate = 500.0

    @Option(help: "Closed loop: unacknowledged sends each sender keeps in flight.")
    var inflight = 4

    @Option(help: "Measured seconds.")
    var duration = 10.0

    @Option(help: "Seconds of traffic before measuring.")
    var warmup = 2.0

    @Option(help: "After the run, wait for outstanding acks and deliveries until this many seconds pass without progress.")
    var drainTimeout = 30.0

    func run() async throws {
        let settings = try common.settings(connections: shape.connections)
        ProcessProbe.raiseFileLimit(to: shape.connections + 4096)
        let progress = Progress(enabled: !common.quiet)
        let topology = Topology(shape)
        var report = Report(scenario: "fanout", settings: settings)
        shape.describe(into: &report)
        report.param("rate", rate > 0 ? fmt(rate, 0) : "closed-loop")
        if rate <= 0 { report.param("inflight", inflight) }
        report.param("duration", duration)

        let (bench, devices) = try await Bench.prepare(topology, settings: settings, progress: progress)
        let connected = await bench.connect(devices)
        progress.note("connected \(connected.established) sockets in \(fmt(connected.seconds, 2)) s")
        report.addConnect(connected)
        guard connected.failed == 0 else {
            await bench.shutdown()
            report.emit(json: settings.json)
            throw ExitCode(2)
        }
        try await bench.assignSenders(topology, devices: devices, size: shape.size, randomContent: shape.randomContent)
        let senders = shape.senderCount
        let mode: SendMode = rate > 0 ? .open(intervalNanos: UInt64(Double(senders) / rate * 1e9)) : .closed(inflight: max(1, inflight))
        try await bench.start(mode, senderCount: senders)
        if warmup > 0 {
            _ = try await bench.observe(seconds: warmup, title: "warm-up")
            _ = try await bench.onLoops { $0.stats.resetMeasurements() }
        }
        let cpu = CPUProbe(brokerPid: settings.serverPid)
        let start = monotonicNanos()
        let window = try await bench.observe(seconds: duration, title: "fanout")
        let seconds = Double(monotonicNanos() - start) / 1e9
        let usage = cpu.percent()
        try await bench.stop()
        progress.line("draining…")
        let owed = try await bench.drain(timeout: drainTimeout)
        let final = try await bench.stats()
        progress.clear()
        report.addTraffic(window: window, final: final, seconds: seconds, owed: owed, cpu: usage, saturated: rate <= 0)
        if let pid = settings.serverPid, let rss = ProcessProbe.rss(pid: pid) { report.add("server_rss_mib", "server RSS", Double(rss) / 1048576, "MiB") }
        await bench.shutdown()
        report.emit(json: settings.json)
        if !report.passed { throw ExitCode(2) }
    }
}
