@testable import ChatWebhook
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
