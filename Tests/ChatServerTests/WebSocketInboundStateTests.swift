import SocketIOCodec
import Testing

@testable import ChatServer

/// The reading side of a WebSocket, by calling its state machine: packets handled in read order by one draining task
/// at a time, reading paused while too many wait, the upgrade of a polling session (probe, `5`, then packets only once
/// its POST is done), and a socket that ends closing the session only after what it sent is handled.
struct WebSocketInboundStateTests {
    private func message(_ n: Int) -> EnginePacket { EnginePacket(type: .message, payload: Array("42/chat,[\"e\",\(n)]".utf8)) }

    @Test func packetsAreHandledInReadOrderByOneDrainerThatEndsWhenIdle() {
        var s = WebSocketInboundState(upgrading: false, maxBytes: 1_000_000, maxBytesBeforeConnect: 1_000_000)
        let first = s.receive(message(1), connected: true)
        #expect(first == (drain: true, pause: false), "the first packet starts a draining task")
        let second = s.receive(message(2), connected: true)
        #expect(second == (drain: false, pause: false), "one draining task at a time")
        let v101 = s.next(connected: true).step
        #expect(v101 == .handle(message(1)))
        let v102 = s.next(connected: true).step
        #expect(v102 == .handle(message(2)))
        let v1 = s.next(connected: true).step
        #expect(v1 == .idle, "nothing waits: the task ends")
        #expect(!s.draining)
        let third = s.receive(message(3), connected: true)
        #expect(third.drain, "the next packet starts a new task")
    }

    @Test func readingPausesWhileTooManyWaitAndResumesAtHalf() {
        var s = WebSocketInboundState(upgrading: false, maxBytes: 1_000_000, maxBytesBeforeConnect: 1_000_000)
        var pauses = 0
        for n in 0..<WebSocketInboundState.maxQueued + 10 where s.receive(message(n), connected: true).pause { pauses += 1 }
        #expect(pauses == 1 && s.paused)
        var resumed = 0
        while case .handle = s.next(connected: true).step {
            if !s.paused && resumed == 0 { resumed = s.queue.count }
        }
        #expect(resumed == WebSocketInboundState.maxQueued / 2, "reading resumes once half the limit is left")
        #expect(!s.paused)
    }

    @Test func readingWaitsForTheInboundBudgetAndForTheQueueEachOnItsOwn() {
        var s = WebSocketInboundState(upgrading: false, maxBytes: 1_000_000, maxBytesBeforeConnect: 1_000_000)
        let first = s.budgetExceeded()
        #expect(first && s.readingPaused, "a budget in debt stops reading")
        let second = s.budgetExceeded()
        #expect(!second, "one wait at a time")
        for n in 0..<WebSocketInboundState.maxQueued { _ = s.receive(message(n), connected: true) }
        s.budgetPaid()
        #expect(s.readingPaused, "the debt is paid, but too many packets wait")
        while case .handle = s.next(connected: true).step {}
        #expect(!s.readingPaused)
        for n in 0..<WebSocketInboundState.maxQueued { _ = s.receive(message(n), connected: true) }
        let again = s.budgetExceeded()
        #expect(again)
        while case .handle = s.next(connected: true).step {}
        #expect(s.readingPaused, "the queue is handled, but the budget is in debt")
        s.budgetPaid()
        #expect(!s.readingPaused)
    }

    @Test func readingPausesWhileAPayloadsWorthOfBytesWaits() {
        var s = WebSocketInboundState(upgrading: false, maxBytes: 10_000, maxBytesBeforeConnect: 10_000)
        let big = EnginePacket(type: .message, payload: Array(repeating: UInt8(ascii: "x"), count: 4_000))
        let first = s.receive(big, connected: true), second = s.receive(big, connected: true)
        #expect(!first.pause && !second.pause)
        let third = s.receive(big, connected: true)
        #expect(third.pause && s.queuedBytes == 12_000, "three packets are over the byte limit, far under the count")
        let n1 = s.next(connected: true)
        #expect(!n1.resume, "8,000 bytes still wait: over half the limit")
        let n2 = s.next(connected: true)
        #expect(n2.resume && s.queuedBytes == 4_000, "reading resumes at half the byte limit")
    }

