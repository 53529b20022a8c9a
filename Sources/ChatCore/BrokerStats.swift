import Synchronization

/// Counters the core keeps for metrics: lock-free, read by the server's `/metrics`.
public final class BrokerStats: Sendable {
    public let eventsFannedOut = Atomic<Int>(0)
    public let framesEnqueued = Atomic<Int>(0)
    public let typingDropped = Atomic<Int>(0)
    public let slowConsumerCloses = Atomic<Int>(0)
    public let messagesSent = Atomic<Int>(0)
    public let storeFailures = Atomic<Int>(0)
    public let activeThreads = Atomic<Int>(0)
    public let passivations = Atomic<Int>(0)
    /// Of those, the ones passivated before their idle time because the threads' history was over its memory budget.
    public let memoryPassivations = Atomic<Int>(0)
    /// About how many bytes of history the active threads held at the last check of the memory budget.
    public let threadMemoryBytes = Atomic<Int>(0)
    public let connectedDevices = Atomic<Int>(0)
    public let rateLimited = Atomic<Int>(0)
    public let devicesRefused = Atomic<Int>(0)
    /// Several nodes: sends refused because another node took the seq first (then written again).
    public let storeConflicts = Atomic<Int>(0)
    /// Several nodes: events other nodes committed, fanned out here.
    public let remoteEvents = Atomic<Int>(0)
    /// Several nodes: thread actors reloaded from the store to catch up.
    public let reloads = Atomic<Int>(0)
    /// Sealed history chunks of active threads released from memory once stored (`BrokerConfiguration.residentChunks`).
    public let historyChunksReleased = Atomic<Int>(0)
    /// Released history chunks read back from the store.
    public let historyChunksReadBack = Atomic<Int>(0)
    /// Lookups in the store of messages no longer indexed in memory (by id, for an edit, delete or receipt).
    public let releasedLookups = Atomic<Int>(0)
    /// TempIds of sends checked in the store because the in-memory filter of released tempIds could not rule them out
    /// (a retry of an old send, or one of the filter's rare false positives).
    public let tempIdLookups = Atomic<Int>(0)
    /// Thread events not fanned out because a later seq already was (an invariant check: 0 unless a bug).
    public let fanOutOrderRefusals = Atomic<Int>(0)
    /// Offline notices written with their message (one per member without a live socket).
    public let offlineQueued = Atomic<Int>(0)
    /// Offline notices the webhook receiver accepted (2xx).
    public let offlineSent = Atomic<Int>(0)
    /// Offline notices put back for a later attempt after a failed request.
    public let offlineRetried = Atomic<Int>(0)
    /// Offline notices given up on: still failing after the webhook's maximum age.
    public let offlineDropped = Atomic<Int>(0)
    /// Offline notices not sent because the user read the thread, got the message on a device, came online or left
    /// the thread (or the message was deleted) before they were due.
    public let offlineCoalesced = Atomic<Int>(0)

    public init() {}

    public func add(_ counter: borrowing Atomic<Int>, _ n: Int = 1) {
        counter.wrappingAdd(n, ordering: .relaxed)
    }
}
