import ChatCore
import ChatStorePostgres
import ChatStoreSQLite
import Foundation
import Logging
import PostgresNIO
import Synchronization
import Testing

@Suite struct InMemoryStoreConformance {
    let contract = StoreConformance { InMemoryStore() }

    @Test func threadsMembersAndLookups() async throws { try await contract.threadsMembersAndLookups() }
    @Test func seqsAreGapFreeAndOneRefusalStaysAlone() async throws { try await contract.seqsAreGapFreeAndOneRefusalStaysAlone() }
    @Test func chunksReplaceAndBoundTheTail() async throws { try await contract.chunksReplaceAndBoundTheTail() }
    @Test func chunksAreReadBackByRange() async throws { try await contract.chunksAreReadBackByRange() }
    @Test func activeThreadReleasesChunksAndReadsThemBack() async throws { try await contract.activeThreadReleasesChunksAndReadsThemBack() }
    @Test func receiptsAndUnreadCountsOverReleasedMessages() async throws { try await contract.receiptsAndUnreadCountsOverReleasedMessages() }
    @Test func reactivatedThreadLoadsOnlyItsNewestChunks() async throws { try await contract.reactivatedThreadLoadsOnlyItsNewestChunks() }
    @Test func releasedHistoryUnderConcurrentReadsEditsAndRetries() async throws {
        try await contract.releasedHistoryUnderConcurrentReadsEditsAndRetries()
    }
}

/// Each test's database lives in a temporary folder, removed when the test's suite instance goes.
@Suite final class SQLiteStoreConformance {
    let contract: StoreConformance
    let directory: URL

    init() throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("conformance-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let path = directory.appendingPathComponent("chat.sqlite").path
        contract = StoreConformance(sharesData: false) { try SQLiteMessageStore(path: path, durability: .process) }
    }

    deinit { try? FileManager.default.removeItem(at: directory) }

    @Test func threadsMembersAndLookups() async throws { try await contract.threadsMembersAndLookups() }
    @Test func messagesRoundTripExactly() async throws { try await contract.messagesRoundTripExactly() }
    @Test func seqsAreGapFreeAndOneRefusalStaysAlone() async throws { try await contract.seqsAreGapFreeAndOneRefusalStaysAlone() }
    @Test func chunksReplaceAndBoundTheTail() async throws { try await contract.chunksReplaceAndBoundTheTail() }
    @Test func chunksAreReadBackByRange() async throws { try await contract.chunksAreReadBackByRange() }
    @Test func activeThreadReleasesChunksAndReadsThemBack() async throws { try await contract.activeThreadReleasesChunksAndReadsThemBack() }
    @Test func receiptsAndUnreadCountsOverReleasedMessages() async throws { try await contract.receiptsAndUnreadCountsOverReleasedMessages() }
    @Test func reactivatedThreadLoadsOnlyItsNewestChunks() async throws { try await contract.reactivatedThreadLoadsOnlyItsNewestChunks() }
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
    @Test func receiptsAndUnreadCountsOverReleasedMessages() async throws { try await contract.receiptsAndUnreadCountsOverReleasedMessages() }
    @Test func reactivatedThreadLoadsOnlyItsNewestChunks() async throws { try await contract.reactivatedThreadLoadsOnlyItsNewestChunks() }
    @Test func releasedHistoryUnderConcurrentReadsEditsAndRetries() async throws {
        try await contract.releasedHistoryUnderConcurrentReadsEditsAndRetries()
    }
    @Test func shutdownCommitsEverythingQueued() async throws { try await contract.shutdownCommitsEverythingQueued() }
    @Test func twoWritersNeverShareASeq() async throws { try await contract.twoWritersNeverShareASeq() }
    @Test func offlineNoticesAreAnOutbox() async throws { try await contract.offlineNoticesAreAnOutbox() }

