import ArgumentParser
import ChatJSON
import NIOCore
import NIOHTTP1
import NIOPosix
import NIOWebSocket
import SocketIOCodec

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

struct EchoServerCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "echo-server",
        abstract: "A minimal in-memory broadcast server speaking the same protocol subset, to measure chat-bench's own ceiling.",
        discussion: """
            One event loop (one core), no store, no auth check (the token's `sub` is read, its signature is not), \
            no limits. It answers the Engine.IO handshake, CONNECT on /chat, POST /chat/threads, GET /health and \
            /metrics; a chat:send gets the next seq of its thread, one encoded chat:message frame written to every \
            socket in the thread and an ack. Writes are flushed once per event-loop tick. Never use it for anything \
            but measuring the harness.
            """)

    @Option(help: "Address to listen on (loopback only).")
    var host = "127.0.0.1"

    @Option(help: "Port to listen on.")
    var port = 3900

    @Option(help: "Stop after this many seconds (0: run until killed).")
    var duration = 0.0

    func run() async throws {
        guard host.hasPrefix("127.") else { throw ValidationError("the echo server listens on loopback only") }
        ProcessProbe.raiseFileLimit(to: 200_000)
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let loop = group.next()
        let state = EchoState(loop: loop)
        let channel = try await ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 4096)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.tcpOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let upgrader = NIOWebSocketServerUpgrader(
                        maxFrameSize: 1 << 24, automaticErrorHandling: false,
                        shouldUpgrade: { channel, head in
                            channel.eventLoop.makeSucceededFuture(head.uri.hasPrefix("/socket.io/") ? HTTPHeaders() : nil)
                        },
                        upgradePipelineHandler: { channel, _ in
                            channel.eventLoop.makeCompletedFuture {
                                let ops = channel.pipeline.syncOperations
                                ops.removeHandler(name: EchoHTTPHandler.name).whenFailure { _ in }
                                // Frames go out pre-encoded (one buffer shared by every recipient), written from the
                                // head end of the pipeline so they skip the frame encoder.
                                let raw = RawWriter()
                                try ops.addHandler(raw, position: .first)
                                try ops.addHandler(EchoSocketHandler(state: state, raw: raw))
                            }
                        })
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline(
                        withServerUpgrade: (upgraders: [upgrader], completionHandler: { _ in }))
                    try channel.pipeline.syncOperations.addHandler(EchoHTTPHandler(state: state), name: EchoHTTPHandler.name)
                }
            }
            .bind(host: host, port: port).get()
        writeStderr("echo-server listening on \(host):\(port) (pid \(getpid()))\n")
        if duration > 0 {
            try await Task.sleep(nanoseconds: UInt64(duration * 1e9))
        } else {
            while true { try await Task.sleep(nanoseconds: 3_600_000_000_000) }
        }
        try await channel.close()
        try await group.shutdownGracefully()
    }
}

/// Gives access to the head end of a pipeline: bytes written through its context reach the socket directly.
final class RawWriter: ChannelOutboundHandler {
    typealias OutboundIn = ByteBuffer
    var context: ChannelHandlerContext?

    func handlerAdded(context: ChannelHandlerContext) { self.context = context }
    func handlerRemoved(context: ChannelHandlerContext) { self.context = nil }
}

/// One WebSocket of the echo server.
final class EchoConnection {
    let raw: RawWriter
    let allocator: ByteBufferAllocator
    var user: String?
    var dirty = false

    init(raw: RawWriter, allocator: ByteBufferAllocator) {
        self.raw = raw
        self.allocator = allocator
    }
}

/// The echo server's whole state, confined to its single event loop.
final class EchoState: @unchecked Sendable {
    struct Room {
        var id: String
        var seq = 0
        var members: Set<String>
        var connections: [ObjectIdentifier: EchoConnection] = [:]
    }

