import HTTPTypes
import Hummingbird
import HummingbirdCore
import Logging
import NIOCore
import NIOHTTP1
import NIOHTTPTypes
import NIOHTTPTypesHTTP1
import NIOWebSocket

/// One accepted connection: HTTP/1 requests for the router, or an Engine.IO WebSocket that needs no Swift task. The
/// upgrade installs NIO's WebSocket codec and an `EngineWebSocketHandler`, and `handle` returns at once: the
/// connection lives on its event loop (reads routed synchronously to its session, writes by its `SocketWriter`), so an
/// idle WebSocket costs its channel and its session, not a task's stack. HTTP connections are served by Hummingbird
/// as usual. (With permessage-deflate on, `ChatApplication` uses hummingbird-websocket's channel instead.)
struct EngineChildChannel: ServerChildChannel, HTTPChannelHandler {
    enum Negotiated: Sendable {
        /// A WebSocket, run by its handlers.
        case webSocket
        case http(NIOAsyncChannel<HTTPRequestPart, HTTPResponsePart>)
        /// An upgrade request (for `path`) that was refused: answered 400 (`EngineServer.websocketRefusal`).
        case refusedUpgrade(NIOAsyncChannel<HTTPRequestPart, HTTPResponsePart>, path: String)
    }

    struct Value: ServerChildChannelValue {
        let negotiated: EventLoopFuture<Negotiated>
        let channel: any Channel
    }

    let responder: HTTPChannelHandler.Responder
    let engine: EngineServer
    /// With an idle timeout: after the first request (bounded by `FirstRequestDeadline`), each later request head must
    /// come within it, and a request body may not stay silent longer.
    let http1: HTTP1Channel.Configuration

    init(responder: @escaping HTTPChannelHandler.Responder, engine: EngineServer) {
        self.responder = Self.redirectingUpgrades(responder)
        self.engine = engine
        let readTimeout = Self.readTimeout(engine.configuration)
        http1 = HTTP1Channel.Configuration(
            additionalChannelHandlers: [
                RequestHeadGuard.EveryHead(maxPayload: engine.configuration.maxPayload, limit: engine.connections, drainBudget: engine.userInbound),
                RequestBodyDeadline(timeout: readTimeout),
            ], idleTimeout: readTimeout,
            httpDecoderConfiguration: RequestHeadGuard.decoderLimits)
    }

