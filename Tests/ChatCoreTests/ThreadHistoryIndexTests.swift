import Testing

@testable import ChatCore

/// The thread's compact message index: ids kept as 16-byte keys (or text when not a canonical UUID), senders
/// interned, tempIds as hashes checked against the message.
@Suite struct ThreadHistoryIndexTests {
    @Test func messageKeysRoundTripExactly() {
        let ids = [
            Identifier.timeOrderedUUID(), Identifier.uuid(), "00000000-0000-0000-0000-000000000000",
            "ffffffff-ffff-ffff-ffff-ffffffffffff", "A1B2C3D4-0000-4000-8000-000000000000", "m1", "",
            "0123456789abcdef0123456789abcdef0123", "01234567-89ab-cdef-0123-456789abcdeg",
        ]
        for id in ids {
            #expect(MessageKey(id).id == id)
        }
        if case .uuid = MessageKey(Identifier.timeOrderedUUID()) {} else { Issue.record("a generated id must be kept as 16 bytes") }
        if case .text = MessageKey("A1B2C3D4-0000-4000-8000-000000000000") {} else { Issue.record("upper case must stay text") }
    }

    func message(_ seq: Int, id: String, sender: String, tempId: String? = nil) -> Message {
        Message(
            id: id, threadId: "t", seq: seq, senderId: sender, type: .text, content: "m\(seq)",
            createdAt: Timestamp(millis: 1_795_000_000_000 + Int64(seq)), tempId: tempId)
    }

    @Test func indexAnswersFromSealedChunksAndTail() throws {
        var history = ThreadHistory()
        var ids: [String] = []
        for seq in 1...40 {
            let id = seq % 7 == 0 ? "legacy-\(seq)" : Identifier.timeOrderedUUID()
            ids.append(id)
            history.appendMessage(message(seq, id: id, sender: seq % 2 == 0 ? "alice" : "bob", tempId: seq % 3 == 0 ? "tmp-\(seq)" : nil))
        }
        while history.sealIfNeeded(durableSeq: 40, hotTail: 8, chunkSize: 8) != nil {}
        #expect(history.chunks.count == 4)

        for (i, id) in ids.enumerated() {
            #expect(history.indexEntry(id) == IndexedMessage(seq: i + 1, senderId: (i + 1) % 2 == 0 ? "alice" : "bob", deleted: false))
            #expect(try history.message(id)?.id == id)
        }
        #expect(history.indexEntry(Identifier.timeOrderedUUID()) == nil)

        // tempId: found for its sender only, from a chunk and from the tail; unknown ones are not.
        #expect(try history.message(forTempId: "tmp-3", sender: "bob")?.seq == 3)
        #expect(try history.message(forTempId: "tmp-39", sender: "bob")?.seq == 39)
        #expect(try history.message(forTempId: "tmp-3", sender: "alice") == nil)
        #expect(try history.message(forTempId: "tmp-4", sender: "alice") == nil)
        #expect(try history.message(forTempId: "tmp-6", sender: "carol") == nil)

        // Receipts and unread counts.
        let bySender = history.messagesBySender(in: 1...6, excluding: "alice")
        #expect(bySender.count == 1 && bySender[0].sender == "bob" && bySender[0].ids == [ids[0], ids[2], ids[4]])
        #expect(history.unreadCount(for: "alice", readSeq: 30, upTo: 40) == 5)
        #expect(history.unreadCount(for: "carol", readSeq: 30, upTo: 40) == 10)

        // A delete is reflected in the index.
        var deleted = try #require(try history.message(ids[4]))
        deleted.content = ""
        deleted.deletedAt = Timestamp(millis: 1_795_000_001_000)
        let resealed = try history.reseal(for: deleted)
        history.appendUpdate(seq: 41, kind: .deleted, message: deleted, resealed: resealed)
        #expect(history.indexEntry(ids[4])?.deleted == true)
        #expect(history.messagesBySender(in: 1...6, excluding: "alice")[0].ids == [ids[0], ids[2]])
    }

