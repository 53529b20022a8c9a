import ChatCore
import Synchronization

/// This node's commits whose outcome it never learnt (past their deadline, or the connection lost after the
/// statement went out): such a commit may still land in the database after its sends were answered `internal` and
/// the thread's actor retired. A node skips its own announcements (its actors wrote those events), except, for
/// `window`, the announcement of such a commit's events: found by the ids of the messages it wrote when the events
/// are carried, by their seqs otherwise, and its member changes (the actor that made them in memory retired with the
/// failure, and its successor may have read the members before the late commit). A late commit is then applied by the
/// thread's next actor like another node's, instead of reaching the devices here only once a later event shows the
/// gap. Nothing else of the node's own announcements passes (typing and receipts were applied here already). Owned by
/// one store; read by its listener.
final class AbandonedCommits: Sendable {
    /// How long a commit's announcement is awaited after it was abandoned.
    let window: Duration

    private struct Entry {
        var until: ContinuousClock.Instant
        var messages: Set<MessageID> = []
        var seqs: ClosedRange<Int>? = nil
        /// The commit created the thread.
        var created = false
        /// The members versions of the member changes the commit made (each announced with its version): only those
        /// announcements pass, not this node's later member changes of the thread, which its live actor made.
        var memberVersions: Set<Int64> = []
    }

    private let threads = Mutex<[ThreadID: Entry]>([:])
    /// Whether any commit is listed: the listener's check for every own announcement, without the lock.
    private let listed = Atomic<Bool>(false)

    init(window: Duration = .seconds(120)) { self.window = window }

    var isEmpty: Bool { !listed.load(ordering: .acquiring) }

    /// Lists the events and member changes that `writes` (one abandoned commit's) would have stored.
    func note(_ writes: some Sequence<StoreWrite>) {
        let until = ContinuousClock.now + window
        threads.withLock { map in
            /// `change` applied to `thread`'s entry, whose window starts again.
            func update(_ thread: ThreadID, _ change: (inout Entry) -> Void) {
                var entry = map[thread] ?? Entry(until: until)
                entry.until = until
                change(&entry)
                map[thread] = entry
            }
            for write in writes {
                switch write {
                case .createThread(let info, _): update(info.id) { $0.created = true }
                case .addMembers(let thread, _, let version), .removeMember(let thread, _, let version):
                    update(thread) { $0.memberVersions.insert(version) }
                case .insertMessage(let m), .updateMessage(let m, _, _):
                    let seq = write.seq?.seq ?? m.seq
                    update(m.threadId) { entry in
                        entry.messages.insert(m.id)
                        entry.seqs = entry.seqs.map { min($0.lowerBound, seq)...max($0.upperBound, seq) } ?? seq...seq
                    }
                default: continue
                }
            }
            listed.store(!map.isEmpty, ordering: .releasing)
        }
    }

    /// Of `changes` (this node's own announcement), the advances that announce a listed commit's events and the member
    /// changes a listed commit made (by their members version); expired entries are dropped.
    func ownChangesToApply(_ changes: [ClusterChange]) -> [ClusterChange] {
        guard !isEmpty else { return [] }
        let now = ContinuousClock.now
        return threads.withLock { map in
            map = map.filter { $0.value.until > now }
            listed.store(!map.isEmpty, ordering: .releasing)
            return changes.filter { change in
                switch change {
                case .advanced(let thread, let first, let last, let events):
                    guard let entry = map[thread] else { return false }
                    if let events { return events.contains { entry.messages.contains($0.message.id) } }
                    return entry.seqs.map { $0.overlaps(first...last) } ?? false
                case .membership(let thread, _, _, let created, _, _, let version):
                    guard let entry = map[thread] else { return false }
                    if created { return entry.created }
                    return version.map { entry.memberVersions.contains($0) } ?? !entry.memberVersions.isEmpty
                default:
                    return false
                }
            }
        }
    }
}
