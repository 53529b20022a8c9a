@testable import ChatCore
import ChatCoreTesting
import ChatJSON
import Testing

/// What one client with a valid token can make the broker do, bounded: the size of one `chat:sync` answer, the
/// work of editing one message again and again, the rates of a user with many connections, and the receipts of a
/// member who reads a long thread.
@Suite struct AuthenticatedLimitsTests {
    static func sync(_ device: TestDevice, _ cursors: [(ThreadID, Int)]) async throws -> JSONValue {
        let threads = cursors.map { JSONValue.object(["threadId": .string($0.0), "afterSeq": .int($0.1)]) }
        return try await device.emit("chat:sync", .object(["threads": .array(threads)])).get()
    }

    /// 40 messages whose 4,000 bytes of control characters each become 24,000 on the wire; 20 cursors on the thread.
    /// The whole answer stays within the page budget (plus one message: a thread's page holds at least one), and
    /// paging thread by thread still gives every event exactly once.
    @Test func oneSyncAnswerIsBoundedInAll() async throws {
        let budget = 64 * 1024
        let broker = Self.unthrottled {
            $0.maxPageBytes = budget
        }
        let thread = try await broker.thread(["bob"], by: "alice")
        let alice = try await broker.connect("alice"), bob = try await broker.connect("bob")
        let content = String(repeating: "\u{1}", count: 4000)
        for _ in 0..<40 { _ = try await alice.send(thread, content).get() }
        let oneMessage = 4000 * 6 + 1000

        let answer = try await Self.sync(bob, Array(repeating: (thread, 0), count: 20))
        let size = JSONWriter.encode(answer).count
        #expect(size <= budget + oneMessage, "answer of \(size) bytes")
        let entries = answer["threads"]?.arrayValue ?? []
        #expect(entries.count == 20)
        #expect(entries.allSatisfy { $0["hasMore"] == .bool(true) })
        #expect(entries.last?["events"]?.arrayValue?.isEmpty == true, "the budget was spent before the last thread")

        // One thread, page by page: every event once, each page within the budget.
        var seqs: [Int] = []
        var after = 0
        while true {
            let page = try await Self.sync(bob, [(thread, after)])
            #expect(JSONWriter.encode(page).count <= budget + oneMessage)
            let entry = try #require(page["threads"]?.arrayValue?.first)
            let events = entry["events"]?.arrayValue ?? []
            seqs += events.compactMap { $0["data"]?["message"]?["seq"]?.intValue }
            after = seqs.last ?? after
            if entry["hasMore"] != .bool(true) { break }
            #expect(!events.isEmpty, "a thread asked alone makes progress")
        }
        #expect(seqs == Array(1...40))
        await broker.close()
    }

    /// A history page counts content as it is written (escapes included).
    @Test func aHistoryPageCountsEscapedContent() async throws {
        let budget = 64 * 1024
        let broker = Self.unthrottled {
            $0.maxPageBytes = budget
        }
        let thread = try await broker.thread(["bob"], by: "alice")
        let alice = try await broker.connect("alice")
        for _ in 0..<40 { _ = try await alice.send(thread, String(repeating: "\u{1f}", count: 4000)).get() }
        let page = try await alice.emit("chat:history", .object(["threadId": .string(thread), "limit": .int(100)])).get()
        #expect(JSONWriter.encode(page).count <= budget + 4000 * 6 + 1000)
        #expect(page["hasMore"] == .bool(true))
        await broker.close()
    }

