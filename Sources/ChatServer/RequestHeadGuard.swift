import ChatCore
import ChatJSON
import HTTPTypes
import HummingbirdCore
import NIOCore
import NIOHTTP1
import NIOHTTPTypes

/// Refuses, before anything compares or hashes it, a request head that holds a run of more than 30 combining marks
/// (`StreamSafeText`): in its target as sent, in its target percent-decoded, in its authority or in a header value.
/// Swift's `==` and hashing normalize non-ASCII strings at a cost quadratic in such a run, and NIO's upgrade handler,
/// Hummingbird and the engine compare header values (`Connection`, `Upgrade`, `Authorization`) and hash query values
/// (`sid`) before any token is checked: an 80 KB header of marks was seconds of CPU. The answer is a 400 with an
/// Engine.IO error body and `Connection: close`; what follows on the connection is not read.
///
/// Two handlers hold the rule, one for each place heads pass through: `FirstHead` sits right after NIO's request
/// decoder, in front of the upgrade handler (which reads only a connection's first head), and leaves once that head
/// went by; `EveryHead` sits after the HTTP-types codec of a connection that stays HTTP, in front of Hummingbird.
enum RequestHeadGuard {
    static let reason = "a request head with more than \(StreamSafeText.maxNonStarters) combining marks in a row"

    /// The 400's body: an Engine.IO error on the Engine.IO endpoint (`EngineServer.isEnginePath`, which compares
    /// bytes: the target is the one that was refused), the REST error shape elsewhere.
    static func refusal(for target: String) -> [UInt8] {
        if EngineServer.isEnginePath(target) { return EngineServer.badRequest("Bad request: " + reason).1 }
        return JSONWriter.encode(ChatError.invalid(reason).restBody)
    }

    /// What NIO's decoder holds of a request head before anything else sees it: 64 KiB of target and header fields
    /// together, 100 fields (a browser sends 15 to 25, a proxy adds a few). The size is what the largest request the
    /// API defines needs: `GET /chat/presence` with 1,000 UUIDs, their commas percent-encoded (39 KB), and a token of
    /// up to 8 KB. At the decoder's defaults (80 KiB, 1,000 fields), a head of many small fields sent but for its last
    /// line held 185 KB of memory per connection until its read deadline, before any token (found by an outside
    /// probe); a head of many fields costs the most, and 100 fields bound that.
    static let decoderLimits = HTTP1Channel.Configuration.DecoderConfiguration(
        maxHeaderFieldSize: 64 * 1024, maxHeaderListSize: 64 * 1024, maxHeaderFieldCount: 100)

    /// The answer to a request NIO's decoder could not read, or nil for an error that is not the decoder's: 431 for
    /// a head over the decoder's bounds (`decoderLimits`), 400 for anything else it refuses (a bad method, version or
    /// header token, a bad chunk). Without it the connection got no answer and stayed open, unread, until its
    /// first-request or idle deadline.
    static func unreadable(_ error: any Error) -> (status: Int, body: [UInt8])? {
        guard let error = error as? HTTPParserError else { return nil }
        let failure = error == .headerOverflow
            ? ChatError(
                .payloadTooLarge,
                "request head too large (at most \(decoderLimits.maxHeaderListSize / 1024) KiB and \(decoderLimits.maxHeaderFieldCount) header fields)")
            : ChatError.invalid("malformed HTTP request (\(error))")
        return (error == .headerOverflow ? 431 : 400, JSONWriter.encode(failure.restBody))
    }

    /// The mark `FirstHead` puts on a first request whose upgrade it made plain, for `EveryHead`.
    static let upgradeIgnored = HTTPField.Name("x-chat-broker-upgrade-ignored")!
    /// The mark `FirstHead` puts on a first request of HTTP/1.0, for `EveryHead`.
    static let http10 = HTTPField.Name("x-chat-broker-http-1-0")!

