import NIOCore
import NIOEmbedded
import NIOHTTP1
import NIOWebSocket
import Synchronization
import Testing
import ChatCore

@testable import ChatServer

/// The guard in front of a WebSocket's frame decoder, called with raw bytes as a socket delivers them: it follows
/// frame boundaries however the bytes are cut, counts a message over its fragments, ignores control frames, and
/// refuses a message over its limit only while the session has no connection, and counts what unfinished messages
/// hold.
struct WebSocketMessageGuardTests {
    /// A masked client frame header (and payload of `payload` bytes, or only the header).
    static func frame(opcode: UInt8, fin: Bool = true, length: Int, payload: Bool = true) -> [UInt8] {
        var bytes: [UInt8] = [(fin ? 0x80 : 0) | opcode]
        if length < 126 {
            bytes.append(0x80 | UInt8(length))
        } else if length < 65_536 {
            bytes += [0x80 | 126, UInt8(length >> 8), UInt8(length & 0xFF)]
        } else {
            bytes.append(0x80 | 127)
            bytes += (0..<8).reversed().map { UInt8((UInt64(length) >> (8 * UInt64($0))) & 0xFF) }
        }
        bytes += [1, 2, 3, 4]
        if payload { bytes += [UInt8](repeating: 0x61, count: length) }
        return bytes
    }

    /// Feeds `bytes` in pieces of `piece` bytes; returns whether the channel is still open and what passed through.
    static func feed(_ bytes: [UInt8], piece: Int, limit: Int = 1_000, connected: Bool = false) throws -> (open: Bool, passed: Int) {
        let channel = EmbeddedChannel(handler: WebSocketMessageGuard(limit: limit) { connected })
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        var passed = 0
        var start = 0
        while start < bytes.count, channel.isActive {
            let end = min(bytes.count, start + piece)
            try channel.writeInbound(ByteBuffer(bytes: bytes[start..<end]))
            while let buffer = try channel.readInbound(as: ByteBuffer.self) { passed += buffer.readableBytes }
            start = end
        }
        return (channel.isActive, passed)
    }

    @Test func messagesWithinTheLimitPassUnchangedHoweverTheBytesAreCut() throws {
        // Whole messages, a fragmented one adding up to the limit, pings in between, a 16-bit length.
        let bytes = Self.frame(opcode: 1, length: 900) + Self.frame(opcode: 9, length: 125)
            + Self.frame(opcode: 1, fin: false, length: 400) + Self.frame(opcode: 9, length: 3) + Self.frame(opcode: 0, fin: false, length: 300)
            + Self.frame(opcode: 0, length: 300) + Self.frame(opcode: 2, length: 1_000)
        for piece in [1, 2, 3, 7, 13, 500, bytes.count] {
            let (open, passed) = try Self.feed(bytes, piece: piece)
            #expect(open && passed == bytes.count, "cut in pieces of \(piece)")
        }
    }

    @Test func aRefusalSaysMessageTooBigInAFrameForTheEncoder() throws {
        let channel = EmbeddedChannel(handler: WebSocketMessageGuard(limit: 1_000) { false })
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        try channel.writeInbound(ByteBuffer(bytes: Self.frame(opcode: 1, length: 5_000, payload: false)))
        let close = try #require(try channel.readOutbound(as: WebSocketFrame.self), "a WebSocketFrame, which the encoder above takes")
        #expect(close.opcode == .connectionClose && Array(buffer: close.data) == [0x03, 0xF1])
        #expect(!channel.isActive)
    }

    @Test func aMessageOverTheLimitIsRefusedAtItsHeaderUnlessConnected() throws {
        for piece in [1, 5, 64] {
            // A 64-bit length, announced only: refused before any of its payload.
            let big = Self.frame(opcode: 1, length: 300_000, payload: false)
            #expect(try Self.feed(big, piece: piece).open == false)
            // Fragments adding up past the limit: the third header is refused.
            let parts = Self.frame(opcode: 1, fin: false, length: 400) + Self.frame(opcode: 0, fin: false, length: 400)
                + Self.frame(opcode: 0, length: 400)
            #expect(try Self.feed(parts, piece: piece).open == false)
            // The same when the session is connected: everything passes.
            #expect(try Self.feed(parts, piece: piece, connected: true) == (true, parts.count))
        }
    }

