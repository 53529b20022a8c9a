import ChatJSON
import SocketIOCodec
import Testing

/// Byte-for-byte examples from the Engine.IO v4 and Socket.IO v5 protocol documents.
@Suite struct SocketIOCodecTests {
    @Test(arguments: [
        ("0", EnginePacketType.open, ""), ("2", .ping, ""), ("3probe", .pong, "probe"), ("4hello", .message, "hello"),
        ("5", .upgrade, ""), ("6", .noop, ""), ("1", .close, ""),
    ])
    func enginePackets(text: String, type: EnginePacketType, payload: String) throws {
        let packet = try EngineCodec.decode(Array(text.utf8))
        #expect(packet.type == type)
        #expect(packet.payload == Array(payload.utf8))
        #expect(packet.encoded == Array(text.utf8))
    }

    @Test func pollingPayloadSplitsOnRecordSeparator() throws {
        let body = Array("4hello\u{1e}2\u{1e}4€".utf8)
        let packets = try EngineCodec.decodePayload(body)
        #expect(packets.map(\.type) == [.message, .ping, .message])
        #expect(EngineCodec.encodePayload(packets.map(\.encoded)) == body)
    }

    /// A polling payload carries binary messages as `b` + base64 (the spec's example: bytes 1, 2, 3, 4).
    @Test func pollingPayloadDecodesBinaryMessages() throws {
        let packets = try EngineCodec.decodePayload(Array("4hello\u{1e}bAQIDBA==\u{1e}bAQID".utf8))
        #expect(packets == [EnginePacket(type: .message, payload: Array("hello".utf8)), .binary([1, 2, 3, 4]), .binary([1, 2, 3])])
        #expect(throws: CodecError.self) { try EngineCodec.decodePayload(Array("b!!!!".utf8)) }
        #expect(throws: CodecError.self) { try EngineCodec.decodePayload(Array("bAQ=ID".utf8)) }
    }

    @Test func reservedEventNamesAreErrors() {
        for name in ["connect", "disconnect", "connect_error", "disconnecting", "newListener", "removeListener"] {
            #expect(throws: CodecError.self) { try SocketCodec.decode(Array("2/chat,[\"\(name)\"]".utf8)) }
        }
        #expect(throws: CodecError.self) { try SocketCodec.decode(Array("2/chat,[]".utf8)) }
        #expect(throws: CodecError.self) { try SocketCodec.decode(Array("2/chat,{}".utf8)) }
        #expect(throws: CodecError.self) { try SocketCodec.decode(Array("2/chat,[null]".utf8)) }
        #expect(throws: CodecError.self) { try SocketCodec.decode(Array("2/chat,[[\"chat:send\"]]".utf8)) }
    }

    /// socket.io's parser takes a number as an event name: such an EVENT is well formed (an unknown event, answered
    /// with an error ack by the server), not a protocol error.
    @Test func aNumericEventNameIsAnEvent() throws {
        let packet = try SocketCodec.decode(Array("2/chat,7[5,{\"a\":1}]".utf8))
        #expect(packet.event?.name == "5")
        #expect(packet.event?.argument?["a"] == .number(1))
        #expect(try SocketCodec.decode(Array("2/chat,[1.5]".utf8)).event?.name == "1.5")
    }

    @Test func badEnginePacketsAreErrors() {
        #expect(throws: CodecError.self) { try EngineCodec.decode([]) }
        #expect(throws: CodecError.self) { try EngineCodec.decode(Array("9".utf8)) }
        #expect(throws: CodecError.self) { try EngineCodec.decode(Array("bAQID".utf8)) }
    }

    @Test(arguments: [
        #"0"#, #"0/admin,"#, #"0/admin,{"sid":"oSO0OpakMV_3jnilAAAA"}"#, #"1/admin,"#, #"2["hello",1]"#,
        #"2/admin,456["project:delete",123]"#, #"3/admin,456[]"#, #"4{"message":"Not authorized"}"#,
    ])
    func specExamplesRoundTrip(text: String) throws {
        let packet = try SocketCodec.decode(Array(text.utf8))
        #expect(SocketCodec.encode(packet) == Array(text.utf8))
    }

