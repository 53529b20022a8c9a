import AsyncHTTPClient
import ChatJSON
import Foundation
import Logging
import NIOCore
import NIOHTTP1
import Testing

@testable import ChatServer

/// The whole server in process, on a real socket (127.0.0.1, a free port) with the embedded SQLite store: health,
/// an Engine.IO polling session that connects to `/chat` with a token, a thread created over REST, and a send whose
/// ack and event come back on the long poll. (The python interop suite covers the contract from outside.)
@Suite(.serialized) struct ChatApplicationTests {
    static let secret = Array("an in-process test secret of at least 32 bytes".utf8)

    /// Runs a broker for the duration of `body`, then cancels it (closing sockets and flushing the store).
    static func withBroker(
        _ configure: (inout ServerConfiguration) -> Void = { _ in },
        _ body: @Sendable (_ base: String, _ tokens: TokenVerifier) async throws -> Void
    ) async throws {
        var configuration = ServerConfiguration()
        configure(&configuration)
        configuration.port = 0
        configuration.dataDirectory = FileManager.default.temporaryDirectory.appendingPathComponent("chat-server-\(UUID().uuidString)").path
        configuration.jwtSecret = secret
        var logger = Logger(label: "test")
        // The test ends the broker by cancelling it, which Hummingbird logs as errors while it unwinds.
        logger.logLevel = .critical
        let (ports, portContinuation) = AsyncStream<Int>.makeStream()
        let broker = try await ChatApplication.make(configuration: configuration, logger: logger) { port in portContinuation.yield(port) }
        let running = Task { try await broker.run(gracefulShutdownSignals: []) }
        defer { running.cancel() }
        var iterator = ports.makeAsyncIterator()
        let port = try #require(await iterator.next())
        try await body("http://127.0.0.1:\(port)", await TokenVerifier(secret: secret))
        running.cancel()
        _ = await running.result
        try? FileManager.default.removeItem(atPath: configuration.dataDirectory)
    }

    static func request(_ url: String, method: HTTPMethod = .GET, body: String? = nil, token: String? = nil) async throws -> (status: Int, body: String) {
        var request = HTTPClientRequest(url: url)
        request.method = method
        if let token { request.headers.add(name: "Authorization", value: "Bearer \(token)") }
        if let body {
            request.headers.add(name: "Content-Type", value: url.contains("/socket.io/") ? "text/plain;charset=UTF-8" : "application/json")
            request.body = .bytes(ByteBuffer(string: body))
        }
        let response = try await HTTPClient.shared.execute(request, timeout: .seconds(10))
        let bytes = try await response.body.collect(upTo: 1 << 20)
        return (Int(response.status.code), String(buffer: bytes))
    }

    /// Long polls until the answer holds `needle` (a poll may return a ping or part of what is coming).
    static func poll(_ base: String, sid: String, until needle: String) async throws -> String {
        var seen = ""
        for _ in 0..<20 {
            let answer = try await request("\(base)/socket.io/?EIO=4&transport=polling&sid=\(sid)")
            #expect(answer.status == 200)
            seen += answer.body
            if seen.contains(needle) { return seen }
        }
        Issue.record("no \(needle) in \(seen)")
        return seen
    }

