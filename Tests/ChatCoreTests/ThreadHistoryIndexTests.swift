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