    @Test func eventWithAckAndNamespace() throws {
        let packet = try SocketCodec.decode(Array(#"2/chat,17["chat:send",{"threadId":"t","content":"hi"}]"#.utf8))
        #expect(packet.type == .event)
        #expect(packet.namespace == "/chat")
        #expect(packet.ackId == 17)
        #expect(packet.event?.name == "chat:send")
        #expect(packet.event?.argument?["content"] == .string("hi"))
    }

    @Test func binaryEventHeader() throws {
        let packet = try SocketCodec.decode(Array(#"51-["hello",{"_placeholder":true,"num":0}]"#.utf8))
        #expect(packet.type == .binaryEvent)
        #expect(packet.attachments == 1)
    }

    @Test(arguments: [#"2"#, #"2/chat,["#, #"2/chat,{"a":1}"#, #"3/chat,1{}"#, #"9"#, #"2/chat,1234567890123456789["x"]"#, "0/chat,[1]"])
    func malformedSocketPacketsAreErrors(text: String) {
        #expect(throws: CodecError.self) { try SocketCodec.decode(Array(text.utf8)) }
    }

    /// A repeated key keeps its last value (as JSON.parse does), in small objects (scanned) and large ones
    /// (hash-indexed past 16 members), with the first occurrence's position.
    @Test(arguments: [4, 16, 17, 1000])
    func duplicateKeysKeepTheLastValue(members: Int) throws {
        var text = "{"
        for i in 0..<members { text += "\"k\(i)\":\(i)," }
        text += "\"k0\":\"again\",\"k\(members - 1)\":-1,\"last\":true}"
        let object = try #require(try JSONParser.parse(text).objectValue)
        #expect(object.count == members + 1)
        #expect(object["k0"] == .string("again"))
        #expect(object["k\(members - 1)"] == .number(-1))
        #expect(object.members.first?.key == "k0")
        #expect(object.members.last?.key == "last")
    }

    /// Keys are the same only if their code units are (as JSON.parse compares them): a precomposed "é" and an "e"
    /// with a combining accent are two keys, in small objects and large ones. Swift's `String` equality, which took
    /// them for one, also normalized every non-ASCII key to hash it: an object of 9,999 keys of a letter and 30
    /// combining marks cost 68 ms to parse (outside probe); keys are now compared and hashed as bytes.
    @Test(arguments: [2, 40])
    func keysAreComparedByTheirCodeUnits(members: Int) throws {
        var text = "{"
        for i in 0..<members - 2 { text += "\"k\(i)\":\(i)," }
        text += "\"\u{E9}\":\"precomposed\",\"e\u{301}\":\"decomposed\"}"
        let object = try #require(try JSONParser.parse(text).objectValue)
        #expect(object.count == members)
        #expect(object["\u{E9}"] == .string("precomposed"))
        #expect(object["e\u{301}"] == .string("decomposed"))
        var marks = "{"
        for i in 0..<200 { marks += "\"a" + String(repeating: "\u{301}", count: 30) + "\(i)\":\(i)," }
        marks += "\"a" + String(repeating: "\u{301}", count: 30) + "0\":-1}"
        let hostile = try #require(try JSONParser.parse(marks).objectValue)
        #expect(hostile.count == 200, "the repeated key replaced the first")
        #expect(hostile["a" + String(repeating: "\u{301}", count: 30) + "0"] == .number(-1))
    }

    @Test func deepJSONIsRefused() {
        let deep = "2[\"x\"," + String(repeating: "[", count: 500) + String(repeating: "]", count: 500) + "]"
        #expect(throws: CodecError.self) { try SocketCodec.decode(Array(deep.utf8)) }
    }

    @Test func jsonRoundTripsEscapes() throws {
        let value: JSONValue = .object(["s": .string("a\"b\\c\n\u{1}é😀"), "n": .number(-12), "f": .number(1.5), "z": .null, "b": .bool(true)])
        let text = JSONWriter.encode(value)
        #expect(try JSONParser.parse(text) == value)
        #expect(try JSONParser.parse(#""\ud83d\ude00""#) == .string("😀"))
        #expect(throws: JSONParseError.self) { try JSONParser.parse(#""\ud83d""#) }
        #expect(throws: JSONParseError.self) { try JSONParser.parse("[1,]") }
        #expect(throws: JSONParseError.self) { try JSONParser.parse("{\"a\":1} x") }
    }
}

/// Inputs the fuzzer found accepted too leniently (Fuzz/Crashes/FuzzSocketCodec): refused like socket.io-parser.
@Suite struct SocketCodecStrictnessTests {
    @Test(arguments: ["42    42", "4\n66", "12/chat,", "0/chat,5{}", "2/chat, [\"x\"]", "4/chat,\"msg\""])
    func refused(text: String) {
        #expect(throws: CodecError.self) { try SocketCodec.decode(Array(text.utf8)) }
    }
}

/// Runs of combining marks: Swift normalizes a non-ASCII string to compare or hash it, in time quadratic in such a
/// run, so every string that comes in must be stream-safe (UAX #15: at most 30 non-starters in a row).
@Suite struct StreamSafeTextTests {
    static func marks(_ n: Int, _ mark: String = "\u{301}") -> String { String(repeating: mark, count: n) }

    @Test func runsUpToThirtyPassAndLongerRunsDoNot() {
        #expect(StreamSafeText.isStreamSafe("plain ASCII text"))
        #expect(StreamSafeText.isStreamSafe("e" + Self.marks(30)))
        #expect(!StreamSafeText.isStreamSafe("e" + Self.marks(31)))
        // A run is broken by any starter, and counted across different marks.
        #expect(StreamSafeText.isStreamSafe("e" + Self.marks(30) + "e" + Self.marks(30)))
        #expect(!StreamSafeText.isStreamSafe("e" + Self.marks(16) + Self.marks(15, "\u{316}")))
        // Natural text with several marks per letter (Vietnamese, Hebrew points, emoji sequences).
        #expect(StreamSafeText.isStreamSafe("Tiếng Việt ệ̂ בְּרֵאשִׁית 👩🏽‍💻"))
        #expect(StreamSafeText.isStreamSafe(Substring("x" + Self.marks(30))))
        // Scalars of class 0 that decompose into two non-starters count as two.
        #expect(!StreamSafeText.isStreamSafe("x" + Self.marks(15) + "\u{F73}" + Self.marks(14)))
        #expect(StreamSafeText.isStreamSafe("x" + Self.marks(14) + "\u{F73}" + Self.marks(14)))
    }

    @Test func jsonStringsWithLongRunsAreRefusedWhereverTheyAre() throws {
        let long = "e" + Self.marks(31)
        #expect(try JSONParser.parse("\"e\(Self.marks(30))\"") == .string("e" + Self.marks(30)))
        for text in ["\"\(long)\"", "{\"\(long)\":1}", "[\"ok\",{\"k\":[\"\(long)\"]}]",
                     // Escaped: the same scalars written as \u0301 in the escaping path.
                     "\"e" + String(repeating: "\\u0301", count: 31) + "\"", "\"\\n" + Self.marks(31) + "\""] {
            #expect(throws: JSONParseError.self, "\(text.prefix(20))") { try JSONParser.parse(text) }
        }
        do {
            _ = try JSONParser.parse("[\"\(long)\"]")
            Issue.record("accepted")
        } catch {
            #expect(error.description.contains("combining marks"))
        }
    }

    /// `\uD83D` without its pair is valid JSON syntax (JavaScript's `JSON.stringify` makes it from a string cut inside
    /// an emoji) but no text: an event holding one is refused for its text, with its namespace and ack id, so that
    /// the server answers it instead of closing the connection. Anything else broken stays a syntax error.
    @Test(arguments: ["\"hi \\ud83d\"", "\"\\ude00 x\"", "\"\\ud83d\\u0041\"", "\"\\ud83d\\n\""])
    func aLoneSurrogateIsRefusedTextNotBrokenSyntax(escaped: String) throws {
        do {
            _ = try SocketCodec.decode(Array("2/chat,7[\"chat:send\",{\"content\":\(escaped)}]".utf8))
            Issue.record("accepted \(escaped)")
        } catch {
            #expect(error.isRefusedText && error.namespace == "/chat" && error.ackId == 7, "\(escaped)")
            #expect(error.description.contains("unpaired surrogate"))
        }
        #expect(try JSONParser.parse("\"\\ud83d\\ude00\"") == .string("\u{1F600}"))
        do {
            _ = try SocketCodec.decode(Array("2/chat,7[\"chat:send\",{\"content\":\"\\ud83d\\uzzzz\"}]".utf8))
            Issue.record("accepted a bad escape")
        } catch {
            #expect(!error.isRefusedText)
        }
    }

    @Test func anEventNameOfMarksIsRefusedBeforeItIsHashed() {
        let packet = "42/chat,[\"" + Self.marks(16_000) + Self.marks(16_000, "\u{316}") + "\"]"
        #expect(throws: CodecError.self) { try SocketCodec.decode(Array(packet.utf8)) }
    }
}
