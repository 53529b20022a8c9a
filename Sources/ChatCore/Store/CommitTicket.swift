import Synchronization

/// The completion of one store submission, awaitable once. The store's committer completes it from its own
/// thread; the waiter resumes without any actor hop in between.
public final class CommitTicket: Sendable {
    private struct State {
        var result: Result<Void, any Error>?
        var waiter: CheckedContinuation<Result<Void, any Error>, Never>?
    }

    private let state = Mutex(State())

    public init() {}

    /// Records the outcome and resumes the waiter, if any.
    public func complete(_ result: Result<Void, any Error>) {
        let waiter = state.withLock { s -> CheckedContinuation<Result<Void, any Error>, Never>? in
            s.result = result
            defer { s.waiter = nil }
            return s.waiter
        }
        waiter?.resume(returning: result)
    }

    /// Waits for the outcome.
    public func wait() async -> Result<Void, any Error> {
        await withCheckedContinuation { (cont: CheckedContinuation<Result<Void, any Error>, Never>) in
            let ready = state.withLock { s -> Result<Void, any Error>? in
                if let result = s.result { return result }
                s.waiter = cont
                return nil
            }
            if let ready { cont.resume(returning: ready) }
        }
    }
}