    /// Released chunks take their messages out of the index: the index stays the size of the resident chunks and the
    /// tail however long the thread grows, and what it no longer holds is answered from counters, the tempId filter,
    /// or a request to ask the store.
    @Test func releasedMessagesLeaveTheIndex() throws {
        var history = ThreadHistory()
        history.residentChunks = 1
        var ids: [String] = []
        for seq in 1...2_000 {
            let id = Identifier.timeOrderedUUID()
            ids.append(id)
            history.appendMessage(message(seq, id: id, sender: seq % 2 == 0 ? "alice" : "bob", tempId: "tmp-\(seq)"))
            if let chunk = history.sealIfNeeded(durableSeq: seq, hotTail: 8, chunkSize: 8) { history.chunkSaved(chunk.firstSeq) }
        }
        #expect(history.releasedThrough == 1_984, "all but one chunk and the tail are released")
        #expect(history.order.count == 16, "the index holds the resident chunk and the tail only")

        // An indexed message is answered from memory; a released one needs the store, then reads its chunk back.
        #expect(history.indexEntry(ids[1_999])?.seq == 2_000)
        #expect(Self.failure { () throws(HistoryReadError) in try history.lookUp(ids[9]) } == "unindexed")
        let notApplied = Identifier.timeOrderedUUID()  // another node's, newer than what this history holds
        history.rememberReleased([ids[9], "no-such-message", notApplied], found: [ids[9]: [10], notApplied: [2_001]])
        #expect(history.knownSeq(of: ids[9]) == 10)
        #expect(Self.failure { () throws(HistoryReadError) in try history.message(ids[9]) } == "released", "its chunk is released")
        #expect(try history.message("no-such-message") == nil)
        #expect(try history.lookUp(notApplied) == nil, "not applied here yet: unknown, not asked again")

        // TempIds: indexed ones from memory; released ones are "ask the store" (the filter cannot rule them out);
        // a tempId never sent is ruled out without the store.
        #expect(try history.message(forTempId: "tmp-1999", sender: "bob")?.seq == 1_999)
        do {
            _ = try history.message(forTempId: "tmp-7", sender: "bob")
            Issue.record("a released tempId must be checked in the store")
        } catch {
            guard case .unresolvedTempId("tmp-7", "bob") = error else { throw error }
        }
        var falsePositives = 0
        for n in 0..<2_000 {
            do { _ = try history.message(forTempId: "never-\(n)", sender: "bob") } catch { falsePositives += 1 }
        }
        #expect(falsePositives <= 2, "the filter rules out tempIds never sent (\(falsePositives) of 2,000 not ruled out)")
        history.rememberTempId("tmp-7", sender: "bob", seq: nil)
        #expect(try history.message(forTempId: "tmp-7", sender: "bob") == nil, "the store's answer is taken")

        // Unread counts from the first message come from per-sender counters; from a released seq, from the store.
        #expect(history.unreadCount(for: "alice", readSeq: 0, upTo: 2_000) == 1_000)
        #expect(history.unreadCount(for: "carol", readSeq: 0, upTo: 2_000) == 2_000)
        #expect(history.unreadCount(for: "alice", readSeq: 1_000, upTo: 2_000) == nil)
        #expect(history.unreadCount(for: "alice", readSeq: 1_990, upTo: 2_000) == 5)
        // Pages walk the events, released or not.
        #expect(Self.failure { () throws(HistoryReadError) in try history.page(beforeSeq: 100, limit: 5, upTo: 2_000) } == "released")
        #expect(try history.page(beforeSeq: nil, limit: 5, upTo: 2_000).messages.map(\.seq) == Array(1_996...2_000))
        #expect(try history.lastMessage(upTo: 2_000)?.seq == 2_000)

        // A delete of a released message (here as another node's event) leaves the counters.
        var deleted = message(10, id: ids[9], sender: "alice", tempId: "tmp-10")
        deleted.content = ""
        deleted.deletedAt = Timestamp(millis: 1_795_000_009_000)
        history.appendUpdate(seq: 2_001, kind: .deleted, message: deleted, resealed: [], pinned: false)
        #expect(history.unreadCount(for: "bob", readSeq: 0, upTo: 2_001) == 999)
        #expect(history.unreadCount(for: "carol", readSeq: 0, upTo: 2_001) == 1_999)
    }

