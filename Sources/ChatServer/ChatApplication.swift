import ChatCore
import ChatJSON
import ChatStorePostgres
import ChatStoreSQLite
import ChatWebhook
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdCore
import HummingbirdWSCompression
import HummingbirdWebSocket
import Logging
import NIOCore
import Prometheus
import ServiceLifecycle
import Synchronization
import UnixSignals

/// Flushes and closes the store after everything above it has stopped (services stop in reverse order).
struct StoreService: Service {
    let supervisor: Supervisor
    let logger: Logger

    func run() async throws {
        try? await gracefulShutdown()
        await supervisor.shutdown()
        logger.info("store flushed and closed")
    }
}

/// When shutdown begins, before the HTTP server waits for its connections to finish: lets the events being worked on
/// reply (within `--shutdown-grace`), refusing new ones, then closes every socket.
struct SessionCloser: Service {
    let engine: EngineServer
    let grace: Duration

    func run() async throws {
        try? await gracefulShutdown()
        await engine.finishRepliesInFlight(grace: grace)
        // The process stays until every websocket closed: one still open when it exits is reset by the kernel (the
        // client is often still sending), and a reset makes the client's kernel drop the acks it has not read yet.
        for closed in engine.closeAllSessions(reason: "server shutting down") { try? await closed.get() }
    }
}

/// A built broker: its services and the order they stop in.
public struct ChatBroker: Sendable {
    let application: any Service
    let engine: EngineServer
    let store: StoreService
    /// Sends offline notices (when a webhook is configured).
    let webhook: OfflineWebhookDispatcher?
    let logger: Logger
    /// Set once the HTTP server listens.
    let listening: Listening
    let address: String

    /// Whether the server listens yet.
    final class Listening: Sendable {
        let flag = Atomic<Bool>(false)
    }

    /// Runs until one of `signals`, then stops in order: answer the events being worked on and close sockets, stop HTTP, stop the engine, stop the webhook
    /// (notices in flight stay in the outbox), flush the store. An address it cannot listen on (a host that is no
    /// address of this machine, a port in use or not allowed) is a `StartupError` naming `--host` and `--port`.
    public func run(gracefulShutdownSignals signals: [UnixSignal] = [.sigterm, .sigint]) async throws {
        let group = ServiceGroup(
            configuration: .init(
                services: [store] + (webhook.map { [$0] } ?? []) + [engine, application, SessionCloser(engine: engine, grace: .milliseconds(Int64(engine.configuration.shutdownGrace * 1000)))],
                gracefulShutdownSignals: signals, logger: logger))
        do { try await group.run() } catch where !listening.flag.load(ordering: .relaxed) && (error is SocketAddressError || error is SocketAddressError.UnknownHost || error is IOError) {
            throw StartupError(["host", "port"], "cannot listen on \(address): \(error)")
        }
    }
}