    /// Before the session is connected to `/chat`, reading pauses at 4 packets or `maxBytesBeforeConnect` (a client
    /// sends its CONNECT and waits), not at a connected client's 64 packets or `maxPayload`; once connected, reading
    /// resumes by the connected limits.
    @Test func beforeConnectReadingPausesAtAFewPacketsAndAConnectsWorthOfBytes() {
        var s = WebSocketInboundState(upgrading: false, maxBytes: 1_000_000, maxBytesBeforeConnect: 10_000)
        var pauses: [Int] = []
        for n in 0..<6 where s.receive(message(n), connected: false).pause { pauses.append(n) }
        #expect(pauses == [3], "the fourth packet pauses reading")
        let first = s.next(connected: false)
        #expect(!first.resume, "3 still wait: over half of 4")
        let second = s.next(connected: true)
        #expect(second.resume, "connected: 4 waiting is far under the connected limits")

        var bytes = WebSocketInboundState(upgrading: false, maxBytes: 1_000_000, maxBytesBeforeConnect: 10_000)
        let big = EnginePacket(type: .message, payload: Array(repeating: UInt8(ascii: "x"), count: 6_000))
        let one = bytes.receive(big, connected: false), two = bytes.receive(big, connected: false)
        #expect(!one.pause && two.pause, "12,000 bytes before CONNECT are over its 10,000")
        var connected = WebSocketInboundState(upgrading: false, maxBytes: 1_000_000, maxBytesBeforeConnect: 10_000)
        let three = connected.receive(big, connected: true), four = connected.receive(big, connected: true)
        #expect(!three.pause && !four.pause, "a connected session may have a largest message's worth waiting")
    }

    @Test func anUpgradeNeedsTheProbeThenFiveAndHandlesPacketsOnlyAfterThePost() {
        var s = WebSocketInboundState(upgrading: true, maxBytes: 1_000_000, maxBytesBeforeConnect: 1_000_000)
        let v2 = s.upgradeMessage("2probe")
        #expect(v2 == .answerProbe)
        let v3 = s.upgradeMessage("5")
        #expect(v3 == .upgrade)
        #expect(s.stage == .open)
        let early = s.receive(message(1), connected: true)
        #expect(!early.drain, "a polling POST may still be handling earlier packets")
        let v4 = s.becameReady()
        #expect(v4, "the POST is done: the waiting packet is handled")
        let v103 = s.next(connected: true).step
        #expect(v103 == .handle(message(1)))

        var wrong = WebSocketInboundState(upgrading: true, maxBytes: 1_000_000, maxBytesBeforeConnect: 1_000_000)
        let v5 = wrong.upgradeMessage("2ping")
        #expect(v5 == .fail)
        #expect(wrong.stage == .ended)
        var noFive = WebSocketInboundState(upgrading: true, maxBytes: 1_000_000, maxBytesBeforeConnect: 1_000_000)
        _ = noFive.upgradeMessage("2probe")
        let v6 = noFive.upgradeMessage(nil)
        #expect(v6 == .fail, "a binary message instead of 5 ends the probe")
        var gone = WebSocketInboundState(upgrading: true, maxBytes: 1_000_000, maxBytesBeforeConnect: 1_000_000)
        _ = gone.upgradeMessage("2probe")
        let took = gone.takeProbe()
        #expect(took)
        let v7 = gone.transportEnded()
        #expect(v7 == .failProbe, "a probing socket that ends puts its session back on polling")
        var other = WebSocketInboundState(upgrading: true, maxBytes: 1_000_000, maxBytesBeforeConnect: 1_000_000)
        _ = other.upgradeMessage("2probe")
        let v7b = other.transportEnded()
        #expect(v7b == .closeSocket, "a socket whose probe did not take the session leaves it alone")
    }

