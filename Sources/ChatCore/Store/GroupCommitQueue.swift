import Synchronization

/// The queue in front of a group-committing store. `submit` only appends a unit; the submit that finds the queue
/// idle tells its caller to start the one drainer, which takes everything queued at once (`take`) and commits it,
/// until `take` finds nothing and the queue is idle again. While a commit runs, new units gather for the next one,
/// so throughput grows with load instead of collapsing to one commit per write. Owned by one store.
public final class GroupCommitQueue: Sendable {
    /// One submitted unit: its writes (committed together or not at all) and who to tell.
    public struct Unit: Sendable {
        public var writes: [StoreWrite]
        public var completion: @Sendable (Result<Void, any Error>) -> Void
    }

    private struct State {
        var units: [Unit] = []
        var draining = false
        var closed = false
        var idleWaiters: [CheckedContinuation<Void, Never>] = []
    }

    private let state = Mutex(State())

    public init() {}

    /// Queues `writes`. Returns `true` if the caller must start the drainer; a closed queue fails the unit at once.
    public func submit(_ writes: [StoreWrite], completion: @escaping @Sendable (Result<Void, any Error>) -> Void) -> Bool {
        let (accepted, startDrain) = state.withLock { s -> (Bool, Bool) in
            if s.closed { return (false, false) }
            s.units.append(Unit(writes: writes, completion: completion))
            if s.draining { return (true, false) }
            s.draining = true
            return (true, true)
        }
        if !accepted { completion(.failure(StoreError("the store is shut down"))) }
        return startDrain
    }

    /// Everything queued, taken at once; `nil` when nothing is (the drainer stops, and waiters of `closeAndWait`
    /// are resumed).
    public func take() -> [Unit]? {
        let (units, waiters) = state.withLock { s -> ([Unit]?, [CheckedContinuation<Void, Never>]) in
            if s.units.isEmpty {
                s.draining = false
                defer { s.idleWaiters = [] }
                return (nil, s.idleWaiters)
            }
            defer { s.units = [] }
            return (s.units, [])
        }
        for waiter in waiters { waiter.resume() }
        return units
    }

    /// Refuses new units, then returns once the drainer has committed everything queued (at once if idle).
    public func closeAndWait() async {
        await withCheckedContinuation { (cont: CheckedContinuation<Void, Never>) in
            let idle = state.withLock { s -> Bool in
                s.closed = true
                if s.draining {
                    s.idleWaiters.append(cont)
                    return false
                }
                return true
            }
            if idle { cont.resume() }
        }
    }
}
