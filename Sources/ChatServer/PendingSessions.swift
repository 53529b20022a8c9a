import DequeModule
import NIOCore
import Synchronization

/// The Engine.IO sessions awaiting a Socket.IO CONNECT, oldest first: all that clients without a token can hold.
/// At most `capacity` are kept. Admitting one more hands back the oldest, for the server to close, instead of
/// refusing the newcomer: so a client that floods handshakes cannot lock everyone else out, since a session that
/// sends its CONNECT promptly would need `capacity` newer handshakes to arrive before it does to be evicted.
///
/// Each admission carries its session's CONNECT deadline, and `expire` takes the sessions whose deadline passed from
/// the front of the admission order, so the deadline sweep looks at the expired sessions only, not at every pending
/// one. Every operation is O(1) amortized: a session that connects or closes leaves a stale entry in the order,
/// skipped when met and swept out once stale entries outnumber live ones.
final class PendingSessions: Sendable {
    private struct State {
        /// The live entries: each pending session's turn (a session that leaves `/chat` is pending again, in a new turn).
        var turns: [String: UInt64] = [:]
        /// Every admission in order, stale ones included.
        var order = Deque<(sid: String, turn: UInt64, deadline: NIODeadline)>()
        var nextTurn: UInt64 = 0
    }

    let capacity: Int
    private let state = Mutex(State())

    init(capacity: Int) { self.capacity = max(1, capacity) }

    /// Counts `sid` as pending (again) until `deadline`; returns the sids of the oldest pending sessions past
    /// `capacity` (at most one), which are no longer counted and must be closed.
    func admit(_ sid: String, deadline: NIODeadline) -> [String] {
        state.withLock { s in
            let turn = s.nextTurn
            s.nextTurn &+= 1
            s.turns[sid] = turn
            s.order.append((sid, turn, deadline))
            var evicted: [String] = []
            while s.turns.count > capacity, let oldest = s.order.popFirst() {
                guard s.turns[oldest.sid] == oldest.turn else { continue }
                s.turns[oldest.sid] = nil
                evicted.append(oldest.sid)
            }
            if s.order.count > 2 * s.turns.count + 1024 {
                let turns = s.turns
                s.order = Deque(s.order.filter { turns[$0.sid] == $0.turn })
            }
            return evicted
        }
    }

    /// `sid` connected or closed: no longer counted. Returns whether it was.
    @discardableResult
    func settle(_ sid: String) -> Bool {
        state.withLock { $0.turns.removeValue(forKey: sid) != nil }
    }

    /// Takes off the count, and returns, the pending sessions whose deadline is at or before `now`, walking the
    /// admission order from its oldest entry and stopping at the first live one still in time. Deadlines are
    /// `--connect-timeout` after admission, so they rise with the order, except for a session re-admitted while its
    /// CONNECT is checked (with its handshake's deadline): that one is found when the entries before it expire, at
    /// most one timeout late. Costs O(1) amortized per admission, whatever the number of sessions pending. A session
    /// handed back while its CONNECT is being checked is no longer counted while the check ends (a local HS256 check:
    /// microseconds), then connected or closed.
    func expire(now: NIODeadline) -> [String] {
        state.withLock { s in
            var expired: [String] = []
            while let oldest = s.order.first {
                let live = s.turns[oldest.sid] == oldest.turn
                if live && oldest.deadline > now { break }
                s.order.removeFirst()
                guard live else { continue }
                s.turns[oldest.sid] = nil
                expired.append(oldest.sid)
            }
            return expired
        }
    }

    /// Sessions pending now.
    var count: Int { state.withLock { $0.turns.count } }

    /// Entries in the order, stale ones included (for tests: bounded by twice the pending sessions and a constant).
    var orderCount: Int { state.withLock { $0.order.count } }
}
