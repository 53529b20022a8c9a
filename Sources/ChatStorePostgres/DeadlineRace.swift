import ChatCore
import Synchronization

/// Counts the bodies of every `DeadlineRace` that were abandoned and are still running.
private let abandonedBodies = Atomic<Int>(0)

/// One call of `PostgresMessageStore.withDeadline`: the caller's continuation, resumed once by whichever comes first of
/// the body's result, the deadline, or the caller's cancellation; the body's task (cancelled when it loses) and the
/// timer's (cancelled when the body wins).
final class DeadlineRace<T: Sendable>: Sendable {
    private struct State {
        var continuation: CheckedContinuation<T, any Error>?
        /// Decided before the continuation arrived (the caller was cancelled first).
        var early: Result<T, any Error>?
        var work: Task<Void, Never>?
        var timer: Task<Void, Never>?
        var done = false
    }

    /// Abandoned bodies allowed to run at once, over all calls (the pool holds 8 connections).
    static var maxAbandoned: Int { 4 }
    /// Abandoned bodies still running.
    static var abandoned: Int { abandonedBodies.load(ordering: .relaxed) }

    private let state = Mutex(State())

    func start(_ continuation: CheckedContinuation<T, any Error>, body: @escaping @Sendable () async throws -> T, limit: Duration, timeout: StoreError) {
        // Both tasks are recorded under the lock before either can reach `finish` (which takes it too), so `finish`
        // always knows the body's task: a body that ends at once cannot slip between its start and its record.
        let early = state.withLock { s -> Result<T, any Error>? in
            if s.done { return s.early }
            s.continuation = continuation
            s.work = Task {
                let result: Result<T, any Error>
                do { result = .success(try await body()) } catch { result = .failure(error) }
                if !self.finish(result, abandoning: false) { abandonedBodies.wrappingAdd(-1, ordering: .relaxed) }
            }
            s.timer = Task {
                guard (try? await Task.sleep(for: limit)) != nil else { return }
                self.finish(.failure(timeout), abandoning: true)
            }
            return nil
        }
        if let early { continuation.resume(with: early) }
    }

    /// Answers the caller once; `abandoning`: the body lost and is cancelled (and counted until it ends). `false` if
    /// the caller was already answered.
    @discardableResult
    func finish(_ result: Result<T, any Error>, abandoning: Bool) -> Bool {
        let (continuation, work, timer, first) = state.withLock { s -> (CheckedContinuation<T, any Error>?, Task<Void, Never>?, Task<Void, Never>?, Bool) in
            guard !s.done else { return (nil, nil, nil, false) }
            s.done = true
            if s.continuation == nil { s.early = result }
            defer { s.continuation = nil }
            return (s.continuation, s.work, s.timer, true)
        }
        guard first else { return false }
        if abandoning {
            if work != nil { abandonedBodies.wrappingAdd(1, ordering: .relaxed) }
            work?.cancel()
        } else {
            timer?.cancel()
        }
        continuation?.resume(with: result)
        return true
    }
}