    /// Whether a head asks for a WebSocket as NIO's upgrader will take it (RFC 6455 §4.2.1): `Upgrade` naming
    /// `websocket`, `Connection` naming `upgrade`, a key and version 13.
    static func isWebSocketUpgrade(_ headers: HTTPHeaders) -> Bool {
        // Comma-separated tokens, compared without case or whitespace.
        func tokens(_ name: String) -> [String] {
            headers[name].flatMap { $0.lowercased().split(separator: ",").map { String($0.filter { $0 != " " && $0 != "\t" }) } }
        }
        // One key and one version, counted as NIO's upgrader counts them (a repeated one fails there, unanswered).
        let keys = headers[canonicalForm: "sec-websocket-key"], versions = headers[canonicalForm: "sec-websocket-version"]
        return tokens("upgrade").contains("websocket") && tokens("connection").contains("upgrade")
            && keys.count == 1 && !keys[0].isEmpty && versions.count == 1 && versions[0] == "13"
    }

    /// Whether a head's strings are all stream-safe. Linear in the head's size.
    static func accepts(target: String, authority: String? = nil, values: some Sequence<String>) -> Bool {
        guard StreamSafeText.isStreamSafe(target), StreamSafeText.isStreamSafe(PercentDecoding.lenient(target)) else { return false }
        if let authority, !StreamSafeText.isStreamSafe(authority) { return false }
        return values.allSatisfy { StreamSafeText.isStreamSafe($0) }
    }

    /// Most bytes of `Sec-WebSocket-Extensions` offers an upgrade is negotiated with: a browser offers about 50. An
    /// upgrade offering more gets none (RFC 6455 §9.1 lets a server decline any offer; the socket works uncompressed).
    /// hummingbird-websocket parses the offers a character at a time, about 1 µs a parameter, before any token: a
    /// 60 KB header of 12,000 parameters cost 13 ms of CPU (found by an outside probe).
    static let maxExtensionOfferBytes = 1024

    /// Takes the `Sec-WebSocket-Extensions` fields out of a head whose offers are longer than `maxExtensionOfferBytes`.
    static func dropLongExtensionOffers(_ headers: inout HTTPHeaders) {
        let offered = headers["sec-websocket-extensions"]
        guard !offered.isEmpty, offered.reduce(0, { $0 + $1.utf8.count }) > maxExtensionOfferBytes else { return }
        headers.remove(name: "sec-websocket-extensions")
    }

    /// A connection's first head, as NIO's decoder gives it; removes itself once that head passed.
    final class FirstHead: ChannelInboundHandler, RemovableChannelHandler {
        typealias InboundIn = HTTPServerRequestPart
        typealias InboundOut = HTTPServerRequestPart
        typealias OutboundOut = HTTPServerResponsePart

        private var refused = false

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            guard !refused else { return }
            guard case .head(var head) = unwrapInboundIn(data) else { return context.fireChannelRead(data) }
            guard RequestHeadGuard.accepts(target: head.uri, values: head.headers.lazy.map(\.value)) else {
                return refuse(context: context, version: head.version, status: .badRequest, body: RequestHeadGuard.refusal(for: head.uri))
            }
            // An HTTP/1.0 client must get no interim answer (RFC 9110 §15.2): told to `EveryHead`, which no longer
            // sees the version (it takes the mark off).
            if head.version.major == 1, head.version.minor == 0 {
                head.headers.replaceOrAdd(name: RequestHeadGuard.http10.rawName, value: "1")
            }
            RequestHeadGuard.dropLongExtensionOffers(&head.headers)
            if head.headers.contains(name: "upgrade"), !RequestHeadGuard.isWebSocketUpgrade(head.headers) {
                // An upgrade this server does not make (h2c, as `curl --http2` offers it; a websocket request short of
                // what RFC 6455 asks): served as a plain request (RFC 9110 §7.8 lets a server ignore it). NIO's upgrade
                // handler drops the head of a request it finds no upgrader for, which left it unanswered. The decoder
                // reads nothing after an upgrade request, so the connection closes after the answer.
                var plain = head
                plain.headers.remove(name: "upgrade")
                plain.headers.replaceOrAdd(name: "connection", value: "close")
                // Tells `EveryHead` that the decoder parses nothing after this request (it takes the mark off).
                plain.headers.replaceOrAdd(name: RequestHeadGuard.upgradeIgnored.rawName, value: "1")
                context.fireChannelRead(wrapInboundOut(.head(plain)))
            } else {
                context.fireChannelRead(wrapInboundOut(.head(head)))
            }
            context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
        }

