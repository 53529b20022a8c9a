import ChatCore
import Synchronization

/// The calls of one store whose deadline passed while their body still runs (a statement PostgreSQL never answered).
/// Past `limit` of them the database is taken for unresponsive: the store's next calls fail at once instead of piling
/// more open transactions onto it, until the stalled bodies end.
///
/// Any call that loses to its deadline also starts a `probe`, when one is set (a connection of its own and one cheap
/// statement). If the database gives no answer to it either (the connection cannot be made, or says nothing), an
/// outage is declared: every call fails at once until a probe, tried every 250 ms, gets an answer, or a LISTEN
/// connection does (`databaseAnswered`). A call that was only slow (behind a row lock) declares nothing, and neither
/// does a server that answers the probe with a refusal (too many connections): the probe answers.
/// While PostgreSQL is unreachable a call waits for a pool connection until its deadline (5 s) and is then taken off
/// the pool's queue, so no body stays stalled; without this, every call would wait out its deadline, and a socket's
/// commands, handled in order, would queue behind each other for as long as the outage lasts.
///
/// Only deadlines count. A body abandoned because its caller was cancelled (a client went away) says nothing about
/// the database, and a burst of those must not make other callers fail. Each store has its own count, so one store's
/// stalls never refuse another's calls.
final class StalledCalls: Sendable {
    /// Stalled bodies allowed at once (the pool holds 8 connections by default).
    let limit: Int
    private let running = Atomic<Int>(0)

    private struct Outage {
        var since: ContinuousClock.Instant?
        var probing = false
        /// A LISTEN connection got an answer while the probe was trying: the probe stops at its next result.
        var answeredElsewhere = false
        var probe: (@Sendable () async -> Bool)?
    }
    private let outage = Mutex(Outage())

    init(limit: Int = 4) { self.limit = limit }

    /// Sets what answers whether the database is back (`true` once it answered); without one, no outage is declared.
    func setProbe(_ probe: @escaping @Sendable () async -> Bool) {
        outage.withLock { $0.probe = probe }
    }

    /// A call lost to its deadline: the probe is tried; while it gets no answer, the database is taken for
    /// unreachable (and tried again every 250 ms).
    func deadlinePassed() {
        let probe = outage.withLock { o -> (@Sendable () async -> Bool)? in
            guard let probe = o.probe, !o.probing else { return nil }
            o.probing = true
            return probe
        }
        guard let probe else { return }
        Task { [weak self] in
            while true {
                let answered = await probe()
                guard let self else { return }
                let over = self.outage.withLock { o -> Bool in
                    if answered || o.answeredElsewhere {
                        o.since = nil
                        o.probing = false
                        o.answeredElsewhere = false
                        return true
                    }
                    if o.since == nil { o.since = .now }
                    return false
                }
                if over { return }
                try? await Task.sleep(for: .milliseconds(250))
            }
        }
    }

    /// The database answered (a LISTEN connection's query): an outage declared ends at once, without waiting for the
    /// probe's next try.
    func databaseAnswered() {
        outage.withLock { o in
            o.since = nil
            if o.probing { o.answeredElsewhere = true }
        }
    }

    /// Whether an outage is declared (for tests).
    var inOutage: Bool { outage.withLock { $0.since != nil } }

    /// Stalled bodies still running.
    var count: Int { running.load(ordering: .relaxed) }

    /// The error a call gets instead of running while `limit` bodies are stalled; `nil` while there is room.
    func refusal() -> StoreError? {
        if let since = outage.withLock({ $0.since }) {
            let elapsed = (ContinuousClock.now - since).components
            return StoreError("the database has not answered for \(elapsed.seconds) s (it is checked every 250 ms)")
        }
        let now = count
        guard now >= limit else { return nil }
        return StoreError("the database is not answering: \(now) earlier calls are still running past their deadline")
    }

    func began() { running.wrappingAdd(1, ordering: .relaxed) }
    func ended() { running.wrappingAdd(-1, ordering: .relaxed) }
}
