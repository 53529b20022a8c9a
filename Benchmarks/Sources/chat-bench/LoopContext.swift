import Histogram
import NIOCore
import NIOPosix

/// A latency histogram in microseconds, 1 µs to 10 min, 3 significant digits.
func makeLatencyHistogram() -> Histogram<UInt64> {
    Histogram<UInt64>(lowestDiscernibleValue: 1, highestTrackableValue: 600_000_000, numberOfSignificantValueDigits: .three)
}

extension Histogram<UInt64> {
    /// Records microseconds, clamping what the histogram cannot hold.
    @inline(__always)
    mutating func recordMicros(_ micros: UInt64) {
        record(Swift.min(Swift.max(micros, 1), highestTrackableValue))
    }

    /// A percentile in milliseconds (0 when empty).
    func millis(_ percentile: Double) -> Double {
        totalCount == 0 ? 0 : Double(valueAtPercentile(percentile)) / 1000
    }

    var maxMillis: Double { totalCount == 0 ? 0 : Double(max) / 1000 }
}

/// The threads of a run: their ids, the seq each had when the run started, and a hash lookup from the id's bytes so
/// a delivery is matched to its thread without building a `String`.
final class ThreadDirectory: Sendable {
    let ids: [String]
    let idBytes: [[UInt8]]
    let baseSeq: [Int]
    private let byHash: [UInt64: Int]

    init(ids: [String], baseSeq: [Int]) {
        self.ids = ids
        self.baseSeq = baseSeq
        idBytes = ids.map { Array($0.utf8) }
        var byHash: [UInt64: Int] = [:]
        for (i, bytes) in idBytes.enumerated() {
            let h = bytes.withUnsafeBytes { Scan.fnv1a($0) }
            precondition(byHash[h] == nil, "thread id hash collision")  // 64-bit FNV over a few thousand ids: never
            byHash[h] = i
        }
        self.byHash = byHash
    }

    var count: Int { ids.count }

    @inline(__always)
    func lookup(_ bytes: UnsafeRawBufferPointer) -> Int? {
        guard let i = byHash[Scan.fnv1a(bytes)], idBytes[i].count == bytes.count else { return nil }
        return idBytes[i].withUnsafeBytes { $0.elementsEqual(bytes) } ? i : nil
    }

    func index(of id: String) -> Int? {
        let bytes = Array(id.utf8)
        return bytes.withUnsafeBytes { lookup($0) }
    }
}

/// What arrived on one (device, thread) stream, checked against the thread's gap-free seq.
struct StreamState {
    let thread: Int
    /// Highest seq seen.
    var lastSeq: Int
    /// Seqs skipped over and not seen yet (a gap that may still be filled by a late, out-of-order event).
    var missing: Set<Int> = []
    /// Seqs at or below this may legitimately arrive twice: the overlap between a `chat:sync` answer and the live
    /// events that arrived while it was in flight (a reconnecting client dedupes them by seq).
    var overlapUpTo = 0

    init(thread: Int, lastSeq: Int) {
        self.thread = thread
        self.lastSeq = lastSeq
    }

    enum Outcome { case next, gap, reordered, duplicate, overlap }

    mutating func accept(_ seq: Int) -> Outcome {
        if seq == lastSeq + 1 {
            lastSeq = seq
            return .next
        }
        if seq > lastSeq {
            // Remember at most 100k skipped seqs per stream; beyond that the count alone says enough.
            for s in (lastSeq + 1)..<min(seq, lastSeq + 100_001) { missing.insert(s) }
            lastSeq = seq
            return .gap
        }
        if !missing.isEmpty, missing.remove(seq) != nil { return .reordered }
        return seq <= overlapUpTo ? .overlap : .duplicate
    }

    /// Events of this stream still not seen, given the thread's final seq.
    func behind(finalSeq: Int) -> Int { missing.count + max(0, finalSeq - lastSeq) }
}

/// Counters and histograms of one event loop; merged across loops for progress lines and reports.
struct LoopStats: Sendable {
    /// End-to-end latency (send → each recipient's receive), µs, per measurement phase.
    var latency: [Histogram<UInt64>] = [makeLatencyHistogram(), makeLatencyHistogram()]
    /// End-to-end latency since the last progress tick (`Bench.observe` takes and restarts it), µs.
    var interval = makeLatencyHistogram()
    /// Send → acknowledgement, µs.
    var ackLatency = makeLatencyHistogram()
    /// Reconnect start → caught up after `chat:sync`, µs.
    var catchUp = makeLatencyHistogram()
    /// `chat:sync` request → last page, µs.
    var syncTime = makeLatencyHistogram()
    var sent = 0
    var acked = 0
    var deliveries = 0
    var deliveriesByPhase = [0, 0]
    var gapJumps = 0
    var duplicates = 0
    var reordered = 0
    var overlaps = 0
    var syncEvents = 0
    var syncErrors = 0
    var reconnects = 0
    var reconnectFailures = 0
    var unexpectedCloses = 0
    var lostAcks = 0
    var foreignEvents = 0
    var otherEvents = 0
    var unknownAcks = 0
    var maxSendLagNanos: UInt64 = 0
    var failures: [String: Int] = [:]

