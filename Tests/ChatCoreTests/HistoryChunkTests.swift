import ChatCore
import Testing

@Suite struct HistoryChunkTests {
    func events(_ n: Int) -> [ThreadEvent] {
        (1...n).map { i in
            ThreadEvent(seq: i, kind: .message, message: Message(
                id: "m\(i)", threadId: "t", seq: i, senderId: i % 2 == 0 ? "alice" : "bob", type: .text,
                content: "Hey, are we still on for the design review at \(i % 12 + 1)pm? I moved the notes to the shared doc.",
                createdAt: Timestamp(millis: 1_790_000_000_000 + Int64(i) * 1000)))
        }
    }

    @Test func sealAndReadBack() throws {
        let original = events(256)
        let chunk = HistoryChunk.seal(original)
        #expect(chunk.firstSeq == 1 && chunk.lastSeq == 256)
        #expect(try chunk.events() == original)
        #expect(chunk.data.count * 3 < 256 * 250)
        // The chunk holds its sealed bytes only, not the compression bound's worth of capacity.
        #expect(chunk.data.capacity < chunk.data.count + chunk.data.count / 4)
    }

    @Test func corruptionIsAnErrorNeverWrongData() throws {
        let chunk = HistoryChunk.seal(events(32))
        var flipped = chunk.data
        flipped[flipped.count / 2] ^= 0x5A
        #expect(throws: HistoryChunkError.self) { try HistoryChunk(firstSeq: 1, lastSeq: 32, data: flipped).events() }
        #expect(throws: HistoryChunkError.self) { try HistoryChunk(firstSeq: 1, lastSeq: 32, data: Array(chunk.data.prefix(40))).events() }
        #expect(throws: HistoryChunkError.self) { try HistoryChunk(firstSeq: 1, lastSeq: 32, data: []).events() }
        #expect(throws: HistoryChunkError.self) { try HistoryChunk(firstSeq: 2, lastSeq: 33, data: chunk.data).events() }
    }

    @Test func timestampsRoundTrip() {
        let t = Timestamp(millis: 1_795_000_123_456)
        #expect(t.iso8601 == "2026-11-18T11:08:43.456Z")
        #expect(Timestamp(iso8601: t.iso8601) == t)
    }
}
