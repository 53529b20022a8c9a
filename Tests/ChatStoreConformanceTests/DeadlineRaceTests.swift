import ChatCore
import Testing

@testable import ChatStorePostgres

/// `PostgresMessageStore.withDeadline` (a `DeadlineRace`): answered by the body, by the deadline even when the body
/// ignores cancellation, or by the caller's cancellation; and abandoned bodies are counted only while they run (a
/// count that leaked would, at four, make the store refuse every call).
@Suite(.serialized) struct DeadlineRaceTests {
    /// Waits (up to 5 s) until no abandoned body is running, for this or any other test's.
    private func settled() async -> Bool {
        for _ in 0..<500 {
            if DeadlineRace<Int>.abandoned == 0 { return true }
            try? await Task.sleep(for: .milliseconds(10))
        }
        return false
    }

    @Test func bodiesThatAnswerAtOnceAreNeverCountedAsAbandoned() async throws {
        for i in 0..<5_000 {
            let value = try await PostgresMessageStore.withDeadline(.seconds(5)) { i }
            #expect(value == i)
        }
        for _ in 0..<1_000 {
            await #expect(throws: StoreError.self) {
                try await PostgresMessageStore.withDeadline(.seconds(5)) { () async throws -> Int in throw StoreError("refused") }
            }
        }
        #expect(await settled())
    }

    @Test func theDeadlineAnswersEvenWhenTheBodyIgnoresCancellation() async throws {
        let clock = ContinuousClock()
        let started = clock.now
        await #expect(throws: StoreError.self) {
            try await PostgresMessageStore.withDeadline(.milliseconds(100)) { () async throws -> Int in
                // A detached sleep: cancelling the body does not end it (as a statement postgres-nio never answers).
                await Task.detached { try? await Task.sleep(for: .seconds(2)) }.value
                return 1
            }
        }
        #expect(clock.now - started < .seconds(1.5), "answered at the deadline, not when the body ended")
        #expect(DeadlineRace<Int>.abandoned >= 1, "counted while it runs")
        #expect(await settled(), "uncounted once it ended")
    }

    @Test func cancelledCallersAreAnsweredAndTheirBodiesUncounted() async throws {
        await withTaskGroup(of: Void.self) { group in
            for n in 0..<500 {
                group.addTask {
                    if n % 2 == 0 { await Task.yield() }
                    _ = try? await PostgresMessageStore.withDeadline(.seconds(5)) { () async throws -> Int in
                        try await Task.sleep(for: .milliseconds(Int.random(in: 0...5)))
                        return n
                    }
                }
            }
            group.cancelAll()
        }
        #expect(await settled())
    }
}