    mutating func merge(_ o: LoopStats) {
        for i in latency.indices { latency[i].add(o.latency[i]) }
        interval.add(o.interval)
        ackLatency.add(o.ackLatency)
        catchUp.add(o.catchUp)
        syncTime.add(o.syncTime)
        sent += o.sent
        acked += o.acked
        deliveries += o.deliveries
        for i in deliveriesByPhase.indices { deliveriesByPhase[i] += o.deliveriesByPhase[i] }
        gapJumps += o.gapJumps
        duplicates += o.duplicates
        reordered += o.reordered
        overlaps += o.overlaps
        syncEvents += o.syncEvents
        syncErrors += o.syncErrors
        reconnects += o.reconnects
        reconnectFailures += o.reconnectFailures
        unexpectedCloses += o.unexpectedCloses
        lostAcks += o.lostAcks
        foreignEvents += o.foreignEvents
        otherEvents += o.otherEvents
        unknownAcks += o.unknownAcks
        maxSendLagNanos = max(maxSendLagNanos, o.maxSendLagNanos)
        for (k, v) in o.failures { failures[k, default: 0] += v }
    }

    var failed: Int { failures.values.reduce(0, +) }

    /// Starts a new measurement window (after a warm-up): rates and latencies restart, correctness counters stay.
    mutating func resetMeasurements() {
        latency = [makeLatencyHistogram(), makeLatencyHistogram()]
        interval = makeLatencyHistogram()
        ackLatency = makeLatencyHistogram()
        sent = 0
        acked = 0
        deliveries = 0
        deliveriesByPhase = [0, 0]
    }
}

/// How senders send while a run is on.
enum SendMode: Sendable {
    case idle
    /// Open loop: each sender sends one message every `intervalNanos`, whatever the broker does.
    case open(intervalNanos: UInt64)
    /// Closed loop: each sender keeps `inflight` messages unacknowledged.
    case closed(inflight: Int)
}

/// How to reach the broker; shared by every connection.
struct ConnectConfig: Sendable {
    /// One broker node.
    struct Target: Sendable {
        var endpoint: Endpoint
        var address: SocketAddress
    }

    /// Device `i` connects to `targets[i % targets.count]`.
    var targets: [Target]
    var sourceAddresses: [SocketAddress]
    var handshakeTimeout: TimeAmount = .seconds(30)
    var maxFrameSize = 64 << 20
}

/// Everything the hot path touches, confined to one event loop: that loop's devices, its statistics and its send
/// schedule. Only code running on `loop` reads or writes it (hence `@unchecked Sendable`: it is handed to the
/// loop's own tasks, never used from two threads).
final class LoopContext: @unchecked Sendable {
    let loop: any EventLoop
    let index: Int
    let directory: ThreadDirectory
    let config: ConnectConfig
    var devices: [Device] = []
    var stats = LoopStats()
    /// Latency samples go to `stats.latency[phase]`.
    var phase = 0
    var mode: SendMode = .idle
    var running = false
    var masks: MaskKeyGenerator
    /// Highest seq known per thread (from acks and deliveries): the final seq every stream must reach.
    var threadMaxSeq: [Int]

    init(loop: any EventLoop, index: Int, directory: ThreadDirectory, config: ConnectConfig) {
        self.loop = loop
        self.index = index
        self.directory = directory
        self.config = config
        masks = MaskKeyGenerator(seed: 0x9E37_79B9_7F4A_7C15 &* UInt64(index + 1) ^ monotonicNanos())
        threadMaxSeq = directory.baseSeq
    }

    @inline(__always)
    func noteSeq(thread: Int, seq: Int) {
        if seq > threadMaxSeq[thread] { threadMaxSeq[thread] = seq }
    }

    /// Starts every sender of this loop.
    func start(mode: SendMode, at start: UInt64, senderCount: Int) {
        self.mode = mode
        running = true
        switch mode {
        case .idle: running = false
        case .open(let interval):
            // Spread first sends evenly over one interval so senders do not fire in lockstep.
            for device in devices {
                for sender in device.senders {
                    sender.nextDue = start + interval * UInt64(sender.id) / UInt64(max(senderCount, 1))
                    device.schedule(sender)
                }
            }
        case .closed(let inflight):
            for device in devices where !device.senders.isEmpty {
                for sender in device.senders {
                    for _ in 0..<inflight { device.sendChat(sender, now: monotonicNanos()) }
                }
                device.flushIfNeeded()
            }
        }
    }

    func stop() {
        running = false
        for device in devices { for sender in device.senders { sender.timer?.cancel(); sender.timer = nil } }
    }

    /// Counts what is still owed: unacknowledged sends, and events not yet seen by some stream.
    func outstanding(finalSeq: [Int]) -> (acks: Int, events: Int) {
        var acks = 0
        var events = 0
        for device in devices {
            acks += device.pendingSendAcks
            guard !device.excluded else { continue }
            for s in device.streams { events += s.behind(finalSeq: finalSeq[s.thread]) }
        }
        return (acks, events)
    }
}
