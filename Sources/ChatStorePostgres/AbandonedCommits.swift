import ChatCore
import Synchronization

/// The threads of this node's commits whose outcome it never learnt (past their deadline, or failed after the
/// statement went out): such a commit may still land in the database after its sends were answered `internal` and
/// the thread's actor retired. A node skips its own announcements (its actors wrote those events), except, for
/// `window`, those of these threads: a late commit is then applied by the thread's next actor like another node's,
/// instead of reaching the devices here only once a later event shows the gap. Owned by one store; read by its
/// listener.
final class AbandonedCommits: Sendable {
    /// How long a thread's own announcements are taken as another node's after an abandoned commit.
    let window: Duration
    private let threads = Mutex<[ThreadID: ContinuousClock.Instant]>([:])
    /// Whether any thread is listed: the listener's check for every own announcement, without the lock.
    private let listed = Atomic<Bool>(false)

    init(window: Duration = .seconds(120)) { self.window = window }

    func note<S: Sequence<ThreadID>>(_ ids: S) {
        let until = ContinuousClock.now + window
        threads.withLock { map in
            for id in ids { map[id] = until }
            listed.store(!map.isEmpty, ordering: .releasing)
        }
    }

    /// Of `changes` (this node's own announcement), those of listed threads; expired entries are dropped.
    func ownChangesToApply(_ changes: [ClusterChange]) -> [ClusterChange] {
        guard listed.load(ordering: .acquiring) else { return [] }
        let now = ContinuousClock.now
        return threads.withLock { map in
            map = map.filter { $0.value > now }
            listed.store(!map.isEmpty, ordering: .releasing)
            return changes.filter { change in change.threadId.map { map[$0] != nil } ?? false }
        }
    }
}
