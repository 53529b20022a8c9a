import ChatCore
import ChatJSON
@testable import ChatStoreSQLite
import Foundation
import GRDB
import Testing

/// Each test's databases live in one temporary folder, removed when the test's suite instance goes.
@Suite final class SQLiteStoreTests {
    let root = FileManager.default.temporaryDirectory.appendingPathComponent("chatstore-\(UUID().uuidString)")

    deinit { try? FileManager.default.removeItem(at: root) }

    func tempPath() throws -> String {
        let dir = root.appendingPathComponent(UUID().uuidString)
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        return dir.appendingPathComponent("chat.sqlite").path
    }

    /// A store (`process`) at `path` holding group thread "t1" with member "a".
    func storeWithThread(_ path: String) async throws -> SQLiteMessageStore {
        let store = try SQLiteMessageStore(path: path, durability: .process)
        let info = ThreadInfo(id: "t1", companyId: "acme", name: nil, kind: .group, createdBy: "a", createdAt: .now())
        try await store.commit([.createThread(info, members: ["a"])])
        return store
    }

    /// A database is one store's at a time: a second store on it is refused while the first is open (two committers
    /// numbering the same threads from their own memories failed each other's sends: found by an outside probe with
    /// two brokers on one data directory), and may open it once the first has shut down.
    @Test func aSecondStoreOnTheSameDatabaseIsRefusedWhileTheFirstIsOpen() async throws {
        let path = try tempPath()
        let first = try await storeWithThread(path)
        #expect {
            _ = try SQLiteMessageStore(path: path, durability: .process)
        } throws: { error in
            "\(error)".contains("in use by another process")
        }
        await first.shutdown()
        let second = try SQLiteMessageStore(path: path, durability: .process)
        #expect(try await second.loadThread("t1") != nil)
        await second.shutdown()
    }

    @Test func acknowledgedMessagesSurviveADroppedBroker() async throws {
        let path = try tempPath()
        var configuration = BrokerConfiguration()
        configuration.hotTail = 16
        configuration.chunkSize = 8
        configuration.rateBurst = 10_000
        let thread: ThreadID
        do {
            let store = try SQLiteMessageStore(path: path, durability: .process)
            let supervisor = Supervisor(store: store, configuration: configuration)
            let alice = Principal(userId: "alice", companyId: "acme")
            thread = try await supervisor.createThread(name: nil, kind: .group, memberIds: ["bob"], by: alice).summary.info.id
            let device = try await supervisor.connect(alice)
            await withTaskGroup(of: Void.self) { group in
                for w in 0..<4 {
                    group.addTask {
                        for i in 0..<25 {
                            _ = await supervisor.handle(event: "chat:send", data: .object(["threadId": .string(thread), "content": .string("w\(w) m\(i)")]), from: device)
                        }
                    }
                }
            }
            // No shutdown: the broker is simply dropped, as in a crash after the acks.
        }
        // A crash lets the file's lock go with the process; here it goes when the dropped store is freed, which work
        // still queued for it (a checkpoint, a chunk write) may put off a moment.
        var reopened: SQLiteMessageStore?
        for _ in 0..<500 where reopened == nil {
            reopened = try? SQLiteMessageStore(path: path, durability: .process)
            if reopened == nil { try await Task.sleep(for: .milliseconds(10)) }
        }
        let store = try #require(reopened)
        let supervisor = Supervisor(store: store, configuration: configuration)
        let bob = try await supervisor.connect(Principal(userId: "bob", companyId: "acme"))
        let sync = await supervisor.handle(
            event: "chat:sync", data: .object(["threads": .array([.object(["threadId": .string(thread), "afterSeq": .int(0)])])]), from: bob)
        let events = (try? sync.get())?["threads"]?.arrayValue?.first?["events"]?.arrayValue ?? []
        #expect(events.compactMap { $0["data"]?["message"]?["seq"]?.intValue } == Array(1...100))
        let next = await supervisor.handle(event: "chat:send", data: .object(["threadId": .string(thread), "content": .string("after restart")]), from: bob)
        #expect((try? next.get())?["message"]?["seq"]?.intValue == 101)
        await supervisor.shutdown()
    }

    /// Under steady writes the WAL must not grow without end: a passive checkpoint on another connection can never
    /// let it start over while commits keep coming, so the committer restarts it past `walRestartFrames`.
    @Test func walStaysBoundedUnderSteadyWrites() async throws {
        let path = try tempPath()
        var configuration = BrokerConfiguration()
        configuration.rateBurst = 1_000_000
        configuration.ratePerSecond = 1_000_000
        let store = try SQLiteMessageStore(path: path, durability: .process, walRestartFrames: 64)
        let supervisor = Supervisor(store: store, configuration: configuration)
        let alice = Principal(userId: "alice", companyId: "acme")
        var threads: [ThreadID] = []
        for _ in 0..<20 {
            threads.append(try await supervisor.createThread(name: nil, kind: .group, memberIds: ["bob"], by: alice).summary.info.id)
        }
        let content = String(repeating: "steady write ", count: 40)
        let started = Date()
        // Every thread's sender sends back to back for 2.5 s (well past several 200 ms checkpoint intervals), so
        // the committer always has work waiting and the WAL never drains by itself.
        let rounds = await withTaskGroup(of: (ThreadID, Int).self) { group in
            for thread in threads {
                group.addTask {
                    var sent = 0
                    while Date().timeIntervalSince(started) < 2.5 {
                        _ = try? await supervisor.withThread(thread, as: alice) { actor throws(ChatError) in
                            try await actor.send(SendRequest(threadId: thread, content: content), from: alice)
                        }
                        sent += 1
                    }
                    return (thread, sent)
                }
            }
            return await group.reduce(into: [(ThreadID, Int)]()) { $0.append($1) }
        }
        let round = rounds.map(\.1).min() ?? 0
        // Without restarts the WAL holds every page written in the run (72,000–79,000 frames here); with them it
        // holds what came in since the last restart (1,600–5,200 frames here: one checkpoint interval of writes).
        // A passive checkpoint is refused (SQLITE_BUSY) while the committer's restart runs: ask again.
        var frames = -1
        for attempt in 1...50 where frames < 0 {
            do { frames = try store.walFrameCount() } catch where attempt < 50 { try await Task.sleep(for: .milliseconds(20)) }
        }
        #expect(round > 20)
        #expect(frames < 20_000, "WAL holds \(frames) frames after \(round) sends per thread")
        for (thread, sent) in rounds {
            let summary = try await supervisor.withThread(thread, as: alice) { actor throws(ChatError) in try await actor.summary(for: "alice") }
            #expect(summary.lastSeq == sent)
        }
        await supervisor.shutdown()
    }

    @Test(arguments: [(Durability.full, 2), (.process, 1)])
    func durabilityLevelReallyApplies(durability: Durability, level: Int) async throws {
        let store = try SQLiteMessageStore(path: try tempPath(), durability: durability)
        #expect(try store.synchronousLevel() == level)
        await store.shutdown()
    }

    @Test func nonContiguousSeqIsRefused() async throws {
        let store = try await storeWithThread(try tempPath())
        let m = Message(id: "m2", threadId: "t1", seq: 2, senderId: "a", type: .text, content: "x", createdAt: .now())
        await #expect(throws: StoreError.self) { try await store.commit([.insertMessage(m)]) }
        var first = m
        first.id = "m1"
        first.seq = 1
        try await store.commit([.insertMessage(first)])
        try await store.commit([.insertMessage(m)])
        #expect(try await store.loadThread("t1")?.index.map(\.seq) == [1, 2])
        await store.shutdown()
    }

    @Test func directThreadsAreFoundAgain() async throws {
        let store = try SQLiteMessageStore(path: try tempPath(), durability: .process)
        let supervisor = Supervisor(store: store)
        let alice = Principal(userId: "alice", companyId: "acme")
        let first = try await supervisor.createThread(name: nil, kind: .direct, memberIds: ["bob"], by: alice)
        let again = try await supervisor.createThread(name: nil, kind: .direct, memberIds: ["alice"], by: Principal(userId: "bob", companyId: "acme"))
        #expect(first.created && !again.created)
        #expect(first.summary.info.id == again.summary.info.id)
        await supervisor.shutdown()
    }

    /// Every text field survives the insert's in-place binding exactly: empty, short (stored inline in the
    /// `String`), long, non-ASCII, and absent (NULL, not "").
    @Test func messageFieldsRoundTripExactly() async throws {
        let path = try tempPath()
        let store = try await storeWithThread(path)
        let long = String(repeating: "Ünïcødé 👋 and a rather long line of chat text; ", count: 40)
        let messages = [
            Message(id: "m1", threadId: "t1", seq: 1, senderId: "a", type: .image, content: "", attachmentUrl: "https://x/1.png",
                    attachmentType: "image/png", createdAt: Timestamp(millis: 1_795_000_000_001), tempId: ""),
            Message(id: "m2", threadId: "t1", seq: 2, senderId: "a", type: .text, content: long, createdAt: Timestamp(millis: 1_795_000_000_002),
                    tempId: "tmp-2"),
            Message(id: "m3", threadId: "t1", seq: 3, senderId: "a", type: .text, content: "ok", createdAt: Timestamp(millis: 1_795_000_000_003)),
        ]
        try await store.commit(messages.map { .insertMessage($0) })
        await store.shutdown()
        let reopened = try SQLiteMessageStore(path: path, durability: .process)
        let tail = try #require(try await reopened.loadThread("t1")).tail
        #expect(tail.map(\.message) == messages)
        #expect(tail[2].message.tempId == nil && tail[2].message.attachmentUrl == nil)
        await reopened.shutdown()
    }

    /// One large commit with an edit of a message inserted earlier in the same commit: every row is written once,
    /// in order, and the edit finds its row.
    @Test func largeCommitsWriteEveryRowInOrder() async throws {
        let path = try tempPath()
        let store = try await storeWithThread(path)
        var writes: [StoreWrite] = (1...70).map {
            .insertMessage(Message(id: "m\($0)", threadId: "t1", seq: $0, senderId: "a", type: .text, content: "line \($0)", createdAt: .now()))
        }
        var edited = Message(id: "m5", threadId: "t1", seq: 5, senderId: "a", type: .text, content: "changed", createdAt: .now())
        edited.editedAt = .now()
        writes.append(.updateMessage(edited, seq: 71, kind: .edited))
        writes.append(.insertMessage(Message(id: "m72", threadId: "t1", seq: 72, senderId: "a", type: .text, content: "last", createdAt: .now())))
        try await store.commit(writes)
        await store.shutdown()
        let reopened = try SQLiteMessageStore(path: path, durability: .process)
        let snapshot = try #require(try await reopened.loadThread("t1"))
        #expect(snapshot.index.map(\.seq) == Array(1...70) + [72])
        #expect(snapshot.editEvents.map(\.seq) == [71])
        #expect(snapshot.tail.first { $0.message.id == "m5" }?.message.content == "changed")
        await reopened.shutdown()
    }

    /// A database written by the previous schema (v2: messages keyed by the thread's text id) opens, migrates to
    /// thread numbers, and keeps every message, edit, seq and lookup.
    @Test func schemaV2DatabasesMigrate() async throws {
        let path = try tempPath()
        let old = try DatabaseQueue(path: path)
        try SQLiteSchema.migrator.migrate(old, upTo: "v2")
        try await old.write { db in
            for (id, created) in [("t-a", 1), ("t-b", 2)] {
                try db.execute(
                    sql: "INSERT INTO threads(id, company_id, name, kind, created_by, created_at) VALUES (?, 'acme', NULL, 'group', 'a', ?)",
                    arguments: [id, created])
                try db.execute(sql: "INSERT INTO members(thread_id, user_id, position) VALUES (?, 'a', 0)", arguments: [id])
                for seq in 1...3 {
                    try db.execute(
                        sql: """
                            INSERT INTO messages(id, thread_id, seq, sender_id, type, content, created_at)
                            VALUES (?, ?, ?, 'a', 'Text', ?, 1795000000000)
                            """, arguments: ["\(id)-m\(seq)", id, seq, "hello \(seq)"])
                }
            }
            try db.execute(sql: "UPDATE messages SET content = 'edited', edited_at = 1795000000500 WHERE id = 't-b-m2'")
            try db.execute(sql: "INSERT INTO events(thread_id, seq, kind, message_id) VALUES ('t-b', 4, 'edited', 't-b-m2')")
        }
        try old.close()

        let store = try SQLiteMessageStore(path: path, durability: .process)
        let a = try #require(try await store.loadThread("t-a"))
        #expect(a.index.map(\.seq) == [1, 2, 3])
        #expect(a.tail.map(\.message.threadId) == ["t-a", "t-a", "t-a"])
        let b = try #require(try await store.loadThread("t-b"))
        #expect(b.tail.map(\.seq) == [1, 2, 3, 4])
        #expect(b.tail.last?.message.content == "edited")
        #expect(try await store.threadID(ofMessage: "t-b-m3", company: "acme") == "t-b")
        // The next write continues each thread's seq, and a gap is still refused.
        let next = Message(id: "t-a-m4", threadId: "t-a", seq: 4, senderId: "a", type: .text, content: "after", createdAt: .now())
        try await store.commit([.insertMessage(next)])
        var gap = next
        gap.id = "t-b-m9"
        gap.threadId = "t-b"
        gap.seq = 9
        await #expect(throws: StoreError.self) { try await store.commit([.insertMessage(gap)]) }
        // A thread created after the migration gets a number of its own.
        let info = ThreadInfo(id: "t-c", companyId: "acme", name: nil, kind: .group, createdBy: "a", createdAt: .now())
        try await store.commit([.createThread(info, members: ["a"])])
        try await store.commit([.insertMessage(Message(id: "t-c-m1", threadId: "t-c", seq: 1, senderId: "a", type: .text, content: "c", createdAt: .now()))])
        #expect(try await store.loadThread("t-c")?.tail.map(\.message.id) == ["t-c-m1"])
        #expect(try await store.loadThread("t-a")?.index.map(\.seq) == [1, 2, 3, 4])
        await store.shutdown()
    }
}