        /// A first head the decoder could not read is answered (`unreadable`) and the connection closed.
        func errorCaught(context: ChannelHandlerContext, error: any Error) {
            guard !refused, let (status, body) = RequestHeadGuard.unreadable(error) else { return context.fireErrorCaught(error) }
            refuse(context: context, version: .http1_1, status: HTTPResponseStatus(statusCode: status), body: body)
        }

        /// Answers `status` with `body` and `Connection: close`, closes the connection, and reads nothing more.
        private func refuse(context: ChannelHandlerContext, version: HTTPVersion, status: HTTPResponseStatus, body: [UInt8]) {
            refused = true
            let headers = HTTPHeaders([
                ("connection", "close"), ("content-type", "application/json"), ("content-length", String(body.count)),
                ("x-content-type-options", "nosniff"),
            ])
            context.write(wrapOutboundOut(.head(HTTPResponseHead(version: version, status: status, headers: headers))), promise: nil)
            context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(bytes: body)))), promise: nil)
            context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
            context.close(promise: nil)
        }

        /// Puts the handler right after NIO's request decoder in `pipeline` (set up by `configureUpgradableHTTPServerPipeline`).
        static func install(in pipeline: ChannelPipeline.SynchronousOperations) throws {
            let decoder = try pipeline.handler(type: ByteToMessageHandler<HTTPRequestDecoder>.self)
            try pipeline.addHandler(FirstHead(), position: .after(decoder))
        }
    }

    /// A route's answer ends the connection (`ChatRequestContext.closeAfterResponse`): its input is closed now.
    struct CloseAfterResponse: Sendable {}

    /// Every head of a connection that stays HTTP, as Hummingbird will see it. The 400 is written only while no
    /// response is under way (every request passed on has had its response's end written): a head pipelined behind a
    /// request still being answered closes the connection at once, without a 400 (the response under way is cut
    /// short), rather than write into the middle of that response.
    final class EveryHead: ChannelDuplexHandler, RemovableChannelHandler {
        typealias InboundIn = HTTPRequestPart
        typealias InboundOut = HTTPRequestPart
        typealias OutboundIn = HTTPResponsePart
        typealias OutboundOut = HTTPResponsePart

        private var refused = false
        /// Whether `Expect: 100-continue` gets `100 Continue`: not on a connection whose first request was HTTP/1.0
        /// (marked by `FirstHead`, which sees the version).
        private var answersExpectContinue = true
        private var requests = 0
        private var responses = 0
        /// A request passed on whose end has not come: a parser error now is its body's (Hummingbird's to answer).
        private var inBody = false
        /// A response said `Connection: close`: no later request is passed on (RFC 9112 §9.6).
        private var closing = false
        /// The parts of requests that came while a response was under way (pipelined), passed on once it ended, or
        /// dropped if it closed the connection; nothing more is read meanwhile (`read`), so they stay few. (Passed on
        /// at once, a request sent behind one answered `Connection: close` was carried out all the same: found by an
        /// outside probe.)
        private var held: [HTTPRequestPart] = []
        private var readWanted = false
        private var owed: (status: HTTPResponse.Status, body: [UInt8])?
        /// The request passed on last was one NIO's decoder parses nothing after (an upgrade it does not make, a
        /// `CONNECT`): once its end passed, nothing more is read, and the connection closes with its answer (the bytes a
        /// client sent after it would pile up unparsed in the decoder until then; found by a review).
        private var lastRequestStopsParser = false
        private var readsStopped = false
        /// The body parts (and their bytes) read since the request being read was answered: Hummingbird reads the rest of
        /// an unread body to its end before the next request, up to its deadline, and that costs the broker about 1.3 µs
        /// a part, whatever the part holds.
        private var drained: (parts: Int, bytes: Int)?
        /// A route closed the input (`CloseAfterResponse`): the request body cut there is no error to answer. (Passed
        /// on, the decoder's end-of-input error made Hummingbird write a second, bare 400 after the route's answer:
        /// found by an outside probe.)
        private var inputClosedByRoute = false
        /// How many bytes of a body are read on after its request was answered (`drainedBytes`, or `--max-payload` if
        /// larger: a body the API could have read is drained whole, so its client reads the early answer).
        private let drainLimit: Int
        /// Told when the connection waits for its next request head with nothing in flight (it may then be closed for a
        /// newcomer at `--max-connections`), and when a head comes (`ConnectionLimit`).
        private let limit: ConnectionLimit?
        /// What drained bodies are charged to: the budget sessions before their CONNECT share (`UserInboundBudget`,
        /// one user's worth for all clients without a token). A part read while it is in debt closes the connection:
        /// the bound of each body alone was beaten by pipelining bodies of 1 MB behind 401s on one connection, read at
        /// 850 MB/s (an outside probe).
        private let drainBudget: UserInboundBudget?

        init(maxPayload: Int = 0, limit: ConnectionLimit? = nil, drainBudget: UserInboundBudget? = nil) {
            drainLimit = Swift.max(Self.drainedBytes, maxPayload)
            self.limit = limit
            self.drainBudget = drainBudget
        }

        /// A body still read after its request was answered is cut off (the connection closed) once more than this many
        /// parts averaging less than `drainedPartBytes` bytes came: a client sending one in tiny chunks (a refused
        /// POST of 1-byte chunks was read at 12.5 MB/s of wire, a core's worth, until the deadline; found by an
        /// outside probe). A body sent in ordinary writes (parts of kilobytes) is read to its end as before, so a
        /// client that sends it after an early answer (a 401) still gets the connection back, not a reset. (With
        /// 1,000 parts, a client reconnecting after each cut made the broker read 1.3 ms of parts per connection.)
        static let drainedParts = 64
        static let drainedPartBytes = 256
        /// A body still read after its request was answered is cut off past this many bytes (or `--max-payload`, if
        /// larger), however it is sent: no route reads a body over `--max-payload`, and a client that declared `Content-Length: 10^12`
        /// and sent 64 KiB writes after its 401 was read at 900 MB/s, a core's worth, until its read deadline, before
        /// any token (found by an outside probe).
        static let drainedBytes = 1 << 20

        func channelRead(context: ChannelHandlerContext, data: NIOAny) {
            guard !refused, !readsStopped else { return }
            let part = unwrapInboundIn(data)
            if !inBody, closing { return }
            if !held.isEmpty || (!inBody && requests > responses) {
                held.append(part)
                return
            }
            pass(part, context: context)
        }

        /// Passes a request part on to Hummingbird; a head is checked (and refused, or made plain) first.
        private func pass(_ part: HTTPRequestPart, context: ChannelHandlerContext) {
            guard case .head(var request) = part else {
                if case .end = part {
                    inBody = false
                    drained = nil
                    if lastRequestStopsParser { readsStopped = true }
                    if requests == responses, !closing { limit?.idle(context.channel) }
                } else if case .body(let bytes) = part, let (parts, total) = drained {
                    drained = (parts + 1, total + bytes.readableBytes)
                    let tiny = parts + 1 > Self.drainedParts && total + bytes.readableBytes < (parts + 1) * Self.drainedPartBytes
                    let inDebt = (drainBudget?.charge(nil, BoundedBodyReader.cost(ofPart: bytes.readableBytes)) ?? 0) > 0
                    if tiny || inDebt || total + bytes.readableBytes > drainLimit {
                        readsStopped = true
                        context.close(promise: nil)
                        return
                    }
                }
                return context.fireChannelRead(wrapInboundOut(part))
            }
            guard RequestHeadGuard.accepts(target: request.path ?? "", authority: request.authority, values: request.headerFields.lazy.map(\.value))
            else {
                // What was held behind the refused head goes with it: the connection ends with the 400.
                held.removeAll()
                return refuse(context: context, status: .badRequest, body: RequestHeadGuard.refusal(for: request.path ?? ""))
            }
            requests += 1
            inBody = true
            limit?.spoke(context.channel)
            // NIO's decoder parses nothing after a request that asks for an upgrade (with `Connection: upgrade`) or a
            // `CONNECT`: such a request is answered as a plain one, and the connection closes after the answer (a
            // websocket upgrade is redirected to a new connection, `EngineChildChannel.redirectingUpgrades`). A first
            // request's upgrade is made plain by `FirstHead`, which says `Connection: close` instead.
            let connection = request.headerFields[.connection]?.lowercased() ?? ""
            let madePlain = request.headerFields[RequestHeadGuard.upgradeIgnored] != nil
            request.headerFields[RequestHeadGuard.upgradeIgnored] = nil
            if request.headerFields[RequestHeadGuard.http10] != nil {
                answersExpectContinue = false
                request.headerFields[RequestHeadGuard.http10] = nil
            }
            let upgrade = request.headerFields[.upgrade]?.lowercased()
            let isConnect = request.method == .connect
            lastRequestStopsParser = madePlain || isConnect || (upgrade != nil && connection.contains("upgrade"))
            // Only the Engine.IO endpoint upgrades: an upgrade to any other target is answered as a plain request
            // (a 404), not redirected to a new connection. The redirect's `Location` is the target as sent, so
            // `//evil.example/x` sent another host (found by an outside probe).
            if isConnect || (upgrade != nil && (upgrade != "websocket" || !EngineServer.isEnginePath(request.path ?? ""))) {
                request.headerFields[.upgrade] = nil
                request.headerFields[.connection] = "close"
            }
            // `Expect: 100-continue` (curl sends it with a body over 1 KB): the interim answer, written as the request
            // goes on, lets the client send its body at once. Without it the client waited about a second first. A
            // request held behind a response under way gets it once its turn comes, never in the middle of that
            // response. As Node's HTTP server does, it is sent before the request is judged: a request refused (a
            // 401) has sent its body by then.
            if answersExpectContinue, request.headerFields[.expect]?.lowercased() == "100-continue" {
                context.writeAndFlush(wrapOutboundOut(.head(HTTPResponse(status: .continue))), promise: nil)
            }
            context.fireChannelRead(wrapInboundOut(.head(request)))
        }

        func read(context: ChannelHandlerContext) {
            if readsStopped { return }
            guard held.isEmpty else {
                readWanted = true
                return
            }
            context.read()
        }

        /// A later head the decoder could not read is answered as a first one is, when no response is under way. An
        /// error within a request's body goes on to Hummingbird, as before (it answers, or has answered, that request).
        func errorCaught(context: ChannelHandlerContext, error: any Error) {
            if inputClosedByRoute, error is HTTPParserError { return }
            guard !refused, !inBody || !held.isEmpty, let (status, body) = RequestHeadGuard.unreadable(error) else { return context.fireErrorCaught(error) }
            // A held request whose body the bytes refused belong to is dropped: passed on, it would wait for a body
            // that never comes (and the 400 with it).
            if let lastHead = held.lastIndex(where: { if case .head = $0 { true } else { false } }),
                !held[lastHead...].contains(where: { if case .end = $0 { true } else { false } })
            {
                held.removeSubrange(lastHead...)
            }
            refuse(context: context, status: .init(code: status), body: body)
        }

        func triggerUserOutboundEvent(context: ChannelHandlerContext, event: Any, promise: EventLoopPromise<Void>?) {
            guard event is CloseAfterResponse else { return context.triggerUserOutboundEvent(event, promise: promise) }
            inputClosedByRoute = true
            closing = true
            held.removeAll()
            context.close(mode: .input, promise: promise)
        }

        /// A graceful shutdown: requests held behind the one under way are dropped with the connection (passed on after
        /// the connection decided to close, they were carried out unanswered; found by a review).
        func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
            if event is ChannelShouldQuiesceEvent {
                closing = true
                held.removeAll()
            }
            context.fireUserInboundEventTriggered(event)
        }

        /// Answers `status` with `body` and `Connection: close`, closes the connection, and reads nothing more. With a
        /// response under way (a request sent in the same write as the bytes refused), the refusal waits for it and for
        /// the requests held behind it: they were sent before the bytes refused, so they are carried out and answered
        /// (found by an outside probe: a thread was created and neither its 201 nor a 400 came).
        private func refuse(context: ChannelHandlerContext, status: HTTPResponse.Status, body: [UInt8]) {
            refused = true
            guard requests == responses, held.isEmpty else {
                owed = (status, body)
                return
            }
            answer(context: context, status: status, body: body)
        }

        private func answer(context: ChannelHandlerContext, status: HTTPResponse.Status, body: [UInt8]) {
            let head = HTTPResponse(
                status: status,
                headerFields: [.connection: "close", .contentType: "application/json", .contentLength: String(body.count), .xContentTypeOptions: "nosniff"])
            context.write(wrapOutboundOut(.head(head)), promise: nil)
            context.write(wrapOutboundOut(.body(ByteBuffer(bytes: body))), promise: nil)
            context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
            context.close(promise: nil)
        }

        func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
            let part = unwrapOutboundIn(data)
            if case .head(let response) = part, response.headerFields[.connection]?.lowercased() == "close" { closing = true }
            guard case .end = part else { return context.write(data, promise: promise) }
            responses += 1
            // With a connection bound, an answer's end is followed to its write: a connection counts as silent only once
            // its answer is out (closed for a newcomer before, a long poll's answer was cut short: a review).
            let written = limit == nil ? nil : context.eventLoop.makePromise(of: Void.self)
            if let written, let promise { written.futureResult.cascade(to: promise) }
            context.write(data, promise: written ?? promise)
            guard responses == requests else { return }
            // Answered before its body ended: what is left of the body is counted as it is read, and the connection is
            // as good as silent (it may be closed for a newcomer at `--max-connections`).
            if inBody {
                drained = (0, 0)
                idleOnceWritten(written, context: context)
            }
            if readsStopped {
                // Nothing after the request was parsed: the connection ends with its answer.
                context.flush()
                context.close(promise: nil)
                return
            }
            if closing {
                held.removeAll()
                return
            }
            // The next request held behind this response goes on (the ones after it wait for its response in turn); the
            // read completes as a socket read does (NIO's async channel hands reads on at the completion).
            var passed = false
            while let next = held.first, !refused, !(requests > responses && !inBody) {
                held.removeFirst()
                pass(next, context: context)
                passed = true
            }
            if passed { context.fireChannelReadComplete() }
            if held.isEmpty, readWanted {
                readWanted = false
                context.read()
            }
            if requests == responses, held.isEmpty, let (status, body) = owed {
                owed = nil
                answer(context: context, status: status, body: body)
                return
            }
            // Answered, body read, nothing held: the connection waits for its next head.
            if requests == responses, !inBody, held.isEmpty, !refused { idleOnceWritten(written, context: context) }
        }

        /// Tells the connection bound that this connection is silent once `written` (its last answer's end) is written,
        /// unless a head came meanwhile.
        private func idleOnceWritten(_ written: EventLoopPromise<Void>?, context: ChannelHandlerContext) {
            guard let written, let limit else { return }
            let heads = requests, channel = context.channel
            written.futureResult.assumeIsolated().whenSuccess { [self] in
                if requests == heads { limit.idle(channel) }
            }
        }
    }
}