    let loop: any EventLoop
    var rooms: [Room] = []
    var roomIndex: [String: Int] = [:]
    var userRooms: [String: [Int]] = [:]
    var userConnections: [String: [ObjectIdentifier: EchoConnection]] = [:]
    var dirty: [EchoConnection] = []
    var flushScheduled = false
    var nextSid = 0

    init(loop: any EventLoop) { self.loop = loop }

    func createRoom(name: String?, members: [String]) -> JSONValue {
        let id = "echo-\(rooms.count + 1)"
        var room = Room(id: id, members: Set(members))
        for user in members {
            userRooms[user, default: []].append(rooms.count)
            for (key, conn) in userConnections[user] ?? [:] { room.connections[key] = conn }
        }
        roomIndex[id] = rooms.count
        rooms.append(room)
        return .object([
            "id": .string(id), "name": .optional(name), "type": .string("group"),
            "members": .array(members.map { .string($0) }), "lastSeq": .int(0),
        ])
    }

    func join(_ conn: EchoConnection, user: String) {
        conn.user = user
        let key = ObjectIdentifier(conn)
        userConnections[user, default: [:]][key] = conn
        for r in userRooms[user] ?? [] { rooms[r].connections[key] = conn }
    }

    func leave(_ conn: EchoConnection) {
        guard let user = conn.user else { return }
        let key = ObjectIdentifier(conn)
        userConnections[user]?[key] = nil
        for r in userRooms[user] ?? [] { rooms[r].connections[key] = nil }
    }

    /// An unmasked WebSocket frame around `payload`: encoded once, written to every recipient as is.
    static func frame(_ payload: [UInt8], allocator: ByteBufferAllocator, opcode: UInt8 = 0x1) -> ByteBuffer {
        var buffer = allocator.buffer(capacity: payload.count + 10)
        buffer.writeInteger(UInt8(0x80 | opcode))
        if payload.count < 126 {
            buffer.writeInteger(UInt8(payload.count))
        } else if payload.count <= 0xFFFF {
            buffer.writeInteger(UInt8(126))
            buffer.writeInteger(UInt16(payload.count))
        } else {
            buffer.writeInteger(UInt8(127))
            buffer.writeInteger(UInt64(payload.count))
        }
        buffer.writeBytes(payload)
        return buffer
    }

    /// Writes an encoded frame and flushes every written connection once, after everything read in this loop tick.
    func write(_ conn: EchoConnection, _ buffer: ByteBuffer) {
        conn.raw.context?.write(NIOAny(buffer), promise: nil)
        if !conn.dirty {
            conn.dirty = true
            dirty.append(conn)
        }
        if !flushScheduled {
            flushScheduled = true
            loop.execute { [self] in
                flushScheduled = false
                for c in dirty {
                    c.dirty = false
                    c.raw.context?.flush()
                }
                dirty.removeAll(keepingCapacity: true)
            }
        }
    }

    func text(_ conn: EchoConnection, _ bytes: [UInt8]) {
        write(conn, Self.frame(bytes, allocator: conn.allocator))
    }

    func send(from conn: EchoConnection, ackId: Int?, data: JSONValue?) {
        guard let user = conn.user, let tid = data?["threadId"]?.stringValue, let r = roomIndex[tid],
            rooms[r].members.contains(user)
        else {
            if let ackId { ack(conn, ackId, .object(["success": .bool(false), "code": .string("not_found"), "error": .string("unknown thread")])) }
            return
        }
        rooms[r].seq += 1
        let seq = rooms[r].seq
        let tempId = data?["tempId"] ?? .null
        let message: JSONValue = .object([
            "id": .string("\(tid)-\(seq)"), "threadId": .string(tid), "seq": .int(seq), "senderId": .string(user),
            "type": .string("Text"), "content": data?["content"] ?? .string(""), "attachmentUrl": .null,
            "attachmentType": .null, "createdAt": .string(isoNow()), "editedAt": .null, "deletedAt": .null,
            "tempId": tempId,
        ])
        var frame = Array("42/chat,".utf8)
        JSONWriter.write(.array([.string("chat:message"), .object(["threadId": .string(tid), "message": message, "tempId": tempId])]), to: &frame)
        let buffer = Self.frame(frame, allocator: conn.allocator)
        for c in rooms[r].connections.values { write(c, buffer) }
        if let ackId { ack(conn, ackId, .object(["success": .bool(true), "message": message])) }
    }