    /// Once a `chat:sync` answer's budget is spent, the threads named after it that are not active answer from their
    /// rows: not loaded (1000 names of passive threads loaded 1000 threads), with the same `hasMore` and refusals.
    @Test func aFullSyncAnswerLoadsNoMoreThreads() async throws {
        let broker = Self.unthrottled {
            $0.maxPageBytes = 16 * 1024
            $0.idleSeconds = 0
        }
        let big = try await broker.thread(["bob"], by: "alice")
        let quiet = try await broker.thread(["bob"], by: "alice")
        let busy = try await broker.thread(["bob"], by: "alice")
        let others = try await broker.thread(["carol"], by: "alice")
        let alice = try await broker.connect("alice")
        for _ in 0..<8 { _ = try await alice.send(big, String(repeating: "b", count: 4000)).get() }
        _ = try await alice.send(busy, "one").get()
        await alice.disconnect()
        _ = await broker.supervisor.passivateIdle()
        #expect(broker.supervisor.activeActor(for: busy) == nil)
        let bob = try await broker.connect("bob")
        let answer = try await Self.sync(bob, [(big, 0), (quiet, 0), (busy, 0), (busy, 1), (others, 0), ("no-such-thread", 0)])
        let entries = answer["threads"]?.arrayValue ?? []
        #expect(entries[0]["hasMore"] == .bool(true), "the first thread fills the answer")
        #expect(entries[1]["events"] == .array([]) && entries[1]["hasMore"] == .bool(false))
        #expect(entries[2]["events"] == .array([]) && entries[2]["hasMore"] == .bool(true))
        #expect(entries[3]["hasMore"] == .bool(false))
        #expect(entries[4]["code"] == .string("not_a_member"))
        #expect(entries[5]["code"] == .string("not_found"))
        for thread in [quiet, busy, others] { #expect(broker.supervisor.activeActor(for: thread) == nil, "not loaded") }
        await broker.close()
    }

    /// A history page's bytes are charged to the reader's read tokens (`historyBytesPerReadToken`): one read of a
    /// big page costs as much as many small ones.
    @Test func aBigPageCostsMoreThanOneRead() async throws {
        let broker = Self.unthrottled {
            $0.readRatePerSecond = 5
            $0.historyBytesPerReadToken = 1024
        }
        let thread = try await broker.thread(["bob"], by: "alice")
        let alice = try await broker.connect("alice")
        for _ in 0..<3 { _ = try await alice.emit("chat:history", .object(["threadId": .string(thread), "limit": .int(1)])).get() }
        for _ in 0..<10 { _ = try await alice.send(thread, String(repeating: "p", count: 4000)).get() }
        _ = try await alice.emit("chat:history", .object(["threadId": .string(thread), "limit": .int(10)])).get()
        let next = await alice.emit("chat:history", .object(["threadId": .string(thread), "limit": .int(1)]))
        #expect(next.error?.code == .rateLimited, "a page of 44 KB is 44 reads' worth here")
        await broker.close()
    }

    /// A mark that covers many messages costs the reader signal tokens for the messages its receipts list by sender
    /// (`receiptListedPerSignalToken`): a member removed and added again who read a long thread each time paid one
    /// signal token for milliseconds of CPU (an outside probe: a colluding pair took a third of a core). The mark is
    /// stored and told; the reader's next mark waits.
    @Test func aMarkThatCoversManyMessagesCostsSignalsForItsReceipts() async throws {
        let broker = Self.unthrottled {
            $0.signalRatePerSecond = 5
            $0.userRateConnections = 1
            $0.receiptListedPerSignalToken = 10
        }
        let thread = try await broker.thread(["bob"], by: "alice")
        let alice = try await broker.connect("alice"), bob = try await broker.connect("bob")
        for n in 0..<100 { _ = try await alice.send(thread, "m\(n)").get() }
        _ = try await bob.emit("chat:history", .object(["threadId": .string(thread), "limit": .int(1)])).get()
        _ = try await bob.emit("chat:mark-read", .object(["threadId": .string(thread), "upToSeq": .int(100)])).get()
        let read = try await alice.next("chat:read", timeout: .seconds(5))
        #expect(read["upToSeq"] == .int(100))
        let next = await bob.emit("chat:mark-read", .object(["threadId": .string(thread), "upToSeq": .int(100)]))
        #expect(next.error?.code == .rateLimited, "listing 100 messages for the receipts is 10 signals' worth here (20 with the delivered one)")
        await broker.close()
    }

    /// An edit or a delete of a message in a sealed chunk reseals that chunk whole: its raw bytes cost the user write
    /// tokens (`rewrittenBytesPerWriteToken`), so that editing old messages one after another costs what sending their
    /// bytes did, not one write each. An edit in the hot tail reseals nothing and costs one. Over REST the same edit
    /// waits in the REST bucket too (interop `test_editing_old_messages_costs_what_their_chunks_hold`).
    @Test func anEditThatResealsAChunkCostsItsBytesInWrites() async throws {
        let broker = ChatTestBroker { c in
            c.chunkSize = 4
            c.hotTail = 4
            c.ratePerSecond = 0.001
            c.rateBurst = 20
            c.userRateConnections = 1
            c.rewrittenBytesPerWriteToken = 1024
        }
        let thread = try await broker.thread(["bob"], by: "alice")
        let alice = try await broker.connect("alice")
        var ids: [String] = []
        for n in 0..<12 {
            let sent = try await alice.send(thread, "\(n) " + String(repeating: "x", count: 2000)).get()
            ids.append(try #require(sent["message"]?["id"]?.stringValue))
        }
        func edit(_ id: String) async -> Result<JSONValue, ChatError> {
            await alice.emit("chat:edit", .object(["threadId": .string(thread), "messageId": .string(id), "content": .string("short")]))
        }
        // 8 writes left: an edit in the hot tail costs one, an edit of the first chunk (about 8 KB) one more per KiB.
        _ = try await edit(ids[11]).get()
        _ = try await edit(ids[0]).get()
        let next = await alice.send(thread, "after")
        #expect(next.error?.code == .rateLimited, "the resealed chunk's 8 KB are 8 writes' worth here")
        await broker.close()
    }

    /// The edit events a history page walks past count toward its bytes as messages do (each carries its whole
    /// message): a page behind a run of big edits ends early, and paging still moves on, a message at least a page.
    @Test func aHistoryPageCountsTheEditsItWalksPast() async throws {
        let broker = Self.unthrottled {
            $0.maxPageBytes = 4096
        }
        let thread = try await broker.thread(["bob"], by: "alice")
        let alice = try await broker.connect("alice")
        _ = try await alice.send(thread, "m1").get()
        let id = try #require(try await alice.send(thread, "m2").get()["message"]?["id"]?.stringValue)
        for n in 0..<20 {
            let content = "edit \(n) " + String(repeating: "e", count: 1000)
            _ = try await alice.emit("chat:edit", .object(["threadId": .string(thread), "messageId": .string(id), "content": .string(content)])).get()
        }
        _ = try await alice.send(thread, "m3").get()
        var pages: [[String]] = []
        var before: Int?
        while pages.count < 5 {
            var request: [(key: String, value: JSONValue)] = [("threadId", .string(thread)), ("limit", .int(100))]
            if let before { request.append(("beforeSeq", .int(before))) }
            let page = try await alice.emit("chat:history", .object(JSONObject(request))).get()
            let messages = page["messages"]?.arrayValue ?? []
            pages.append(messages.compactMap { $0["content"]?.stringValue.map { String($0.prefix(2)) } })
            before = messages.first?["seq"]?.intValue
            if page["hasMore"] != .bool(true) { break }
        }
        #expect(pages == [["m3"], ["ed"], ["m1"]], "\(pages)")
        await broker.close()
    }

    @Test func writtenLengthMatchesTheWriter() {
        for text in ["", "plain", "quote \" and \\ backslash", "\n\r\t\u{8}\u{c}", "\u{0}\u{1}\u{1f}", "é漢字🙂", String(repeating: "a\u{1}", count: 50)] {
            var out: [UInt8] = []
            JSONWriter.writeString(text, to: &out)
            #expect(JSONWriter.writtenLength(text) == out.count, "\(text.debugDescription)")
        }
    }

    /// Each edit reseals every chunk holding an event of the message: edits of one message are capped (a delete is
    /// still allowed), and the refusal costs nothing of that work.
    @Test func editsOfOneMessageAreCapped() async throws {
        let broker = Self.unthrottled {
            $0.maxEditsPerMessage = 3
        }
        let thread = try await broker.thread(["bob"], by: "alice")
        let alice = try await broker.connect("alice")
        let sent = try await alice.send(thread, "v0").get()
        let id = try #require(sent["message"]?["id"]?.stringValue)
        func edit(_ content: String) async -> Result<JSONValue, ChatError> {
            await alice.emit("chat:edit", .object(["threadId": .string(thread), "messageId": .string(id), "content": .string(content)]))
        }
        for n in 1...3 { _ = try await edit("v\(n)").get() }
        let refused = await edit("v4")
        #expect(refused.error?.code == .forbidden)
        _ = try await alice.emit("chat:delete", .object(["threadId": .string(thread), "messageId": .string(id)])).get()
        let history = try await alice.emit("chat:history", .object(["threadId": .string(thread)])).get()
        #expect(history["messages"]?.arrayValue?.first?["content"] == .string(""))
        await broker.close()
    }

    /// A broker whose sends are not rate-limited, then `configure`.
    static func unthrottled(_ configure: (inout BrokerConfiguration) -> Void) -> ChatTestBroker {
        ChatTestBroker { c in
            c.ratePerSecond = 1e6
            c.rateBurst = 1e6
            configure(&c)
        }
    }

    /// A broker without rate limits whose threads seal a chunk every 4 events past a hot tail of 4, then `configure`.
    static func smallChunks(_ configure: (inout BrokerConfiguration) -> Void) -> ChatTestBroker {
        unthrottled { c in
            c.chunkSize = 4
            c.hotTail = 4
            configure(&c)
        }
    }

    /// An edit rewrites every sealed chunk that holds an event of its message: one whose events are spread over more
    /// than `maxResealedChunksPerEdit` chunks is refused before any of that work (a delete still goes through, and
    /// erases the content from every chunk).
    @Test func anEditRewritesABoundedNumberOfChunks() async throws {
        let broker = Self.smallChunks { $0.maxResealedChunksPerEdit = 2 }
        let thread = try await broker.thread(["bob"], by: "alice")
        let alice = try await broker.connect("alice")
        let id = try #require(try await alice.send(thread, "v0").get()["message"]?["id"]?.stringValue)
        var fillers = 0
        func fill() async throws {
            for _ in 0..<8 {
                _ = try await alice.send(thread, "filler \(fillers)").get()
                fillers += 1
            }
        }
        func edit(_ content: String) async -> Result<JSONValue, ChatError> {
            await alice.emit("chat:edit", .object(["threadId": .string(thread), "messageId": .string(id), "content": .string(content)]))
        }
        // Each edit's event is sealed in a chunk of its own before the next one: the message spreads over 1, then 2,
        // then 3 chunks.
        try await fill()
        _ = try await edit("v1").get()
        try await fill()
        _ = try await edit("v2").get()
        try await fill()
        let refused = await edit("v3")
        #expect(refused.error?.code == .forbidden)
        #expect(refused.error?.message.contains("more than 2 history chunks") == true)
        _ = try await alice.emit("chat:delete", .object(["threadId": .string(thread), "messageId": .string(id)])).get()
        let synced = try await alice.emit("chat:sync", .object(["threads": .array([.object(["threadId": .string(thread), "afterSeq": .int(0)])])])).get()
        let events = synced["threads"]?.arrayValue?.first?["events"]?.arrayValue ?? []
        // `chat:message` carries the message itself, an edit carries it as `message`, a delete names it only.
        let carrying = events.compactMap { event in
            [event["data"], event["data"]?["message"]].compactMap { $0 }.first { $0["id"] == .string(id) }
        }
        #expect(carrying.count == 3, "the message and its two edits: \(events.count) events")
        #expect(carrying.allSatisfy { $0["content"] == .string("") }, "no chunk keeps the content")
        await broker.close()
    }

    /// History decoded for a read is metered (`HistoryMeter`, charged with the page's bytes by `Supervisor.perform`):
    /// a page of the newest messages (in memory) decodes nothing, one of released history decodes the one chunk it
    /// needs, not its neighbours.
    @Test func decodedHistoryIsMetered() async throws {
        let broker = Self.smallChunks { $0.residentChunks = 1 }
        let thread = try await broker.thread(["bob"], by: "alice")
        let alice = try await broker.connect("alice")
        for n in 0..<40 { _ = try await alice.send(thread, "message \(n) " + String(repeating: "x", count: 200)).get() }
        // The 9 chunks sealed but the newest are released once the store has confirmed them.
        let deadline = ContinuousClock.now + .seconds(5)
        while broker.supervisor.stats.historyChunksReleased.load(ordering: .relaxed) < 8, ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(5))
        }
        let actor = try #require(broker.supervisor.activeActor(for: thread))
        let bob = broker.principal("bob")
        func decoded(before seq: Int?) async throws -> (Int, [Message]) {
            let meter = HistoryMeter()
            let page = try await HistoryMeter.$current.withValue(meter) { try await actor.history(beforeSeq: seq, limit: 2, by: bob) }
            return (meter.decoded, page.messages)
        }
        #expect(try await decoded(before: nil).0 == 0, "the newest messages are in memory")
        let readBack = broker.supervisor.stats.historyChunksReadBack.load(ordering: .relaxed)
        let (bytes, messages) = try await decoded(before: 3)
        #expect(messages.map(\.seq) == [1, 2])
        #expect(bytes > 4 * 200 && bytes < 4 * 2000, "one chunk of 4 messages decoded: \(bytes) bytes")
        #expect(broker.supervisor.stats.historyChunksReadBack.load(ordering: .relaxed) - readBack == 1, "one chunk read back")
        await broker.close()
    }

