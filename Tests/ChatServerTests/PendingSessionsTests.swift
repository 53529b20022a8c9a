@testable import ChatServer
import NIOCore
import Testing

@Suite struct PendingSessionsTests {
    /// Past the capacity, the oldest session still pending is handed back; sessions that connected (settled) are
    /// skipped, and a session pending again counts from its new turn, not its first.
    @Test func theOldestStillPendingIsEvicted() {
        let pending = PendingSessions(capacity: 3)
        #expect(pending.admit("a", deadline: .distantFuture).isEmpty)
        #expect(pending.admit("b", deadline: .distantFuture).isEmpty)
        #expect(pending.admit("c", deadline: .distantFuture).isEmpty)
        #expect(pending.settle("a"))
        #expect(!pending.settle("a"), "settled once")
        #expect(pending.admit("d", deadline: .distantFuture).isEmpty)
        // b connected, then left /chat: pending again, now the newest.
        #expect(pending.settle("b"))
        #expect(pending.admit("b", deadline: .distantFuture).isEmpty)
        #expect(pending.admit("e", deadline: .distantFuture) == ["c"])
        #expect(pending.admit("f", deadline: .distantFuture) == ["d"])
        #expect(pending.admit("g", deadline: .distantFuture) == ["b"])
        #expect(pending.count == 3)
    }

    /// Sessions that connect leave stale entries behind; they are swept, so the order stays proportional to the
    /// sessions pending, and eviction still finds the oldest live one.
    @Test func staleEntriesAreSwept() {
        let pending = PendingSessions(capacity: 10)
        for i in 0..<100_000 {
            #expect(pending.admit("s\(i)", deadline: .distantFuture).isEmpty)
            pending.settle("s\(i)")
        }
        for i in 0..<10 { #expect(pending.admit("live\(i)", deadline: .distantFuture).isEmpty) }
        #expect(pending.admit("newest", deadline: .distantFuture) == ["live0"])
        #expect(pending.count == 10)
        #expect(pending.orderCount <= 2 * 10 + 1024 + 1)
    }

    /// The deadline sweep takes the expired sessions from the front of the order and stops at the first one still in
    /// time: it walks past settled entries, never past a live one that has time left, and what it hands back is no
    /// longer counted. A session re-admitted while its CONNECT is checked keeps its earlier deadline and is handed back
    /// once the entries before it expire.
    @Test func theSweepTakesTheExpiredFromTheFront() {
        let pending = PendingSessions(capacity: 1_000_000)
        let start = NIODeadline.uptimeNanoseconds(1_000_000_000)
        func at(_ ms: Int64) -> NIODeadline { start + .milliseconds(ms) }
        for i in 0..<5 { #expect(pending.admit("s\(i)", deadline: at(Int64(i) * 10)).isEmpty) }
        pending.settle("s1")
        #expect(pending.expire(now: at(-1)).isEmpty)
        #expect(pending.expire(now: at(25)) == ["s0", "s2"])
        #expect(pending.count == 2)
        #expect(pending.expire(now: at(25)).isEmpty, "handed back once")
        // s3's CONNECT is being checked: it is the newest now, with its handshake's deadline.
        #expect(pending.admit("s3", deadline: at(30)).isEmpty)
        #expect(pending.expire(now: at(35)).isEmpty, "s4 (due at 40) is in front of it")
        #expect(pending.expire(now: at(40)) == ["s4", "s3"])
        #expect(pending.count == 0)
        // Many sessions still in time cost the sweep one look at the oldest.
        for i in 0..<100_000 { _ = pending.admit("t\(i)", deadline: at(1_000 + Int64(i))) }
        #expect(pending.expire(now: at(999)).isEmpty)
        #expect(pending.expire(now: at(1_002)) == ["t0", "t1", "t2"])
        #expect(pending.count == 100_000 - 3)
    }
}