    /// What a message begun and not yet whole holds, past its first 4 KiB, is counted for its user (or for the
    /// sockets without a connection) once a read ends with it unfinished, and given back as it ends or the socket
    /// closes; a read that would take the user past the bound closes the socket with 1013. (An outside probe had one
    /// user's 256 sockets hold 250 MB in frames all but finished, and tokenless sockets 1.2 GB.)
    @Test func unfinishedMessagesAreCountedForTheirUserAndBounded() throws {
        let holds = HeldMessageBytes(perUser: 30_000, beforeConnect: 20_000)
        let alice = SessionKey(companyId: "co", userId: "alice")
        final class Owner: @unchecked Sendable { var user: SessionKey? }
        let owner = Owner()
        func socket() throws -> EmbeddedChannel {
            let channel = EmbeddedChannel(handler: WebSocketMessageGuard(limit: 1_000_000, holds: holds, owner: { owner.user }) { true })
            try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
            return channel
        }
        let big = Self.frame(opcode: 2, length: 20_000)
        let first = try socket()
        // Before a connection: 12,000 bytes of a 20,008-byte frame, the first 4,096 free.
        try first.writeInbound(ByteBuffer(bytes: big[0..<12_000]))
        #expect(holds.held(by: nil) == 12_000 - 4_096)
        // Connected: what it holds moves to its user, and grows with the message.
        owner.user = alice
        try first.writeInbound(ByteBuffer(bytes: big[12_000..<19_000]))
        #expect(holds.held(by: nil) == 0 && holds.held(by: alice) == 19_000 - 4_096)
        // A second socket of the user past the bound (30,000): closed with 1013, holding nothing.
        let second = try socket()
        try second.writeInbound(ByteBuffer(bytes: big[0..<20_000]))
        #expect(!second.isActive)
        let close = try #require(try second.readOutbound(as: WebSocketFrame.self))
        #expect(Array(buffer: close.data) == [0x03, 0xF5])
        #expect(holds.held(by: alice) == 19_000 - 4_096)
        // The message ends: nothing held; a whole message in one read holds nothing.
        try first.writeInbound(ByteBuffer(bytes: big[19_000...]))
        #expect(holds.held(by: alice) == 0)
        try first.writeInbound(ByteBuffer(bytes: big + Self.frame(opcode: 9, length: 3)))
        #expect(holds.held(by: alice) == 0)
        // A socket that closes with a message unfinished gives it back.
        let third = try socket()
        try third.writeInbound(ByteBuffer(bytes: Self.frame(opcode: 1, fin: false, length: 10_000) + Self.frame(opcode: 0, fin: false, length: 10_000)))
        #expect(holds.held(by: alice) == 20_016 - 4_096)
        _ = try third.finish()
        #expect(holds.held(by: alice) == 0)
    }

    /// With permessage-deflate on, the guard is added behind the upgrade handler before the upgrade: until NIO's
    /// `upgradeComplete` event, whatever passes (the HTTP parts of an upgrade that failed) goes on untouched, whatever
    /// its type; from the event on, frames are judged, and a refusal is written as bytes (the frame encoder is behind
    /// the guard there).
    @Test func behindTheUpgradeHandlerFramesAreJudgedOnlyOnceTheUpgradeCompletes() throws {
        let channel = EmbeddedChannel(handler: WebSocketMessageGuard(limit: 1_000, placement: .awaitingUpgrade) { false })
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        let head = HTTPRequestHead(version: .http1_1, method: .GET, uri: "/socket.io/?EIO=4&transport=websocket")
        try channel.writeInbound(HTTPServerRequestPart.head(head))
        #expect(try channel.readInbound(as: HTTPServerRequestPart.self) == .head(head))
        // Bytes that would be refused after the upgrade pass before it.
        let big = Self.frame(opcode: 1, length: 5_000, payload: false)
        try channel.writeInbound(ByteBuffer(bytes: big))
        #expect(try channel.readInbound(as: ByteBuffer.self)?.readableBytes == big.count)
        channel.pipeline.fireUserInboundEventTriggered(HTTPServerUpgradeEvents.upgradeComplete(toProtocol: "websocket", upgradeRequest: head))
        try channel.writeInbound(ByteBuffer(bytes: Self.frame(opcode: 1, length: 900)))
        #expect(try channel.readInbound(as: ByteBuffer.self) != nil)
        try channel.writeInbound(ByteBuffer(bytes: big))
        #expect(try channel.readInbound(as: ByteBuffer.self) == nil)
        let close = try #require(try channel.readOutbound(as: ByteBuffer.self), "the close frame's bytes")
        #expect(Array(buffer: close) == [0x88, 0x02, 0x03, 0xF1])
        #expect(!channel.isActive)
    }
}
