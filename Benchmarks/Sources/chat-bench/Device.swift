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

/// One sending role: a thread this device posts to, with its pre-encoded event body. Confined to its device's loop.
final class Sender: @unchecked Sendable {
    let id: Int
    /// Index into the device's `streams`.
    let stream: Int
    let thread: Int
    /// `["chat:send",{"threadId":"…","content":"…","tempId":"` — encoded once; each send appends only its `tempId`.
    private(set) var body: [UInt8]
    var counter: UInt64 = 0
    /// Where the content is in `body`, when every send gets new pseudo-random content.
    private let randomContent: Range<Int>?
    private var seed: UInt64
    var inflight = 0
    var nextDue: UInt64 = 0
    var timer: Scheduled<Void>?

    init(id: Int, stream: Int, thread: Int, threadId: String, contentBytes: Int, randomContent: Bool = false) {
        self.id = id
        self.stream = stream
        self.thread = thread
        var body = Array(#"["chat:send",{"threadId":"#.utf8)
        JSONWriter.writeString(threadId, to: &body)
        body += Array(#","content":""#.utf8)
        // Printable filler; the send time travels in the tempId, so content is pure payload.
        let start = body.count
        for i in 0..<max(contentBytes, 1) { body.append(Self.filler[i % Self.filler.count]) }
        self.randomContent = randomContent ? start..<body.count : nil
        body += Array(#"","tempId":""#.utf8)
        self.body = body
        seed = 0x9E37_79B9_7F4A_7C15 &* UInt64(id + 1)
    }

    private static let filler = Array("abcdefghijklmnopqrstuvwxyz0123456789 ".utf8)

    /// Gives the next send new content (xorshift64 over the filler's characters), when asked for.
    func refreshContent() {
        guard let range = randomContent else { return }
        for i in range {
            seed ^= seed << 13
            seed ^= seed >> 7
            seed ^= seed << 17
            body[i] = Self.filler[Int(seed % UInt64(Self.filler.count))]
        }
    }
}

/// One simulated socket (a user's device). It lives on one event loop (`ctx.loop`) and is only touched there; it
/// survives reconnects (each connection attempt gets a new `generation`).
final class Device: @unchecked Sendable {
    enum State { case idle, connecting, ready, closed }

    enum PendingKind {
        case send(Sender)
        case sync
    }

    struct Pending {
        var kind: PendingKind
        var sentAt: UInt64
    }

    let index: Int
    let userId: String
    let token: String
    let ctx: LoopContext
    /// Streams (one per thread of this user), in the order of `threads`.
    var streams: [StreamState]
    var senders: [Sender] = []
    /// Excluded from completeness checks (a deliberately slow consumer, once it stops reading).
    var excluded = false
    /// Its deliveries count in the latency histograms (not for consumers chosen to be slow, in any phase).
    var measured = true
    /// Dropped on purpose (the reconnect scenario): its close is not an error.
    var dropping = false

    var channel: (any Channel)?
    var state: State = .idle
    var generation = 0
    var connectPromise: EventLoopPromise<Void>?
    var lastError: String?
    var pending: [Int: Pending] = [:]
    var pendingSendAcks = 0
    var nextAckId = 1
    var needsFlush = false

    // Reconnect / catch-up state.
    var syncing = false
    var liveBuffer: [(stream: Int, seq: Int)] = []
    var reconnectStartedAt: UInt64 = 0
    var syncStartedAt: UInt64 = 0

    init(index: Int, userId: String, token: String, ctx: LoopContext, threads: [Int]) {
        self.index = index
        self.userId = userId
        self.token = token
        self.ctx = ctx
        streams = threads.map { StreamState(thread: $0, lastSeq: ctx.directory.baseSeq[$0]) }
    }

    @inline(__always)
    func streamIndex(thread: Int) -> Int? {
        for i in streams.indices where streams[i].thread == thread { return i }
        return nil
    }

    // MARK: Connecting

    /// Opens a WebSocket to the broker, completes the Engine.IO handshake and the `/chat` CONNECT. Must run on
    /// `ctx.loop`. The future succeeds once the namespace CONNECT is acknowledged.
    func connect() -> EventLoopFuture<Void> {
        ctx.loop.preconditionInEventLoop()
        generation += 1
        let gen = generation
        let promise = ctx.loop.makePromise(of: Void.self)
        connectPromise = promise
        state = .connecting
        lastError = nil
        let config = ctx.config
        let target = config.targets[index % config.targets.count]
        var bootstrap = ClientBootstrap(group: ctx.loop)
            .connectTimeout(config.handshakeTimeout)
            .channelOption(.tcpOption(.tcp_nodelay), value: 1)
        if !config.sourceAddresses.isEmpty {
            // Let the kernel pick the port at connect time (IP_BIND_ADDRESS_NO_PORT), per source address.
            bootstrap = bootstrap
                .channelOption(ChannelOptions.Types.SocketOption(level: SocketOptionLevel(IPPROTO_IP), name: SocketOptionName(24)), value: 1)
                .bind(to: config.sourceAddresses[index % config.sourceAddresses.count])
        }
        bootstrap = bootstrap.channelInitializer { [self] channel in
            channel.eventLoop.makeCompletedFuture {
                guard gen == self.generation else { throw BenchError("superseded") }
                self.channel = channel
                let upgrader = NIOWebSocketClientUpgrader(maxFrameSize: config.maxFrameSize, automaticErrorHandling: false) { channel, _ in
                    channel.eventLoop.makeCompletedFuture {
                        channel.pipeline.syncOperations.removeHandler(name: UpgradeRequestHandler.name).whenFailure { _ in }
                        try channel.pipeline.syncOperations.addHandler(DeviceHandler(device: self, generation: gen))
                    }
                }
                try channel.pipeline.syncOperations.addHTTPClientHandlers(
                    leftOverBytesStrategy: .forwardBytes,
                    withClientUpgrade: (upgraders: [upgrader], completionHandler: { _ in }))
                try channel.pipeline.syncOperations.addHandler(
                    UpgradeRequestHandler(device: self, generation: gen, host: "\(target.endpoint.host):\(target.endpoint.port)"),
                    name: UpgradeRequestHandler.name)
            }
        }
        bootstrap.connect(to: target.address).whenFailure { [self] error in
            failConnect(generation: gen, "connect: \(error)")
        }
        ctx.loop.scheduleTask(in: config.handshakeTimeout) { [self] in
            guard gen == generation, state == .connecting else { return }
            failConnect(generation: gen, "handshake timed out")
            channel?.close(promise: nil)
        }
        return promise.futureResult
    }

    func failConnect(generation gen: Int, _ reason: String) {
        guard gen == generation else { return }
        lastError = lastError ?? reason
        if state == .connecting { state = .closed }
        if let p = connectPromise {
            connectPromise = nil
            p.fail(BenchError(lastError ?? reason))
        }
    }

    func channelClosed(generation gen: Int) {
        guard gen == generation else { return }
        if state == .ready && !dropping && !excluded { ctx.stats.unexpectedCloses += 1 }
        state = .closed
        failConnect(generation: gen, lastError ?? "connection closed during the handshake")
        ctx.stats.lostAcks += pendingSendAcks
        for sender in senders { sender.inflight = 0 }
        pending.removeAll()
        pendingSendAcks = 0
        channel = nil
    }

    /// Stops reading from the socket (a slow consumer): the broker's queue for it fills up.
    func stopReading() {
        excluded = true
        _ = channel?.setOption(ChannelOptions.autoRead, value: false)
    }

    /// Closes the connection on purpose.
    func drop() {
        dropping = true
        channel?.close(promise: nil)
    }

    // MARK: Writing

    @inline(__always)
    func write(_ buffer: ByteBuffer) {
        guard let channel else { return }
        channel.write(WebSocketFrame(fin: true, opcode: .text, maskKey: ctx.masks.next(), data: buffer), promise: nil)
        needsFlush = true
    }

    /// A buffer with room for the frame header in front, so the encoder writes the header in place.
    @inline(__always)
    func makeBuffer(capacity: Int) -> ByteBuffer {
        var buffer = (channel?.allocator ?? ByteBufferAllocator()).buffer(capacity: capacity + 14)
        buffer.moveWriterIndex(forwardBy: 14)
        buffer.moveReaderIndex(forwardBy: 14)
        return buffer
    }

    func writeText(_ bytes: [UInt8]) {
        var buffer = makeBuffer(capacity: bytes.count)
        buffer.writeBytes(bytes)
        write(buffer)
    }

    func flushIfNeeded() {
        if needsFlush {
            needsFlush = false
            channel?.flush()
        }
    }

    static let eventPrefix: [UInt8] = Array("42/chat,".utf8)
    static let sendSuffix: [UInt8] = Array(#""}]"#.utf8)

    /// Sends one `chat:send` with an ack id; its `tempId` carries the send time for latency.
    func sendChat(_ sender: Sender, now: UInt64) {
        guard state == .ready else { return }
        let ackId = nextAckId
        nextAckId += 1
        sender.counter += 1
        sender.refreshContent()
        var buffer = makeBuffer(capacity: Self.eventPrefix.count + 12 + sender.body.count + 48)
        buffer.writeBytes(Self.eventPrefix)
        buffer.writeDecimal(UInt64(ackId))
        buffer.writeBytes(sender.body)
        buffer.writeDecimal(now)
        buffer.writeInteger(UInt8(ascii: "."))
        buffer.writeDecimal(UInt64(sender.id))
        buffer.writeInteger(UInt8(ascii: "."))
        buffer.writeDecimal(sender.counter)
        buffer.writeBytes(Self.sendSuffix)
        pending[ackId] = Pending(kind: .send(sender), sentAt: now)
        pendingSendAcks += 1
        sender.inflight += 1
        ctx.stats.sent += 1
        write(buffer)
    }

    /// Open loop: arms the sender's timer for its next due time.
    func schedule(_ sender: Sender) {
        guard ctx.running else { return }
        sender.timer = ctx.loop.scheduleTask(deadline: .uptimeNanoseconds(sender.nextDue)) { [self] in
            fire(sender)
        }
    }

    private func fire(_ sender: Sender) {
        sender.timer = nil
        guard ctx.running, case .open(let interval) = ctx.mode else { return }
        let now = monotonicNanos()
        var sentNow = 0
        // Catch up on every send that is due (a late timer never lowers the offered rate), at most 1,000 at once.
        while sender.nextDue <= now + 20_000, sentNow < 1000 {
            if now > sender.nextDue { ctx.stats.maxSendLagNanos = max(ctx.stats.maxSendLagNanos, now - sender.nextDue) }
            sendChat(sender, now: now)
            sender.nextDue += interval
            sentNow += 1
        }
        flushIfNeeded()
        schedule(sender)
    }

    /// Asks for everything after the last seq seen on each of `streamIndices` (`chat:sync`).
    func sendSync(_ streamIndices: [Int]) {
        let ackId = nextAckId
        nextAckId += 1
        var threads: [JSONValue] = []
        for s in streamIndices {
            threads.append(.object([
                "threadId": .string(ctx.directory.ids[streams[s].thread]),
                "afterSeq": .int(streams[s].lastSeq),
            ]))
        }
        var bytes = Self.eventPrefix
        bytes += Array(String(ackId).utf8)
        JSONWriter.write(.array([.string("chat:sync"), .object(["threads": .array(threads)])]), to: &bytes)
        pending[ackId] = Pending(kind: .sync, sentAt: monotonicNanos())
        writeText(bytes)
    }

    // MARK: Reading

    /// One Engine.IO text packet from the server.
    func receive(_ p: UnsafeRawBufferPointer) {
        guard let type = p.first else { return }
        switch type {
        case UInt8(ascii: "4"): receiveSocketIO(p)
        case UInt8(ascii: "2"):  // ping → pong (echoing a probe payload if any)
            var pong: [UInt8] = [UInt8(ascii: "3")]
            pong.append(contentsOf: p.dropFirst())
            writeText(pong)
        case UInt8(ascii: "0"):  // open → CONNECT to /chat with the token
            var connect = Array("40/chat,".utf8)
            JSONWriter.write(.object(["token": .string(token)]), to: &connect)
            writeText(connect)
            flushIfNeeded()
        case UInt8(ascii: "1"):
            channel?.close(promise: nil)
        default:
            break
        }
    }

    private func receiveSocketIO(_ p: UnsafeRawBufferPointer) {
        guard p.count >= 2 else { return }
        let onChat = Scan.hasPrefix(Scan.chatNamespace, in: p, at: 2)
        let body = onChat ? 2 + Scan.chatNamespace.count : 2
        switch p[1] {
        case UInt8(ascii: "2"):
            if onChat, Scan.hasPrefix(Scan.chatMessageEvent, in: p, at: body), fastMessage(p, from: body + Scan.chatMessageEvent.count) {
                return
            }
            slowEvent(p)
        case UInt8(ascii: "3"):
            guard onChat, let (ackId, end) = Scan.integer(in: p, at: body), let entry = pending.removeValue(forKey: ackId) else {
                ctx.stats.unknownAcks += 1
                return
            }
            switch entry.kind {
            case .send(let sender): sendAcked(sender, sentAt: entry.sentAt, p, from: end)
            case .sync: syncAnswered(p, sentAt: entry.sentAt)
            }
        case UInt8(ascii: "0"):
            guard onChat, state == .connecting else { return }
            state = .ready
            if let promise = connectPromise {
                connectPromise = nil
                promise.succeed()
            }
        case UInt8(ascii: "4"):
            let packet = try? SocketCodec.decode(Array(p.dropFirst()))
            lastError = "CONNECT_ERROR: \(packet?.data?["message"]?.stringValue ?? String(decoding: p, as: UTF8.self))"
            failConnect(generation: generation, lastError!)
            channel?.close(promise: nil)
        case UInt8(ascii: "1"):
            channel?.close(promise: nil)
        default:
            break
        }
    }

    /// `{"threadId":"…","message":{…,"seq":N,…,"tempId":"<sentAt>.<sender>.<n>"},…}` without a JSON tree.
    @inline(__always)
    private func fastMessage(_ p: UnsafeRawBufferPointer, from: Int) -> Bool {
        guard let idStart = Scan.after(Scan.threadIdKey, in: p, from: from), let idEnd = Scan.quote(in: p, from: idStart),
            let seqAt = Scan.after(Scan.seqKey, in: p, from: idEnd), let (seq, seqEnd) = Scan.integer(in: p, at: seqAt)
        else { return false }
        guard let thread = ctx.directory.lookup(UnsafeRawBufferPointer(rebasing: p[idStart..<idEnd])) else {
            ctx.stats.foreignEvents += 1
            return true
        }
        var sentAt: UInt64 = 0
        if let t = Scan.after(Scan.tempIdKey, in: p, from: seqEnd), let (v, end) = Scan.integer(in: p, at: t), end < p.count,
            p[end] == UInt8(ascii: ".")
        {
            sentAt = UInt64(v)
        }
        delivered(thread: thread, seq: seq, sentAt: sentAt, live: true)
        return true
    }

    /// Any other event, decoded the slow way.
    private func slowEvent(_ p: UnsafeRawBufferPointer) {
        guard let packet = try? SocketCodec.decode(Array(p.dropFirst())), let (name, arg) = packet.event else {
            ctx.stats.otherEvents += 1
            return
        }
        if name == "chat:message", let arg, let tid = arg["threadId"]?.stringValue, let seq = arg["message"]?["seq"]?.intValue {
            guard let thread = ctx.directory.index(of: tid) else {
                ctx.stats.foreignEvents += 1
                return
            }
            let tempId = arg["message"]?["tempId"]?.stringValue ?? arg["tempId"]?.stringValue ?? ""
            let sentAt = tempId.split(separator: ".").first.flatMap { UInt64($0) } ?? 0
            delivered(thread: thread, seq: seq, sentAt: sentAt, live: true)
        } else {
            ctx.stats.otherEvents += 1
        }
    }

    @inline(__always)
    private func delivered(thread: Int, seq: Int, sentAt: UInt64, live: Bool) {
        ctx.noteSeq(thread: thread, seq: seq)
        guard let s = streamIndex(thread: thread) else {
            ctx.stats.foreignEvents += 1
            return
        }
        if live {
            ctx.stats.deliveries += 1
            ctx.stats.deliveriesByPhase[ctx.phase] += 1
            if sentAt > 0, measured {
                let now = monotonicNanos()
                if now > sentAt {
                    ctx.stats.latency[ctx.phase].recordMicros((now - sentAt) / 1000)
                    ctx.stats.interval.recordMicros((now - sentAt) / 1000)
                }
            }
            if syncing {
                liveBuffer.append((s, seq))
                return
            }
        } else {
            ctx.stats.syncEvents += 1
        }
        apply(stream: s, seq: seq)
    }

    @inline(__always)
    private func apply(stream s: Int, seq: Int) {
        switch streams[s].accept(seq) {
        case .next: break
        case .gap: ctx.stats.gapJumps += 1
        case .reordered: ctx.stats.reordered += 1
        case .duplicate: ctx.stats.duplicates += 1
        case .overlap: ctx.stats.overlaps += 1
        }
    }

    private func sendAcked(_ sender: Sender, sentAt: UInt64, _ p: UnsafeRawBufferPointer, from: Int) {
        pendingSendAcks -= 1
        sender.inflight -= 1
        let now = monotonicNanos()
        var ok = false
        if let at = Scan.after(Scan.successTrue, in: p, from: from), at - from < 64 {
            ok = true
            if let seqAt = Scan.after(Scan.seqKey, in: p, from: at), let (seq, _) = Scan.integer(in: p, at: seqAt) {
                ctx.noteSeq(thread: sender.thread, seq: seq)
            }
        } else if let packet = try? SocketCodec.decode(Array(p.dropFirst())), let answer = packet.data?.arrayValue?.first {
            if answer["success"]?.boolValue == true {
                ok = true
                if let seq = answer["message"]?["seq"]?.intValue { ctx.noteSeq(thread: sender.thread, seq: seq) }
            } else {
                ctx.stats.failures[answer["code"]?.stringValue ?? "unknown", default: 0] += 1
            }
        } else {
            ctx.stats.failures["malformed ack", default: 0] += 1
        }
        if ok {
            ctx.stats.acked += 1
            ctx.stats.ackLatency.recordMicros((now &- sentAt) / 1000)
        }
        if ctx.running, case .closed = ctx.mode {
            if ok {
                sendChat(sender, now: now)
            } else {
                // Refused (e.g. rate limited): back off briefly instead of spinning.
                ctx.loop.scheduleTask(in: .milliseconds(10)) { [self] in
                    guard ctx.running else { return }
                    sendChat(sender, now: monotonicNanos())
                    flushIfNeeded()
                }
            }
        }
    }

    // MARK: Catch-up after a reconnect

    /// Starts catching up: live events are held back until `chat:sync` has filled the gap.
    func beginSync() {
        syncing = true
        syncStartedAt = monotonicNanos()
        liveBuffer.removeAll(keepingCapacity: true)
        sendSync(Array(streams.indices))
        flushIfNeeded()
    }

    private func syncAnswered(_ p: UnsafeRawBufferPointer, sentAt: UInt64) {
        guard let packet = try? SocketCodec.decode(Array(p.dropFirst())), let answer = packet.data?.arrayValue?.first,
            answer["success"]?.boolValue == true, let threads = answer["threads"]?.arrayValue
        else {
            ctx.stats.syncErrors += 1
            finishSync()
            return
        }
        var again: [Int] = []
        for entry in threads {
            guard let tid = entry["threadId"]?.stringValue, let thread = ctx.directory.index(of: tid),
                let s = streamIndex(thread: thread)
            else { continue }
            guard let events = entry["events"]?.arrayValue else {
                ctx.stats.syncErrors += 1
                continue
            }
            for event in events {
                let data = event["data"]
                guard let seq = data?["message"]?["seq"]?.intValue ?? data?["seq"]?.intValue else { continue }
                delivered(thread: thread, seq: seq, sentAt: 0, live: false)
            }
            if entry["hasMore"]?.boolValue == true { again.append(s) }
        }
        if again.isEmpty {
            finishSync()
        } else {
            sendSync(again)
        }
    }

    private func finishSync() {
        let now = monotonicNanos()
        syncing = false
        // Live events that arrived while the sync was in flight and that the sync already covered are the expected
        // overlap (a client dedupes them by seq); the rest continue the stream.
        for s in streams.indices { streams[s].overlapUpTo = streams[s].lastSeq }
        for (s, seq) in liveBuffer { apply(stream: s, seq: seq) }
        liveBuffer.removeAll(keepingCapacity: true)
        ctx.stats.syncTime.recordMicros((now - syncStartedAt) / 1000)
        if reconnectStartedAt > 0 { ctx.stats.catchUp.recordMicros((now - reconnectStartedAt) / 1000) }
        reconnectStartedAt = 0
    }
}

/// Sends the WebSocket upgrade request (the upgrader adds its headers) and reports a refused upgrade.
final class UpgradeRequestHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPClientResponsePart
    typealias OutboundOut = HTTPClientRequestPart
    static let name = "chat-bench-upgrade-request"

    let device: Device
    let generation: Int
    let host: String

    init(device: Device, generation: Int, host: String) {
        self.device = device
        self.generation = generation
        self.host = host
    }

    func channelActive(context: ChannelHandlerContext) {
        var headers = HTTPHeaders()
        headers.add(name: "Host", value: host)
        headers.add(name: "Content-Length", value: "0")
        let head = HTTPRequestHead(version: .http1_1, method: .GET, uri: "/socket.io/?EIO=4&transport=websocket", headers: headers)
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if case .head(let head) = unwrapInboundIn(data) {
            device.failConnect(generation: generation, "upgrade refused: HTTP \(head.status.code)")
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        device.channelClosed(generation: generation)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        device.failConnect(generation: generation, "upgrade: \(error)")
        context.close(promise: nil)
    }
}

/// The WebSocket end of a device: reassembles fragmented text messages, answers WebSocket pings and closes, and
/// hands each Engine.IO packet to the device. Flushes once per read burst.
final class DeviceHandler: ChannelInboundHandler {
    typealias InboundIn = WebSocketFrame
    typealias OutboundOut = WebSocketFrame

    let device: Device
    let generation: Int
    private var fragments: ByteBuffer?

    init(device: Device, generation: Int) {
        self.device = device
        self.generation = generation
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let frame = unwrapInboundIn(data)
        switch frame.opcode {
        case .text:
            if frame.fin {
                frame.data.withUnsafeReadableBytes { device.receive($0) }
            } else {
                fragments = frame.data
            }
        case .continuation:
            guard var buffer = fragments else { return }
            var part = frame.data
            buffer.writeBuffer(&part)
            if frame.fin {
                fragments = nil
                buffer.withUnsafeReadableBytes { device.receive($0) }
            } else {
                fragments = buffer
            }
        case .ping:
            let pong = WebSocketFrame(fin: true, opcode: .pong, maskKey: device.ctx.masks.next(), data: frame.data)
            context.write(wrapOutboundOut(pong), promise: nil)
            device.needsFlush = true
        case .connectionClose:
            device.lastError = device.lastError ?? "closed by the server"
            context.close(promise: nil)
        default:
            break
        }
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        device.flushIfNeeded()
        context.fireChannelReadComplete()
    }

    func channelInactive(context: ChannelHandlerContext) {
        device.channelClosed(generation: generation)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        device.lastError = device.lastError ?? "\(error)"
        context.close(promise: nil)
    }
}
