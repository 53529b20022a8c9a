import Synchronization

/// How the store answered one write.
enum WriteOutcome: Sendable {
    case stored
    /// Stored, at later seqs than it carried (a shared store renumbered it after another node's events).
    case rebased
    /// Refused because another node moved the thread's log first: to be written again after catching up.
    case conflict
    case failed

    init(_ result: Result<Void, any Error>) {
        switch result {
        case .success: self = .stored
        case .failure(is StoreRebased): self = .rebased
        case .failure(let error as StoreError) where error.isConflict: self = .conflict
        case .failure: self = .failed
        }
    }
}

/// Store completions of one thread actor's sends, collected on the committer's thread and handed to the actor
/// in batches, so a group commit costs each actor one hop instead of one per message.
final class CommitInbox: Sendable {
    private struct State {
        var results: [(seq: Int, outcome: WriteOutcome)] = []
        var scheduled = false
        var inline = false
    }

    private let state = Mutex(State())

    /// Records the outcome of the write of `seq`. Returns `true` when the caller must schedule a drain (none
    /// is scheduled yet); later posts join the scheduled one.
    func post(seq: Int, outcome: WriteOutcome) -> Bool {
        state.withLock { s in
            s.results.append((seq, outcome))
            if s.scheduled || s.inline { return false }
            s.scheduled = true
            return true
        }
    }

    /// While the actor submits a write, outcomes are left for it to take right after (`endInline`) instead of
    /// scheduling a drain: a store that completes at once (in memory) then costs no extra hop.
    func beginInline() {
        state.withLock { $0.inline = true }
    }

    /// Ends `beginInline` and takes what was recorded meanwhile (and anything else waiting), in order.
    func endInline() -> [(seq: Int, outcome: WriteOutcome)] {
        state.withLock { s in
            s.inline = false
            defer { s.results = [] }
            return s.results
        }
    }

    /// Takes every recorded outcome in order; `nil`, and no drain scheduled any more, when there is none.
    func take() -> [(seq: Int, outcome: WriteOutcome)]? {
        state.withLock { s in
            if s.results.isEmpty {
                s.scheduled = false
                return nil
            }
            defer { s.results = [] }
            return s.results
        }
    }
}
