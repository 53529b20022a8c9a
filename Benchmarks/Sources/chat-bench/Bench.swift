import ArgumentParser
import ChatJSON
import NIOCore
import NIOPosix
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// Options every scenario shares: where the broker is, how to sign tokens, how to drive connections.
struct CommonOptions: ParsableArguments {
    @Option(help: "Base URL of a broker that implements PROTOCOL.md (an IPv4 literal or localhost); several, comma-separated, spread the devices over those nodes round robin (REST set-up goes to the first).")
    var url = "http://127.0.0.1:3001"

    @Option(help: "HS256 secret shared with the broker (default: $CHAT_JWT_SECRET).")
    var secret: String?

    @Option(help: "companyId claim of every token (default: a fresh one per run, so runs never see each other).")
    var company: String?

    @Option(help: "Event loop threads of the harness.")
    var loops = System.coreCount

    @Option(help: "Broker process id: its RSS is read from /proc/<pid>/status.")
    var serverPid: Int?

    @Option(help: "Connections in their handshake at once.")
    var connectConcurrency = 200

    @Option(help: "Spread connections over this many source addresses 127.0.0.1, .2, … (0: one per 25,000 connections).")
    var sourceAddresses = 0

    @Option(help: "A name for the target in the output.")
    var label: String?

    @Flag(help: "Print the result as JSON on stdout (the table goes to stderr).")
    var json = false

    @Flag(help: "No progress line.")
    var quiet = false

    func settings(connections: Int) throws -> Settings {
        guard let secret = secret ?? ProcessInfoLite.env("CHAT_JWT_SECRET"), !secret.isEmpty else {
            throw BenchError("no JWT secret: pass --secret or set CHAT_JWT_SECRET to the broker's secret")
        }
        let endpoints = try url.split(separator: ",").map { try Endpoint(url: String($0.filter { $0 != " " })) }
        guard !endpoints.isEmpty else { throw BenchError("--url is empty") }
        let runId = String(UInt64(monotonicNanos() ^ UInt64(getpid()) << 40) % 0xFFFF_FFFF, radix: 36)
        let sources = sourceAddresses > 0 ? sourceAddresses : (connections > 25_000 ? (connections + 24_999) / 25_000 : 0)
        guard (0...250).contains(sources) else { throw BenchError("--source-addresses must be at most 250") }
        guard loops >= 1 else { throw BenchError("--loops must be at least 1") }
        return Settings(
            endpoints: endpoints, secret: secret, company: company ?? "bench-\(runId)", runId: runId, loops: loops,
            serverPid: serverPid, connectConcurrency: max(1, connectConcurrency), sourceAddresses: sources,
            label: label ?? endpoints.map(\.description).joined(separator: ","), json: json, quiet: quiet)
    }
}

struct Settings: Sendable {
    /// The nodes devices connect to, round robin; the first also serves REST set-up and metrics.
    var endpoints: [Endpoint]
    var endpoint: Endpoint { endpoints[0] }
    var secret: String
    var company: String
    var runId: String
    var loops: Int
    var serverPid: Int?
    var connectConcurrency: Int
    var sourceAddresses: Int
    var label: String
    var json: Bool
    var quiet: Bool
}

enum ProcessInfoLite {
    static func env(_ name: String) -> String? { getenv(name).map { String(cString: $0) } }
}

/// A user of a run: its id, the threads it belongs to and how many devices it connects.
struct UserPlan: Sendable {
    var id: String
    var threads: [Int]
    var devices: Int
}

struct ConnectResult: Sendable {
    var established = 0
    var failed = 0
    var seconds = 0.0
    var errors: [String: Int] = [:]

    var summary: String {
        errors.sorted { $0.value > $1.value }.prefix(3).map { "\($0.value)× \($0.key)" }.joined(separator: "; ")
    }
}

/// A run's harness: the event loops, their contexts, the thread directory and the token minter.
final class Bench: Sendable {
    let settings: Settings
    let minter: TokenMinter
    let group: MultiThreadedEventLoopGroup
    let contexts: [LoopContext]
    let directory: ThreadDirectory
    let progress: Progress
    /// Highest broker RSS seen by `observe` (bytes).
    let peakRSS = Mutex(0)
    /// The last `observe` call's latency per progress tick (about a second each), in order.
    let lastTicks = Mutex<[Tick]>([])

    /// One progress tick of `observe`: the p99 of the deliveries measured in it, and the `counter` read at its end.
    struct Tick: Sendable {
        var p99: Double
        var counter: Int?
    }

