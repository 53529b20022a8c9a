import Foundation
import ChatJSON
import Testing

@testable import ChatCore

/// The send path writes events and messages straight to bytes; those bytes must be exactly what encoding the
/// `JSONValue` tree gives, for every shape (optionals present and absent, escapes, non-ASCII, every event kind).
@Suite struct WireEncodingTests {
    static let messages: [Message] = [
        Message(
            id: "m-1", threadId: "t-1", seq: 1, senderId: "alice", type: .text, content: "hello",
            createdAt: Timestamp(millis: 1_795_000_000_123)),
        Message(
            id: Identifier.timeOrderedUUID(), threadId: "t\"2\\", seq: 987_654_321, senderId: "bob\n", type: .image,
            content: "quote \" backslash \\ tab \t ctrl \u{01} emoji 👍 é", attachmentUrl: "https://x/y.png",
            attachmentType: "image/png", createdAt: Timestamp(millis: 0), editedAt: Timestamp(millis: 1_795_000_000_999),
            deletedAt: Timestamp(millis: 2_000_000_000_000), tempId: "tmp-1"),
    ]

    @Test func messageJSONMatchesTheTree() {
        for message in Self.messages {
            var direct: [UInt8] = []
            message.writeJSON(to: &direct)
            #expect(String(decoding: direct, as: UTF8.self) == JSONWriter.encodeString(message.json))
        }
    }

    @Test func eventPayloadMatchesTheTree() {
        for message in Self.messages {
            for kind in [EventKind.message, .edited, .deleted] {
                let event = ThreadEvent(seq: message.seq + 5, kind: kind, message: message)
                var direct: [UInt8] = []
                event.writePayload(to: &direct)
                #expect(String(decoding: direct, as: UTF8.self) == JSONWriter.encodeString(event.payload))
            }
        }
    }

    /// The word-at-a-time string writer against a byte-at-a-time reference: every character that needs escaping, at
    /// every offset of strings shorter and longer than a word, among ASCII and multi-byte UTF-8.
    @Test func stringEscapingMatchesAByteByByteReference() throws {
        func reference(_ s: String) -> [UInt8] {
            var out: [UInt8] = [0x22]
            for c in s.utf8 {
                switch c {
                case 0x22: out += [0x5C, 0x22]
                case 0x5C: out += [0x5C, 0x5C]
                case 0x0A: out += [0x5C, 0x6E]
                case 0x0D: out += [0x5C, 0x72]
                case 0x09: out += [0x5C, 0x74]
                case 0x08: out += [0x5C, 0x62]
                case 0x0C: out += [0x5C, 0x66]
                case ..<0x20: out += Array(String(format: "\\u%04x", Int(c)).utf8)
                default: out.append(c)
                }
            }
            return out + [0x22]
        }
        let specials: [String] = ["\"", "\\", "\n", "\r", "\t", "\u{08}", "\u{0C}", "\u{00}", "\u{01}", "\u{1F}", " ", "~", "\u{7F}", "é", "👍", "\u{80}"]
        var generator = SystemRandomNumberGenerator()
        for length in 0...40 {
            for special in specials {
                for offset in 0...length {
                    let filler = String(repeating: "a", count: length)
                    var text = filler
                    text.insert(contentsOf: special, at: text.index(text.startIndex, offsetBy: offset))
                    var out: [UInt8] = []
                    JSONWriter.writeString(text, to: &out)
                    #expect(out == reference(text), "\(text.debugDescription)")
                }
            }
            // Mixed strings: every special, several times, at random places.
            var text = ""
            for _ in 0..<length { text += Bool.random(using: &generator) ? "x" : specials.randomElement(using: &generator)! }
            var out: [UInt8] = []
            JSONWriter.writeString(text, to: &out)
            #expect(out == reference(text))
            let parsed = try JSONParser.parse(out)
            #expect(parsed == .string(text))
        }
    }

    @Test func timestampsRoundTrip() {
        for millis: Int64 in [0, 1, 999, 1_000, 951_782_400_000, 1_795_000_000_123, 4_102_444_799_999] {
            let text = Timestamp(millis: millis).iso8601
            #expect(text.utf8.count == 24)
            #expect(Timestamp(iso8601: text)?.millis == millis)
        }
    }

    @Test func timeOrderedIdsAreUniqueVersion7AndSortByTime() {
        var seen = Set<String>()
        var previous = ""
        for i in 0..<10_000 {
            let id = Identifier.timeOrderedUUID(millis: 1_795_000_000_000 + Int64(i / 100))
            #expect(id.utf8.count == 36)
            let chars = Array(id)
            #expect(chars[14] == "7")
            #expect("89ab".contains(chars[19]))
            #expect(seen.insert(id).inserted)
            if i % 100 == 0 { #expect(id > previous) }
            previous = id
        }
    }
}
