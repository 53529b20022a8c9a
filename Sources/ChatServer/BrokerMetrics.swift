import ChatCore
import Prometheus
import Synchronization

/// The broker's Prometheus metrics: connections, events in (by event name) and out, delivery and commit latency,
/// drops, slow-consumer closes, passivations. Counts the core keeps in `BrokerStats` are exported at scrape time
/// as real counters (monotonic, `# TYPE … counter`) or gauges (values that go down).
public final class BrokerMetrics: Sendable {
    public let registry = PrometheusCollectorRegistry()
    let connections: Gauge
    let eventErrors: Counter
    let commitLatency: DurationHistogram
    let commitBatch: ValueHistogram
    /// `chat_delivery_seconds`: recorded a socket write's batch at a time, written after the registry's metrics.
    let deliveryLatency = BatchedDurationHistogram(
        name: "chat_delivery_seconds", help: "Time from an event's encoding to its write to a socket",
        boundsInNanoseconds: [250_000, 1_000_000, 2_000_000, 5_000_000, 10_000_000, 50_000_000, 100_000_000, 500_000_000])
    let handshakeTimeouts: Counter
    let pingTimeouts: Counter
    let protocolErrors: Counter
    let pendingEvicted: Counter
    let connectionsOverLimit: Counter
    private let stats: BrokerStats
    /// `chat_events_in_total{event=…}`: one counter per event of the contract, the rest under `other` (a client
    /// picks event names, so they never become label values).
    private let eventsIn: [String: Counter]
    private let otherEventsIn: Counter
    private let mirrored: [MirroredCounter]
    private let connectedDevices: Gauge
    private let activeThreads: Gauge
    private let threadMemory: Gauge
    /// Client events received (all names), for the console's rate.
    let eventsInTotal = Atomic<Int>(0)
    /// Delivery and commit latency of the last whole second, for the console.
    let recentDelivery = LatencyWindow()
    let recentCommit = LatencyWindow()

    /// The client events of the contract (docs/PROTOCOL.md §3).
    static let clientEvents = [
        "chat:send", "chat:join", "chat:leave", "chat:delivered", "chat:mark-read", "chat:typing:start", "chat:typing:stop",
        "chat:edit", "chat:delete", "chat:history", "chat:sync",
    ]

    public init(stats: BrokerStats) {
        self.stats = stats
        let registry = registry
        connections = registry.makeGauge(descriptor: Self.d("chat_connections", "Open Socket.IO connections on /chat"))
        let inDescriptor = Self.d("chat_events_in_total", "Client events received, by event name (other: names outside the contract)")
        eventsIn = Dictionary(uniqueKeysWithValues: Self.clientEvents.map { ($0, registry.makeCounter(descriptor: inDescriptor, labels: [("event", $0)])) })
        otherEventsIn = registry.makeCounter(descriptor: inDescriptor, labels: [("event", "other")])
        eventErrors = registry.makeCounter(descriptor: Self.d("chat_event_errors_total", "Client events answered with an error"))
        protocolErrors = registry.makeCounter(descriptor: Self.d("chat_protocol_errors_total", "Connections closed for a malformed Engine.IO or Socket.IO packet"))
        commitLatency = registry.makeDurationHistogram(descriptor: Self.d("chat_store_commit_seconds", "Group commit latency"), buckets: [.microseconds(500), .milliseconds(1), .milliseconds(2), .milliseconds(5), .milliseconds(10), .milliseconds(50), .milliseconds(250), .seconds(1)])
        commitBatch = registry.makeValueHistogram(descriptor: Self.d("chat_store_commit_units", "Writes per group commit"), buckets: [1, 2, 8, 32, 128, 512, 2048, 8192])
        pendingEvicted = registry.makeCounter(
            descriptor: Self.d("chat_pending_sessions_evicted_total", "Sessions awaiting CONNECT closed to make room for newer ones (--max-pending-sessions)"))
        connectionsOverLimit = registry.makeCounter(
            descriptor: Self.d("chat_connections_over_limit_total", "TCP connections closed at --max-connections: a newcomer, or the oldest silent connection, closed for it"))
        handshakeTimeouts = registry.makeCounter(descriptor: Self.d("chat_handshake_timeouts_total", "Transports closed for never sending CONNECT"))
        pingTimeouts = registry.makeCounter(descriptor: Self.d("chat_ping_timeouts_total", "Transports closed for not answering pings"))
        func mirror(_ name: String, _ help: String, _ read: @escaping @Sendable (BrokerStats) -> Int) -> MirroredCounter {
            MirroredCounter(counter: registry.makeCounter(descriptor: Self.d(name, help)), read: read)
        }
        mirrored = [
            mirror("chat_events_fanned_out_total", "Thread events fanned out") { $0.eventsFannedOut.load(ordering: .relaxed) },
            mirror("chat_frames_enqueued_total", "Frames enqueued to outboxes") { $0.framesEnqueued.load(ordering: .relaxed) },
            mirror("chat_outbox_dropped_total", "Typing frames dropped for slow sockets") { $0.typingDropped.load(ordering: .relaxed) },
            mirror("chat_slow_consumer_closes_total", "Connections closed as slow consumers") { $0.slowConsumerCloses.load(ordering: .relaxed) },
            mirror("chat_rate_limited_total", "Events refused by rate limits") { $0.rateLimited.load(ordering: .relaxed) },
            mirror("chat_store_failures_total", "Store writes that failed") { $0.storeFailures.load(ordering: .relaxed) },
            mirror("chat_connections_refused_total", "Connections refused over the per-user socket limit") { $0.devicesRefused.load(ordering: .relaxed) },
            mirror("chat_messages_sent_total", "Messages acknowledged") { $0.messagesSent.load(ordering: .relaxed) },
            mirror("chat_thread_passivations_total", "Idle thread actors passivated") { $0.passivations.load(ordering: .relaxed) },
            mirror("chat_thread_memory_passivations_total", "Thread actors passivated before their idle time: the threads' history was over --thread-memory-budget") {
                $0.memoryPassivations.load(ordering: .relaxed)
            },
            mirror("chat_store_conflicts_total", "Sends another node took the seq of first (written again after catching up)") {
                $0.storeConflicts.load(ordering: .relaxed)
            },
            mirror("chat_remote_events_total", "Events committed by other nodes and fanned out here") { $0.remoteEvents.load(ordering: .relaxed) },
            mirror("chat_fanout_order_refusals_total", "Thread events not fanned out because a later seq already was (0 unless a bug)") {
                $0.fanOutOrderRefusals.load(ordering: .relaxed)
            },
            mirror("chat_offline_notices_queued_total", "Offline notices written with their message (members without a live socket)") {
                $0.offlineQueued.load(ordering: .relaxed)
            },
            mirror("chat_offline_notices_sent_total", "Offline notices the webhook receiver accepted") { $0.offlineSent.load(ordering: .relaxed) },
            mirror("chat_offline_notices_retried_total", "Offline notices put back after a failed webhook request") {
                $0.offlineRetried.load(ordering: .relaxed)
            },
            mirror("chat_offline_notices_dropped_total", "Offline notices given up on after --offline-webhook-max-age") {
                $0.offlineDropped.load(ordering: .relaxed)
            },
            mirror("chat_offline_notices_coalesced_total", "Offline notices not sent: the user caught up, came online or left first") {
                $0.offlineCoalesced.load(ordering: .relaxed)
            },
            mirror("chat_thread_reloads_total", "Thread actors reloaded from the store to catch up with other nodes") {
                $0.reloads.load(ordering: .relaxed)
            },
            mirror("chat_history_chunks_released_total", "History chunks of active threads released from memory (the store holds them)") {
                $0.historyChunksReleased.load(ordering: .relaxed)
            },
            mirror("chat_history_chunks_read_back_total", "Released history chunks read back from the store for a read, an edit or a tempId retry") {
                $0.historyChunksReadBack.load(ordering: .relaxed)
            },
            mirror("chat_history_lookups_total", "Messages no longer indexed in memory looked up in the store (edits, deletes, receipts of old messages)") {
                $0.releasedLookups.load(ordering: .relaxed)
            },
            mirror("chat_history_tempid_lookups_total", "Send tempIds checked in the store (a retry of an old send, or a false positive of the in-memory filter)") {
                $0.tempIdLookups.load(ordering: .relaxed)
            },
        ]
        connectedDevices = registry.makeGauge(descriptor: Self.d("chat_connected_devices", "Devices connected to the core (sockets past CONNECT)"))
        activeThreads = registry.makeGauge(descriptor: Self.d("chat_active_threads", "Thread actors in memory"))
        threadMemory = registry.makeGauge(
            descriptor: Self.d("chat_thread_memory_bytes", "About how many bytes of history the active threads held at the last check of --thread-memory-budget"))
    }

