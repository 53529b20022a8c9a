import ChatCore
import Synchronization

/// One call of `PostgresMessageStore.withDeadline`: the caller's continuation, resumed once by whichever comes first of
/// the body's result, the deadline, or the caller's cancellation; the body's task (cancelled when it loses) and the
/// timer's (cancelled when the body wins). A body that loses to the deadline is counted in `stalled` until it ends.
final class DeadlineRace<T: Sendable>: Sendable {
    /// How the caller was answered.
    enum Outcome {
        /// By the body's own result.
        case body
        /// At the deadline: the body is cancelled and counted as stalled until it ends.
        case deadline
        /// The caller was cancelled: the body is cancelled, not counted.
        case cancelled
    }

    private struct State {
        var continuation: CheckedContinuation<T, any Error>?
        /// Decided before the continuation arrived (the caller was cancelled first).
        var early: Result<T, any Error>?
        var work: Task<Void, Never>?
        var timer: Task<Void, Never>?
        var done = false
        /// The body was counted in `stalled` (it lost to the deadline while running).
        var counted = false
    }

    private let state = Mutex(State())
    private let stalled: StalledCalls?
    /// Run once when the caller is answered at the deadline (`LeasedConnection.close`).
    private let onDeadline: (@Sendable () -> Void)?

    init(stalled: StalledCalls?, onDeadline: (@Sendable () -> Void)? = nil) {
        self.stalled = stalled
        self.onDeadline = onDeadline
    }

    func start(_ continuation: CheckedContinuation<T, any Error>, body: @escaping @Sendable () async throws -> T, limit: Duration, timeout: StoreError) {
        // Both tasks are recorded under the lock before either can reach `finish` (which takes it too), so `finish`
        // always knows the body's task: a body that ends at once cannot slip between its start and its record.
        let early = state.withLock { s -> Result<T, any Error>? in
            if s.done { return s.early }
            s.continuation = continuation
            s.work = Task {
                let result: Result<T, any Error>
                do { result = .success(try await body()) } catch { result = .failure(error) }
                self.finish(result, by: .body)
                // Under the lock, so the count is taken back exactly once, and only if it was taken.
                let counted = self.state.withLock { s in
                    defer { s.counted = false }
                    return s.counted
                }
                if counted { self.stalled?.ended() }
            }
            s.timer = Task {
                guard (try? await Task.sleep(for: limit)) != nil else { return }
                self.finish(.failure(timeout), by: .deadline)
            }
            return nil
        }
        if let early { continuation.resume(with: early) }
    }

    /// Answers the caller once; the loser of the race is cancelled. `false` if the caller was already answered.
    @discardableResult
    func finish(_ result: Result<T, any Error>, by outcome: Outcome) -> Bool {
        let (continuation, work, timer, first) = state.withLock { s -> (CheckedContinuation<T, any Error>?, Task<Void, Never>?, Task<Void, Never>?, Bool) in
            guard !s.done else { return (nil, nil, nil, false) }
            s.done = true
            if s.continuation == nil { s.early = result }
            // Counted under the lock that the body's end takes too: it cannot end between the check and the count.
            if outcome == .deadline, s.work != nil, stalled != nil {
                s.counted = true
                stalled?.began()
            }
            defer { s.continuation = nil }
            return (s.continuation, s.work, s.timer, true)
        }
        guard first else { return false }
        switch outcome {
        case .body: timer?.cancel()
        case .deadline:
            work?.cancel()
            onDeadline?()
            stalled?.deadlinePassed()
        case .cancelled:
            work?.cancel()
            timer?.cancel()
        }
        continuation?.resume(with: result)
        return true
    }
}
