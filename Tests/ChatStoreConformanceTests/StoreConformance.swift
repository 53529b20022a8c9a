import ChatCore
import ChatCoreTesting
import ChatJSON
import Foundation
import Synchronization
import Testing

/// The `MessageStore` contract, checked the same way against every store: what a thread actor writes comes back
/// exactly from `loadThread`, seqs are gap-free and refused out of order, one refused unit never takes the rest of
/// its batch down, and `shutdown` loses nothing queued. Each check uses fresh random thread ids, so stores that
/// share one database (PostgreSQL) can run them side by side.
struct StoreConformance {
    /// Whether two stores may be open on the same data at once (several nodes on one database); SQLite's is one
    /// process's (`DatabaseFileLock`).
    var sharesData = true
    /// Opens the store under test (a second call opens a second store on the same data: a restart or another node).
    let open: @Sendable () async throws -> any MessageStore

    static func info(_ kind: ThreadKind = .group, company: String = "acme", by creator: String = "alice") -> ThreadInfo {
        ThreadInfo(id: UUID().uuidString.lowercased(), companyId: company, name: kind == .group ? "room é" : nil, kind: kind, createdBy: creator, createdAt: Timestamp(millis: 1_795_000_000_123))
    }

    static func message(_ thread: ThreadID, _ seq: Int, sender: String = "alice", tempId: String? = nil, url: String? = nil) -> Message {
        Message(
            id: Identifier.timeOrderedUUID(), threadId: thread, seq: seq, senderId: sender, type: url == nil ? .text : .image,
            content: "m\(seq) 😀 \"quoted\"", attachmentUrl: url, attachmentType: url == nil ? nil : "image/png",
            createdAt: Timestamp(millis: 1_795_000_000_000 + Int64(seq) * 1001), tempId: tempId)
    }

