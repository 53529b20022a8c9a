import Testing

@testable import ChatServer

/// Engine.IO's transport rules, by calling the state machine: one long poll and one POST at a time, the websocket
/// upgrade (probe, then `5`) and its failure, what each transport refuses, and closing once.
struct EngineTransportTests {
    @Test func pollingTakesOneLongPollAndOnePostAtATime() {
        var t = EngineTransport(.polling)
        #expect(t.isPolling && !t.longPollEnds && !t.isClosed)
        let r1 = t.beginPoll()
        #expect(r1 == .admitted)
        let r2 = t.beginPoll()
        #expect(r2 == .overlapping, "a second long poll while one waits ends the session")
        let r3 = t.beginPost()
        #expect(r3 == .admitted, "a POST may come while a long poll waits")
        #expect(t.postInFlight)
        let r4 = t.beginPost()
        #expect(r4 == .overlapping)
        t.endPoll()
        t.endPost()
        #expect(t.phase == .polling(get: false, post: false))
        let r5 = t.beginPoll()
        #expect(r5 == .admitted)
    }

    @Test func anUpgradeProbesThenSwitchesAndCarriesThePostInFlight() {
        var t = EngineTransport(.polling)
        let r6 = t.beginPoll()
        #expect(r6 == .admitted)
        let r7 = t.beginPost()
        #expect(r7 == .admitted)
        let r8 = t.probed()
        #expect(r8)
        #expect(t.phase == .upgrading(get: true, post: true))
        #expect(t.longPollEnds, "the waiting long poll answers noop so that the client sends 5")
        #expect(t.isPolling, "still on polling until 5")
        t.endPoll()
        let r9 = t.beginPoll()
        #expect(r9 == .admitted, "polling goes on while the websocket is probed")
        let r10 = t.upgraded()
        #expect(r10)
        #expect(t.phase == .websocket(post: true), "the POST sent before the switch is still being handled")
        #expect(t.postInFlight)
        let r11 = t.beginPoll()
        #expect(r11 == .wrongTransport)
        let r12 = t.beginPost()
        #expect(r12 == .wrongTransport)
        t.endPost()
        #expect(!t.postInFlight && !t.isPolling && t.longPollEnds)
        let r13 = t.probed()
        #expect(!r13, "a websocket session is not upgraded again")
    }

    @Test func aFailedProbeLeavesTheSessionOnPolling() {
        var t = EngineTransport(.polling)
        let r14 = t.beginPost()
        #expect(r14 == .admitted)
        let r15 = t.probed()
        #expect(r15)
        t.probeFailed()
        #expect(t.phase == .polling(get: false, post: true))
        #expect(!t.longPollEnds)
        let r16 = t.upgraded()
        #expect(!r16, "no upgrade without a probe")
    }

    @Test func aDirectWebsocketRefusesPolling() {
        var t = EngineTransport(.websocket)
        #expect(!t.isPolling)
        let r17 = t.beginPoll()
        #expect(r17 == .wrongTransport)
        let r18 = t.beginPost()
        #expect(r18 == .wrongTransport)
        let r19 = t.probed()
        #expect(!r19)
    }

    @Test func aSessionClosesOnceAndRemembersWhoClosedIt() {
        var t = EngineTransport(.polling)
        let r20 = t.probed()
        #expect(r20)
        let r21 = t.close()
        #expect(r21)
        let r22 = t.close()
        #expect(!r22, "the second close finds it closed: its resources are released once")
        #expect(t.phase == .closed(byClient: false))
        let r23 = t.beginPoll()
        let r24 = t.beginPost()
        #expect(r23 == .closed && r24 == .closed)
        let r25 = t.upgraded()
        #expect(!r25, "a probe that ends after the close does not switch a closed session")
        #expect(!t.longPollEnds && !t.postInFlight)

        var byClient = EngineTransport(.websocket)
        byClient.requestClose()
        let r26 = byClient.close()
        #expect(r26)
        #expect(byClient.phase == .closed(byClient: true))
    }
}
