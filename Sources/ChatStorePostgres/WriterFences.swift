import ChatCore
import Synchronization

/// The writer epochs (`StoreWrite.fence`) this node's store has refused a conflicting write of, per thread. A unit
/// of a fenced epoch is refused as a conflict too, so a thread actor's pipelined writes after a conflict never land
/// behind another node's events out of order; the actor catches up and writes them again under a newer epoch.
/// Epochs only grow within a process, so one number per thread is enough.
///
/// An epoch whose write failed otherwise (not stored, and not because another node wrote first) is stopped: none of
/// its later writes of the thread lands, not even a new message that may move (`rebasable`), since it would take the
/// place of the one that failed and the client's retry of that one would land after it.
final class WriterFences: Sendable {
    private let fenced = Mutex<[ThreadID: Int]>([:])
    private let stopped = Mutex<[ThreadID: Int]>([:])

    func isStopped(_ thread: ThreadID, epoch: Int) -> Bool {
        stopped.withLock { ($0[thread] ?? Int.min) >= epoch }
    }

    func stop(_ thread: ThreadID, epoch: Int) {
        stopped.withLock { $0[thread] = max($0[thread] ?? Int.min, epoch) }
    }

    func isFenced(_ thread: ThreadID, epoch: Int) -> Bool {
        fenced.withLock { ($0[thread] ?? Int.min) >= epoch }
    }

    func fence(_ thread: ThreadID, epoch: Int) {
        fenced.withLock { $0[thread] = max($0[thread] ?? Int.min, epoch) }
    }
}
