import ChatCoreTesting
import Synchronization

/// A store whose answers to `eventSeqs` (where released messages are) and `chunks` (released history) can be held
/// back.
final class HeldLookupStore: ForwardingStore, @unchecked Sendable {
    enum Read { case eventSeqs, chunks }
    private let state = Mutex<(holding: Set<Read>, passes: Int, waiting: [CheckedContinuation<Void, Never>])>(([], 0, []))

    init() { super.init(base: InMemoryStore()) }

    var waiting: Int { state.withLock { $0.waiting.count } }
    /// Holds `reads` from now on, but for the first `passes` of them.
    func hold(_ reads: Set<Read>, after passes: Int = 0) { state.withLock { $0 = (reads, passes, $0.waiting) } }
    func release() {
        let waiting = state.withLock { s in
            s.holding = []
            defer { s.waiting = [] }
            return s.waiting
        }
        for continuation in waiting { continuation.resume() }
    }

    private func heldBack(_ read: Read) async {
        await withCheckedContinuation { continuation in
            let now = state.withLock { s -> Bool in
                guard s.holding.contains(read) else { return true }
                guard s.passes == 0 else {
                    s.passes -= 1
                    return true
                }
                s.waiting.append(continuation)
                return false
            }
            if now { continuation.resume() }
        }
    }

    override func eventSeqs(of thread: ThreadID, messages ids: [MessageID]) async throws -> [MessageID: [Int]] {
        await heldBack(.eventSeqs)
        return try await base.eventSeqs(of: thread, messages: ids)
    }

    override func chunks(of thread: ThreadID, overlapping seqs: ClosedRange<Int>) async throws -> [HistoryChunk] {
        await heldBack(.chunks)
        return try await base.chunks(of: thread, overlapping: seqs)
    }
}