    /// Plain sends, receipts, chunks and offline notices commit as one statement (plain sends alone as a leaner one);
    /// a batch that finds its thread moved by another node writes nothing that way and is refused or renumbered by the
    /// general path, as before.
    @Test func oneStatementCommitsAndFallsBackWhenAnotherNodeWrote() async throws {
        let url = try DatabaseURL(testDatabaseURL ?? "")
        let a = try await PostgresMessageStore.open(url: url)
        let b = try await PostgresMessageStore.open(url: url)
        let thread = StoreConformance.info()
        try await a.commit([.createThread(thread, members: ["alice", "bob"])])
        #expect(a.commitPaths == .init(singleStatement: 0, moved: 0, general: 1), "a new thread takes the general path")

        let m1 = StoreConformance.message(thread.id, 1, tempId: "t1")
        let chunk = HistoryChunk.seal([ThreadEvent(seq: 1, kind: .message, message: m1)])
        try await a.commit([
            .insertMessage(m1), .marks(thread.id, "alice", MemberMarks(deliveredSeq: 1, readSeq: 1)),
            .putChunk(thread.id, chunk, asOf: 1), .offlineNotice(thread.id, m1.id, users: ["bob"], delay: 3600),
        ])
        try await a.commit([.insertMessage(StoreConformance.message(thread.id, 2))])
        #expect(a.commitPaths == .init(singleStatement: 2, moved: 0, general: 1, messagesOnly: 1), "the plain send takes the leaner statement")

        // b still believes the thread ends at 1: its send at 2 finds it at 2, and is renumbered to 3.
        await #expect(throws: StoreRebased.self) {
            try await b.commit([.rebasable(thread.id), .insertMessage(StoreConformance.message(thread.id, 2, sender: "bob"))])
        }
        // A send that carries its writer epoch (not rebasable) at a taken seq is refused, and the epoch fenced.
        await #expect(throws: StoreError.self) {
            try await b.commit([.fence(thread.id, epoch: 1, membersVersion: 0), .insertMessage(StoreConformance.message(thread.id, 3, sender: "bob"))])
        }
        #expect(b.commitPaths == .init(singleStatement: 0, moved: 2, general: 2, messagesOnly: 2))
        // The fenced writer no longer tries the one statement at all.
        await #expect(throws: StoreError.self) {
            try await b.commit([.fence(thread.id, epoch: 1, membersVersion: 0), .insertMessage(StoreConformance.message(thread.id, 4, sender: "bob"))])
        }
        #expect(b.commitPaths == .init(singleStatement: 0, moved: 2, general: 3, messagesOnly: 2))
        try await b.commit([.insertMessage(StoreConformance.message(thread.id, 4, sender: "bob"))])
        #expect(b.commitPaths.singleStatement == 1)

        let stored = try await a.events(in: [ThreadRange(thread: thread.id, after: 0)])[thread.id] ?? []
        #expect(stored.map(\.seq) == [1, 2, 3, 4], "gap-free, nothing refused stored")
        #expect(stored.map(\.message.senderId) == ["alice", "alice", "bob", "bob"])
        #expect(stored.first?.message.tempId == "t1")
        let members = try await a.members(of: thread.id).list
        #expect(members.first { $0.userId == "alice" }?.marks == MemberMarks(deliveredSeq: 1, readSeq: 1))
        #expect(try await a.chunks(of: thread.id, overlapping: 1...1).map(\.firstSeq) == [1])
        await a.shutdown()
        await b.shutdown()
    }

    /// The log of a thread's member changes and its members list are read as of one moment (`memberLog`): while
    /// another node adds and removes a member as fast as it can, every read's list is what its log makes of the members
    /// the thread was created with. (Read in two statements, a change committed between them was in the list and not
    /// in the log, and a node took the two to disagree.)
    @Test func theMemberLogAndTheListAreReadAsOfOneMoment() async throws {
        let url = try DatabaseURL(testDatabaseURL ?? "")
        let a = try await PostgresMessageStore.open(url: url)
        let b = try await PostgresMessageStore.open(url: url)
        let thread = StoreConformance.info()
        try await a.commit([.createThread(thread, members: ["alice", "bob"])])
        let writer = Task {
            for i in 0..<400 {
                let version = StoreWrite.newMembersVersion()
                try await b.commit([i % 2 == 0 ? .addMembers(thread.id, ["carol"], membersVersion: version) : .removeMember(thread.id, "carol", membersVersion: version)])
            }
        }
        var reads = 0, disagreeing = 0
        while reads < 2_000 {
            let log = try await a.memberLog(of: thread.id, company: thread.companyId, from: 0)
            var members: Set<UserID> = ["alice", "bob"]
            for case .membership(_, _, _, _, let added, let removed, _) in log.changes {
                members.subtract(removed)
                members.formUnion(added)
            }
            if members != Set(log.members.list.map(\.userId)) { disagreeing += 1 }
            reads += 1
            if log.changes.count == 400 { break }
        }
        try await writer.value
        #expect(reads > 20, "the reads overlapped the writes")
        #expect(disagreeing == 0, "\(disagreeing) of \(reads) reads had a list their log did not give")
        await a.shutdown()
        await b.shutdown()
    }

    /// A writer's send that failed (refused by the database, not a conflict) stops the writer's epoch: its next send,
    /// pipelined behind it and free to move (`rebasable`), is refused too instead of taking the failed one's seq,
    /// where the client's retry of the failed send would land after it (out of the order it was sent in). The
    /// database refuses the first for its content (U+0000, which `text` cannot hold; the protocol refuses it earlier).
    @Test func aSendPipelinedBehindAFailedOneDoesNotTakeItsPlace() async throws {
        let url = try DatabaseURL(testDatabaseURL ?? "")
        let store = try await PostgresMessageStore.open(url: url)
        let thread = StoreConformance.info()
        try await store.commit([.createThread(thread, members: ["alice", "bob"])])
        try await store.commit([.insertMessage(StoreConformance.message(thread.id, 1))])
        let epoch = 7
        func unit(_ seq: Int, _ content: String) -> [StoreWrite] {
            var message = StoreConformance.message(thread.id, seq)
            message.content = content
            return [.fence(thread.id, epoch: epoch, membersVersion: 0), .rebasable(thread.id), .insertMessage(message)]
        }
        // Submitted back to back, as an actor pipelines them: seq 2 fails, then seq 3.
        let results = Mutex<[Int: Bool]>([:])
        await withCheckedContinuation { (done: CheckedContinuation<Void, Never>) in
            let remaining = Atomic<Int>(2)
            for (seq, content) in [(2, "bad \u{0}"), (3, "fine")] {
                store.submit(unit(seq, content)) { result in
                    results.withLock { $0[seq] = (try? result.get()) != nil }
                    if remaining.subtract(1, ordering: .relaxed).newValue == 0 { done.resume() }
                }
            }
        }
        let outcomes = results.withLock { $0 }
        #expect(outcomes[2] == false, "the send with U+0000 is refused")
        #expect(outcomes[3] == false, "the send behind it is refused too, not stored in its place")
        let stored = try await store.events(in: [ThreadRange(thread: thread.id, after: 0)])[thread.id] ?? []
        #expect(stored.map(\.seq) == [1], "nothing stored after seq 1")
        // A writer that caught up goes on under a new epoch.
        try await store.commit([.fence(thread.id, epoch: epoch + 1, membersVersion: 0), .insertMessage(StoreConformance.message(thread.id, 2))])
        await store.shutdown()
    }

    /// A writer whose send failed stays stopped when another node fills the failed send's seq: the writer's next send,
    /// which follows the store's log again, is refused all the same. (The one-statement commit did not know of stopped
    /// epochs and stored it; its actor then answered the failed send as stored, at the seq the other node's message
    /// holds: an acknowledged send lost across a PostgreSQL restart, found by an outside probe.)
    @Test func aStoppedWritersSendIsRefusedWhenAnotherNodeFilledTheGap() async throws {
        let url = try DatabaseURL(testDatabaseURL ?? "")
        let a = try await PostgresMessageStore.open(url: url)
        let b = try await PostgresMessageStore.open(url: url)
        let thread = StoreConformance.info()
        try await a.commit([.createThread(thread, members: ["alice", "bob"])])
        try await a.commit([.insertMessage(StoreConformance.message(thread.id, 1))])
        func unit(_ seq: Int, _ content: String) -> [StoreWrite] {
            var message = StoreConformance.message(thread.id, seq)
            message.content = content
            return [.fence(thread.id, epoch: 7, membersVersion: 0), .rebasable(thread.id), .insertMessage(message)]
        }
        await #expect(throws: (any Error).self, "U+0000 is refused by the database") { try await a.commit(unit(2, "bad \u{0}")) }
        try await b.commit([.insertMessage(StoreConformance.message(thread.id, 2, sender: "bob"))])
        await #expect(throws: (any Error).self, "the stopped writer's next send is refused") { try await a.commit(unit(3, "fine")) }
        let stored = try await a.events(in: [ThreadRange(thread: thread.id, after: 0)])[thread.id] ?? []
        #expect(stored.map(\.message.senderId) == ["alice", "bob"], "only the other node's message after seq 1")
        await a.shutdown()
        await b.shutdown()
    }

    /// A one-statement commit that PostgreSQL refuses at COMMIT (a deferred constraint; likewise a full NOTIFY queue,
    /// or a serialization failure) is refused, never acknowledged: without an explicit transaction the statement's
    /// rows come back before the implicit COMMIT runs, and its error came after the driver had reported success.
    @Test func aCommitRefusedAtCommitTimeIsNeverAcknowledged() async throws {
        let url = try DatabaseURL(testDatabaseURL ?? "")
        let store = try await PostgresMessageStore.open(url: url)
        let thread = StoreConformance.info()
        try await store.commit([.createThread(thread, members: ["alice", "mallory"])])
        // Refuses, at COMMIT only, any message of this thread sent by mallory.
        let name = "refuse_at_commit_" + String(thread.id.filter(\.isHexDigit).prefix(12))
        let setUp = [
            """
            CREATE FUNCTION chat.\(name)() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
              IF NEW.sender_id = 'mallory' AND NEW.thread_no = (SELECT no FROM chat.threads WHERE id = '\(thread.id)') THEN
                RAISE EXCEPTION 'refused at commit';
              END IF;
              RETURN NULL;
            END $$
            """,
            "CREATE CONSTRAINT TRIGGER \(name) AFTER INSERT ON chat.messages DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION chat.\(name)()",
        ]
        try await BinaryArrayColumnTests.withConnection { db in
            for sql in setUp { try await db.query(PostgresQuery(unsafeSQL: sql), logger: Logger(label: "test")) }
        }
        do {
            try await store.commit([.insertMessage(StoreConformance.message(thread.id, 1))])
            let generalBefore = store.commitPaths.general
            let refusal = await #expect(throws: (any Error).self, "a commit PostgreSQL refused must not be acknowledged") {
                try await store.commit([.insertMessage(StoreConformance.message(thread.id, 2, sender: "mallory"))])
            }
            #expect("\(refusal.map { String(reflecting: $0) } ?? "")".contains("refused at commit"), "refused by the deferred trigger")
            #expect(store.commitPaths.general == generalBefore, "refused on the one-statement path, which never fell back")
            // The thread goes on from where the refused send would have been.
            try await store.commit([.insertMessage(StoreConformance.message(thread.id, 2))])
        } catch {
            Issue.record("an allowed commit failed: \(error)")
        }
        try await BinaryArrayColumnTests.withConnection { db in
            try await db.query(PostgresQuery(unsafeSQL: "DROP TRIGGER \(name) ON chat.messages"), logger: Logger(label: "test"))
            try await db.query(PostgresQuery(unsafeSQL: "DROP FUNCTION chat.\(name)()"), logger: Logger(label: "test"))
        }
        let stored = try await store.events(in: [ThreadRange(thread: thread.id, after: 0)])[thread.id] ?? []
        #expect(stored.map(\.seq) == [1, 2])
        #expect(stored.map(\.message.senderId) == ["alice", "alice"], "nothing of the refused commit is stored")
        #expect(store.commitPaths.messagesOnly >= 1, "plain sends took the one-statement path")
        await store.shutdown()
    }

    @Test func badURLsAndServersAreClearErrors() async throws {
        #expect(throws: DatabaseURL.Invalid.self) { try DatabaseURL("mysql://a@b/c") }
        #expect(throws: DatabaseURL.Invalid.self) { try DatabaseURL("postgres://a@b") }
        #expect(throws: DatabaseURL.Invalid.self) { try DatabaseURL("postgres://a@b/c?sslmode=sometimes") }
        #expect(throws: DatabaseURL.Invalid.self) { try DatabaseURL("postgres://a@b/c?sslmode=require&sslrootcert=/ca.pem") }
        // Percent-decoded once: a password holding "%41" is sent as "%2541".
        let escaped = try DatabaseURL("postgres://us%40er:p%2541%3A@h:6000/d%2Fb?sslmode=verify-full&sslrootcert=/etc/ca.pem")
        #expect(escaped.user == "us@er" && escaped.password == "p%41:" && escaped.database == "d/b")
        #expect(escaped.rootCertificates == "/etc/ca.pem" && escaped.tls == .verifyFull && !escaped.tlsUnverified)
        // libpq's sslrootcert=system is the system's CAs; an IPv6 literal loses its brackets and is local.
        #expect(try DatabaseURL("postgres://u@h/d?sslmode=verify-full&sslrootcert=system").rootCertificates == nil)
        let v6 = try DatabaseURL("postgres://u@[::1]:6000/d")
        let remote = try DatabaseURL("postgres://u@db.example/d")
        #expect(v6.host == "::1" && v6.port == 6000 && v6.isLocal && !remote.isLocal)
        var url = try DatabaseURL(testDatabaseURL ?? "")
        url.password = "wrong-password"
        await #expect(throws: StoreSetupError.self) { _ = try await PostgresMessageStore.open(url: url, connectTimeout: .seconds(3)) }
        var closed = try DatabaseURL(testDatabaseURL ?? "")
        closed.port = 1
        await #expect(throws: StoreSetupError.self) { _ = try await PostgresMessageStore.open(url: closed, connectTimeout: .seconds(3)) }
    }
}
