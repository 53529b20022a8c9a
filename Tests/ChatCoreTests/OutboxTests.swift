import ChatCore
import Testing

/// Something a drain signal holds, to see when the outbox lets go of it.
private final class SignalHolder: Sendable {}

@Suite struct OutboxTests {
    /// A drain signal is kept while the outbox is open and dropped by every close (a socket writer it holds is
    /// freed with it): `close`, the slow-consumer close inside `enqueue`, `closeIfStalled`; a closed outbox keeps none.
    @Test func everyCloseDropsTheDrainSignal() {
        func signalled(_ outbox: Outbox) -> () -> Bool {
            weak var held: SignalHolder?
            do {
                let holder = SignalHolder()
                held = holder
                outbox.setDrainSignal { withExtendedLifetime(holder) {} }
            }
            return { held != nil }
        }

        let closed = Outbox(limit: 1000)
        let closedHolds = signalled(closed)
        #expect(closedHolds())
        closed.close()
        #expect(!closedHolds(), "close() drops the signal")

        let slow = Outbox(limit: 10, grace: 0)
        let slowHolds = signalled(slow)
        var result = Outbox.EnqueueResult.queued
        for _ in 0..<1_000 where result != .closed { result = slow.enqueue(frame(20)) }
        #expect(result == .closed && slow.closeReason == .slowConsumer)
        #expect(!slowHolds(), "the slow-consumer close in enqueue drops the signal")

        let stalled = Outbox(limit: 10, grace: 1)
        let stalledHolds = signalled(stalled)
        #expect(stalled.enqueue(frame(20)) == .queued)
        #expect(stalled.closeIfStalled(now: monotonicNanos() + 10_000_000_000))
        #expect(!stalledHolds(), "closeIfStalled drops the signal")

        let already = Outbox(limit: 1000)
        already.close()
        #expect(!signalled(already)(), "a closed outbox keeps no signal")
    }

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
