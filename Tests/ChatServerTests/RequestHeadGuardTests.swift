import Testing

@testable import ChatServer

/// What `RequestHeadGuard` lets through: a head whose target (as sent and percent-decoded), authority and header
/// values hold no run of more than 30 combining marks.
struct RequestHeadGuardTests {
    static let marks31 = String(repeating: "%CC%81", count: 31)

    @Test func headsWithLongRunsAreRefusedWhereverTheRunIs() {
        let ok = "/socket.io/?EIO=4&transport=polling&sid=" + String(repeating: "%CC%81", count: 30)
        #expect(RequestHeadGuard.accepts(target: ok, authority: "127.0.0.1:3000", values: ["Bearer abc", "keep-alive"]))
        #expect(!RequestHeadGuard.accepts(target: "/socket.io/?sid=e" + Self.marks31, values: []))
        #expect(!RequestHeadGuard.accepts(target: "/e" + String(repeating: "\u{301}", count: 31), values: []))
        #expect(!RequestHeadGuard.accepts(target: "/", authority: "h" + String(repeating: "\u{316}", count: 31), values: []))
        #expect(!RequestHeadGuard.accepts(target: "/", values: ["ok", "B" + String(repeating: "\u{301}", count: 40_000)]))
    }

    @Test func theRefusalSpeaksTheEndpointsErrorShape() {
        let engine = String(decoding: RequestHeadGuard.refusal(for: "/socket.io/?EIO=4&sid=e" + Self.marks31), as: UTF8.self)
        #expect(engine.contains(#""code":3"#) && engine.contains("combining marks"))
        let rest = String(decoding: RequestHeadGuard.refusal(for: "/chat/threads/e" + String(repeating: "\u{301}", count: 31)), as: UTF8.self)
        #expect(rest.contains(#""code":"invalid_payload""#) && rest.contains("combining marks"))
        #expect(String(decoding: RequestHeadGuard.refusal(for: "/socket.iox"), as: UTF8.self).contains("invalid_payload"))
        // The Engine.IO endpoint is exactly `/socket.io` or `/socket.io/`, as the router and the upgrade see it.
        #expect(String(decoding: RequestHeadGuard.refusal(for: "/socket.io/other"), as: UTF8.self).contains("invalid_payload"))
        #expect(String(decoding: RequestHeadGuard.refusal(for: "/socket.io?EIO=4"), as: UTF8.self).contains(#""code":3"#))
    }

    @Test func theEnginePathIsToldByBytes() {
        #expect(EngineServer.isEnginePath("/socket.io") && EngineServer.isEnginePath("/socket.io/?EIO=4&transport=polling"))
        #expect(!EngineServer.isEnginePath("/socket.io/x") && !EngineServer.isEnginePath("/socket.iox?a"))
    }
}
