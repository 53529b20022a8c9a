import ChatCore
import ChatStoreSQLite
@testable import ChatWebhook
import Foundation
import Logging
import Synchronization
import Testing

/// The retry delays of a failing notice: doubling from the first delay, with jitter between half and all of the step,
/// capped at `maxRetryDelay` or at the first delay when that is longer.
struct WebhookBackoffTests {
    func configuration(first: Double, cap: Double = 300) -> OfflineWebhookConfiguration {
        var configuration = OfflineWebhookConfiguration(url: "http://127.0.0.1:9/hook", secret: Array("a webhook secret of at least 32 bytes!".utf8))
        configuration.retryDelay = first
        configuration.maxRetryDelay = cap
        return configuration
    }

    @Test func delaysDoubleWithJitterUpToTheCap() {
        let c = configuration(first: 1)
        for attempts in 0..<12 {
            let step = min(300, Double(1 << attempts))
            for _ in 0..<20 {
                let delay = OfflineWebhookDispatcher.backoff(attempts: attempts, c)
                #expect(delay >= step / 2 && delay <= step, "attempt \(attempts + 1): \(delay) s for a step of \(step) s")
            }
        }
        #expect(OfflineWebhookDispatcher.backoff(attempts: 1_000, c) <= 300)
    }

    /// `--offline-webhook-retry-delay 600` (allowed up to 3600): every retry waits 300–600 s, not a first retry cut
    /// to the 300 s cap (150–300 s).
    @Test func aFirstDelayLongerThanTheCapIsKept() {
        let c = configuration(first: 600)
        for attempts in [0, 1, 5, 40] {
            for _ in 0..<20 {
                let delay = OfflineWebhookDispatcher.backoff(attempts: attempts, c)
                #expect(delay >= 300 && delay <= 600, "attempt \(attempts + 1): \(delay) s")
            }
        }
    }
}

/// No attempt starts `--offline-webhook-max-age` or more after the notice was queued: a failure whose retry would come
/// due then drops the notice at once. (An outside probe saw a fifth attempt 6.7 s after the message with a 4-s max age.)
struct WebhookMaxAgeTests {
    @Test func aRetryThatWouldStartPastTheMaxAgeDropsTheNotice() {
        var c = OfflineWebhookConfiguration(url: "http://127.0.0.1:9/hook", secret: Array("a webhook secret of at least 32 bytes!".utf8))
        c.retryDelay = 1
        c.maxRetryDelay = 300
        c.maxAge = 4
        // The fourth failure (attempts 3) waits 4–8 s: past the max age from any age.
        #expect(OfflineWebhookDispatcher.retryDelay(age: 2.9, attempts: 3, c, jitter: 0.5) == nil)
        // The third (attempts 2) waits 2–4 s: kept from age 1.5 with the shortest jitter, dropped with the longest.
        #expect(OfflineWebhookDispatcher.retryDelay(age: 1.5, attempts: 2, c, jitter: 0.5) == 2)
        #expect(OfflineWebhookDispatcher.retryDelay(age: 1.5, attempts: 2, c, jitter: 1) == nil)
        // Exactly at the max age: dropped.
        #expect(OfflineWebhookDispatcher.retryDelay(age: 2, attempts: 2, c, jitter: 0.5) == nil)
        for attempts in 0..<20 {
            for age in stride(from: 0.0, through: 5, by: 0.25) {
                if let delay = OfflineWebhookDispatcher.retryDelay(age: age, attempts: attempts, c) {
                    #expect(age + delay < c.maxAge, "attempt \(attempts + 2) at \(age + delay) s")
                }
            }
        }
    }
}

