import ChatCore
import Synchronization
import Testing

@testable import ChatStorePostgres

/// `PostgresMessageStore.withDeadline` (a `DeadlineRace`): answered by the body, by the deadline even when the body
/// ignores cancellation, or by the caller's cancellation. Only a body that lost to the deadline counts as stalled, in
/// its own store's `StalledCalls`, and only while it runs: a count that leaked, or that a cancelled caller bumped,
/// would make the store refuse every call. Serialized: the tests that start thousands of calls would otherwise delay
/// the timer of the one that checks the deadline.
@Suite(.serialized) struct DeadlineRaceTests {
    /// Waits (up to 10 s) until no stalled body of `stalled` is running.
    private func settled(_ stalled: StalledCalls) async -> Bool {
        for _ in 0..<1_000 {
            if stalled.count == 0 { return true }
            try? await Task.sleep(for: .milliseconds(10))
        }
        return false
    }

    /// A body that ignores cancellation and ends after `seconds` (as a statement postgres-nio never answers).
    private static func stuck(_ seconds: Double) async -> Int {
        await Task.detached { try? await Task.sleep(for: .seconds(seconds)) }.value
        return 1
    }

    @Test func bodiesThatAnswerAtOnceAreNeverCountedAsStalled() async throws {
        let stalled = StalledCalls()
        for i in 0..<5_000 {
            let value = try await PostgresMessageStore.withDeadline(.seconds(5), stalled: stalled) { i }
            #expect(value == i)
        }
        for _ in 0..<1_000 {
            await #expect(throws: StoreError.self) {
                try await PostgresMessageStore.withDeadline(.seconds(5), stalled: stalled) { () async throws -> Int in throw StoreError("refused") }
            }
        }
        #expect(stalled.count == 0)
    }

    @Test func theDeadlineAnswersEvenWhenTheBodyIgnoresCancellation() async throws {
        let stalled = StalledCalls()
        let clock = ContinuousClock()
        let started = clock.now
        await #expect(throws: StoreError.self) {
            try await PostgresMessageStore.withDeadline(.milliseconds(100), stalled: stalled) { await Self.stuck(6) }
        }
        // Well under the body's 6 s: the other suites running beside this one may delay the timer by seconds.
        #expect(clock.now - started < .seconds(4), "answered at the deadline, not when the body ended")
        #expect(stalled.count == 1, "counted while it runs")
        #expect(await settled(stalled), "uncounted once it ended")
    }

    /// A call that loses to its deadline tries the probe; with no answer an outage is declared: every call fails at
    /// once, without waiting out its own deadline, until the probe gets an answer; then calls run again. A probe that
    /// answers at once (the call was only slow) declares nothing. Without a probe (no store behind it) nothing is
    /// declared.
    @Test func aDeadlinePassedMakesCallsFailAtOnceUntilTheProbeAnswers() async throws {
        let alone = StalledCalls()
        _ = try? await PostgresMessageStore.withDeadline(.milliseconds(50), stalled: alone) { try await Task.sleep(for: .seconds(1)); return 1 }
        #expect(!alone.inOutage, "no probe, no outage")

        let slow = StalledCalls()
        slow.setProbe { true }
        _ = try? await PostgresMessageStore.withDeadline(.milliseconds(50), stalled: slow) { try await Task.sleep(for: .seconds(1)); return 1 }
        try await Task.sleep(for: .milliseconds(100))
        #expect(!slow.inOutage, "the database answers: the call was only slow")

        let stalled = StalledCalls()
        let back = Atomic<Bool>(false)
        let probes = Atomic<Int>(0)
        stalled.setProbe {
            probes.add(1, ordering: .relaxed)
            return back.load(ordering: .relaxed)
        }
        // The pool would hold this call until its deadline, then drop it (cancellation ends the body at once).
        await #expect(throws: StoreError.self) {
            try await PostgresMessageStore.withDeadline(.milliseconds(100), stalled: stalled) { try await Task.sleep(for: .seconds(10)); return 1 }
        }
        for _ in 0..<200 where !stalled.inOutage { try await Task.sleep(for: .milliseconds(10)) }
        #expect(stalled.inOutage, "the probe got no answer")
        let clock = ContinuousClock()
        let started = clock.now
        for _ in 0..<100 {
            await #expect(throws: StoreError.self) {
                try await PostgresMessageStore.withDeadline(.seconds(5), stalled: stalled) { try await Task.sleep(for: .seconds(10)); return 1 }
            }
        }
        #expect(clock.now - started < .seconds(2), "100 calls refused at once, not after 5 s each")
        back.store(true, ordering: .relaxed)
        for _ in 0..<400 where stalled.inOutage { try await Task.sleep(for: .milliseconds(10)) }
        #expect(!stalled.inOutage, "the probe got its answer")
        #expect(probes.load(ordering: .relaxed) >= 2)
        #expect(try await PostgresMessageStore.withDeadline(.seconds(5), stalled: stalled) { 7 } == 7)

        // An answer of a LISTEN connection ends an outage at once, and the probe stops at its next result.
        back.store(false, ordering: .relaxed)
        _ = try? await PostgresMessageStore.withDeadline(.milliseconds(50), stalled: stalled) { try await Task.sleep(for: .seconds(1)); return 1 }
        for _ in 0..<200 where !stalled.inOutage { try await Task.sleep(for: .milliseconds(10)) }
        #expect(stalled.inOutage)
        stalled.databaseAnswered()
        #expect(!stalled.inOutage)
        try await Task.sleep(for: .milliseconds(600))
        #expect(!stalled.inOutage, "the probe's next failure does not declare it again")
    }

    /// The twelfth and thirteenth sessions' CI failure: 500 cancelled callers at once used to count as stalled in one
    /// process-wide count, and other stores' commits failed at once meanwhile.
    @Test func cancelledCallersAreAnsweredAndNeverRefuseOtherCalls() async throws {
        let stalled = StalledCalls()
        let bystander = Task {
            var failures = 0
            for i in 0..<2_000 {
                do { _ = try await PostgresMessageStore.withDeadline(.seconds(5), stalled: stalled) { i } } catch { failures += 1 }
                if i % 50 == 0 { await Task.yield() }
            }
            return failures
        }
        for _ in 0..<4 {
            await withTaskGroup(of: Void.self) { group in
                for n in 0..<500 {
                    group.addTask {
                        if n % 2 == 0 { await Task.yield() }
                        _ = try? await PostgresMessageStore.withDeadline(.seconds(5), stalled: stalled) { () async throws -> Int in
                            try await Task.sleep(for: .milliseconds(Int.random(in: 0...5)))
                            return n
                        }
                    }
                }
                group.cancelAll()
            }
        }
        #expect(await bystander.value == 0, "no call refused while cancelled callers' bodies ended")
        #expect(stalled.count == 0)
    }

    @Test func stalledCallsRefuseFurtherCallsUntilTheyEnd() async throws {
        let stalled = StalledCalls(limit: 2)
        let other = StalledCalls(limit: 2)
        for _ in 0..<2 {
            await #expect(throws: StoreError.self) {
                try await PostgresMessageStore.withDeadline(.milliseconds(50), stalled: stalled) { await Self.stuck(1) }
            }
        }
        #expect(stalled.count == 2)
        do {
            _ = try await PostgresMessageStore.withDeadline(.seconds(5), stalled: stalled) { 1 }
            Issue.record("a call ran while two were stalled")
        } catch {
            #expect("\(error)".contains("the database is not answering: 2 earlier calls"), "\(error)")
        }
        #expect(try await PostgresMessageStore.withDeadline(.seconds(5), stalled: other) { 7 } == 7, "another store's calls run")
        #expect(await settled(stalled))
        #expect(try await PostgresMessageStore.withDeadline(.seconds(5), stalled: stalled) { 8 } == 8, "calls run again once the stalled ended")
    }
}
