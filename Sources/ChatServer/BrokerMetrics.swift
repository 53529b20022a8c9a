import ChatCore
import Prometheus
import Synchronization

/// The broker's Prometheus metrics: connections, events in and out, delivery and commit latency, drops and
/// slow-consumer closes. Core counters are read from `BrokerStats` at scrape time.
public final class BrokerMetrics: Sendable {
    public let registry = PrometheusCollectorRegistry()
    let connections: Gauge
    let eventsIn: Counter
    let eventErrors: Counter
    let commitLatency: DurationHistogram
    let commitBatch: ValueHistogram
    let deliveryLatency: DurationHistogram
    let handshakeTimeouts: Counter
    let pingTimeouts: Counter
    private let stats: BrokerStats
    private let fannedOut: Gauge
    private let framesOut: Gauge
    private let typingDropped: Gauge
    private let slowConsumer: Gauge
    private let activeThreads: Gauge
    private let rateLimited: Gauge
    private let storeFailures: Gauge
    private let messages: Gauge
    private let devicesRefused: Gauge

    public init(stats: BrokerStats) {
        self.stats = stats
        connections = registry.makeGauge(descriptor: Self.d("chat_connections", "Open Socket.IO connections on /chat"))
        eventsIn = registry.makeCounter(descriptor: Self.d("chat_events_in_total", "Client events received"))
        eventErrors = registry.makeCounter(descriptor: Self.d("chat_event_errors_total", "Client events answered with an error"))
        commitLatency = registry.makeDurationHistogram(descriptor: Self.d("chat_store_commit_seconds", "Group commit latency"), buckets: [.microseconds(500), .milliseconds(1), .milliseconds(2), .milliseconds(5), .milliseconds(10), .milliseconds(50), .milliseconds(250), .seconds(1)])
        commitBatch = registry.makeValueHistogram(descriptor: Self.d("chat_store_commit_units", "Writes per group commit"), buckets: [1, 2, 8, 32, 128, 512, 2048, 8192])
        deliveryLatency = registry.makeDurationHistogram(descriptor: Self.d("chat_delivery_seconds", "Time from an event's encoding to its write to a socket"), buckets: [.microseconds(250), .milliseconds(1), .milliseconds(2), .milliseconds(5), .milliseconds(10), .milliseconds(50), .milliseconds(100), .milliseconds(500)])
        handshakeTimeouts = registry.makeCounter(descriptor: Self.d("chat_handshake_timeouts_total", "Transports closed for never sending CONNECT"))
        pingTimeouts = registry.makeCounter(descriptor: Self.d("chat_ping_timeouts_total", "Transports closed for not answering pings"))
        fannedOut = registry.makeGauge(descriptor: Self.d("chat_events_fanned_out_total", "Thread events fanned out"))
        framesOut = registry.makeGauge(descriptor: Self.d("chat_frames_enqueued_total", "Frames enqueued to outboxes"))
        typingDropped = registry.makeGauge(descriptor: Self.d("chat_outbox_dropped_total", "Typing frames dropped for slow sockets"))
        slowConsumer = registry.makeGauge(descriptor: Self.d("chat_slow_consumer_closes_total", "Connections closed as slow consumers"))
        activeThreads = registry.makeGauge(descriptor: Self.d("chat_active_threads", "Thread actors in memory"))
        rateLimited = registry.makeGauge(descriptor: Self.d("chat_rate_limited_total", "Events refused by rate limits"))
        storeFailures = registry.makeGauge(descriptor: Self.d("chat_store_failures_total", "Store writes that failed"))
        devicesRefused = registry.makeGauge(descriptor: Self.d("chat_connections_refused_total", "Connections refused over the per-user socket limit"))
        messages = registry.makeGauge(descriptor: Self.d("chat_messages_sent_total", "Messages acknowledged"))
    }

    static func d(_ name: String, _ help: String) -> MetricNameDescriptor {
        MetricNameDescriptor(metricName: name, unitName: "", helpText: help)
    }

    /// The Prometheus text exposition.
    public func render() -> [UInt8] {
        fannedOut.set(Double(stats.eventsFannedOut.load(ordering: .relaxed)))
        framesOut.set(Double(stats.framesEnqueued.load(ordering: .relaxed)))
        typingDropped.set(Double(stats.typingDropped.load(ordering: .relaxed)))
        slowConsumer.set(Double(stats.slowConsumerCloses.load(ordering: .relaxed)))
        activeThreads.set(Double(stats.activeThreads.load(ordering: .relaxed)))
        rateLimited.set(Double(stats.rateLimited.load(ordering: .relaxed)))
        storeFailures.set(Double(stats.storeFailures.load(ordering: .relaxed)))
        messages.set(Double(stats.messagesSent.load(ordering: .relaxed)))
        devicesRefused.set(Double(stats.devicesRefused.load(ordering: .relaxed)))
        return registry.emitToBuffer()
    }
}
