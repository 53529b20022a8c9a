import ArgumentParser
import NIOCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

struct ConnectionsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "connections",
        abstract: "Opens C idle authenticated connections, holds them, reports connects/s and the broker's RSS per connection.",
        discussion: """
            Each connection is its own user (no threads), fully connected to /chat. The broker's RSS (--server-pid) is \
            read before connecting and after the connections settle; the difference divided by C is the cost of an \
            idle connection. Above 25,000 connections the source address rotates over 127.0.0.1…N to avoid \
            exhausting ephemeral ports; the harness raises its own open-file limit (the broker needs its own).
            """)

    @OptionGroup var common: CommonOptions

    @Option(help: "Connections to open.")
    var connections = 10_000

    @Option(help: "Seconds to hold the connections open (pings are answered).")
    var hold = 10.0

    @Option(help: "Seconds to let the broker settle before reading its RSS.")
    var settle = 3.0

    func run() async throws {
        guard connections >= 1 else { throw ValidationError("--connections must be at least 1") }
        let settings = try common.settings(connections: connections)
        let limit = ProcessProbe.raiseFileLimit(to: connections + 4096)
        let progress = Progress(enabled: !common.quiet)
        var report = Report(scenario: "connections", settings: settings)
        report.param("connections", connections)
        report.param("hold", hold)
        report.param("source_addresses", max(settings.sourceAddresses, 1))
        if limit < connections + 64 {
            throw BenchError(
                "the open-file limit is \(limit) and cannot be raised to \(connections + 64) here (setrlimit needs CAP_SYS_RESOURCE "
                    + "above the hard limit); lower --connections or raise the hard limit (ulimit -Hn) — the broker needs the same")
        }

        for endpoint in settings.endpoints { try await Bench.waitForHealth(endpoint) }
        let minter = try await TokenMinter(secret: settings.secret, company: settings.company)
        let bench = try Bench(settings: settings, minter: minter, directory: ThreadDirectory(ids: [], baseSeq: []), progress: progress)
        let users = (0..<connections).map { UserPlan(id: "c\($0)", threads: [], devices: 1) }
        let devices = try await bench.addDevices(users)

        let pid = settings.serverPid
        try await Task.sleep(nanoseconds: UInt64(min(settle, 1) * 1e9))
        let rssBefore = pid.flatMap { ProcessProbe.rss(pid: $0) }
        let ownBefore = ProcessProbe.ownRSS()
        let cpu = CPUProbe(brokerPid: pid)
        let connected = await bench.connect(devices)
        let usage = cpu.percent()
        progress.note("connected \(connected.established)/\(connections) in \(fmt(connected.seconds, 2)) s")
        report.addConnect(connected)
        report.add("connect_seconds", "time to connect all", connected.seconds, "s")

        try await Task.sleep(nanoseconds: UInt64(settle * 1e9))
        let rssAfter = pid.flatMap { ProcessProbe.rss(pid: $0) }
        let ownAfter = ProcessProbe.ownRSS()
        let held = try await bench.observe(seconds: hold, title: "holding \(connected.established)")
        let rssHeld = pid.flatMap { ProcessProbe.rss(pid: $0) }
        progress.clear()
        let stillOpen = try await bench.onLoops { ctx in ctx.devices.filter { $0.state == .ready }.count }.reduce(0, +)

        if let rssBefore, let rssAfter, connected.established > 0 {
            report.add("server_rss_before_mib", "server RSS before", Double(rssBefore) / 1048576, "MiB")
            report.add("server_rss_after_mib", "server RSS connected", Double(rssAfter) / 1048576, "MiB")
            if let rssHeld { report.add("server_rss_held_mib", "server RSS after hold", Double(rssHeld) / 1048576, "MiB") }
            let end = max(rssAfter, rssHeld ?? 0)
            report.add("kib_per_connection", "server KiB per idle connection", Double(end - rssBefore) / 1024 / Double(connected.established), "KiB")
        } else if pid == nil {
            report.notes.append("pass --server-pid to measure the broker's memory per connection")
        }
        if let usage = usage.broker { report.add("server_cpu_connect", "server CPU while connecting", usage, "%") }
        if let ownBefore, let ownAfter, connected.established > 0 {
            report.add("harness_kib_per_connection", "harness KiB per connection", Double(ownAfter - ownBefore) / 1024 / Double(connected.established), "KiB")
        }
        report.add("open_after_hold", "open after hold", Double(stillOpen))
        report.check("closed_during_hold", "closed during hold", held.unexpectedCloses)
        await bench.shutdown()
        report.emit(json: settings.json)
        if !report.passed { throw ExitCode(2) }
    }
}
