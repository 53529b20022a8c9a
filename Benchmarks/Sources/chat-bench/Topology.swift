import ArgumentParser
import NIOCore

/// The shape of a traffic run: T threads × M members × D devices per user, S senders.
struct TopologyOptions: ParsableArguments {
    @Option(help: "Threads (rooms).")
    var threads = 100

    @Option(help: "Members per thread.")
    var members = 10

    @Option(help: "Connected devices (sockets) per user.")
    var devices = 2

    @Option(help: "Distinct users (0: threads × members, every user in one thread; fewer users share threads).")
    var users = 0

    @Option(help: "Senders (0: one per thread). Sender k posts to thread k mod T from member ⌊k/T⌋ mod M, device 0.")
    var senders = 0

    @Option(help: "Content bytes per message.")
    var size = 100

    @Flag(help: "A different pseudo-random content for every message (like real text, it does not compress away in history chunks); by default every message of a sender has the same content.")
    var randomContent = false

    @Option(help: "Members per thread who never connect (each thread its own): with --offline-webhook-url every message writes an offline notice for each.")
    var offlineMembers = 0

    func validate() throws {
        guard threads >= 1, members >= 1, devices >= 1 else { throw ValidationError("threads, members and devices must be at least 1") }
        guard users == 0 || users >= members else { throw ValidationError("--users must be at least --members") }
        guard senders >= 0, senders <= threads * members else { throw ValidationError("--senders must be at most threads × members") }
        guard size >= 1, size <= 1_000_000 else { throw ValidationError("--size must be 1…1000000") }
        guard offlineMembers >= 0, offlineMembers <= 1000 else { throw ValidationError("--offline-members must be 0…1000") }
    }

    var userCount: Int { users == 0 ? threads * members : users }
    var senderCount: Int { senders == 0 ? threads : senders }
    var connections: Int { userCount * devices }

    func describe(into report: inout Report) {
        report.param("threads", threads)
        report.param("members", members)
        report.param("devices", devices)
        report.param("users", userCount)
        report.param("senders", senderCount)
        report.param("size", size)
        if offlineMembers > 0 { report.param("offline members", offlineMembers) }
    }
}

/// The users and threads of a run: thread t's member j is user (t·M + j) mod U.
struct Topology: Sendable {
    var threadMembers: [[String]]
    var users: [UserPlan]
    var devicesPerUser: Int
    /// Sender k: (thread, user index).
    var senders: [(thread: Int, user: Int)]

    init(_ o: TopologyOptions) {
        self.init(threads: o.threads, members: o.members, devices: o.devices, users: o.userCount, senders: o.senderCount, offline: o.offlineMembers)
    }

    init(threads: Int, members: Int, devices: Int, users userCount: Int, senders senderCount: Int, offline: Int = 0) {
        var userThreads = [[Int]](repeating: [], count: userCount)
        threadMembers = []
        for t in 0..<threads {
            var list: [String] = []
            for j in 0..<members {
                let u = (t * members + j) % userCount
                list.append("u\(u)")
                userThreads[u].append(t)
            }
            // Members who never connect: no devices, so nothing is expected to reach them.
            for k in 0..<offline { list.append("off\(t)-\(k)") }
            threadMembers.append(list)
        }
        users = (0..<userCount).map { UserPlan(id: "u\($0)", threads: userThreads[$0], devices: devices) }
        devicesPerUser = devices
        senders = (0..<senderCount).map { k in
            let t = k % threads
            let j = (k / threads) % members
            return (t, (t * members + j) % userCount)
        }
    }

    /// Indices of the devices that carry a sender (device 0 of each sending user).
    var senderDevices: Set<Int> { Set(senders.map { $0.user * devicesPerUser }) }
}

extension Bench {
    /// Gives each sender its role on its device (device 0 of the sending user).
    func assignSenders(_ topology: Topology, devices: [Device], size: Int, randomContent: Bool = false) async throws {
        let directory = self.directory
        var specs: [(device: Device, thread: Int, id: Int)] = []
        for (k, s) in topology.senders.enumerated() {
            specs.append((devices[s.user * topology.devicesPerUser], s.thread, k))
        }
        for ctx in contexts {
            let mine = specs.filter { $0.device.ctx === ctx }
            _ = try await ctx.loop.submit {
                for spec in mine {
                    guard let stream = spec.device.streamIndex(thread: spec.thread) else { continue }
                    spec.device.senders.append(
                        Sender(id: spec.id, stream: stream, thread: spec.thread, threadId: directory.ids[spec.thread], contentBytes: size,
                               randomContent: randomContent))
                }
            }.get()
        }
    }

    /// Creates the threads of `topology` and returns a harness with its devices created (not connected).
    static func prepare(
        _ topology: Topology, settings: Settings, progress: Progress
    ) async throws -> (Bench, [Device]) {
        for endpoint in settings.endpoints { try await waitForHealth(endpoint) }
        let minter = try await TokenMinter(secret: settings.secret, company: settings.company)
        let directory = try await createThreads(topology.threadMembers, settings: settings, minter: minter, progress: progress)
        let bench = try Bench(settings: settings, minter: minter, directory: directory, progress: progress)
        let devices = try await bench.addDevices(topology.users)
        return (bench, devices)
    }
}
