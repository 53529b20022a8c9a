import ChatCore
import Testing

@Suite struct OutboxTests {
    func frame(_ n: Int, droppable: Bool = false) -> OutboundFrame {
        OutboundFrame(name: "x", bytes: .init(bytes: [UInt8](repeating: 0x41, count: n)), droppable: droppable)
    }

    @Test func burstOverTheLimitIsToleratedForTheGracePeriod() {
        let outbox = Outbox(limit: 1000, grace: 10)
        for _ in 0..<5 { #expect(outbox.enqueue(frame(400)) == .queued) }
        #expect(outbox.enqueue(frame(10, droppable: true)) == .dropped)
        #expect(outbox.closeReason == nil)
        #expect(outbox.takeAvailable(maxBytes: 800).count == 2)
        #expect(outbox.takeAvailable().count == 3)
        #expect(outbox.closeIfStalled() == false)
    }

    @Test func staysOverOrHardLimitCloses() {
        let stalled = Outbox(limit: 1000, grace: 0)
        _ = stalled.enqueue(frame(900))
        _ = stalled.enqueue(frame(900))
        #expect(stalled.closeIfStalled(now: monotonicNanos() + 1) == true)
        #expect(stalled.closeReason == .slowConsumer)
        let flooded = Outbox(limit: 1 << 20, grace: 100)
        var result = Outbox.EnqueueResult.queued
        for _ in 0..<40 where result != .closed { result = flooded.enqueue(frame(1 << 20)) }
        #expect(result == .closed)
        #expect(flooded.closeReason == .slowConsumer)
    }
}
