import HTTPTypes
import NIOCore
import NIOEmbedded
import NIOHTTPTypes
import Testing

@testable import ChatServer

/// The body deadline, driven on an embedded event loop: a request whose body has not ended `timeout` after its head
/// closes the connection, however often parts of it come; a request that ended does not, nor does a later one
/// before its own deadline.
struct RequestBodyDeadlineTests {
    private static let head = HTTPRequestPart.head(HTTPRequest(method: .post, scheme: nil, authority: "x", path: "/socket.io/"))

    private func channel() throws -> EmbeddedChannel {
        let channel = EmbeddedChannel(handler: RequestBodyDeadline(timeout: .seconds(2)))
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        return channel
    }

    @Test func aBodyThatDripsPastTheDeadlineClosesTheConnection() throws {
        let channel = try channel()
        try channel.writeInbound(Self.head)
        for _ in 0..<19 {
            channel.embeddedEventLoop.advanceTime(by: .milliseconds(100))
            try channel.writeInbound(HTTPRequestPart.body(ByteBuffer(string: "x")))
        }
        #expect(channel.isActive, "1.9 s after the head")
        channel.embeddedEventLoop.advanceTime(by: .milliseconds(150))
        #expect(!channel.isActive, "2 s after the head, parts or not")
    }

    @Test func endedRequestsAndALaterOneWithinItsTimeKeepTheConnection() throws {
        let channel = try channel()
        try channel.writeInbound(Self.head)
        try channel.writeInbound(HTTPRequestPart.end(nil))
        channel.embeddedEventLoop.advanceTime(by: .seconds(1))
        // A second request, 1 s later: the timer armed for the first moves on to its deadline.
        try channel.writeInbound(Self.head)
        channel.embeddedEventLoop.advanceTime(by: .milliseconds(1_500))
        #expect(channel.isActive, "1.5 s into the second request")
        try channel.writeInbound(HTTPRequestPart.end(nil))
        channel.embeddedEventLoop.advanceTime(by: .seconds(10))
        #expect(channel.isActive, "every request ended")
        // Everything passed through.
        var parts = 0
        while try channel.readInbound(as: HTTPRequestPart.self) != nil { parts += 1 }
        #expect(parts == 4)
    }
}