    func threadsMembersAndLookups() async throws {
        let store = try await open()
        let group = Self.info()
        let direct = Self.info(.direct)
        // A direct thread is unique per pair and company: a user of its own, so runs on one database never collide.
        let dave = "dave-\(UUID().uuidString)"
        try await store.commit([.createThread(group, members: ["alice", "bob", "carol"])])
        try await store.commit([.createThread(direct, members: ["alice", dave])])
        await #expect(throws: (any Error).self, "a second direct thread of the same pair is refused") {
            try await store.commit([.createThread(Self.info(.direct), members: [dave, "alice"])])
        }
        try await store.commit([.addMembers(group.id, ["erin", "bob"], membersVersion: StoreWrite.newMembersVersion())])
        try await store.commit([.removeMember(group.id, "carol", membersVersion: StoreWrite.newMembersVersion())])
        let snapshot = try #require(try await store.loadThread(group.id))
        #expect(snapshot.info == group)
        #expect(snapshot.members.map(\.userId) == ["alice", "bob", "erin"])
        #expect(try await store.loadThread("no-such-thread") == nil)
        let ids = try await store.threadIDs(of: SessionKey(companyId: "acme", userId: "alice"))
        #expect(ids.contains(group.id) && ids.contains(direct.id))
        #expect(try await store.threadIDs(of: SessionKey(companyId: "other", userId: "alice")).contains(group.id) == false)
        #expect(try await store.threadIDs(of: SessionKey(companyId: "acme", userId: "carol")).contains(group.id) == false)
        #expect(try await store.directThread(company: "acme", between: dave, and: "alice") == direct.id)
        #expect(try await store.directThread(company: "other", between: dave, and: "alice") == nil)
        await store.shutdown()
    }

    func messagesRoundTripExactly() async throws {
        let store = try await open()
        let thread = Self.info()
        try await store.commit([.createThread(thread, members: ["alice", "bob"])])
        let messages = [
            Self.message(thread.id, 1, tempId: "t-1"), Self.message(thread.id, 2, sender: "bob"),
            Self.message(thread.id, 3, url: "https://example.com/a.png"), Self.message(thread.id, 4, tempId: ""),
        ]
        for m in messages { try await store.commit([.insertMessage(m)]) }
        var edited = messages[1]
        edited.content = "edited"
        edited.editedAt = Timestamp(millis: 1_795_000_100_000)
        try await store.commit([.updateMessage(edited, seq: 5, kind: .edited)])
        var deleted = messages[2]
        deleted.content = ""
        deleted.attachmentUrl = nil
        deleted.attachmentType = nil
        deleted.deletedAt = Timestamp(millis: 1_795_000_200_000)
        try await store.commit([.updateMessage(deleted, seq: 6, kind: .deleted)])
        try await store.commit([.marks(thread.id, "bob", MemberMarks(deliveredSeq: 4, readSeq: 2))])
        try await store.commit([.marks(thread.id, "bob", MemberMarks(deliveredSeq: 3, readSeq: 3))])
        await store.shutdown()

        let reopened = try await open()
        let snapshot = try #require(try await reopened.loadThread(thread.id))
        #expect(snapshot.tail.map(\.seq) == [1, 2, 3, 4, 5, 6])
        #expect(snapshot.tail.map(\.kind) == [.message, .message, .message, .message, .edited, .deleted])
        #expect(snapshot.tail[0].message == messages[0])
        #expect(snapshot.tail[3].message == messages[3])
        #expect(snapshot.tail[1].message == edited, "a message comes back in its current state")
        #expect(snapshot.tail[5].message == deleted)
        #expect(snapshot.index.map(\.seq) == [1, 2, 3, 4])
        #expect(snapshot.index.map(\.deleted) == [false, false, true, false])
        #expect(snapshot.index.map(\.tempId) == ["t-1", nil, nil, ""])
        #expect(snapshot.editEvents.map(\.seq) == [5, 6])
        #expect(snapshot.members.first { $0.userId == "bob" }?.marks == MemberMarks(deliveredSeq: 4, readSeq: 3), "marks only move forward")
        #expect(try await reopened.threadID(ofMessage: messages[2].id, company: thread.companyId) == thread.id)
        #expect(try await reopened.threadID(ofMessage: "no-such-message", company: thread.companyId) == nil)
        #expect(try await reopened.threadID(ofMessage: messages[2].id, company: "another") == nil, "another company's message is not found")
        #expect(try await reopened.threadHead(of: thread.id, reader: "nobody", company: nil)?.company == thread.companyId)
        // The last seq counts the edit and delete events, which come after the last message.
        let head = ThreadHead(company: thread.companyId, lastSeq: 6, isMember: true)
        #expect(try await reopened.threadHead(of: thread.id, reader: "bob", company: nil) == head)
        #expect(try await reopened.threadHead(of: thread.id, reader: "bob", company: thread.companyId) == head)
        #expect(try await reopened.threadHead(of: thread.id, reader: "bob", company: "another") == nil, "another company's thread is not found")
        #expect(try await reopened.threadHead(of: thread.id, reader: "mallory", company: thread.companyId)?.isMember == false)
        #expect(try await reopened.threadHead(of: "no-such-thread", reader: "bob", company: nil) == nil)
        await reopened.shutdown()
    }

    /// Offline notices are an outbox: written only with a stored message (a refused unit leaves none), claimable once
    /// due, leased by a claim (no second claim, from this store or another on the same data, returns them until the
    /// lease ends), removed or put back with one more attempt by `settle`.
    func offlineNoticesAreAnOutbox() async throws {
        let store = try #require(try await open() as? any OfflineNoticeStore)
        let other = sharesData ? try #require(try await open() as? any OfflineNoticeStore) : store
        let thread = Self.info(company: "outbox")
        try await store.commit([.createThread(thread, members: ["alice", "bob", "carol"])])
        let m1 = Self.message(thread.id, 1), m2 = Self.message(thread.id, 2), refused = Self.message(thread.id, 5)
        try await store.commit([.insertMessage(m1), .offlineNotice(thread.id, m1.id, users: ["bob", "carol"], delay: 0)])
        try await store.commit([.insertMessage(m2), .offlineNotice(thread.id, m2.id, users: ["bob"], delay: 3600)])
        await #expect(throws: (any Error).self, "a seq that does not follow is refused, with its notice") {
            try await store.commit([.insertMessage(refused), .offlineNotice(thread.id, refused.id, users: ["bob"], delay: 0)])
        }
        try await store.commit([.marks(thread.id, "bob", MemberMarks(deliveredSeq: 1, readSeq: 0))])
        func mine(_ notices: [OfflineNotice]) -> [OfflineNotice] { notices.filter { $0.key.thread == thread.id }.sorted { $0.key.userId < $1.key.userId } }

        let claimed = mine(try await store.claimOfflineNotices(limit: 10_000, lease: 60))
        #expect(claimed.map(\.key.userId) == ["bob", "carol"], "only the due notices of the stored message")
        #expect(claimed.allSatisfy { $0.key.messageId == m1.id && $0.companyId == "outbox" && $0.attempts == 0 && $0.message?.content == m1.content })
        #expect(claimed.first?.marks == MemberMarks(deliveredSeq: 1, readSeq: 0))
        #expect(claimed.first?.isMoot == true, "bob got it on a device")
        #expect(claimed.last?.isMoot == false)
        #expect(mine(try await store.claimOfflineNotices(limit: 10_000, lease: 60)).isEmpty, "leased")
        #expect(mine(try await other.claimOfflineNotices(limit: 10_000, lease: 60)).isEmpty, "leased for every store on the data")

        let bob = claimed[0].key, carol = claimed[1].key
        try await store.settleOfflineNotices(done: [bob], retry: [(carol, 0)])
        let again = mine(try await other.claimOfflineNotices(limit: 10_000, lease: 60))
        #expect(again.map(\.key) == [carol] && again.first?.attempts == 1, "put back with one more attempt")
        #expect(try await store.pendingOfflineNotices() >= 2, "carol's (leased) and m2's (not due) are pending")
        try await other.settleOfflineNotices(done: [carol], retry: [])
        #expect(mine(try await store.claimOfflineNotices(limit: 10_000, lease: 0)).isEmpty, "m2's notice is not due for an hour")
        if sharesData { await other.shutdown() }
        await store.shutdown()
    }

    func seqsAreGapFreeAndOneRefusalStaysAlone() async throws {
        let store = try await open()
        let a = Self.info(), b = Self.info()
        try await store.commit([.createThread(a, members: ["alice"])])
        try await store.commit([.createThread(b, members: ["alice"])])
        // Submitted back to back, so a group-committing store folds them into one batch.
        let outcomes = Outcomes()
        let units: [(String, [StoreWrite])] = [
            ("a1", [.insertMessage(Self.message(a.id, 1))]), ("gap", [.insertMessage(Self.message(a.id, 3))]),
            ("b1", [.insertMessage(Self.message(b.id, 1))]), ("a2", [.insertMessage(Self.message(a.id, 2))]),
            ("dup", [.insertMessage(Self.message(b.id, 1))]), ("unknown", [.insertMessage(Self.message("no-such-thread", 1))]),
            ("b2", [.insertMessage(Self.message(b.id, 2)), .marks(b.id, "alice", MemberMarks(deliveredSeq: 2, readSeq: 2))]),
        ]
        await withTaskGroup(of: Void.self) { group in
            for (name, writes) in units {
                let done = OneShot<Void>()
                store.submit(writes) { result in
                    outcomes.set(name, (try? result.get()) != nil)
                    done.complete(())
                }
                group.addTask { await done.value() }
            }
        }
        #expect(outcomes.value == ["a1": true, "gap": false, "b1": true, "a2": true, "dup": false, "unknown": false, "b2": true])
        let snapshotA = try #require(try await store.loadThread(a.id))
        let snapshotB = try #require(try await store.loadThread(b.id))
        #expect(snapshotA.tail.map(\.seq) == [1, 2])
        #expect(snapshotB.tail.map(\.seq) == [1, 2])
        #expect(snapshotB.members.first?.marks == MemberMarks(deliveredSeq: 2, readSeq: 2))
        await store.shutdown()
    }

    func chunksReplaceAndBoundTheTail() async throws {
        let store = try await open()
        let thread = Self.info()
        try await store.commit([.createThread(thread, members: ["alice"])])
        let messages = (1...6).map { Self.message(thread.id, $0) }
        for m in messages { try await store.commit([.insertMessage(m)]) }
        let first = HistoryChunk.seal(messages[0..<2].map { ThreadEvent(seq: $0.seq, kind: .message, message: $0) })
        let wider = HistoryChunk.seal(messages[0..<4].map { ThreadEvent(seq: $0.seq, kind: .message, message: $0) })
        try await store.commit([.putChunk(thread.id, first, asOf: 6)])
        try await store.commit([.putChunk(thread.id, wider, asOf: 6)])
        let snapshot = try #require(try await store.loadThread(thread.id))
        #expect(snapshot.chunks == [wider], "a chunk with the same first seq replaces the earlier one")
        #expect(snapshot.tail.map(\.seq) == [5, 6])
        #expect(snapshot.index.count == 6)
        await store.shutdown()
    }

    /// `chunks(of:overlapping:)` answers the stored chunks that hold any seq of a range, in seq order.
    func chunksAreReadBackByRange() async throws {
        let store = try await open()
        let thread = Self.info()
        try await store.commit([.createThread(thread, members: ["alice"])])
        let messages = (1...12).map { Self.message(thread.id, $0) }
        for m in messages { try await store.commit([.insertMessage(m)]) }
        let chunks = stride(from: 0, to: 12, by: 4).map { HistoryChunk.seal(messages[$0..<$0 + 4].map { ThreadEvent(seq: $0.seq, kind: .message, message: $0) }) }
        for chunk in chunks { try await store.commit([.putChunk(thread.id, chunk, asOf: 12)]) }
        #expect(try await store.chunks(of: thread.id, overlapping: 6...9) == [chunks[1], chunks[2]])
        #expect(try await store.chunks(of: thread.id, overlapping: 1...1) == [chunks[0]])
        #expect(try await store.chunks(of: thread.id, overlapping: 1...12) == chunks)
        #expect(try await store.chunks(of: thread.id, overlapping: 13...20).isEmpty)
        #expect(try await store.chunks(of: "no-such-thread", overlapping: 1...12).isEmpty)
        await store.shutdown()
    }

    /// Threads that keep one chunk of 4 events in memory (so that a few dozen messages release most of them), and no
    /// rate limit.
    static func releasing(_ configuration: inout BrokerConfiguration) {
        configuration.hotTail = 4
        configuration.chunkSize = 4
        configuration.residentChunks = 1
        configuration.ratePerSecond = 1e9
        configuration.rateBurst = 1e9
    }

    /// A running broker on this store whose threads keep one chunk of 4 events in memory.
    private func releasingBroker() async throws -> (ChatTestBroker, Task<Void, Never>) {
        let broker = ChatTestBroker(store: try await open(), company: "acme-\(UUID().uuidString.prefix(8))", configure: Self.releasing)
        return (broker, Task { await broker.supervisor.run() })
    }

    /// Pages through a thread's whole history from the newest message: the contents by seq.
    private static func historyContents(_ device: TestDevice, _ thread: ThreadID, pageSize: Int) async throws -> [Int: String] {
        var contents: [Int: String] = [:]
        var before: Int? = nil
        while true {
            var query: [(key: String, value: JSONValue)] = [("threadId", .string(thread)), ("limit", .int(pageSize))]
            if let before { query.append(("beforeSeq", .int(before))) }
            let page = try await device.emit("chat:history", .object(JSONObject(query))).get()
            let messages = page["messages"]?.arrayValue ?? []
            for m in messages { contents[m["seq"]?.intValue ?? -1] = m["content"]?.stringValue }
            guard page["hasMore"]?.boolValue == true, let first = messages.first?["seq"]?.intValue else { return contents }
            before = first
        }
    }

    /// A thread that keeps one chunk in memory (chunks of 4 events) serves history, sync, edits, deletes and tempId
    /// retries of released messages exactly as if it held them all, reading them back from the store.
    func activeThreadReleasesChunksAndReadsThemBack() async throws {
        let (broker, run) = try await releasingBroker()
        let thread = try await broker.thread(["bob"], by: "alice", company: broker.company)
        let alice = try await broker.connect("alice", company: broker.company)
        var ids: [String] = []
        for n in 1...60 {
            let ack = try await alice.send(thread, "m\(n)", tempId: "t\(n)").get()
            #expect(ack["message"]?["seq"]?.intValue == n)
            ids.append(ack["message"]?["id"]?.stringValue ?? "")
        }
        // Seals are stored in the background; wait until the old chunks are released.
        let stats = broker.supervisor.stats
        for _ in 0..<200 where stats.historyChunksReleased.load(ordering: .relaxed) < 10 { try await Task.sleep(for: .milliseconds(10)) }
        #expect(stats.historyChunksReleased.load(ordering: .relaxed) >= 10, "all but the newest chunk are released")

        // A retry of an old send is answered with the original, and takes no seq.
        let retry = try await alice.send(thread, "m2 again", tempId: "t2").get()
        #expect(retry["message"]?["seq"]?.intValue == 2 && retry["message"]?["content"]?.stringValue == "m2")
        #expect(stats.historyChunksReadBack.load(ordering: .relaxed) > 0)
        // Edits and deletes of released messages.
        _ = try await alice.emit("chat:edit", .object(["threadId": .string(thread), "messageId": .string(ids[2]), "content": .string("m3 edited")])).get()
        _ = try await alice.emit("chat:delete", .object(["threadId": .string(thread), "messageId": .string(ids[4])])).get()
        let next = try await alice.send(thread, "m61", tempId: "t61").get()
        #expect(next["message"]?["seq"]?.intValue == 63, "the retry took no seq; the edit and the delete took 61 and 62")

        // History, page by page from the newest: every message once, as it now is.
        let contents = try await Self.historyContents(alice, thread, pageSize: 7)
        var expected: [Int: String] = [:]
        for n in 1...60 { expected[n] = "m\(n)" }
        expected[3] = "m3 edited"
        expected[5] = ""
        expected[63] = "m61"
        #expect(contents == expected)

        // chat:sync from the start: every event in seq order, messages as they now are.
        var seqs: [Int] = []
        var after = 0
        while true {
            let answer = try await alice.emit("chat:sync", .object(["threads": .array([.object(["threadId": .string(thread), "afterSeq": .int(after)])])])).get()
            let entry = answer["threads"]?.arrayValue?.first
            for event in entry?["events"]?.arrayValue ?? [] {
                let data = event["data"]
                let seq = data?["seq"]?.intValue ?? data?["message"]?["seq"]?.intValue ?? -1
                seqs.append(seq)
                if event["event"]?.stringValue == "chat:message", seq == 3 { #expect(data?["message"]?["content"]?.stringValue == "m3 edited") }
            }
            guard entry?["hasMore"]?.boolValue == true, let last = seqs.last else { break }
            after = last
        }
        #expect(seqs == Array(1...63))

        await alice.disconnect()
        run.cancel()
        await run.value
        await broker.close()
    }

    /// A thread activated again (by a second broker on the same store) loads only its newest chunk: everything older is
    /// read back or looked up on demand, and history, sync, retries, edits, receipts and unread counts are as before.
    func reactivatedThreadLoadsOnlyItsNewestChunks() async throws {
        let (broker, run) = try await releasingBroker()
        let company = broker.company
        let thread = try await broker.thread(["bob"], by: "alice", company: company)
        let alice = try await broker.connect("alice", company: company)
        var ids: [String] = []
        for n in 1...60 { ids.append(try await alice.send(thread, "m\(n)", tempId: "t\(n)").get()["message"]?["id"]?.stringValue ?? "") }
        _ = try await alice.emit("chat:edit", .object(["threadId": .string(thread), "messageId": .string(ids[2]), "content": .string("m3 edited")])).get()
        _ = try await alice.emit("chat:delete", .object(["threadId": .string(thread), "messageId": .string(ids[4])])).get()
        for _ in 0..<20 { _ = try await alice.send(thread, "filler", tempId: nil).get() }  // seqs 63...82: the edits get sealed
        await alice.disconnect()
        run.cancel()
        await run.value

        // The store's snapshot with one recent chunk.
        let snapshot = try #require(try await broker.store.loadThread(thread, recentChunks: 1))
        #expect(snapshot.chunks.count == 1)
        let first = try #require(snapshot.chunks.first?.firstSeq)
        #expect(snapshot.omittedThrough == first - 1 && first > 60)
        #expect(snapshot.newestOmittedMessage?.seq == snapshot.omittedThrough, "fillers are messages")
        #expect(try await broker.store.loadThread(thread)?.omittedThrough == 0, "all chunks by default")

        let second = ChatTestBroker(store: broker.store, company: company, configure: Self.releasing)
        let secondRun = Task { await second.supervisor.run() }
        let alice2 = try await second.connect("alice", company: company)
        let bob = try await second.connect("bob", company: company)
        let contents = try await Self.historyContents(bob, thread, pageSize: 9)
        var expected: [Int: String] = [:]
        for n in 1...60 { expected[n] = "m\(n)" }
        expected[3] = "m3 edited"
        expected[5] = ""
        for seq in 63...82 { expected[seq] = "filler" }
        #expect(contents == expected)
        #expect(second.supervisor.stats.historyChunksReadBack.load(ordering: .relaxed) > 0, "old chunks come from the store")
        let retry = try await alice2.send(thread, "again", tempId: "t2").get()
        #expect(retry["message"]?["seq"] == .int(2))
        let bobPrincipal = Principal(userId: "bob", companyId: company)
        #expect(try await second.supervisor.listThreads(as: bobPrincipal).first?.unreadCount == 79, "80 messages, one deleted")
        #expect(try await second.supervisor.listThreads(as: bobPrincipal).first?.lastMessage?.seq == 82)
        _ = try await bob.emit("chat:mark-read", .object(["threadId": .string(thread), "upToSeq": .int(10)])).get()
        let read = try await alice2.next("chat:read") { $0["userId"] == .string("bob") }
        #expect(read["messageIds"]?.arrayValue?.compactMap(\.stringValue) == (0..<10).filter { $0 != 4 }.map { ids[$0] })
        let edited = try await alice2.emit(
            "chat:edit", .object(["threadId": .string(thread), "messageId": .string(ids[2]), "content": .string("m3 twice")])
        ).get()
        #expect(edited["message"]?["seq"] == .int(3))
        #expect(try await alice2.send(thread, "next", tempId: "t84").get()["message"]?["seq"] == .int(84))
        let page = try await bob.emit("chat:history", .object(["threadId": .string(thread), "beforeSeq": .int(4), "limit": .int(3)])).get()
        #expect(page["messages"]?.arrayValue?.map { $0["content"]?.stringValue ?? "?" } == ["m1", "m2", "m3 twice"])

        await alice2.disconnect()
        await bob.disconnect()
        secondRun.cancel()
        await secondRun.value
        await broker.close()
    }

    /// Receipts and unread counts that reach messages no longer indexed in memory are as exact as for indexed ones:
    /// the delivered mark of old ids, the message ids a read receipt lists, and unread counts from the first message
    /// (in-memory counters) and from a released read mark (the store).
    func receiptsAndUnreadCountsOverReleasedMessages() async throws {
        let (broker, run) = try await releasingBroker()
        let company = broker.company
        let thread = try await broker.thread(["bob", "carol"], by: "alice", company: company)
        let alice = try await broker.connect("alice", company: company)
        let bob = try await broker.connect("bob", company: company)
        let carol = try await broker.connect("carol", company: company)
        var ids: [String] = []
        for n in 1...40 {
            let sender = n <= 30 ? alice : carol
            ids.append(try await sender.send(thread, "m\(n)", tempId: "t\(n)").get()["message"]?["id"]?.stringValue ?? "")
        }
        let stats = broker.supervisor.stats
        for _ in 0..<200 where stats.historyChunksReleased.load(ordering: .relaxed) < 6 { try await Task.sleep(for: .milliseconds(10)) }
        #expect(stats.historyChunksReleased.load(ordering: .relaxed) >= 6)
        _ = try await alice.emit("chat:delete", .object(["threadId": .string(thread), "messageId": .string(ids[4])])).get()
        #expect(stats.releasedLookups.load(ordering: .relaxed) > 0, "the deleted message was looked up in the store")

        func unread(_ user: UserID) async throws -> Int? {
            try await broker.supervisor.listThreads(as: Principal(userId: user, companyId: company)).first { $0.info.id == thread }?.unreadCount
        }
        #expect(try await unread("bob") == 39, "40 messages, one deleted")
        #expect(try await unread("carol") == 29, "alice's 30, one deleted")

        // Delivered with two old ids: the mark moves to the newer one, and alice hears of her messages up to it.
        _ = try await bob.emit("chat:delivered", .object(["threadId": .string(thread), "messageIds": .array([.string(ids[2]), .string(ids[7])])])).get()
        let delivered = try await alice.next("chat:delivered") { $0["userId"]?.stringValue == "bob" }
        #expect(delivered["upToSeq"]?.intValue == 8)
        #expect(delivered["messageIds"]?.arrayValue?.compactMap(\.stringValue) == [0, 1, 2, 3, 5, 6, 7].map { ids[$0] })

        // A read mark among released messages: the receipt lists exactly the ids read, and the count from that
        // mark on comes from the store.
        _ = try await bob.emit("chat:mark-read", .object(["threadId": .string(thread), "upToSeq": .int(20)])).get()
        let read = try await alice.next("chat:read") { $0["userId"]?.stringValue == "bob" }
        #expect(read["upToSeq"]?.intValue == 20)
        #expect(read["messageIds"]?.arrayValue?.compactMap(\.stringValue) == (0..<20).filter { $0 != 4 }.map { ids[$0] })
        #expect(try await unread("bob") == 20, "messages 21 to 40")
        // Carol reads everything up to 35: alice's 29 live messages, and carol's own are not receipts to herself.
        _ = try await carol.emit("chat:mark-read", .object(["threadId": .string(thread), "upToSeq": .int(35)])).get()
        let carolRead = try await alice.next("chat:read") { $0["userId"]?.stringValue == "carol" }
        #expect(carolRead["messageIds"]?.arrayValue?.count == 29)
        #expect(try await unread("carol") == 0)
        // Every sender of one receipt is told in one step, before alice's frame can be seen: a receipt to carol would
        // be in her queue by now.
        #expect(carol.events().filter { $0.name == "chat:read" }.isEmpty, "carol's own messages are no receipt to her")

        for device in [alice, bob, carol] { await device.disconnect() }
        run.cancel()
        await run.value
        await broker.close()
    }

    /// The same thread under concurrent use: readers page through the whole history while old messages are edited
    /// and old tempIds retried between new sends. Every read shows each message as it was at some point (never
    /// an error), and once everything is done, history shows every edit and the sends kept their order.
    func releasedHistoryUnderConcurrentReadsEditsAndRetries() async throws {
        let (broker, run) = try await releasingBroker()
        let thread = try await broker.thread(["bob"], by: "alice", company: broker.company)
        let alice = try await broker.connect("alice", company: broker.company)
        let bob = try await broker.connect("bob", company: broker.company)
        var ids: [String] = []
        for n in 1...80 { ids.append(try await alice.send(thread, "m\(n)", tempId: "t\(n)").get()["message"]?["id"]?.stringValue ?? "") }
        let stats = broker.supervisor.stats
        for _ in 0..<200 where stats.historyChunksReleased.load(ordering: .relaxed) < 15 { try await Task.sleep(for: .milliseconds(10)) }
        let allIds = ids

        try await withThrowingTaskGroup(of: Void.self) { group in
            for _ in 0..<3 {
                group.addTask {
                    for _ in 0..<4 {
                        let contents = try await Self.historyContents(bob, thread, pageSize: 9)
                        for n in 1...80 {
                            let text = contents[n] ?? "missing"
                            #expect(text == "m\(n)" || text == "m\(n) edited", "seq \(n) reads \(text)")
                        }
                    }
                }
            }
            group.addTask {
                for n in stride(from: 2, through: 60, by: 4) {
                    _ = try await alice.emit(
                        "chat:edit", .object(["threadId": .string(thread), "messageId": .string(allIds[n - 1]), "content": .string("m\(n) edited")])
                    ).get()
                }
            }
            group.addTask {
                var last = 0
                for n in stride(from: 1, through: 57, by: 4) {
                    let retry = try await alice.send(thread, "again", tempId: "t\(n)").get()
                    #expect(retry["message"]?["seq"]?.intValue == n, "a retry answers the original")
                    let fresh = try await alice.send(thread, "new \(n)", tempId: "new-\(n)").get()
                    let seq = fresh["message"]?["seq"]?.intValue ?? -1
                    #expect(seq > last, "new sends keep their order")
                    last = seq
                }
            }
            try await group.waitForAll()
        }
        let contents = try await Self.historyContents(bob, thread, pageSize: 9)
        for n in 1...80 {
            #expect(contents[n] == ((n - 2) % 4 == 0 && n <= 60 ? "m\(n) edited" : "m\(n)"), "seq \(n)")
        }
        #expect(contents.count == 80 + 15, "80 messages and 15 new sends; retries and edits added no message")
        await alice.disconnect()
        await bob.disconnect()
        run.cancel()
        await run.value
        await broker.close()
    }

    func shutdownCommitsEverythingQueued() async throws {
        let store = try await open()
        let thread = Self.info()
        try await store.commit([.createThread(thread, members: ["alice"])])
        let acked = Outcomes()
        for seq in 1...500 {
            store.submit([.insertMessage(Self.message(thread.id, seq))]) { result in acked.set("\(seq)", (try? result.get()) != nil) }
        }
        await store.shutdown()
        #expect(acked.value.count == 500 && acked.value.values.allSatisfy { $0 })
        let reopened = try await open()
        #expect(try await reopened.loadThread(thread.id)?.tail.count == 500)
        await reopened.shutdown()
    }

    /// Two stores on one database (two nodes) writing one thread: the database decides; each seq is taken once.
    func twoWritersNeverShareASeq() async throws {
        let first = try await open()
        let second = try await open()
        let thread = Self.info()
        try await first.commit([.createThread(thread, members: ["alice"])])
        let outcomes = Outcomes()
        await withTaskGroup(of: Void.self) { group in
            for (name, store) in [("first", first), ("second", second)] {
                group.addTask {
                    // Each writer believes it is alone: 1, 2, 3, … until the database refuses it.
                    for seq in 1...50 {
                        let ok = (try? await store.commit([.insertMessage(Self.message(thread.id, seq, sender: name))])) != nil
                        outcomes.set("\(name)-\(seq)", ok)
                    }
                }
            }
        }
        let snapshot = try #require(try await first.loadThread(thread.id))
        let seqs = snapshot.tail.map(\.seq)
        #expect(seqs == Array(1...seqs.count), "gap-free")
        #expect(seqs.count == outcomes.value.values.filter { $0 }.count, "every acknowledged write is stored, nothing else")
        #expect(Set(snapshot.tail.map(\.seq)).count == seqs.count, "no seq twice")
        await first.shutdown()
        await second.shutdown()
    }
}

/// Named outcomes gathered from completions.
final class Outcomes: Sendable {
    private let state = Mutex<[String: Bool]>([:])
    func set(_ name: String, _ ok: Bool) { state.withLock { $0[name] = ok } }
    var value: [String: Bool] { state.withLock { $0 } }
}
