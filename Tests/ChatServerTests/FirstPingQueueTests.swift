import ChatCore
import NIOCore
import NIOPosix
import Synchronization
import Testing

@testable import ChatServer

/// Every session's first ping from one queue: in the order the sessions came, each about the interval after it, and
/// what the queue keeps for sessions that are gone follows the number of live sessions, not how many came.
struct FirstPingQueueTests {
    private static func session(_ sid: String) -> EngineSession {
        EngineSession(
            sid: sid, transport: .polling, outbox: Outbox(limit: 1 << 20), handshakeToken: nil,
            eventLoop: MultiThreadedEventLoopGroup.singleton.next(), inboundBudget: (1_000_000, 4_000_000),
            userInbound: UserInboundBudget(bytesPerSecond: 1_000_000, burst: 4_000_000, connections: 4))
    }

    @Test func sessionsArePingedInOrderAboutTheIntervalAfterTheyCame() async throws {
        let pinged = Mutex<[(sid: String, at: NIODeadline)]>([])
        let queue = FirstPingQueue(interval: .milliseconds(100)) { session in pinged.withLock { $0.append((session.sid, .now())) } }
        let start = NIODeadline.now()
        let sessions = (0..<3).map { Self.session("s\($0)") }
        for session in sessions {
            queue.add(session, live: sessions.count)
            try await Task.sleep(for: .milliseconds(30))
        }
        try await Task.sleep(for: .milliseconds(250))
        let got = pinged.withLock { $0 }
        #expect(got.map(\.sid) == ["s0", "s1", "s2"])
        for (index, ping) in got.enumerated() {
            let after = (ping.at - start).nanoseconds / 1_000_000
            #expect(after >= 100 + 30 * Int64(index) - 5, "\(ping.sid) pinged \(after) ms in")
        }
        #expect(queue.count == 0)
        withExtendedLifetime(sessions) {}
    }

    @Test func entriesOfSessionsThatAreGoneAreDroppedOnceTheyOutnumberTheLiveOnes() {
        let queue = FirstPingQueue(interval: .seconds(60)) { _ in }
        let kept = Self.session("kept")
        queue.add(kept, live: 1)
        for n in 0..<10_000 {
            queue.add(Self.session("gone-\(n)"), live: 1)     // freed at once: only a nil weak reference is left
        }
        #expect(queue.count <= 2 * 1 + 1024 + 1, "\(queue.count) entries for one live session")
        withExtendedLifetime(kept) {}
    }
}
