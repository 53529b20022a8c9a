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
