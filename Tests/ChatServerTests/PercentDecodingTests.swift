import Testing

@testable import ChatServer

/// The three readings of `%XX` escapes: a request target (lenient), a form query (lenient, `+` is a space) and a path
/// segment (strict).
struct PercentDecodingTests {
    @Test func lenientDecodingIsBytewise() {
        #expect(PercentDecoding.lenient("/socket.io/?EIO=4&sid=a%2Fb") == "/socket.io/?EIO=4&sid=a/b")
        #expect(PercentDecoding.lenient("e%CC%81") == "e\u{301}")
        // Broken escapes stay as they are; bytes that are not UTF-8 become U+FFFD; `+` stays unless asked.
        #expect(PercentDecoding.lenient("%zz%4") == "%zz%4")
        #expect(PercentDecoding.lenient("%4%41%") == "%4A%")
        #expect(PercentDecoding.lenient("%FF") == "\u{FFFD}")
        #expect(PercentDecoding.lenient("a+b") == "a+b")
        #expect(PercentDecoding.lenient("a+b%2B", plusIsSpace: true) == "a b+")
    }

    @Test func strictDecodingRefusesBrokenEscapesAndNonUTF8() {
        #expect(PercentDecoding.strict("zo%C3%AB") == "zo\u{EB}")
        #expect(PercentDecoding.strict("a+b") == "a+b")
        #expect(PercentDecoding.strict("plain") == "plain")
        #expect(PercentDecoding.strict("%zz") == nil)
        #expect(PercentDecoding.strict("a%4") == nil)
        #expect(PercentDecoding.strict("a%") == nil)
        #expect(PercentDecoding.strict("%FF") == nil)
        #expect(PercentDecoding.strict("%C3") == nil)
    }

    @Test func formQueriesReadPlusAsSpaceAndKeepRepeats() {
        let query = FormQuery("userId=zo%C3%AB+x&userId=b&flag&bad=%zz")
        #expect(query.values("userId") == ["zo\u{EB} x", "b"])
        #expect(query.values("flag") == [""])
        #expect(query.values("bad") == ["%zz"])
        #expect(query.values("missing") == [])
    }
}