    init(settings: Settings, minter: TokenMinter, directory: ThreadDirectory, progress: Progress) throws {
        self.settings = settings
        self.minter = minter
        self.directory = directory
        self.progress = progress
        let targets = try settings.endpoints.map { ConnectConfig.Target(endpoint: $0, address: try SocketAddress(ipAddress: $0.host, port: $0.port)) }
        var sources: [SocketAddress] = []
        for i in 0..<settings.sourceAddresses { sources.append(try SocketAddress(ipAddress: "127.0.0.\(i + 1)", port: 0)) }
        let config = ConnectConfig(targets: targets, sourceAddresses: sources)
        group = MultiThreadedEventLoopGroup(numberOfThreads: settings.loops)
        var contexts: [LoopContext] = []
        for (i, loop) in group.makeIterator().enumerated() {
            contexts.append(LoopContext(loop: loop, index: i, directory: directory, config: config))
        }
        self.contexts = contexts
    }

    // MARK: Set-up through the REST API

    /// Waits until `GET /health` answers 200.
    static func waitForHealth(_ endpoint: Endpoint, seconds: Double = 30) async throws {
        let deadline = monotonicNanos() + UInt64(seconds * 1e9)
        var last = ""
        while monotonicNanos() < deadline {
            do {
                let response = try HTTPClient.request(endpoint, method: "GET", path: "/health", timeoutSeconds: 5)
                if response.status == 200 { return }
                last = "HTTP \(response.status)"
            } catch {
                last = error.description
            }
            try await Task.sleep(nanoseconds: 200_000_000)
        }
        throw BenchError("\(endpoint) is not healthy: \(last)")
    }

    /// Creates `members.count` group threads through `POST /chat/threads`, each by its first member, and returns
    /// their directory.
    static func createThreads(
        _ members: [[String]], settings: Settings, minter: TokenMinter, progress: Progress
    ) async throws -> ThreadDirectory {
        var ids: [String] = []
        var baseSeq: [Int] = []
        var tokens: [String: String] = [:]
        let start = monotonicNanos()
        for (t, memberIds) in members.enumerated() {
            guard let creator = memberIds.first else { throw BenchError("a thread needs members") }
            if tokens[creator] == nil { tokens[creator] = try await minter.token(user: creator) }
            let body: JSONValue = .object([
                "type": .string("group"), "name": .string("bench-\(settings.runId)-\(t)"),
                "memberIds": .array(memberIds.dropFirst().map { .string($0) }),
            ])
            var attempts = 0
            while true {
                let response = try HTTPClient.request(settings.endpoint, method: "POST", path: "/chat/threads", bearer: tokens[creator], json: body)
                if response.status == 429, attempts < 100 {
                    attempts += 1
                    try await Task.sleep(nanoseconds: 50_000_000)
                    continue
                }
                guard response.status == 200 || response.status == 201, let thread = response.json?["thread"],
                    let id = thread["id"]?.stringValue
                else {
                    throw BenchError("POST /chat/threads answered \(response.status): \(response.text.prefix(300))")
                }
                ids.append(id)
                baseSeq.append(thread["lastSeq"]?.intValue ?? 0)
                break
            }
            if t % 50 == 49 { progress.line("creating threads: \(t + 1)/\(members.count)") }
        }
        progress.note("created \(members.count) threads in \(fmt(Double(monotonicNanos() - start) / 1e9, 2)) s")
        return ThreadDirectory(ids: ids, baseSeq: baseSeq)
    }

    // MARK: Devices

    /// Creates the devices of `users` (device i of the run goes to loop i mod loops), minting one token per user.
    func addDevices(_ users: [UserPlan]) async throws -> [Device] {
        var specs: [(index: Int, user: String, token: String, threads: [Int])] = []
        var index = 0
        for (u, user) in users.enumerated() {
            let token = try await minter.token(user: user.id)
            for _ in 0..<user.devices {
                specs.append((index, user.id, token, user.threads))
                index += 1
            }
            if u % 5000 == 4999 { progress.line("minting tokens: \(u + 1)/\(users.count)") }
        }
        var devices: [Device] = []
        devices.reserveCapacity(specs.count)
        for ctx in contexts {
            let mine = specs.filter { $0.index % contexts.count == ctx.index }
            let made = try await ctx.loop.submit {
                mine.map { spec in
                    let device = Device(index: spec.index, userId: spec.user, token: spec.token, ctx: ctx, threads: spec.threads)
                    ctx.devices.append(device)
                    return device
                }
            }.get()
            devices.append(contentsOf: made)
        }
        devices.sort { $0.index < $1.index }
        return devices
    }