    func ack(_ conn: EchoConnection, _ id: Int, _ value: JSONValue) {
        text(conn, [EnginePacketType.message.rawValue] + SocketCodec.encode(SocketPacket(type: .ack, namespace: "/chat", ackId: id, data: .array([value]))))
    }

    private var isoSecond = 0
    private var isoPrefix = ""

    /// `YYYY-MM-DDTHH:MM:SS.mmmZ`, formatted once per second.
    func isoNow() -> String {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        if ts.tv_sec != isoSecond {
            isoSecond = ts.tv_sec
            var t = ts.tv_sec
            var tmv = tm()
            gmtime_r(&t, &tmv)
            func pad(_ v: Int32, _ n: Int) -> String {
                let s = String(v)
                return String(repeating: "0", count: max(0, n - s.count)) + s
            }
            isoPrefix = "\(pad(tmv.tm_year + 1900, 4))-\(pad(tmv.tm_mon + 1, 2))-\(pad(tmv.tm_mday, 2))T\(pad(tmv.tm_hour, 2)):\(pad(tmv.tm_min, 2)):\(pad(tmv.tm_sec, 2))."
        }
        let ms = Int32(ts.tv_nsec / 1_000_000)
        return isoPrefix + (ms < 10 ? "00" : ms < 100 ? "0" : "") + String(ms) + "Z"
    }

    /// The `sub` claim of a JWT, read without checking the signature (the echo server is a measuring stub).
    static func subject(ofToken token: String) -> String? {
        let parts = token.split(separator: ".")
        guard parts.count == 3 else { return nil }
        var bytes: [UInt8] = []
        var acc: UInt32 = 0
        var bits = 0
        for c in parts[1].utf8 {
            let v: UInt32
            switch c {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"): v = UInt32(c - 65)
            case UInt8(ascii: "a")...UInt8(ascii: "z"): v = UInt32(c - 97 + 26)
            case UInt8(ascii: "0")...UInt8(ascii: "9"): v = UInt32(c - 48 + 52)
            case UInt8(ascii: "-"), UInt8(ascii: "+"): v = 62
            case UInt8(ascii: "_"), UInt8(ascii: "/"): v = 63
            default: continue
            }
            acc = acc << 6 | v
            bits += 6
            if bits >= 8 {
                bits -= 8
                bytes.append(UInt8((acc >> UInt32(bits)) & 0xFF))
            }
        }
        return (try? JSONParser.parse(bytes))?["sub"]?.stringValue
    }
}

/// The echo server's Engine.IO/Socket.IO endpoint.
final class EchoSocketHandler: ChannelInboundHandler {
    typealias InboundIn = WebSocketFrame

    let state: EchoState
    let raw: RawWriter
    var conn: EchoConnection?

    init(state: EchoState, raw: RawWriter) {
        self.state = state
        self.raw = raw
    }