/// Assembles the broker: the store (SQLite in the data directory, or PostgreSQL with a database URL), supervisor, token verifier, Engine.IO endpoint, REST, health and
/// metrics, on one Hummingbird server with graceful shutdown.
public enum ChatApplication {
    /// Builds the broker, ready to `run()`.
    public static func make(configuration: ServerConfiguration, logger: Logger, onRunning: (@Sendable (Int) async -> Void)? = nil) async throws -> ChatBroker {
        // A data directory made here is the owner's alone (0700): with SQLite it holds the chat.
        do {
            try FileManager.default.createDirectory(
                atPath: configuration.dataDirectory, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        } catch {
            throw StartupError(["data-dir"], "cannot use \(configuration.dataDirectory) as the data directory: \(error.localizedDescription)")
        }
        var brokerConfiguration = configuration.broker
        brokerConfiguration.framePrefix = EngineServer.eventPrefix
        brokerConfiguration.webSocketFrames = true
        // A page fits in half the transport's payload limit and half a connection's outbound queue: with a small
        // --outbound-limit, a 512 KiB sync page outgrew the user's whole outbound bound, and a client asking for it
        // was closed as a slow consumer at every reconnect (found by an outside probe).
        brokerConfiguration.maxPageBytes = max(
            16 * 1024, min(brokerConfiguration.maxPageBytes, configuration.maxPayload / 2, brokerConfiguration.outboundLimit / 2))
        brokerConfiguration.offlineNoticeDelay = configuration.offlineWebhook?.delay
        let stats = BrokerStats()
        let metrics = BrokerMetrics(stats: stats)
        let observeCommit: @Sendable (Int, Double, Bool) -> Void = { units, seconds, _ in
            metrics.commitLatency.record(.nanoseconds(Int64(seconds * 1e9)))
            metrics.recentCommit.record(nanoseconds: UInt64(max(0, seconds * 1e9)))
            metrics.commitBatch.record(Int64(units))
        }
        let store: any MessageStore
        if let url = configuration.databaseURL {
            do {
                store = try await PostgresMessageStore.open(url: url, durability: configuration.durability, logger: logger, commitObserver: observeCommit)
            } catch {
                throw StartupError(["database-url"], "\(error)")
            }
            logger.info("chat kept in PostgreSQL", metadata: ["database": "\(url.redacted)"])
        } else {
            let path = configuration.dataDirectory + "/chat.sqlite"
            do {
                store = try SQLiteMessageStore(path: path, durability: configuration.durability, logger: logger, commitObserver: observeCommit)
            } catch {
                throw StartupError(["data-dir"], "cannot open the SQLite database \(path): \(error)")
            }
        }
        let supervisor = Supervisor(store: store, configuration: brokerConfiguration, logger: logger, stats: stats)
        var webhook: OfflineWebhookDispatcher?
        if let webhookConfiguration = configuration.offlineWebhook {
            guard let outbox = store as? any OfflineNoticeStore else { throw StoreError("this store keeps no offline-notice outbox") }
            webhook = OfflineWebhookDispatcher(
                configuration: webhookConfiguration, store: outbox,
                online: { company, users, since in try await supervisor.onlineUsers(company: company, among: users, heardAfter: since) }, stats: stats,
                logger: logger, shutdownGrace: configuration.shutdownGrace)
        }
        let tokens = await TokenVerifier(secret: configuration.jwtSecret)
        let engine = EngineServer(supervisor: supervisor, tokens: tokens, configuration: configuration, metrics: metrics, logger: logger)

        let router = Router(context: ChatRequestContext.self)
        router.add(middleware: ConnectionClosePolicy())
        router.add(middleware: NoSniffPolicy())
        router.add(middleware: CORSPolicy(origins: configuration.corsOrigins))
        router.add(middleware: NotFoundPolicy())
        router.get("health") { _, _ in RESTRoutes.json(.ok, .object(["status": .string("ok")])) }
        // Load balancers and `curl -I` probe with HEAD: the GET's status and headers, no body.
        router.head("health") { _, _ in RESTRoutes.json(.ok, .object(["status": .string("ok")])).createHeadResponse() }
        // Whether this node can serve: 503 while its database does not answer or it does not hear the other nodes, and
        // once graceful shutdown began (a balancer sends new clients elsewhere during `--shutdown-grace`).
        let readiness = ReadinessCheck(store: store)
        @Sendable func ready() async -> Response {
            if engine.isQuiescing {
                return RESTRoutes.json(.serviceUnavailable, .object(["status": .string("unavailable"), "error": .string("the server is shutting down")]))
            }
            guard let problem = await readiness.problem() else { return RESTRoutes.json(.ok, .object(["status": .string("ok")])) }
            return RESTRoutes.json(.serviceUnavailable, .object(["status": .string("unavailable"), "error": .string(problem)]))
        }
        router.get("health/ready") { _, _ in await ready() }
        router.head("health/ready") { _, _ in await ready().createHeadResponse() }
        let metricsAccess = MetricsAccess(token: configuration.metricsToken)
        router.get("metrics") { request, _ in
            guard metricsAccess.allows(request.headers[.authorization]) else { return MetricsAccess.refusal(request.headers[.authorization]) }
            return Response(
                status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                body: ResponseBody(byteBuffer: ByteBuffer(bytes: metrics.render())))
        }
        router.get("openapi.json") { _, _ in
            Response(
                status: .ok, headers: [.contentType: "application/json"],
                body: ResponseBody(byteBuffer: ByteBuffer(bytes: PackageResources.openapi_json)))
        }
        // Each handler parses the query once (Hummingbird parses it again at each `queryParameters`: four times a
        // request, 32 ms of CPU for a query of 72 KB, before any token; found by an outside probe).
        router.get("socket.io") { request, context in
            let query = request.uri.queryParameters
            // A websocket request without the upgrade headers (a proxy that drops them, say).
            if query.get("transport") == "websocket" {
                let sid = query.get("sid").map { String($0) }
                return Self.engineResponse(
                    EngineServer.websocketRefusal(path: request.uri.description, known: sid.map { engine.session($0) != nil } ?? false), context)
            }
            if let refusal = EngineServer.checkQuery(eio: query.get("EIO"), transport: query.get("transport")) {
                return Self.engineResponse(refusal, context)
            }
            let result = await engine.pollingGet(
                sid: query.get("sid").map { String($0) },
                authorization: EngineServer.bearer(request.headers[.authorization]), channel: context.channel)
            return Self.engineResponse(result, context)
        }
        router.post("socket.io") { request, context in
            let query = request.uri.queryParameters
            if let refusal = EngineServer.checkQuery(eio: query.get("EIO"), transport: query.get("transport")) {
                return Self.engineResponse(refusal, context)
            }
            // The session is looked up, and its one POST in flight claimed, before the body is read: a POST for no
            // live session is answered at once, a second one ends the session, and one before the session's CONNECT
            // may carry only a CONNECT's worth. The body must come whole within `RequestBodyDeadline`'s time.
            guard let sid = query.get("sid").map({ String($0) }) else {
                return Self.engineResponse(EngineServer.badHandshakeMethod, context)
            }
            let session: EngineSession, limit: Int
            switch engine.admitPollingPost(sid: sid, channel: context.channel) {
            case .refused(let status, let body): return Self.engineResponse((status, body), context)
            case .admitted(let admitted, let bound): (session, limit) = (admitted, bound)
            }
            let body: ByteBuffer
            do {
                // A body its head declares too large is refused before it is read (a client that waits for `100
                // Continue` was left waiting for its read deadline; found by an outside probe).
                if let declared = BoundedBodyReader.declaredLength(request), declared > limit { throw BoundedBodyReader.TooLarge(read: 0) }
                body = try await engine.readPollingBody(request.body, of: session, limit: limit)
            } catch is BoundedBodyReader.TooLarge {
                session.endPost()
                session.state.withLock { $0.closedForOversizedPost = true }
                engine.close(session, reason: "polling body over its limit")
                return Self.engineResponse((.contentTooLarge, Array(#"{"code":3,"message":"Payload too large"}"#.utf8)), context)
            } catch {
                // The body did not come whole (its deadline, a closed connection): the session stays, as after any POST
                // that did not reach it.
                session.endPost()
                return Self.engineResponse(EngineServer.badRequest("Bad request: the body did not come whole"), context)
            }
            return Self.engineResponse(await engine.pollingPost(session, body: Array(buffer: body)), context)
        }
        // Engine.IO knows GET (handshake, long poll) and POST (packets); anything else is refused as engine.io does.
        for method in [HTTPRequest.Method.put, .delete, .patch, .head] {
            router.on("socket.io", method: method) { request, context in
                Self.engineResponse(
                    request.uri.queryParameters.get("sid") == nil ? EngineServer.badHandshakeMethod : EngineServer.badRequest("Bad request"), context)
            }
        }
        let rest = RESTRoutes(supervisor: supervisor, tokens: tokens, configuration: configuration, connections: engine.connections)
        rest.register(on: router)
        ConsoleRoutes(rest: rest, stats: stats, metrics: metrics, engine: engine, offlineWebhook: webhook != nil).register(on: router)
        RESTRoutes.registerMethodNotAllowed(on: router)

        let listening = ChatBroker.Listening()
        let app = Application(
            router: router,
            server: configuration.webSocketCompression ? Self.compressedWebSockets(engine: engine, maxPayload: configuration.maxPayload)
                : HTTPServerBuilder { responder in EngineChildChannel(responder: responder, engine: engine) },
            configuration: .init(address: .hostname(configuration.host, port: configuration.port), serverName: "chat-broker"),
            onServerRunning: { channel in
                listening.flag.store(true, ordering: .relaxed)
                let port = channel.localAddress?.port ?? configuration.port
                logger.info("chat-broker listening", metadata: ["host": "\(configuration.host)", "port": "\(port)"])
                await onRunning?(port)
            },
            logger: logger
        )
        return ChatBroker(
            application: app, engine: engine, store: StoreService(supervisor: supervisor, logger: logger), webhook: webhook, logger: logger,
            listening: listening, address: "\(configuration.host):\(configuration.port)")
    }

    /// Connections when permessage-deflate is on: hummingbird-websocket runs each WebSocket in a task (it compresses
    /// and decompresses), and its messages go to the engine as on the task-free path.
    static func compressedWebSockets(engine: EngineServer, maxPayload: Int) -> HTTPServerBuilder {
        let ws = WebSocketServerConfiguration(
            maxFrameSize: maxPayload, extensions: [WebSocketExtensionFactory { BoundedDeflateExtension.Builder(maxPayload: maxPayload) }],
            autoPing: .disabled, validateUTF8: true)
        return HTTPServerBuilder { responder in
            LeanSocketChannel(
                firstRequestTimeout: EngineChildChannel.readTimeout(engine.configuration),
                connections: engine.connections,
                base: HTTP1WebSocketUpgradeChannel(
                    responder: responder,
                    configuration: .init(
                        http1: HTTP1Channel.Configuration(
                            additionalChannelHandlers: [
                                RequestHeadGuard.EveryHead(
                                    maxPayload: engine.configuration.maxPayload, limit: engine.connections, drainBudget: engine.userInbound),
                                RequestBodyDeadline(timeout: EngineChildChannel.readTimeout(engine.configuration)),
                            ], idleTimeout: EngineChildChannel.readTimeout(engine.configuration),
                            httpDecoderConfiguration: RequestHeadGuard.decoderLimits),
                        ws: ws)
                ) { request, channel, _ in
                    guard engine.acceptsUpgrade(path: request.path ?? "") else { return .dontUpgrade }
                    UnparsedInputLimit.remove(from: channel.pipeline.syncOperations)
                    let upgrading = try engine.addCompressedMessageGuard(path: request.path ?? "", channel: channel)
                    return .upgrade([:]) { inbound, outbound, _ in
                        await engine.runCompressedWebSocket(
                            path: request.path ?? "", authorization: request.headerFields[.authorization], channel: channel,
                            upgrading: upgrading, inbound: inbound, outbound: outbound)
                    }
                })
        }
    }

    /// An Engine.IO answer. A refusal ends the HTTP connection, and says so (`Connection: close`), so a keep-alive
    /// client does not send its next request on a socket that is closing. No answer is cached (`Cache-Control:
    /// no-store`, as engine.io says on its polling answers): a poll is a session's stream, not a resource.
    static func engineResponse(_ result: (status: HTTPResponse.Status, body: [UInt8]), _ context: ChatRequestContext) -> Response {
        var headers: HTTPFields = [
            .contentType: result.status == .ok ? "text/plain; charset=UTF-8" : "application/json", .cacheControl: "no-store",
        ]
        if result.status.code >= 400 {
            headers[.connection] = "close"
            context.closeAfterResponse()
        }
        return Response(status: result.status, headers: headers, body: ResponseBody(byteBuffer: ByteBuffer(bytes: result.body)))
    }
}