    /// Connects `devices`, at most `connectConcurrency` in their handshake at once.
    func connect(_ devices: [Device], what: String = "connecting") async -> ConnectResult {
        var result = ConnectResult()
        let start = monotonicNanos()
        let window = settings.connectConcurrency
        var lastPrint = start
        await withTaskGroup(of: String?.self) { group in
            var next = 0
            while next < min(window, devices.count) {
                let device = devices[next]
                group.addTask { await Self.connectOne(device) }
                next += 1
            }
            while let outcome = await group.next() {
                if let outcome {
                    result.failed += 1
                    result.errors[outcome, default: 0] += 1
                } else {
                    result.established += 1
                }
                if next < devices.count {
                    let device = devices[next]
                    group.addTask { await Self.connectOne(device) }
                    next += 1
                }
                let now = monotonicNanos()
                if now - lastPrint > 1_000_000_000 {
                    lastPrint = now
                    let done = result.established + result.failed
                    progress.line(
                        "\(what): \(done)/\(devices.count) (\(Int(Double(done) / (Double(now - start) / 1e9)))/s), \(result.failed) failed")
                }
            }
        }
        result.seconds = Double(monotonicNanos() - start) / 1e9
        return result
    }

    private static func connectOne(_ device: Device) async -> String? {
        do {
            try await device.ctx.loop.flatSubmit { device.connect() }.get()
            return nil
        } catch let error as BenchError {
            return error.description
        } catch {
            return "\(error)"
        }
    }

    // MARK: Running

    /// Runs `body` on every loop and returns the results in loop order.
    func onLoops<T: Sendable>(_ body: @escaping @Sendable (LoopContext) -> T) async throws -> [T] {
        var out: [T] = []
        for ctx in contexts { out.append(try await ctx.loop.submit { body(ctx) }.get()) }
        return out
    }

    /// Every loop's stats, merged; with `restartingInterval`, each loop's `interval` histogram restarts in the same
    /// turn it is read, so that no sample is in two intervals or in none.
    func stats(restartingInterval: Bool = false) async throws -> LoopStats {
        var total = LoopStats()
        for s in try await onLoops({ ctx -> LoopStats in
            let s = ctx.stats
            if restartingInterval { ctx.stats.interval = makeLatencyHistogram() }
            return s
        }) { total.merge(s) }
        return total
    }

    func resetStats() async throws {
        _ = try await onLoops { ctx in ctx.stats = LoopStats() }
    }

    func setPhase(_ phase: Int) async throws {
        _ = try await onLoops { ctx in ctx.phase = phase }
    }

    func start(_ mode: SendMode, senderCount: Int) async throws {
        let at = monotonicNanos() + 2_000_000
        _ = try await onLoops { ctx in ctx.start(mode: mode, at: at, senderCount: senderCount) }
    }

    func stop() async throws {
        _ = try await onLoops { ctx in ctx.stop() }
    }

    /// The highest seq known per thread, across loops.
    func finalSeqs() async throws -> [Int] {
        var final = directory.baseSeq
        for seqs in try await onLoops({ $0.threadMaxSeq }) {
            for i in final.indices { final[i] = max(final[i], seqs[i]) }
        }
        return final
    }

    /// Waits until every send is acknowledged and every stream has seen its thread's last event. A slow server
    /// gets time as long as something still arrives: the wait ends after `timeout` seconds without a single ack or
    /// delivery (or after `maximum` seconds in all). Returns what is still missing.
    func drain(timeout: Double, maximum: Double = 300) async throws -> (acks: Int, events: Int) {
        let start = monotonicNanos()
        var lastProgress = start
        var seen = -1
        while true {
            let final = try await finalSeqs()
            var acks = 0
            var events = 0
            var arrived = 0
            for o in try await onLoops({ ($0.outstanding(finalSeq: final), $0.stats.acked + $0.stats.deliveries + $0.stats.syncEvents) }) {
                acks += o.0.acks
                events += o.0.events
                arrived += o.1
            }
            let now = monotonicNanos()
            if arrived != seen {
                seen = arrived
                lastProgress = now
            }
            if acks == 0 && events == 0 { return (0, 0) }
            if now - lastProgress > UInt64(timeout * 1e9) || now - start > UInt64(maximum * 1e9) { return (acks, events) }
            if now - start > 2_000_000_000 { progress.line("draining: \(acks) acks and \(events) deliveries outstanding") }
            try await Task.sleep(nanoseconds: 50_000_000)
        }
    }