    @Test func aPollingClientConnectsSendsAndGetsItsAckAndEvent() async throws {
        try await Self.withBroker { base, tokens in
            #expect(try await Self.request("\(base)/health").body == #"{"status":"ok"}"#)
            let token = try await tokens.mint(user: "alice", company: "acme", ttl: 600, role: nil)

            let open = try await Self.request("\(base)/socket.io/?EIO=4&transport=polling")
            #expect(open.status == 200 && open.body.hasPrefix("0{"))
            let handshake = try #require(try JSONParser.parse(Array(open.body.utf8.dropFirst())).objectValue)
            let sid = try #require(handshake["sid"]?.stringValue)

            let connect = try await Self.request("\(base)/socket.io/?EIO=4&transport=polling&sid=\(sid)", method: .POST, body: #"40/chat,{"token":"\#(token)"}"#)
            #expect(connect.body == "ok")
            _ = try await Self.poll(base, sid: sid, until: "40/chat,{\"sid\"")

            let created = try await Self.request("\(base)/chat/threads", method: .POST, body: #"{"type":"group","memberIds":["bob"]}"#, token: token)
            #expect(created.status == 201)
            let thread = try #require(try JSONParser.parse(Array(created.body.utf8)).objectValue?["thread"]?.objectValue?["id"]?.stringValue)

            let send = #"42/chat,7["chat:send",{"threadId":"\#(thread)","content":"hello in process"}]"#
            #expect(try await Self.request("\(base)/socket.io/?EIO=4&transport=polling&sid=\(sid)", method: .POST, body: send).body == "ok")
            let answers = try await Self.poll(base, sid: sid, until: "43/chat,7")
            #expect(answers.contains(#"43/chat,7[{"success":true"#))
            #expect(answers.contains(#"["chat:message",{"threadId":"\#(thread)""#))

            // Company isolation holds in process too: another company's token does not see the thread.
            let other = try await tokens.mint(user: "alice", company: "other", ttl: 600, role: nil)
            #expect(try await Self.request("\(base)/chat/threads/\(thread)/messages", token: other).status == 404)
        }
    }

    /// A REST edit of a message in a sealed chunk is charged the chunk's raw bytes in the REST write bucket
    /// (`rewrittenBytesPerWriteToken`), as a socket edit is in the sockets' bucket: editing old messages one after
    /// another runs out of writes long before as many edits in the hot tail would.
    @Test func restEditsOfOldMessagesCostWhatTheirChunksHold() async throws {
        try await Self.withBroker({ c in
            c.broker.chunkSize = 4
            c.broker.hotTail = 4
            c.broker.ratePerSecond = 0.001
            c.broker.rateBurst = 20
            c.broker.rewrittenBytesPerWriteToken = 1024
        }) { base, tokens in
            let token = try await tokens.mint(user: "alice", company: "acme", ttl: 600, role: nil)
            let open = try await Self.request("\(base)/socket.io/?EIO=4&transport=polling")
            let sid = try #require(try JSONParser.parse(Array(open.body.utf8.dropFirst()))["sid"]?.stringValue)
            let session = "\(base)/socket.io/?EIO=4&transport=polling&sid=\(sid)"
            #expect(try await Self.request(session, method: .POST, body: #"40/chat,{"token":"\#(token)"}"#).body == "ok")
            _ = try await Self.poll(base, sid: sid, until: "40/chat,{\"sid\"")
            let created = try await Self.request("\(base)/chat/threads", method: .POST, body: #"{"type":"group","memberIds":["bob"]}"#, token: token)
            let thread = try #require(try JSONParser.parse(Array(created.body.utf8))["thread"]?["id"]?.stringValue)
            let long = String(repeating: "x", count: 2000)
            let sends = (1...12).map { #"42/chat,\#($0)["chat:send",{"threadId":"\#(thread)","content":"\#($0) \#(long)"}]"# }
            #expect(try await Self.request(session, method: .POST, body: sends.joined(separator: "\u{1E}")).body == "ok")
            _ = try await Self.poll(base, sid: sid, until: "43/chat,12[")
            let page = try await Self.request("\(base)/chat/threads/\(thread)/messages?limit=100", token: token)
            let ids = try #require(try JSONParser.parse(Array(page.body.utf8))["messages"]?.arrayValue).compactMap { $0["id"]?.stringValue }
            try #require(ids.count == 12)
            func edit(_ id: String) async throws -> Int {
                try await Self.request("\(base)/chat/messages/\(id)", method: .PATCH, body: #"{"content":"short"}"#, token: token).status
            }
            // 20 REST writes: one edit in the hot tail, then old ones (about 9 KB of chunk each at first) until refused.
            #expect(try await edit(ids[11]) == 200)
            var statuses: [Int] = []
            for id in ids.prefix(8) { statuses.append(try await edit(id)) }
            #expect(statuses.first == 200)
            #expect(statuses.contains(429), "\(statuses): nine edits of one write each would fit in 20")
        }
    }

    @Test func aPacketBeforeConnectIsRefusedAndClosesTheSession() async throws {
        try await Self.withBroker { base, _ in
            let open = try await Self.request("\(base)/socket.io/?EIO=4&transport=polling")
            let sid = try #require(try JSONParser.parse(Array(open.body.utf8.dropFirst())).objectValue?["sid"]?.stringValue)
            // An event before CONNECT is a protocol error: the session ends and its sid is unknown afterwards.
            _ = try await Self.request("\(base)/socket.io/?EIO=4&transport=polling&sid=\(sid)", method: .POST, body: #"42/chat,["chat:send",{}]"#)
            let after = try await Self.request("\(base)/socket.io/?EIO=4&transport=polling&sid=\(sid)")
            #expect(after.status == 400)
        }
    }
}