/// A round's presence lookups may use half of the lease's margin: the notices of companies not looked up by then are
/// left leased and untouched, so that no request of this round can outlast the lease (another node claims the notices
/// once it ends, and would send them a second time). Found by a review: one lookup per company, one after another,
/// could use up the margin with a backlog over many companies.
struct WebhookLeaseTests {
    @Test func lookupsPastHalfTheMarginLeaveTheRestLeasedAndUntouched() async throws {
        try await withQueuedNotices(companies: ["c1", "c2", "c3"]) { store in
            // Nothing listens on port 9: every request fails at once and its notices are put back with one more attempt.
            var configuration = unreachableWebhook()
            configuration.timeout = 0.2
            configuration.leaseMargin = 0.6
            configuration.retryDelay = 0.01
            let looked = Mutex(0)
            let dispatcher = OfflineWebhookDispatcher(
                configuration: configuration, store: store,
                online: { _, _, _ in
                    looked.withLock { $0 += 1 }
                    try await Task.sleep(for: .milliseconds(400))  // more than half the margin
                    return ([], [])
                }, stats: BrokerStats(), logger: Logger(label: "test"))
            #expect(try await dispatcher.round() == 3)
            try await dispatcher.shutdownClient()
            #expect(looked.withLock { $0 } == 1, "one company looked up, then the time was up")
            try await Task.sleep(for: .seconds(1.2))  // the lease (2 × 0.2 + 0.6 s) ends
            let again = try await store.claimOfflineNotices(limit: 100, lease: 60)
            #expect(again.count == 3)
            #expect(again.filter { $0.attempts == 1 }.count == 1, "the company looked up was sent (and failed once)")
            #expect(again.filter { $0.attempts == 0 }.count == 2, "the others were left untouched: \(again.map(\.attempts))")
        }
    }
}

/// No attempt of a notice starts past `--offline-webhook-max-age`, its first included: a notice claimed only past it
/// (a company's notices paced past it, or every node down meanwhile) is dropped, not sent and not looked at again.
/// (Found by an outside probe: only retries were checked, so a flood's first attempts went out 15 to 37 s after
/// their messages with a 10-s max age.) Here the recipient is reported online, so a notice still within its age would
/// be coalesced: past it, it is dropped first.
struct WebhookFirstAttemptAgeTests {
    @Test func aFirstAttemptPastTheMaxAgeIsDropped() async throws {
        try await withQueuedNotices(companies: ["c1"]) { store in
            var configuration = unreachableWebhook()
            configuration.maxAge = 1
            let stats = BrokerStats()
            let dispatcher = OfflineWebhookDispatcher(
                configuration: configuration, store: store, online: { _, users, _ in (Set(users), []) }, stats: stats, logger: Logger(label: "test"))
            try await Task.sleep(for: .seconds(1.2))
            #expect(try await dispatcher.round() == 1)
            try await dispatcher.shutdownClient()
            #expect(stats.offlineDropped.load(ordering: .relaxed) == 1)
            #expect(stats.offlineCoalesced.load(ordering: .relaxed) == 0)
            #expect(try await store.claimOfflineNotices(limit: 100, lease: 60).isEmpty, "the notice left the outbox")
        }
    }
}

/// A SQLite store in a temporary folder holding, for each of `companies`, a thread of alice and bob whose first
/// message, alice's, queued an offline notice for bob due at once. `body` runs on it; then the store is shut down and
/// the folder removed.
func withQueuedNotices(companies: [CompanyID], _ body: (SQLiteMessageStore) async throws -> Void) async throws {
    let directory = FileManager.default.temporaryDirectory.appendingPathComponent("webhook-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(at: directory) }
    let store = try SQLiteMessageStore(path: directory.appendingPathComponent("chat.sqlite").path, durability: .process)
    let outcome: Result<Void, any Error>
    do {
        for company in companies {
            let info = ThreadInfo(id: UUID().uuidString.lowercased(), companyId: company, name: "t", kind: .group, createdBy: "alice", createdAt: .now())
            let message = Message(
                id: Identifier.timeOrderedUUID(), threadId: info.id, seq: 1, senderId: "alice", type: .text, content: "hello", attachmentUrl: nil,
                attachmentType: nil, createdAt: .now(), tempId: nil)
            try await store.commit([.createThread(info, members: ["alice", "bob"])])
            try await store.commit([.insertMessage(message), .offlineNotice(info.id, message.id, users: ["bob"], delay: 0)])
        }
        try await body(store)
        outcome = .success(())
    } catch {
        outcome = .failure(error)
    }
    await store.shutdown()
    try outcome.get()
}

/// A webhook whose receiver does not exist (nothing listens on port 9: every request fails at once).
func unreachableWebhook() -> OfflineWebhookConfiguration {
    OfflineWebhookConfiguration(url: "http://127.0.0.1:9/hook", secret: Array("a webhook secret of at least 32 bytes!".utf8))
}