    /// Observes a running phase for `seconds`, printing a progress line every second. Returns the stats at the end.
    /// Waits `seconds`, printing a progress line about every second and keeping each second's latency in
    /// `lastTicks`; `counter`, when given, is read at each tick too (a server metric, say) and kept beside it.
    func observe(seconds: Double, title: String, counter: (@Sendable () -> Int?)? = nil) async throws -> LoopStats {
        let start = monotonicNanos()
        let end = start + UInt64(seconds * 1e9)
        var previous = try await stats(restartingInterval: true)
        var previousAt = start
        var ticks: [Tick] = []
        defer { lastTicks.withLock { $0 = ticks } }
        while true {
            let now = monotonicNanos()
            if now >= end { break }
            try await Task.sleep(nanoseconds: min(1_000_000_000, end - now))
            let current = try await stats(restartingInterval: true)
            let at = monotonicNanos()
            let dt = Double(at - previousAt) / 1e9
            var line = "\(title) \(fmt(Double(at - start) / 1e9, 0))s: "
            line += "acked \(Int(Double(current.acked - previous.acked) / dt))/s, "
            line += "deliveries \(Int(Double(current.deliveries - previous.deliveries) / dt))/s, "
            let lat = current.latency[0].totalCount > 0 || current.latency.count < 2 ? current.latency[0] : current.latency[1]
            line += "p99 \(fmt(lat.millis(99), 2)) ms, max \(fmt(lat.maxMillis, 1)) ms"
            let window = current.interval
            line += " (this second: p99 \(fmt(window.millis(99), 2)) ms, max \(fmt(window.maxMillis, 1)) ms)"
            let count = counter?()
            if let count { line += ", counter \(count)" }
            ticks.append(Tick(p99: window.millis(99), counter: count))
            if current.failed > 0 { line += ", \(current.failed) refused" }
            if current.unexpectedCloses > 0 { line += ", \(current.unexpectedCloses) closed" }
            if let pid = settings.serverPid, let rss = ProcessProbe.rss(pid: pid) {
                line += ", server RSS \(rss >> 20) MiB"
                peakRSS.withLock { $0 = max($0, rss) }
            }
            progress.line(line)
            previous = current
            previousAt = at
        }
        return try await stats()
    }

    /// Closes every connection and stops the event loops.
    func shutdown() async {
        _ = try? await onLoops { ctx in
            for device in ctx.devices {
                device.dropping = true
                device.channel?.close(promise: nil)
            }
        }
        try? await Task.sleep(nanoseconds: 200_000_000)
        try? await group.shutdownGracefully()
    }
}

/// The progress line on stderr: rewritten in place on a terminal, one line per update otherwise.
final class Progress: Sendable {
    let enabled: Bool
    let tty: Bool

    init(enabled: Bool) {
        self.enabled = enabled
        tty = isatty(2) == 1
    }

    func line(_ text: String) {
        guard enabled else { return }
        if tty {
            writeStderr("\r\u{1B}[K" + text)
        } else {
            writeStderr(text + "\n")
        }
    }

    /// A line that stays.
    func note(_ text: String) {
        guard enabled else { return }
        writeStderr((tty ? "\r\u{1B}[K" : "") + text + "\n")
    }

    func clear() {
        if enabled && tty { writeStderr("\r\u{1B}[K") }
    }
}

func writeStderr(_ text: String) {
    var text = text
    text.withUTF8 { bytes in
        var done = 0
        while done < bytes.count {
            let n = write(2, bytes.baseAddress! + done, bytes.count - done)
            if n <= 0 { break }
            done += n
        }
    }
}

func fmt(_ value: Double, _ decimals: Int) -> String {
    if !value.isFinite { return "n/a" }
    var p = 1.0
    for _ in 0..<decimals { p *= 10 }
    let r = (value * p).rounded() / p
    if decimals == 0 { return String(Int(r)) }
    var s = String(r)
    if let dot = s.firstIndex(of: ".") {
        let have = s.distance(from: dot, to: s.endIndex) - 1
        if have < decimals { s += String(repeating: "0", count: decimals - have) }
    } else {
        s += "." + String(repeating: "0", count: decimals)
    }
    if s.contains("e") { return String(describing: r) }
    return s
}