    /// A release takes the newest released message from what was sealed here, kept current through edits, instead of
    /// decoding the chunk: the answer is the one a decode of the chunk as it is now gives.
    @Test func aReleasedChunksNewestMessageIsTheCurrentOne() throws {
        var history = ThreadHistory()
        history.residentChunks = 1
        var ids: [String] = []
        func append(_ seq: Int) {
            let id = Identifier.timeOrderedUUID()
            ids.append(id)
            history.appendMessage(message(seq, id: id, sender: "alice"))
            if let chunk = history.sealIfNeeded(durableSeq: seq, hotTail: 8, chunkSize: 8) { history.chunkSaved(chunk.firstSeq) }
        }
        for seq in 1...24 { append(seq) }
        // Chunks 1–8 (released) and 9–16 (resident); 17–24 in the tail. Edit the resident chunk's newest message.
        #expect(history.releasedThrough == 8)
        var edited = message(16, id: ids[15], sender: "alice")
        edited.content = "edited"
        edited.editedAt = Timestamp(millis: 1_795_000_100_000)
        let resealed = try history.reseal(for: edited)
        history.appendUpdate(seq: 25, kind: .edited, message: edited, resealed: resealed)
        history.resealsSaved()
        // Another chunk sealed releases 9–16.
        for seq in 26...33 { append(seq) }
        #expect(history.releasedThrough == 16)
        let decoded = try #require(try resealed.first?.events().last(where: { $0.kind == .message })?.message)
        #expect(decoded.content == "edited")
        #expect(try history.lastMessage(upTo: 16) == decoded)
    }