    /// A user's connections share `userRateConnections` connections' worth of each rate: a new connection (or a
    /// reconnection) brings no fresh tokens once the user's are spent.
    @Test func aUsersConnectionsShareTheirRate() async throws {
        let broker = ChatTestBroker {
            $0.ratePerSecond = 0.001
            $0.rateBurst = 2
            $0.userRateConnections = 2
        }
        let thread = try await broker.thread(["bob"], by: "alice")
        var accepted = 0, refused = 0
        for _ in 0..<4 {
            let device = try await broker.connect("alice")
            for n in 0..<3 {
                switch await device.send(thread, "m\(n)") {
                case .success: accepted += 1
                case .failure(let error):
                    #expect(error.code == .rateLimited)
                    refused += 1
                }
            }
            await device.disconnect()
        }
        #expect(accepted == 4, "two connections' worth of burst in all")
        #expect(refused == 8)
        // Another user is not affected.
        let bob = try await broker.connect("bob")
        _ = try await bob.send(thread, "hi").get()
        await broker.close()
    }

    /// An event its user's bucket refuses gives its tokens back to the connection: a connection that was refused
    /// because its user's other connections spent the shared rate is not left with an empty bucket of its own.
    @Test func anEventTheUsersBucketRefusesCostsTheConnectionNothing() async throws {
        // Per connection 0.5 sends/s and a burst of 2; the user's: 1/s and 4. The user's bucket gains a send a second,
        // so the refusals below hold unless the test stalls for a second.
        let broker = ChatTestBroker {
            $0.ratePerSecond = 0.5
            $0.rateBurst = 2
            $0.userRateConnections = 2
        }
        let thread = try await broker.thread(["bob"], by: "alice")
        let first = try await broker.connect("alice"), second = try await broker.connect("alice")
        for n in 0..<2 {
            _ = try await first.send(thread, "first \(n)").get()
            _ = try await second.send(thread, "second \(n)").get()
        }
        let third = try await broker.connect("alice")
        for n in 0..<4 {
            #expect(await third.send(thread, "refused \(n)").error?.code == .rateLimited)
        }
        // 2.4 s later the user's bucket holds 2.4 sends and the third connection's is still full (its refused sends
        // took nothing); had they spent its own tokens, it would hold 1.2 and pass one send, not two.
        try await Task.sleep(for: .milliseconds(2400))
        _ = try await third.send(thread, "accepted 1").get()
        _ = try await third.send(thread, "accepted 2").get()
        await broker.close()
    }

