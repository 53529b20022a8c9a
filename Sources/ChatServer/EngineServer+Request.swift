import ChatCore
import ChatJSON
import Foundation
import Prometheus
import HTTPTypes
import Hummingbird
import HummingbirdWebSocket
import Logging
import NIOCore
import NIOPosix
import NIOWebSocket
import ServiceLifecycle
import SocketIOCodec
import Synchronization

/// Request helpers the Engine.IO endpoint and the REST routes share: paths, queries, bearer tokens.
extension EngineServer {
    /// Sends a close frame and closes the connection.
    static func closeWebSocket(_ channel: any Channel) {
        channel.writeAndFlush(WebSocketFrame(fin: true, opcode: .connectionClose, data: ByteBuffer()), promise: nil)
        channel.close(promise: nil)
    }

    /// Sends a close frame behind everything written to the websocket so far, then ends the sending side once that
    /// is written, and closes the socket when the peer closes its side or after `within`. Closing at once would lose
    /// what was just written twice over: NIO drops writes the socket has not taken yet, and a socket closed with
    /// unread input (a client still sending) is reset, which makes the peer's kernel drop what it had not read yet.
    static func closeWebSocketAfterWrites(_ channel: any Channel, within: TimeAmount = .seconds(1)) {
        // Read until the end meanwhile (a read paused by the session's budget or queue included): what comes in is
        // dropped (`WebSocketInbound.receive`), and a socket closed with unread input would be reset.
        channel.setOption(ChannelOptions.autoRead, value: true).whenComplete { _ in }
        channel.writeAndFlush(WebSocketFrame(fin: true, opcode: .connectionClose, data: ByteBuffer())).whenComplete { _ in
            // A channel that cannot end only its output is closed by the timer below.
            channel.close(mode: .output, promise: nil)
        }
        channel.eventLoop.scheduleTask(in: within) { channel.close(promise: nil) }
    }

    /// Whether a request target's path (before any `?`) is the Engine.IO endpoint, `/socket.io` or `/socket.io/`.
    /// Compares bytes, so it is linear and safe on a target nothing has checked yet.
    static func isEnginePath(_ target: String) -> Bool {
        let bytes = target.utf8
        let path = bytes.prefix { $0 != UInt8(ascii: "?") }
        return path.elementsEqual("/socket.io".utf8) || path.elementsEqual("/socket.io/".utf8)
    }

    static func query(of path: String) -> [String: String] {
        // Split on the UTF-8 bytes: splitting the String went by grapheme clusters, about 0.4 µs a byte of query.
        let utf8 = path.utf8
        guard let mark = utf8.firstIndex(of: UInt8(ascii: "?")) else { return [:] }
        var out: [String: String] = [:]
        for pair in utf8[utf8.index(after: mark)...].split(separator: UInt8(ascii: "&")) {
            guard let equals = pair.firstIndex(of: UInt8(ascii: "=")) else {
                out[String(Substring(pair))] = ""
                continue
            }
            guard equals != pair.startIndex else { continue }
            let value = String(Substring(pair[pair.index(after: equals)...]))
            out[String(Substring(pair[..<equals]))] = value.removingPercentEncoding ?? value
        }
        return out
    }

    /// The token of an `Authorization: Bearer` header, or `nil`. A token over `TokenVerifier.maxTokenLength` is cut
    /// to one byte past it: refused as invalid all the same, and a session awaiting its CONNECT keeps no more of a
    /// header that may be many times that.
    static func bearer(_ header: String?) -> String? {
        guard let header else { return nil }
        // By bytes: an 8 KB header value split and trimmed as characters cost about 0.6 ms before any token check (an
        // outside probe). The scheme is compared without case; spaces and tabs around the token are dropped.
        func isBlank(_ byte: UInt8) -> Bool { byte == UInt8(ascii: " ") || byte == UInt8(ascii: "\t") }
        let bytes = header.utf8.drop { $0 == UInt8(ascii: " ") }
        let scheme = "bearer".utf8
        guard bytes.count > scheme.count, zip(bytes, scheme).allSatisfy({ $0 | 0x20 == $1 }),
            bytes.dropFirst(scheme.count).first == UInt8(ascii: " ")
        else { return nil }
        let value = bytes.dropFirst(scheme.count).drop(while: isBlank).prefix(TokenVerifier.maxTokenLength + 1)
        let end = value.lastIndex { !isBlank($0) }.map { value.index(after: $0) } ?? value.startIndex
        return String(decoding: value[..<end], as: UTF8.self)
    }
}
