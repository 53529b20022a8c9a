import ArgumentParser
import NIOCore

struct ReconnectCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "reconnect",
        abstract: "Receivers drop and reconnect while traffic flows, then catch up with chat:sync; reports missed events and catch-up time.",
        discussion: """
            Every --drop-interval seconds, --drop-fraction of the receiving devices (never a sender) close their \
            socket, stay away --down-time ms, reconnect, and send chat:sync with the last seq they saw per thread \
            (following hasMore). Live events that arrive while the sync is in flight are held back and merged by seq. \
            Catch-up time runs from the start of the reconnect to the last sync page. Every device must end with \
            every event of its threads: missed events must be zero.
            """)

    @OptionGroup var common: CommonOptions

    @Option(help: "Threads.")
    var threads = 20

    @Option(help: "Members per thread.")
    var members = 10

    @Option(help: "Devices per user.")
    var devices = 2

    @Option(help: "Content bytes per message.")
    var size = 100

    @Option(help: "Total messages per second (open loop), over one sender per thread.")
    var rate = 500.0

    @Option(help: "Measured seconds of traffic.")
    var duration = 20.0

    @Option(help: "Seconds between drop rounds.")
    var dropInterval = 2.0

    @Option(help: "Share of receiving devices dropped per round.")
    var dropFraction = 0.1

    @Option(help: "Milliseconds a dropped device stays away before reconnecting.")
    var downTime = 500

    func run() async throws {
        guard threads >= 1, members >= 2, devices >= 1, rate > 0, (0...1).contains(dropFraction), dropInterval > 0 else {
            throw ValidationError("need threads ≥ 1, members ≥ 2, devices ≥ 1, rate > 0, drop fraction in 0…1")
        }
        let connections = threads * members * devices
        let settings = try common.settings(connections: connections)
        ProcessProbe.raiseFileLimit(to: connections * 2 + 4096)
        let progress = Progress(enabled: !common.quiet)
        let topology = Topology(threads: threads, members: members, devices: devices, users: threads * members, senders: threads)
        var report = Report(scenario: "reconnect", settings: settings)
        report.param("threads", threads)
        report.param("members", members)
        report.param("devices", devices)
        report.param("size", size)
        report.param("rate", fmt(rate, 0))
        report.param("duration", duration)
        report.param("drop_interval", dropInterval)
        report.param("drop_fraction", dropFraction)
        report.param("down_time_ms", downTime)

        let (bench, all) = try await Bench.prepare(topology, settings: settings, progress: progress)
        let connected = await bench.connect(all)
        report.addConnect(connected)
        guard connected.failed == 0 else {
            await bench.shutdown()
            report.emit(json: settings.json)
            throw ExitCode(2)
        }
        try await bench.assignSenders(topology, devices: all, size: size)
        let cpu = CPUProbe(brokerPid: settings.serverPid)
        try await bench.start(.open(intervalNanos: UInt64(Double(threads) / rate * 1e9)), senderCount: threads)

        let start = monotonicNanos()
        var round = 0
        var window = LoopStats()
        while Double(monotonicNanos() - start) / 1e9 < duration {
            let left = duration - Double(monotonicNanos() - start) / 1e9
            window = try await bench.observe(seconds: min(dropInterval, left), title: "reconnect")
            guard Double(monotonicNanos() - start) / 1e9 < duration else { break }
            round += 1
            let fraction = dropFraction
            let down = downTime
            let seed = UInt64(round)
            _ = try await bench.onLoops { ctx in ctx.dropRound(fraction: fraction, downTimeMillis: down, seed: seed) }
        }
        let seconds = Double(monotonicNanos() - start) / 1e9
        let usage = cpu.percent()
        try await bench.stop()
        // Let the last reconnects finish their catch-up before checking completeness.
        progress.line("waiting for reconnects…")
        let waitUntil = monotonicNanos() + UInt64(Double(downTime) * 1e6) + 30_000_000_000
        while monotonicNanos() < waitUntil {
            let busy = try await bench.onLoops { ctx in ctx.devices.filter { $0.state != .ready || $0.syncing }.count }.reduce(0, +)
            if busy == 0 { break }
            try await Task.sleep(nanoseconds: 100_000_000)
        }
        let notBack = try await bench.onLoops { ctx in ctx.devices.filter { $0.state != .ready || $0.syncing }.count }.reduce(0, +)
        progress.line("draining…")
        let owed = try await bench.drain(timeout: 30)
        let final = try await bench.stats()
        progress.clear()

        report.add("acked_per_s", "acked sends/s", (Double(window.acked) / seconds).rounded())
        report.add("deliveries_per_s", "live deliveries/s", (Double(window.deliveries) / seconds).rounded())
        report.add("reconnects", "reconnects", Double(final.reconnects))
        report.add("sync_events", "events recovered by chat:sync", Double(final.syncEvents))
        report.add("overlaps", "live/sync overlap deduped", Double(final.overlaps))
        report.latency("catchup", "catch-up", final.catchUp)
        report.add("sync_p50_ms", "chat:sync p50", final.syncTime.millis(50), "ms")
        report.add("sync_p99_ms", "chat:sync p99", final.syncTime.millis(99), "ms")
        report.add("latency_p50_ms", "live end-to-end p50", final.latency[0].millis(50), "ms")
        report.add("latency_p99_ms", "live end-to-end p99", final.latency[0].millis(99), "ms")
        report.check("missed", "missed events", owed.events)
        report.check("duplicates", "duplicates", final.duplicates)
        report.check("reordered", "out-of-order seq", final.reordered)
        report.check("sync_errors", "chat:sync errors", final.syncErrors)
        report.check("reconnect_failures", "failed reconnects", final.reconnectFailures + notBack)
        report.check("unacked", "sends unacked after the drain", owed.acks + final.lostAcks)
        report.check("refused", "sends refused", final.failed)
        report.check("unexpected_closes", "connections closed by the server", final.unexpectedCloses)
        report.add("harness_cpu", "harness CPU (of one core)", usage.own, "%")
        if let broker = usage.broker { report.add("server_cpu", "server CPU (of one core)", broker, "%") }
        await bench.shutdown()
        report.emit(json: settings.json)
        if !report.passed { throw ExitCode(2) }
    }
}

extension LoopContext {
    /// Drops a pseudo-random `fraction` of this loop's connected, non-sending devices; each reconnects after
    /// `downTimeMillis` and catches up with `chat:sync`.
    func dropRound(fraction: Double, downTimeMillis: Int, seed: UInt64) {
        var rng = MaskKeyGenerator(seed: seed &* 0x9E37_79B9_7F4A_7C15 &+ UInt64(index))
        let threshold = UInt32(min(fraction, 1) * Double(UInt32.max))
        for device in devices where device.senders.isEmpty && device.state == .ready && !device.syncing {
            guard rng.nextUInt32() <= threshold else { continue }
            device.drop()
            loop.scheduleTask(in: .milliseconds(Int64(downTimeMillis))) { device.reconnect() }
        }
    }
}

extension Device {
    /// Reconnects after a drop and catches up; retries every second on failure.
    func reconnect(retry: Bool = false) {
        dropping = false
        if !retry {
            reconnectStartedAt = monotonicNanos()
            ctx.stats.reconnects += 1
        }
        connect().whenComplete { [self] result in
            switch result {
            case .success:
                beginSync()
            case .failure:
                ctx.stats.reconnectFailures += 1
                dropping = true
                channel?.close(promise: nil)
                ctx.loop.scheduleTask(in: .seconds(1)) { [self] in reconnect(retry: true) }
            }
        }
    }
}