    /// Reads are rate limited per connection; a sync costs one read per 10 threads it names, and one dearer than
    /// the whole burst takes a full bucket (it passes once the bucket has refilled, never forever refused).
    @Test(arguments: [100, 1000])
    func readsAreRateLimited(threads: Int) async throws {
        // A burst of 10 reads, refilled in 2 s: 100 threads take it all; 1000 threads (100 reads) take it all too.
        let broker = ChatTestBroker {
            $0.readRatePerSecond = 5
        }
        let thread = try await broker.thread(["bob"], by: "alice")
        let bob = try await broker.connect("bob")
        _ = try await Self.sync(bob, Array(repeating: (thread, 0), count: threads))
        let refused = await bob.emit("chat:history", .object(["threadId": .string(thread)]))
        #expect(refused.error?.code == .rateLimited)
        try await Task.sleep(for: .milliseconds(2100))
        _ = try await Self.sync(bob, Array(repeating: (thread, 0), count: threads))
        await broker.close()
    }

    /// A member who reads a long thread at once (newly added, or removed and added again) makes the broker ask the
    /// store about the newest `10 × maxReceiptIds` seqs only (memory's bounded index is looked at whole): bounded
    /// work, and each sender's notice lists the newest `maxReceiptIds` ids (`upToSeq` covers the rest). Most of these
    /// 200 messages are released from memory.
    @Test func aReceiptOverALongRangeAsksTheStoreAboutItsNewestWindow() async throws {
        let broker = Self.smallChunks {
            $0.maxReceiptIds = 2
            $0.residentChunks = 1
        }
        let thread = try await broker.thread(["bob"], by: "alice")
        let alice = try await broker.connect("alice"), bob = try await broker.connect("bob")
        var ids: [String] = []
        for n in 0..<200 { ids.append(try #require(try await alice.send(thread, "m\(n)").get()["message"]?["id"]?.stringValue)) }
        // Chunks are released at a seal once stored: let the writes land, then seal once more.
        try await Task.sleep(for: .milliseconds(200))
        for n in 200..<208 { ids.append(try #require(try await alice.send(thread, "m\(n)").get()["message"]?["id"]?.stringValue)) }
        let released = 4 * broker.supervisor.stats.historyChunksReleased.load(ordering: .relaxed)
        #expect(released > 100, "most messages released from memory (\(released))")
        _ = try await bob.emit("chat:mark-read", .object(["threadId": .string(thread), "upToSeq": .int(208)])).get()
        let read = try await alice.next("chat:read")
        #expect(read["upToSeq"] == .int(208))
        let listed = read["messageIds"]?.arrayValue?.compactMap(\.stringValue) ?? []
        // The newest two (`maxReceiptIds`), of what memory indexes and the store's answer for the newest 20 seqs.
        #expect(listed == Array(ids.suffix(2)), "\(listed.count) listed, \(released) released")
        await broker.close()
    }

    /// The caller's threads come a bounded page at a time: at most `maxThreadsPerPage` threads and about
    /// `maxPageBytes` of them (a thread of many members fills a page alone), each page after the last thread of the
    /// previous one, oldest first, every thread once; `after` must name one of the caller's threads.
    @Test func threadsAreListedABoundedPageAtATime() async throws {
        let broker = ChatTestBroker {
            $0.maxThreadsPerPage = 2
            $0.maxPageBytes = 16 * 1024
        }
        // Oldest first is by creation time (milliseconds), then id: a pause between threads makes the order known.
        var made: [ThreadID] = []
        func pause() async throws { try await Task.sleep(for: .milliseconds(3)) }
        for n in 0..<5 {
            made.append(try await broker.thread(["bob"], name: "t\(n)"))
            try await pause()
        }
        // 2,000 members of 11 to 14 bytes each: over the byte budget alone.
        let crowd = (0..<2000).map { "member-\($0)" }
        made.append(try await broker.thread(Array(crowd[..<1000]), name: "crowded"))
        try await pause()
        _ = try await broker.supervisor.perform(.addMembers(made[5], Array(crowd[1000...])), as: broker.principal("alice"), device: nil)
        made.append(try await broker.thread(["bob"], name: "last"))

        let alice = broker.principal("alice")
        var pages: [[ThreadID]] = []
        var after: ThreadID?
        while true {
            let page = try await broker.supervisor.threadsPage(as: alice, after: after)
            pages.append(page.threads.map(\.info.id))
            guard page.hasMore else { break }
            after = try #require(page.threads.last).info.id
        }
        #expect(pages == [[made[0], made[1]], [made[2], made[3]], [made[4]], [made[5]], [made[6]]])
        #expect(try await broker.supervisor.listThreads(as: alice).map(\.info.id) == made)
        // Bob is in six of them; another user's thread is no cursor of his.
        let bobs = try await broker.supervisor.listThreads(as: broker.principal("bob"))
        #expect(bobs.map(\.info.id) == made.filter { $0 != made[5] })
        let other = try await broker.thread(["carol"], by: "dave")
        await #expect(throws: ChatError.self) { _ = try await broker.supervisor.threadsPage(as: broker.principal("bob"), after: other) }
        await broker.close()
    }

    /// A `chat:sync` naming another company's thread costs what one naming an id that is no thread does, whether that
    /// thread is active here or not. (Charged by whether the thread was loaded, naming another company's active
    /// thread 1,000 times left 1,000 more read tokens than naming an unknown id: which threads exist, and were used in
    /// the last minutes, could be told across companies; found by an outside probe.)
    @Test(arguments: [true, false]) func aSyncNamingAnotherCompanysThreadCostsWhatAnUnknownIdDoes(otherCompanys: Bool) async throws {
        var configuration = BrokerConfiguration()
        configuration.readRatePerSecond = 100
        configuration.userRateConnections = 1
        let supervisor = Supervisor(store: InMemoryStore(), configuration: configuration)
        let alice = Principal(userId: "alice", companyId: "acme"), mallory = Principal(userId: "mallory", companyId: "other")
        let thread = try await supervisor.createThread(name: "t", kind: .group, memberIds: ["bob"], by: alice).summary.info.id
        _ = try await supervisor.perform(.send(SendRequest(threadId: thread, content: "m1")), as: alice, device: nil)
        #expect(supervisor.activeActor(for: thread) != nil)
        let named = otherCompanys ? thread : "no-such-thread"
        let cursors = (0..<150).map { _ in ClientCommand.SyncCursor(threadId: named, afterSeq: 0) }
        guard case .sync(let entries) = try await supervisor.perform(.sync(cursors), as: mallory, device: nil) else { throw ChatError.messageNotFound }
        #expect(entries.allSatisfy { $0["code"] == .string("not_found") })
        // 200 - 1 (the sync) - 150 (a look-up per thread named) = 49 left, and 100 a second come back.
        #expect(!supervisor.userLimits.take(mallory.sessionKey, .read, cost: 150), "every thread named was charged a look-up")
        #expect(supervisor.userLimits.take(mallory.sessionKey, .read, cost: 45), "and nothing more")
    }

    /// Adding users to a thread writes its description, member list included, to each of their live devices: the
    /// adder pays for those bytes in write tokens (one per `rewrittenBytesPerWriteToken`), not only for the ids named.
    /// (A thread of 10,000 members with long ids is described in about 5 MB: one request adding 40 users pushed 200 MB
    /// for 100 write tokens; found by an outside probe.)
    @Test func addingUsersPaysForTheDescriptionsWrittenToTheirDevices() async throws {
        var configuration = BrokerConfiguration()
        configuration.ratePerSecond = 0.001
        configuration.rateBurst = 100
        configuration.userRateConnections = 1
        configuration.rewrittenBytesPerWriteToken = 5_000
        let supervisor = Supervisor(store: InMemoryStore(), configuration: configuration)
        let alice = Principal(userId: "alice", companyId: "acme")
        let others = (0..<400).map { "member-\($0)-" + String(repeating: "x", count: 200) }
        let thread = try await supervisor.createThread(name: "t", kind: .group, memberIds: others, by: alice).summary.info.id
        let victims = (0..<5).map { Principal(userId: "victim\($0)", companyId: "acme") }
        for victim in victims {
            for _ in 0..<2 { _ = try await supervisor.connect(victim) }
        }
        _ = try await supervisor.perform(.addMembers(thread, victims.map(\.userId)), as: alice, device: nil)
        // Each description is over 80 KB (400 ids of over 200 bytes): ten devices, over 800 KB, over 160 tokens of the
        // burst of 100.
        #expect(!supervisor.userLimits.take(alice.sessionKey, .write, cost: 1), "the adder is in debt")
    }

    /// A thread's member ids take at most `maxMemberIdBytes` (1 MiB) together as JSON, escapes counted: a thread of
    /// long ids of backslashes is refused the additions past it, and keeps its members.
    @Test func aThreadsMemberIdsAreBoundedInBytes() async throws {
        let supervisor = Supervisor(store: InMemoryStore())
        let alice = Principal(userId: "alice", companyId: "acme")
        // 246 bytes each, 489 written as JSON.
        func ids(_ range: Range<Int>) -> [UserID] { range.map { "u\(10_000 + $0)-" + String(repeating: "\\", count: 240) } }
        let thread = try await supervisor.createThread(name: "t", kind: .group, memberIds: ids(0..<1_000), by: alice).summary.info.id
        _ = try await supervisor.perform(.addMembers(thread, ids(1_000..<2_000)), as: alice, device: nil)
        // 2,001 ids take about 978 KB; 200 more would take about 1,076 KB.
        let error = await #expect(throws: ChatError.self) { try await supervisor.perform(.addMembers(thread, ids(2_000..<2_200)), as: alice, device: nil) }
        #expect(error?.code == .payloadTooLarge)
        let summary = try await supervisor.withThread(thread, as: alice) { actor throws(ChatError) in try await actor.summary(for: "alice") }
        #expect(summary.members.count == 2_001)
        // A creation is checked too (a request lists at most 1,000 ids, which fit; the core's API takes more).
        let created = await #expect(throws: ChatError.self) {
            _ = try await supervisor.createThread(name: "t", kind: .group, memberIds: ids(3_000..<5_200), by: alice)
        }
        #expect(created?.code == .payloadTooLarge)
    }

    /// A send held behind an edit being written (or a catch-up) is written later, from another task: the offline
    /// notices it queues then are charged to its user, as a send's are when it is written at once. (They were not: a
    /// socket's send answered while held was charged what its meter had counted by then, nothing.)
    @Test func aHeldSendsOfflineNoticesAreChargedWhenItIsWritten() async throws {
        let store = EditGatedStore()
        var configuration = BrokerConfiguration()
        configuration.offlineNoticeDelay = 60
        configuration.offlineNoticesPerWriteToken = 10
        configuration.ratePerSecond = 0.001
        configuration.rateBurst = 100
        configuration.userRateConnections = 1
        let supervisor = Supervisor(store: store, configuration: configuration)
        let alice = Principal(userId: "alice", companyId: "acme")
        let thread = try await supervisor.createThread(name: "t", kind: .group, memberIds: (0..<100).map { "u\($0)" }, by: alice).summary.info.id
        let device = try await supervisor.connect(alice)
        guard case .message(let sent) = try await supervisor.perform(.send(SendRequest(threadId: thread, content: "m1")), as: alice, device: device)
        else { throw ChatError.messageNotFound }
        store.gate.close()
        let edit = Task { try await supervisor.perform(.editMessage(sent.id, content: "changed"), as: alice, device: nil) }
        while store.gate.waiting == 0 { try await Task.sleep(for: .milliseconds(5)) }
        let acked = OneShot<Result<JSONValue, ChatError>>()
        let payload: JSONValue = .object(["threadId": .string(thread), "content": .string("held")])
        await supervisor.dispatch(event: "chat:send", data: payload, from: device) { acked.complete($0) }
        store.gate.open()
        _ = try await edit.value
        #expect(try await acked.value().get()["message"]?["content"] == .string("held"))
        // 100 - 10 (m1's 100 notices) - 1 (the held send) - 10 (its notices) = 79 left.
        #expect(!supervisor.userLimits.take(alice.sessionKey, .write, cost: 85), "the held send's notices were charged")
        #expect(supervisor.userLimits.take(alice.sessionKey, .write, cost: 75))
    }
}
