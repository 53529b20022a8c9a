import ChatCore

/// Answers `GET /health/ready`: whether this node can serve (`MessageStore.unreadiness`: PostgreSQL answers and
/// this node hears the other nodes' changes; a store in the process is ready while the process is). The endpoint
/// needs no token, so the store is asked at most once a second whatever the request rate: requests in between share
/// the last answer, or the one under way.
actor ReadinessCheck {
    private let store: any MessageStore
    private let interval: Duration
    private var last: (at: ContinuousClock.Instant, problem: String?)?
    private var running: Task<String?, Never>?

    init(store: any MessageStore, interval: Duration = .seconds(1)) {
        self.store = store
        self.interval = interval
    }

    /// Why the node cannot serve now, or `nil` when it can.
    func problem() async -> String? {
        if let last, ContinuousClock.now - last.at < interval { return last.problem }
        if let running { return await running.value }
        let store = self.store
        let task = Task { await store.unreadiness() }
        running = task
        let problem = await task.value
        last = (.now, problem)
        running = nil
        return problem
    }
}