    /// A chunk is encoded a block at a time as its events leave the hot tail and become durable, and the sealed chunk
    /// holds the events as they are now, also when an encoded event is edited (or deleted) before the seal, or the
    /// store lags behind.
    @Test func aChunkEncodedAsItFillsIsTheChunkOfItsEventsAsTheyAreNow() throws {
        var history = ThreadHistory()
        var ids: [String] = []
        var seq = 0
        var sealed: [HistoryChunk] = []
        // Every event as it should read now (updated on edit and delete), by seq - 1.
        var model: [ThreadEvent] = []
        func message(_ seq: Int) -> Message {
            let id = Identifier.timeOrderedUUID()
            ids.append(id)
            var m = self.message(seq, id: id, sender: seq % 3 == 0 ? "bob" : "alice")
            // About 4 KB each: a block holds about 16 of them.
            m.content = String(repeating: "message \(seq) ", count: 300 + seq % 7)
            return m
        }
        func append(durableLag: Int) {
            seq += 1
            let m = message(seq)
            history.appendMessage(m)
            model.append(ThreadEvent(seq: seq, kind: .message, message: m))
            while let chunk = history.sealIfNeeded(durableSeq: seq - durableLag, hotTail: 16, chunkSize: 32) { sealed.append(chunk) }
            // Nothing that is not durable is encoded.
            if history.encodedAhead > 0 { #expect(history.tail[history.encodedAhead - 1].seq <= seq - durableLag) }
        }
        func update(_ updated: Message, _ kind: EventKind) {
            seq += 1
            history.appendUpdate(seq: seq, kind: kind, message: updated, resealed: [])
            for i in model.indices where model[i].message.id == updated.id { model[i].message = updated }
            model.append(ThreadEvent(seq: seq, kind: kind, message: updated))
        }
        // Events 1–24 left the hot tail (16 newer ones follow them): a block's worth of them is encoded.
        for _ in 1...40 { append(durableLag: 0) }
        #expect(sealed.isEmpty)
        #expect((8..<24).contains(history.encodedAhead))
        // An edit of an encoded message drops what was encoded; it is encoded again at the next round.
        var edited = try #require(try history.message(ids[4]))
        edited.content = "edited"
        edited.editedAt = Timestamp(millis: 1_795_000_100_000)
        update(edited, .edited)
        #expect(history.encodedAhead == 0)
        #expect(history.sealIfNeeded(durableSeq: seq, hotTail: 16, chunkSize: 32) == nil)
        #expect(history.encodedAhead > 9)
        var deleted = try #require(try history.message(ids[9]))
        deleted.deletedAt = Timestamp(millis: 1_795_000_200_000)
        deleted.content = ""
        update(deleted, .deleted)
        #expect(history.encodedAhead == 0)
        // The store lags 20 events behind for a while, then catches up.
        for _ in 1...30 { append(durableLag: 20) }
        for _ in 1...30 { append(durableLag: 0) }
        #expect(sealed.count == 2)
        for chunk in sealed {
            let events = try chunk.events()
            #expect(events.count == 32)
            for event in events { #expect(event == model[event.seq - 1], "seq \(event.seq)") }
        }
        let first = try sealed[0].events()
        #expect(first[4].message.content == "edited" && first[9].message.isDeleted)

        // Several blocks' worth made durable at once are all encoded in that round, not left to the seal.
        var burst = ThreadHistory()
        for s in 1...79 { burst.appendMessage(message(s)) }
        #expect(burst.sealIfNeeded(durableSeq: 0, hotTail: 16, chunkSize: 64) == nil)
        #expect(burst.encodedAhead == 0)
        #expect(burst.sealIfNeeded(durableSeq: 79, hotTail: 16, chunkSize: 64) == nil)
        #expect(burst.encodedAhead >= 45)
    }

    /// The case of the `HistoryReadError` `body` throws ("none" if it throws none).
    static func failure<T>(_ body: () throws(HistoryReadError) -> T) -> String {
        do {
            _ = try body()
            return "none"
        } catch {
            switch error {
            case .corrupt: return "corrupt"
            case .released: return "released"
            case .unindexed: return "unindexed"
            case .unresolvedTempId: return "unresolvedTempId"
            }
        }
    }

    /// A history built from a long thread's snapshot releases what it need not keep at once, and its index tables
    /// shrink to what is left.
    @Test func aLongSnapshotLeavesABoundedIndex() throws {
        let events = (1...5_000).map { ThreadEvent(seq: $0, kind: .message, message: message($0, id: Identifier.timeOrderedUUID(), sender: "bob", tempId: "t\($0)")) }
        let chunks = stride(from: 0, to: 4_992, by: 8).map { HistoryChunk.seal(events[$0..<($0 + 8)]) }
        let index = events.map { MessageIndexEntry(seq: $0.seq, id: $0.message.id, senderId: "bob", deleted: false, tempId: $0.message.tempId) }
        var history = ThreadHistory(chunks: chunks, tail: Array(events[4_992...]), index: index, editEvents: [])
        #expect(history.order.count == 5_000)
        history.residentChunks = 2
        #expect(history.releasedThrough == 0, "nothing is released before the owner says so (it may deliver first)")
        history.releaseIfNeeded()
        #expect(history.releasedThrough == 4_976)
        #expect(history.order.count == 24)
        #expect(history.order.capacity < 1_024, "the index's storage shrank (capacity \(history.order.capacity))")
        #expect(try history.message(forTempId: "t4990", sender: "bob")?.seq == 4_990)
        #expect(Self.failure { () throws(HistoryReadError) in try history.message(forTempId: "t10", sender: "bob") } == "unresolvedTempId")
        #expect(history.unreadCount(for: "alice", readSeq: 0, upTo: 5_000) == 5_000)
    }

    /// The filter of released tempIds: never a false negative, few false positives, 2.5 bytes per tempId.
    @Test func tempIdFilterHasNoFalseNegativesAndFewFalsePositives() {
        var filter = TempIdFilter()
        var hasher = SystemRandomNumberGenerator()
        let inserted = (0..<300_000).map { _ in Int(bitPattern: UInt(hasher.next() as UInt64)) }
        for hash in inserted { filter.insert(hash) }
        #expect(inserted.allSatisfy { filter.mayContain($0) })
        let probes = 200_000
        let hits = (0..<probes).filter { _ in filter.mayContain(Int(bitPattern: UInt(hasher.next() as UInt64))) }.count
        #expect(hits < probes / 1_000, "\(hits) false positives in \(probes)")
        #expect(filter.count == 300_000)
        #expect(filter.bytes <= 300_000 * 4, "\(filter.bytes) bytes for 300,000 tempIds")
    }

    @Test func snapshotIndexRebuildsTheSameAnswers() throws {
        let id = Identifier.timeOrderedUUID()
        let tail = [ThreadEvent(seq: 1, kind: .message, message: message(1, id: id, sender: "bob", tempId: "x"))]
        var history = ThreadHistory(
            chunks: [], tail: tail, index: [MessageIndexEntry(seq: 1, id: id, senderId: "bob", deleted: false, tempId: "x")],
            editEvents: [])
        #expect(try history.message(forTempId: "x", sender: "bob")?.id == id)
        #expect(history.indexEntry(id)?.seq == 1)
    }
}
