@testable import ChatServer
import Testing

@Suite struct PendingSessionsTests {
    /// Past the capacity, the oldest session still pending is handed back; sessions that connected (settled) are
    /// skipped, and a session pending again counts from its new turn, not its first.
    @Test func theOldestStillPendingIsEvicted() {
        let pending = PendingSessions(capacity: 3)
        #expect(pending.admit("a").isEmpty)
        #expect(pending.admit("b").isEmpty)
        #expect(pending.admit("c").isEmpty)
        #expect(pending.settle("a"))
        #expect(!pending.settle("a"), "settled once")
        #expect(pending.admit("d").isEmpty)
        // b connected, then left /chat: pending again, now the newest.
        #expect(pending.settle("b"))
        #expect(pending.admit("b").isEmpty)
        #expect(pending.admit("e") == ["c"])
        #expect(pending.admit("f") == ["d"])
        #expect(pending.admit("g") == ["b"])
        #expect(pending.count == 3)
    }

    /// Sessions that connect leave stale entries behind; they are swept, so the order stays proportional to the
    /// sessions pending, and eviction still finds the oldest live one.
    @Test func staleEntriesAreSwept() {
        let pending = PendingSessions(capacity: 10)
        for i in 0..<100_000 {
            #expect(pending.admit("s\(i)").isEmpty)
            pending.settle("s\(i)")
        }
        for i in 0..<10 { #expect(pending.admit("live\(i)").isEmpty) }
        #expect(pending.admit("newest") == ["live0"])
        #expect(pending.count == 10)
        #expect(pending.orderCount <= 2 * 10 + 1024 + 1)
    }
}