    /// `requestReadTimeout` as NIO counts time.
    static func readTimeout(_ configuration: ServerConfiguration) -> TimeAmount {
        .nanoseconds(Int64(configuration.requestReadTimeout * 1e9))
    }

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        // Past `--max-connections`, closed before anything is read. The receive options of `LeanSocketChannel` (a
        // small first buffer, one bounded read per turn).
        engine.connections.setUp(channel) {
            LeanSocketChannel.setReceiveOptions(channel).flatMapThrowing { try configure(channel, logger: logger) }
        }
    }

    private func configure(_ channel: any Channel, logger: Logger) throws -> Value {
        let engine = self.engine
        let firstRequest = NIOLoopBound(FirstRequestDeadline(timeout: Self.readTimeout(engine.configuration), limit: engine.connections), eventLoop: channel.eventLoop)
        try channel.pipeline.syncOperations.addHandler(firstRequest.value, position: .first)
        /// The path of an upgrade request, once one came.
        let upgradeAttempted = NIOLoopBoundBox(String?.none, eventLoop: channel.eventLoop)
        let upgrader = NIOTypedWebSocketServerUpgrader<Negotiated>(
            maxFrameSize: engine.configuration.maxPayload,
            shouldUpgrade: { channel, head in
                upgradeAttempted.value = head.uri
                return channel.eventLoop.makeSucceededFuture(engine.acceptsUpgrade(path: head.uri) ? HTTPHeaders() : nil)
            },
            upgradePipelineHandler: { channel, head in
                channel.eventLoop.makeCompletedFuture {
                    channel.pipeline.syncOperations.removeHandler(firstRequest.value, promise: nil)
                    UnparsedInputLimit.remove(from: channel.pipeline.syncOperations)
                    try engine.attachWebSocket(path: head.uri, authorization: head.headers.first(name: "authorization"), channel: channel)
                    return .webSocket
                }
            })
        let http1 = self.http1
        let upgradeConfiguration = NIOTypedHTTPServerUpgradeConfiguration(
            upgraders: [upgrader],
            notUpgradingCompletionHandler: { channel in
                channel.eventLoop.makeCompletedFuture {
                    channel.pipeline.syncOperations.removeHandler(firstRequest.value, promise: nil)
                    try channel.pipeline.syncOperations.addHandler(HTTP1ToHTTPServerCodec(secure: false))
                    try channel.pipeline.syncOperations.addHandlers(http1.additionalChannelHandlers())
                    try channel.pipeline.syncOperations.addHandler(
                        HTTPConnectionStateHandler(idleTimeout: http1.idleTimeout.map { .init($0) }, logger: logger))
                    let asyncChannel = try NIOAsyncChannel<HTTPRequestPart, HTTPResponsePart>(
                        wrappingChannelSynchronously: channel, configuration: .init(isOutboundHalfClosureEnabled: true))
                    return upgradeAttempted.value.map { .refusedUpgrade(asyncChannel, path: $0) } ?? .http(asyncChannel)
                }
            })
        var configuration = NIOUpgradableHTTPServerPipelineConfiguration<Negotiated>(upgradeConfiguration: upgradeConfiguration)
        configuration.enablePipelining = false  // HTTP is pipelined by NIOAsyncChannel
        configuration.enableErrorHandling = false  // Hummingbird answers errors
        configuration.enableResponseHeaderValidation = false  // HTTP Types validate headers already
        configuration.decoderConfiguration.maxHeaderFieldSize = http1.httpDecoder.maxHeaderFieldSize
        configuration.decoderConfiguration.maxHeaderListSize = http1.httpDecoder.maxHeaderListSize
        configuration.decoderConfiguration.maxHeaderFieldCount = http1.httpDecoder.maxHeaderFieldCount
        let negotiated = try channel.pipeline.syncOperations.configureUpgradableHTTPServerPipeline(configuration: configuration)
        try RequestHeadGuard.FirstHead.install(in: channel.pipeline.syncOperations)
        try UnparsedInputLimit.install(in: channel.pipeline.syncOperations)
        return Value(negotiated: negotiated, channel: channel)
    }

    func handle(value: Value, logger: Logger) async {
        do {
            switch try await value.negotiated.get() {
            case .webSocket:
                // The connection runs on its event loop from here; this task ends.
                return
            case .http(let http):
                await handleHTTP(asyncChannel: http, logger: logger)
            case .refusedUpgrade(let http, let path):
                let (status, body) = EngineServer.websocketRefusal(path: path, shuttingDown: engine.isQuiescing)
                try await http.executeThenClose { _, outbound in
                    let head = HTTPResponse(
                        status: status,
                        headerFields: [
                            .connection: "close", .contentType: "application/json", .contentLength: String(body.count),
                            .xContentTypeOptions: "nosniff",
                        ])
                    try await outbound.write(contentsOf: [.head(head), .body(ByteBuffer(bytes: body)), .end(nil)])
                }
            }
        } catch let error as ChannelError where error == .inputClosed {
            logger.trace("connection closed before its first request")
        } catch {
            logger.debug("connection ended", metadata: ["error": "\(error)"])
        }
    }

    /// An upgrade request on a connection that already served a plain request cannot be upgraded (NIO upgrades only
    /// a connection's first request): it is redirected to the same URL with `Connection: close`, so that the client
    /// asks again on a new connection (as hummingbird-websocket does).
    static func redirectingUpgrades(_ responder: @escaping HTTPChannelHandler.Responder) -> HTTPChannelHandler.Responder {
        struct RedirectedUpgrade: Error {}
        return { request, responseWriter, channel in
            guard request.headers[.upgrade]?.lowercased() == "websocket" else {
                return try await responder(request, responseWriter, channel)
            }
            var location = request.uri.path
            if let query = request.uri.query { location += "?\(query)" }
            try await responseWriter.writeResponse(HTTPResponse(
                status: .temporaryRedirect, headerFields: [.connection: "close", .location: location, .xContentTypeOptions: "nosniff"]))
            throw RedirectedUpgrade()
        }
    }
}
