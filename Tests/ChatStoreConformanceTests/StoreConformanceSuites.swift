import ChatCore
import ChatStorePostgres
import ChatStoreSQLite
import Foundation
import Testing

@Suite struct InMemoryStoreConformance {
    let contract = StoreConformance { InMemoryStore() }

    @Test func threadsMembersAndLookups() async throws { try await contract.threadsMembersAndLookups() }
    @Test func seqsAreGapFreeAndOneRefusalStaysAlone() async throws { try await contract.seqsAreGapFreeAndOneRefusalStaysAlone() }
    @Test func chunksReplaceAndBoundTheTail() async throws { try await contract.chunksReplaceAndBoundTheTail() }
    @Test func chunksAreReadBackByRange() async throws { try await contract.chunksAreReadBackByRange() }
    @Test func activeThreadReleasesChunksAndReadsThemBack() async throws { try await contract.activeThreadReleasesChunksAndReadsThemBack() }
    @Test func releasedHistoryUnderConcurrentReadsEditsAndRetries() async throws {
        try await contract.releasedHistoryUnderConcurrentReadsEditsAndRetries()
    }
}

@Suite struct SQLiteStoreConformance {
    let contract: StoreConformance

    init() throws {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("conformance-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        let path = dir.appendingPathComponent("chat.sqlite").path
        contract = StoreConformance { try SQLiteMessageStore(path: path, durability: .process) }
    }

    @Test func threadsMembersAndLookups() async throws { try await contract.threadsMembersAndLookups() }
    @Test func messagesRoundTripExactly() async throws { try await contract.messagesRoundTripExactly() }
    @Test func seqsAreGapFreeAndOneRefusalStaysAlone() async throws { try await contract.seqsAreGapFreeAndOneRefusalStaysAlone() }
    @Test func chunksReplaceAndBoundTheTail() async throws { try await contract.chunksReplaceAndBoundTheTail() }
    @Test func chunksAreReadBackByRange() async throws { try await contract.chunksAreReadBackByRange() }
    @Test func activeThreadReleasesChunksAndReadsThemBack() async throws { try await contract.activeThreadReleasesChunksAndReadsThemBack() }
    @Test func releasedHistoryUnderConcurrentReadsEditsAndRetries() async throws {
        try await contract.releasedHistoryUnderConcurrentReadsEditsAndRetries()
    }
    @Test func shutdownCommitsEverythingQueued() async throws { try await contract.shutdownCommitsEverythingQueued() }
    @Test func offlineNoticesAreAnOutbox() async throws { try await contract.offlineNoticesAreAnOutbox() }
}

/// The PostgreSQL server the tests use: `CHAT_TEST_DATABASE_URL` (the test script starts a throw-away cluster and
/// sets it; without it the PostgreSQL tests are skipped and say so).
let testDatabaseURL = ProcessInfo.processInfo.environment["CHAT_TEST_DATABASE_URL"].flatMap { $0.isEmpty ? nil : $0 }

/// The PostgreSQL store against a real server.
@Suite(.enabled(if: testDatabaseURL != nil, "CHAT_TEST_DATABASE_URL is not set: no PostgreSQL to test against"))
struct PostgresStoreConformance {
    let contract = StoreConformance { try await PostgresMessageStore.open(url: try DatabaseURL(testDatabaseURL ?? "")) }

    @Test func threadsMembersAndLookups() async throws { try await contract.threadsMembersAndLookups() }
    @Test func messagesRoundTripExactly() async throws { try await contract.messagesRoundTripExactly() }
    @Test func seqsAreGapFreeAndOneRefusalStaysAlone() async throws { try await contract.seqsAreGapFreeAndOneRefusalStaysAlone() }
    @Test func chunksReplaceAndBoundTheTail() async throws { try await contract.chunksReplaceAndBoundTheTail() }
    @Test func chunksAreReadBackByRange() async throws { try await contract.chunksAreReadBackByRange() }
    @Test func activeThreadReleasesChunksAndReadsThemBack() async throws { try await contract.activeThreadReleasesChunksAndReadsThemBack() }
    @Test func releasedHistoryUnderConcurrentReadsEditsAndRetries() async throws {
        try await contract.releasedHistoryUnderConcurrentReadsEditsAndRetries()
    }
    @Test func shutdownCommitsEverythingQueued() async throws { try await contract.shutdownCommitsEverythingQueued() }
    @Test func twoWritersNeverShareASeq() async throws { try await contract.twoWritersNeverShareASeq() }
    @Test func offlineNoticesAreAnOutbox() async throws { try await contract.offlineNoticesAreAnOutbox() }

    @Test func badURLsAndServersAreClearErrors() async throws {
        #expect(throws: DatabaseURL.Invalid.self) { try DatabaseURL("mysql://a@b/c") }
        #expect(throws: DatabaseURL.Invalid.self) { try DatabaseURL("postgres://a@b") }
        #expect(throws: DatabaseURL.Invalid.self) { try DatabaseURL("postgres://a@b/c?sslmode=sometimes") }
        var url = try DatabaseURL(testDatabaseURL ?? "")
        url.password = "wrong-password"
        await #expect(throws: StoreSetupError.self) { _ = try await PostgresMessageStore.open(url: url, connectTimeout: .seconds(3)) }
        var closed = try DatabaseURL(testDatabaseURL ?? "")
        closed.port = 1
        await #expect(throws: StoreSetupError.self) { _ = try await PostgresMessageStore.open(url: closed, connectTimeout: .seconds(3)) }
    }
}