    @Test func anUpgradeThatIsNotCompleteInTimeFails() {
        var silent = WebSocketInboundState(upgrading: true, maxBytes: 1_000_000, maxBytesBeforeConnect: 1_000_000)
        let t1 = silent.upgradeTimedOut()
        #expect(t1, "no 2probe in time: the upgrade fails")
        #expect(silent.stage == .ended)
        let late = silent.upgradeMessage("2probe")
        #expect(late == .fail, "nothing is answered after the time is up")
        var probedOnly = WebSocketInboundState(upgrading: true, maxBytes: 1_000_000, maxBytesBeforeConnect: 1_000_000)
        _ = probedOnly.upgradeMessage("2probe")
        let t2 = probedOnly.upgradeTimedOut()
        #expect(t2, "2probe but no 5 in time: the upgrade fails")
        let lateTake = probedOnly.takeProbe()
        #expect(!lateTake, "a probe answered after the timeout is not held: the reader puts the session back on polling")
        #expect(!probedOnly.holdsProbe)
        var done = WebSocketInboundState(upgrading: true, maxBytes: 1_000_000, maxBytesBeforeConnect: 1_000_000)
        _ = done.upgradeMessage("2probe")
        _ = done.upgradeMessage("5")
        let t3 = done.upgradeTimedOut()
        #expect(!t3, "a completed upgrade is left alone")
        #expect(done.stage == .open)
        var direct = WebSocketInboundState(upgrading: false, maxBytes: 1_000_000, maxBytesBeforeConnect: 1_000_000)
        let t4 = direct.upgradeTimedOut()
        #expect(!t4, "a websocket that opened its session upgrades nothing")
    }

    @Test func aSocketThatEndsClosesTheSessionAfterWhatItSent() {
        var idle = WebSocketInboundState(upgrading: false, maxBytes: 1_000_000, maxBytesBeforeConnect: 1_000_000)
        let v8 = idle.transportEnded()
        #expect(v8 == .closeSession)
        let v9 = idle.transportEnded()
        #expect(v9 == .closeSocket, "the session closes once")

        var busy = WebSocketInboundState(upgrading: false, maxBytes: 1_000_000, maxBytesBeforeConnect: 1_000_000)
        _ = busy.receive(message(1), connected: true)
        _ = busy.receive(message(2), connected: true)
        let v10 = busy.transportEnded()
        #expect(v10 == .none, "the draining task closes the session")
        let v104 = busy.next(connected: true).step
        #expect(v104 == .handle(message(1)))
        let v105 = busy.next(connected: true).step
        #expect(v105 == .handle(message(2)))
        let v11 = busy.next(connected: true).step
        #expect(v11 == .closeSession)
        #expect(busy.stage == .ended)

        var upgrading = WebSocketInboundState(upgrading: true, maxBytes: 1_000_000, maxBytesBeforeConnect: 1_000_000)
        _ = upgrading.upgradeMessage("2probe")
        _ = upgrading.upgradeMessage("5")
        _ = upgrading.receive(message(1), connected: true)
        let v12 = upgrading.transportEnded()
        #expect(v12 == .none, "waiting for the POST: the upgrade closes the session after it")
        let v13 = upgrading.becameReady()
        #expect(v13)
        let v106 = upgrading.next(connected: true).step
        #expect(v106 == .handle(message(1)))
        let v14 = upgrading.next(connected: true).step
        #expect(v14 == .closeSession)
    }

    @Test func nothingIsReadAfterTheSocketEnded() {
        var s = WebSocketInboundState(upgrading: false, maxBytes: 1_000_000, maxBytesBeforeConnect: 1_000_000)
        _ = s.receive(message(1), connected: true)
        _ = s.transportEnded()
        let late = s.receive(message(2), connected: true)
        #expect(late == (drain: false, pause: false))
        let v20 = s.next(connected: true).step
        #expect(v20 == .handle(message(1)))
        let v21 = s.next(connected: true).step
        #expect(v21 == .closeSession)
    }

    @Test func anEndedSocketDropsWhatWaits() {
        var s = WebSocketInboundState(upgrading: false, maxBytes: 1_000_000, maxBytesBeforeConnect: 1_000_000)
        _ = s.receive(message(1), connected: true)
        s.end()
        let v15 = s.next(connected: true).step
        #expect(v15 == .idle)
        let after = s.receive(message(2), connected: true)
        #expect(after == (drain: false, pause: false))
    }
}