    static func d(_ name: String, _ help: String) -> MetricNameDescriptor {
        MetricNameDescriptor(metricName: name, unitName: "", helpText: help)
    }

    /// Records the delivery latency of the event frames (`chat:…`) among `frames`, written to a socket at `now`: the
    /// Prometheus histogram and the console's last-second window, one lock each for the whole batch.
    func recordDeliveries(of frames: [OutboundFrame], at now: UInt64) {
        // The latencies go to a temporary buffer first: walking the frames once, by index, costs no reference
        // counting, where a lazy sequence walked by both histograms retained and released every frame twice.
        withUnsafeTemporaryAllocation(of: UInt64.self, capacity: frames.count) { buffer in
            var count = 0
            for index in frames.indices where frames[index].isChatEvent {
                buffer[count] = now &- frames[index].createdAt
                count += 1
            }
            let latencies = UnsafeBufferPointer(rebasing: buffer[..<count])
            deliveryLatency.record(nanoseconds: latencies)
            recentDelivery.record(nanoseconds: latencies)
        }
    }

    /// Counts one client event by name.
    func countEventIn(_ name: String) {
        (eventsIn[name] ?? otherEventsIn).increment()
        eventsInTotal.wrappingAdd(1, ordering: .relaxed)
    }

    /// The Prometheus text exposition.
    public func render() -> [UInt8] {
        for counter in mirrored { counter.sync(stats) }
        connectedDevices.set(Double(stats.connectedDevices.load(ordering: .relaxed)))
        activeThreads.set(Double(stats.activeThreads.load(ordering: .relaxed)))
        threadMemory.set(Double(stats.threadMemoryBytes.load(ordering: .relaxed)))
        var out = registry.emitToBuffer()
        deliveryLatency.emit(into: &out)
        return out
    }
}

/// A Prometheus counter that follows a monotonic count kept elsewhere: each scrape adds what the count grew by.
final class MirroredCounter: Sendable {
    private let counter: Counter
    private let read: @Sendable (BrokerStats) -> Int
    private let exported = Mutex<Int>(0)

    init(counter: Counter, read: @escaping @Sendable (BrokerStats) -> Int) {
        self.counter = counter
        self.read = read
    }

    func sync(_ stats: BrokerStats) {
        let now = read(stats)
        let delta = exported.withLock { last -> Int in
            defer { last = max(last, now) }
            return max(0, now - last)
        }
        if delta > 0 { counter.increment(by: Int64(delta)) }
    }
}
