import Testing

@testable import ChatServer

/// The Engine.IO query of an upgrade's target, read on its UTF-8 bytes.
struct EngineQueryTests {
    @Test func pairsAreReadAsEngineIOSendsThem() {
        let query = EngineServer.query(of: "/socket.io/?EIO=4&transport=websocket&sid=a%2Bb&t=x=y&flag&&=lost")
        #expect(query == ["EIO": "4", "transport": "websocket", "sid": "a+b", "t": "x=y", "flag": ""])
        #expect(EngineServer.query(of: "/socket.io/") == [:])
        #expect(EngineServer.query(of: "/socket.io/?") == [:])
        // A value that is not valid percent-encoding is kept as sent; a later pair of a key wins.
        #expect(EngineServer.query(of: "/x?sid=%zz&sid=2&é=ü") == ["sid": "2", "é": "ü"])
    }

    @Test func aLongQueryOfSeparatorsIsReadWhole() {
        #expect(EngineServer.query(of: "/socket.io/?" + String(repeating: "&", count: 72_000) + "sid=s") == ["sid": "s"])
    }
}
