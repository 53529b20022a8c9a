import ChatCore
import ChatCoreTesting
import Synchronization
import Testing

@Suite struct OfflineNoticePacerTests {
    /// A company within its rate and burst gets the configured delay; past them, its next notices come due later by
    /// the time its earlier ones take at its rate; another company is not delayed; time pays the backlog off.
    @Test func aCompanyPastItsRateIsDelayedAndOthersAreNot() {
        let pacer = OfflineNoticePacer(perSecond: 100, burst: 100)
        let start: UInt64 = 1_000_000_000_000
        #expect(pacer.delay(of: 100, for: "acme", base: 5, now: start) == 5)
        #expect(pacer.delay(of: 1_000, for: "acme", base: 5, now: start) == 5, "one second queued ahead: the burst")
        #expect(pacer.delay(of: 1, for: "acme", base: 5, now: start) == 15, "eleven seconds queued ahead, ten past the burst")
        #expect(pacer.delay(of: 1, for: "globex", base: 5, now: start) == 5, "another company is due on time")
        #expect(abs(pacer.delay(of: 1, for: "acme", base: 5, now: start + 5_000_000_000) - 10.01) < 1e-6, "five seconds later")
        #expect(pacer.delay(of: 1, for: "acme", base: 5, now: start + 60_000_000_000) == 5, "the backlog is paid off")
    }

    /// Through the broker: a company's sends to a thread of many offline members have their notices made due later
    /// once they run past the company's rate, while another company's send is due at the configured delay.
    @Test func oneCompanysFloodDoesNotDelayAnothersNotices() async throws {
        let store = DelayRecordingStore(base: InMemoryStore())
        var configuration = BrokerConfiguration()
        configuration.offlineNoticeDelay = 5
        configuration.offlineNoticesPerSecondPerCompany = 100
        configuration.offlineNoticeBurstPerCompany = 1_000
        configuration.offlineNoticesPerWriteToken = 1_000
        let supervisor = Supervisor(store: store, configuration: configuration)
        let mallory = Principal(userId: "mallory", companyId: "evil"), alice = Principal(userId: "alice", companyId: "acme")
        let flood = try await supervisor.createThread(name: "t", kind: .group, memberIds: (0..<1_000).map { "ghost\($0)" }, by: mallory).summary.info.id
        for n in 0..<5 { _ = try await supervisor.perform(.send(SendRequest(threadId: flood, content: "m\(n)")), as: mallory, device: nil) }
        let thread = try await supervisor.createThread(name: "t", kind: .group, memberIds: ["bob"], by: alice).summary.info.id
        _ = try await supervisor.perform(.send(SendRequest(threadId: thread, content: "hello")), as: alice, device: nil)
        let delays = store.delays.withLock { $0 }
        #expect(delays[flood]?.count == 5 && delays[thread] == [5])
        #expect(delays[flood]?.first == 5, "the first thousand are within the burst")
        #expect((delays[flood]?.last ?? 0) > 30, "the fifth thousand comes due about 30 s past the burst: \(delays[flood] ?? [])")
    }
}

/// Records the delay of each offline-notice write, by thread.
private final class DelayRecordingStore: ForwardingStore, @unchecked Sendable {
    let delays = Mutex<[ThreadID: [Double]]>([:])

    override func submit(_ writes: [StoreWrite], completion: @escaping @Sendable (Result<Void, any Error>) -> Void) {
        for case .offlineNotice(let thread, _, _, let delay) in writes { delays.withLock { $0[thread, default: []].append(delay) } }
        super.submit(writes, completion: completion)
    }
}