    func handlerAdded(context: ChannelHandlerContext) {
        let conn = EchoConnection(raw: raw, allocator: context.channel.allocator)
        self.conn = conn
        state.nextSid += 1
        state.text(conn, Array(#"0{"sid":"e\#(state.nextSid)","upgrades":[],"pingInterval":25000,"pingTimeout":60000,"maxPayload":16777216}"#.utf8))
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        guard let conn else { return }
        switch frame.opcode {
        case .text:
            var data = frame.unmaskedData
            guard let bytes = data.readBytes(length: data.readableBytes), bytes.count >= 2, bytes[0] == UInt8(ascii: "4") else { return }
            guard let packet = try? SocketCodec.decode(Array(bytes.dropFirst())), packet.namespace == "/chat" else { return }
            switch packet.type {
            case .connect:
                guard let token = packet.data?["token"]?.stringValue, let user = EchoState.subject(ofToken: token) else {
                    state.text(conn, Array(#"44/chat,{"message":"invalid token"}"#.utf8))
                    return
                }
                state.join(conn, user: user)
                state.text(conn, Array(#"40/chat,{"sid":"s\#(ObjectIdentifier(conn).hashValue & 0xFFFFFF)"}"#.utf8))
            case .event:
                guard let (name, arg) = packet.event else { return }
                if name == "chat:send" {
                    state.send(from: conn, ackId: packet.ackId, data: arg)
                } else if let id = packet.ackId {
                    state.ack(conn, id, name == "chat:sync" ? .object(["success": .bool(true), "threads": .array([])]) : .object(["success": .bool(true)]))
                }
            default:
                break
            }
        case .connectionClose:
            context.close(promise: nil)
        case .ping:
            var data = frame.unmaskedData
            let payload = data.readBytes(length: data.readableBytes) ?? []
            state.write(conn, EchoState.frame(payload, allocator: conn.allocator, opcode: 0xA))
        default:
            break
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        if let conn { state.leave(conn) }
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}

/// The echo server's REST subset: `POST /chat/threads`, `GET /health`, `GET /metrics`.
final class EchoHTTPHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart
    static let name = "echo-http"

    let state: EchoState
    private var head: HTTPRequestHead?
    private var body: [UInt8] = []

    init(state: EchoState) { self.state = state }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let h):
            head = h
            body = []
        case .body(var chunk):
            body += chunk.readBytes(length: chunk.readableBytes) ?? []
        case .end:
            guard let head else { return }
            self.head = nil
            respond(context: context, head: head)
        }
    }

    private func respond(context: ChannelHandlerContext, head: HTTPRequestHead) {
        var status: HTTPResponseStatus = .notFound
        var answer: JSONValue = .object(["code": .string("not_found"), "error": .string("unknown route")])
        var text: String?
        let path = head.uri.split(separator: "?").first.map(String.init) ?? head.uri
        switch (head.method, path) {
        case (.GET, "/health"):
            status = .ok
            answer = .object(["status": .string("ok")])
        case (.GET, "/metrics"):
            status = .ok
            text = "# chat-bench echo server\nchat_connections \(state.userConnections.values.reduce(0) { $0 + $1.count })\n"
        case (.POST, "/chat/threads"):
            let bearer = head.headers["authorization"].first.map { String($0.dropFirst("Bearer ".count)) } ?? ""
            guard let user = EchoState.subject(ofToken: bearer) else {
                status = .unauthorized
                answer = .object(["code": .string("unauthenticated"), "error": .string("invalid token")])
                break
            }
            let json = try? JSONParser.parse(body)
            var members = [user]
            for m in json?["memberIds"]?.arrayValue ?? [] {
                if let id = m.stringValue, !members.contains(id) { members.append(id) }
            }
            status = .created
            answer = .object(["thread": state.createRoom(name: json?["name"]?.stringValue, members: members)])
        default:
            break
        }
        let bytes = text.map { Array($0.utf8) } ?? JSONWriter.encode(answer)
        var headers = HTTPHeaders()
        headers.add(name: "Content-Type", value: text == nil ? "application/json" : "text/plain")
        headers.add(name: "Content-Length", value: String(bytes.count))
        headers.add(name: "Connection", value: "close")
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: head.version, status: status, headers: headers))), promise: nil)
        var buffer = context.channel.allocator.buffer(capacity: bytes.count)
        buffer.writeBytes(bytes)
        context.write(wrapOutboundOut(.body(.byteBuffer(buffer))), promise: nil)
        let channel = context.channel
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in channel.close(promise: nil) }
    }
}
