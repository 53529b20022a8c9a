import ChatCore
import ChatJSON
import Foundation
import HTTPTypes
import Hummingbird
import NIOCore
import Synchronization

/// The REST API of docs/PROTOCOL.md §6, with the same company and membership checks as the socket path and
/// the same error codes (`{code, error}` with 400/401/403/404/413/429).
final class RESTRoutes: Sendable {
    let supervisor: Supervisor
    let tokens: TokenVerifier
    let configuration: ServerConfiguration
    /// Per user: REST writes, and REST reads (`--read-rate-per-sec`, bursts of twice as many).
    let restBuckets: Mutex<TokenBuckets<SessionKey>>
    let restReadBuckets: Mutex<TokenBuckets<SessionKey>>
    /// Bytes of REST bodies per user (`ServerConfiguration.inboundBytesPerSecond`).
    let restInboundBuckets: Mutex<TokenBuckets<SessionKey>>
    /// The connection bound: a request whose body is still arriving may be closed for a newcomer.
    let connections: ConnectionLimit

    init(supervisor: Supervisor, tokens: TokenVerifier, configuration: ServerConfiguration, connections: ConnectionLimit) {
        self.supervisor = supervisor
        self.tokens = tokens
        self.configuration = configuration
        self.connections = connections
        restBuckets = Mutex(TokenBuckets(rate: configuration.broker.ratePerSecond, burst: configuration.broker.rateBurst))
        restReadBuckets = Mutex(TokenBuckets(rate: configuration.broker.readRatePerSecond, burst: configuration.broker.readBurst))
        restInboundBuckets = Mutex(TokenBuckets(rate: configuration.inboundBytesPerSecond, burst: configuration.inboundBytesBurst))
    }

    func register(on router: Router<ChatRequestContext>) {
        let chat = router.group("chat")
        let limits = configuration.broker
        chat.post("threads") { [self] request, context in await respond(request, context, write: true) { principal, body throws(ChatError) in
            guard case .thread(let summary, let created) = try await perform(try ClientCommand.parseCreateThread(body, configuration: limits), principal)
            else { throw Self.unexpected }
            return (created ? .created : .ok, .object(["thread": summary.json]))
        } }
        chat.get("threads") { [self] request, context in await respond(request, context) { principal, _ throws(ChatError) in
            let command = try ClientCommand.parseListThreads(after: try Self.queryValue(request, "after"))
            guard case .threads(let threads, let hasMore) = try await perform(command, principal) else { throw Self.unexpected }
            // A page costs one read per 10 threads in it, as a chat:sync does per 10 threads it names: the request
            // took one; the rest is charged now that the page is known (a debt the next reads wait for).
            let cost = ClientCommand.readCost(threads: threads.count)
            if cost > 1 { restReadBuckets.withLock { $0.charge(principal.sessionKey, cost - 1) } }
            return (.ok, .object(["threads": .array(threads.map(\.json)), "hasMore": .bool(hasMore)]))
        } }
        chat.get("threads/:id/messages") { [self] request, context in await respond(request, context) { principal, _ throws(ChatError) in
            let command = ClientCommand.historyPage(
                try ClientCommand.pathId(try Self.pathParameter(context, "id")), beforeSeq: try queryInt(request, "beforeSeq", min: 1),
                limit: try queryInt(request, "limit", min: 1), configuration: limits)
            guard case .page(let messages, let hasMore) = try await perform(command, principal) else { throw Self.unexpected }
            return (.ok, .object(["messages": .array(messages.map(\.json)), "hasMore": .bool(hasMore)]))
        } }
        chat.post("threads/:id/members") { [self] request, context in await respond(request, context, write: true) { principal, body throws(ChatError) in
            let command = try ClientCommand.parseAddMembers(try Self.pathParameter(context, "id"), body, configuration: limits)
            guard case .thread(let summary, _) = try await perform(command, principal) else { throw Self.unexpected }
            return (.ok, .object(["thread": summary.json]))
        } }
        chat.delete("threads/:id/members/:userId") { [self] request, context in await respond(request, context, write: true) { principal, _ throws(ChatError) in
            let command = try ClientCommand.parseRemoveMember(try Self.pathParameter(context, "id"), try Self.pathParameter(context, "userId"))
            guard case .thread(let summary, _) = try await perform(command, principal) else { throw Self.unexpected }
            return (.ok, .object(["thread": summary.json]))
        } }
        chat.patch("messages/:id") { [self] request, context in await respond(request, context, write: true) { principal, body throws(ChatError) in
            let command = try ClientCommand.parseEditMessage(try Self.pathParameter(context, "id"), body, configuration: limits)
            guard case .message(let message) = try await perform(command, principal) else { throw Self.unexpected }
            return (.ok, .object(["message": message.json]))
        } }
        chat.delete("messages/:id") { [self] request, context in await respond(request, context, write: true) { principal, _ throws(ChatError) in
            let command = try ClientCommand.parseDeleteMessage(try Self.pathParameter(context, "id"))
            guard case .deleted(let seq, let message) = try await perform(command, principal) else { throw Self.unexpected }
            return (.ok, .object(["success": .bool(true), "seq": .int(seq), "message": message.json]))
        } }
        chat.get("presence") { [self] request, context in await respond(request, context) { principal, _ throws(ChatError) in
            // Given empty, or with an empty item (`a,,b`), is a 400 like any empty parameter; absent asks about no one.
            // An id named twice is asked about once (the answer is an object: one key per id).
            // Given once: a comma-separated list (decoded first, as `URLSearchParams` encodes the commas of a joined
            // list too). Given several times (`userIds=a&userIds=b`, OpenAPI's exploded form): one id each, not split,
            // which is how an id that holds a comma is asked about.
            let given = FormQuery(request.uri.query).values("userIds")
            let items = given.count == 1 ? given[0].split(separator: ",", omittingEmptySubsequences: false).map(String.init) : given
            guard !items.contains(where: \.isEmpty) else { throw ChatError.invalid("userIds must be comma-separated user ids, none empty") }
            // Compared as bytes, as ids are everywhere: `Set<String>` would take "zoë" and "zoe\u{308}" for one.
            var seen = Set<[UInt8]>()
            let users = items.filter { seen.insert(Array($0.utf8)).inserted }
            guard users.count <= limits.maxMembersPerRequest else { throw ChatError(.payloadTooLarge, "at most \(limits.maxMembersPerRequest) userIds per request") }
            // One read per 10 ids, as a page of threads counts threads: the request took one.
            let cost = ClientCommand.readCost(threads: users.count)
            if cost > 1 { restReadBuckets.withLock { $0.charge(principal.sessionKey, cost - 1) } }
            let online = try await supervisor.presence(of: users, as: principal)
            return (.ok, .object(["online": .object(JSONObject(online.map { (key: $0.0, value: .bool($0.1)) }))]))
        } }
        chat.post("emit") { [self] request, context in await respond(request, context, write: true) { principal, body throws(ChatError) in
            guard principal.isService else { throw ChatError(.forbidden, "only service tokens may emit") }
            guard let event = body["event"]?.stringValue, event.hasPrefix("app:"), event.utf8.count <= ClientCommand.maxIdLength else {
                throw ChatError.invalid("event must be a string starting with \"app:\"")
            }
            // An event name is shown by clients and written to their logs as an id is: no CR, LF or other control or
            // invisible character (found by an outside probe: `app:x\r\nforged: line` went out as named).
            guard !ClientCommand.hasControlCharacter(event) else {
                throw ChatError.invalid("event must not contain control or invisible characters")
            }
            let data = body["data"] ?? .null
            // Every target given is checked, then the first is used: userIds, threadId, company.
            let users = body["userIds"] == nil ? nil : try ClientCommand.idList(body, "userIds", max: limits.maxMembersPerRequest, allowEmpty: true)
            let thread = body["threadId"] == nil ? nil : try ClientCommand.id(body, "threadId")
            guard body["company"] == nil || body["company"]?.boolValue != nil else { throw ChatError.invalid("company must be a boolean") }
            let target: Supervisor.EmitTarget
            if let users {
                target = .users(users)
            } else if let thread {
                target = .thread(thread)
            } else if body["company"]?.boolValue == true {
                target = .company
            } else {
                throw ChatError.invalid("give userIds, threadId or company: true")
            }
            let reached = try await supervisor.emit(event: event, data: data, to: target, as: principal)
            return (.accepted, .object(["delivered": .int(reached)]))
        } }
    }

    /// The routes of the REST API (and the documents beside it) with their methods. Any other method on these
    /// paths answers `405` with `Allow`, rather than the `404` of a path that does not exist.
    static let methods: [(path: String, allowed: [HTTPRequest.Method])] = [
        ("chat/threads", [.get, .post]), ("chat/threads/:id/messages", [.get]), ("chat/threads/:id/members", [.post]),
        ("chat/threads/:id/members/:userId", [.delete]), ("chat/messages/:id", [.patch, .delete]), ("chat/presence", [.get]),
        ("chat/emit", [.post]), ("health", [.get, .head]), ("health/ready", [.get, .head]), ("metrics", [.get]), ("openapi.json", [.get]), ("console", [.get]),
        ("console/stats", [.get]),
    ]

    /// Registers the `405` answers of `methods`: every other method, `HEAD` included where `GET` has no `HEAD` of its
    /// own, and `OPTIONS` outside `/chat/*` (where CORS answers preflights itself).
    static func registerMethodNotAllowed(on router: Router<ChatRequestContext>) {
        for (path, allowed) in methods {
            let allow = allowed.map(\.rawValue).joined(separator: ", ")
            var others: [HTTPRequest.Method] = [.get, .head, .post, .put, .patch, .delete, .trace, HTTPRequest.Method("QUERY")!]
            if !path.hasPrefix("chat/") { others.append(.options) }
            for method in others where !allowed.contains(method) {
                router.on(RouterPath(path), method: method) { request, _ in
                    var response = json(.methodNotAllowed, ChatError.invalid("\(request.method.rawValue) is not allowed here; use \(allow)").restBody)
                    response.headers[.allow] = allow
                    return response
                }
            }
        }
    }

    /// A command's result did not have the shape its route expects (a programming error, never the client's).
    static let unexpected = ChatError(.internal, "unexpected result")

    /// Runs `command` for a REST request. History an edit or a delete resealed, and offline notices a send queued, are
    /// charged to the user's REST write bucket too (the supervisor charges the sockets' bucket), so that REST edits of
    /// old messages and sends to big threads wait as socket ones do.
    func perform(_ command: ClientCommand, _ principal: Principal) async throws(ChatError) -> CommandResult {
        // A request took one token; a command that counts more (a thread made with many members) owes the rest.
        switch command {
        case .createThread, .addMembers:
            if command.rateCost > 1 { restBuckets.withLock { $0.charge(principal.sessionKey, command.rateCost - 1) } }
        default: break
        }
        let meter = HistoryMeter()
        defer {
            let tokens = supervisor.extraWriteTokens(meter) + supervisor.extraSignalTokens(meter)
            if tokens > 0 { restBuckets.withLock { $0.charge(principal.sessionKey, tokens) } }
            let reads = supervisor.extraReadTokens(meter)
            if reads > 0 { restReadBuckets.withLock { $0.charge(principal.sessionKey, reads) } }
        }
        return try await supervisor.perform(command, as: principal, device: nil, meter: meter)
    }

    /// The path segment named `name`, percent-decoded (the router hands it over as sent): a member whose id holds a
    /// space or a non-ASCII letter is named `zo%C3%AB` in a URL, and could not be removed while the encoded text was
    /// looked for. Encoding that does not decode to UTF-8 is a 400; what it decodes to is checked as any id is.
    static func pathParameter(_ context: ChatRequestContext, _ name: String) throws(ChatError) -> String {
        let raw = context.parameters.get(name) ?? ""
        guard let decoded = PercentDecoding.strict(raw) else { throw ChatError.invalid("the \(name) in the path is not percent-encoded UTF-8") }
        return decoded
    }

    /// The query parameter `key` (`FormQuery`: `+` is a space), `nil` if absent; given more than once is a 400.
    static func queryValue(_ request: Request, _ key: String) throws(ChatError) -> String? {
        let values = FormQuery(request.uri.query).values(key)
        guard values.count <= 1 else { throw ChatError.invalid("\(key) is given more than once") }
        return values.first
    }

    /// The query parameter `key` as a number of decimal digits (no sign, space or exponent), at least `min`.
    func queryInt(_ request: Request, _ key: String, min: Int) throws(ChatError) -> Int? {
        guard let raw = try Self.queryValue(request, key) else { return nil }
        // Digits past Int's range (10^30) are a number past every seq, as on the socket: taken as 2^53 - 1.
        let digits = !raw.isEmpty && raw.utf8.allSatisfy { $0 >= UInt8(ascii: "0") && $0 <= UInt8(ascii: "9") }
        let n = digits ? Int(raw) ?? Int.max : nil
        guard let n, n >= min else { throw ChatError.invalid("\(key) must be an integer >= \(min)") }
        return Swift.min(n, JSONValue.maxExactInteger)
    }

    /// Authenticates, applies the per-user REST write or read rate, reads a JSON body (for writes), runs `body`.
    func respond(
        _ request: Request, _ context: ChatRequestContext, write: Bool = false,
        _ handler: (Principal, JSONValue) async throws(ChatError) -> (HTTPResponse.Status, JSONValue)
    ) async -> Response {
        // A body refused before it was read to its end (its size, the user's byte budget) is not read on (Hummingbird
        // would read and drop the rest, up to what its head declared, before the next request): the connection ends
        // with the answer (found by an outside probe: refused from its `Content-Length`, a body sent all the same was
        // read in full).
        var bodyLeftUnread = false
        do throws(ChatError) {
            let principal: Principal
            do { principal = try await tokens.verify(EngineServer.bearer(request.headers[.authorization])) } catch {
                throw ChatError(.unauthenticated, error.message)
            }
            var body: JSONValue = .object([:])
            let key = principal.sessionKey
            let allowed = write ? restBuckets.withLock { $0.take(key) } : restReadBuckets.withLock { $0.take(key) }
            guard allowed else { throw ChatError(.rateLimited, "too many requests; slow down") }
            if write {
                if request.method == .post || request.method == .patch {
                    // The user's inbound budget (`--inbound-bytes-per-sec`): a body is read only while the budget is
                    // not in debt, and charged its size, so what one user's bodies cost to parse per second is bounded.
                    // The size the head declares is charged at once, before the body is read: bodies sent in parallel
                    // each find the others charged (charged once read, they all passed the check first).
                    // A body its head declares too large is refused before it is read, and before it costs anything
                    // (a client waiting for `100 Continue` was left waiting for its read deadline: an outside probe).
                    // Until it is read whole, a refusal leaves the body unread.
                    bodyLeftUnread = true
                    let declared = BoundedBodyReader.declaredLength(request) ?? 0
                    guard declared <= configuration.maxPayload else { throw Self.bodyTooLarge(configuration.maxPayload) }
                    let admitted = restInboundBuckets.withLock { buckets in
                        guard buckets.take(key) else { return false }
                        buckets.charge(key, Double(declared) - 1)
                        return true
                    }
                    guard admitted else { throw ChatError(.rateLimited, "too many request bytes; slow down") }
                    // Until the body has arrived, the connection may be closed for a newcomer at `--max-connections`.
                    let arriving = ClosableWhile()
                    connections.closable(context.channel) { arriving.isSet }
                    defer { arriving.clear() }
                    let buffer = try await readBody(request, declared: declared, key: key)
                    bodyLeftUnread = false
                    do { body = try JSONParser.parse(Array(buffer: buffer)) } catch { throw ChatError.invalid("body is not valid JSON: \(error.description)") }
                    guard case .object = body else { throw ChatError.invalid("body must be a JSON object") }
                }
            }
            let (status, json) = try await handler(principal, body)
            // An answer costs one more token of its kind per 64 KiB past the first (`historyBytesPerReadToken`): a
            // thread of 10,000 long member ids is a 2.6 MB object (5.1 MB of quotes or backslashes, which JSON escapes; ids hold no
            // control characters, which it writes as six bytes each), which one request must not buy at the request rate.
            let response = JSONWriter.encode(json)
            let extra = Double(response.count) / Double(max(1, configuration.broker.historyBytesPerReadToken)) - 1
            if extra > 0 {
                if write { restBuckets.withLock { $0.charge(key, extra) } } else { restReadBuckets.withLock { $0.charge(key, extra) } }
            }
            return Self.json(status, encoded: response)
        } catch {
            var response = Self.json(HTTPResponse.Status(code: error.httpStatus), error.restBody)
            // RFC 6750 §3 (found missing by an outside probe): a 401 names the scheme the API takes.
            if error.code == .unauthenticated { response.headers[.wwwAuthenticate] = "Bearer" }
            // Counted as a socket's refused event is (`chat_rate_limited_total`), and with the time after which a
            // token has come back (RFC 9110 §10.2.3): the buckets refill every second. (Neither was there: an outside
            // probe.)
            if error.code == .rateLimited {
                supervisor.stats.add(supervisor.stats.rateLimited)
                response.headers[.retryAfter] = "1"
            }
            if bodyLeftUnread {
                response.headers[.connection] = "close"
                context.closeAfterResponse()
            }
            return response
        }
    }

    /// Reads a write's body, at most `--max-payload` bytes. What goes past the `declared` length (already charged: all
    /// of a chunked body) is charged to the user's inbound budget as it is read, and a body read while the budget is in
    /// debt is refused there (`429`): bodies sent in parallel each find the others' bytes charged, so what one user's
    /// unfinished bodies hold is bounded by the budget, not by how many they send at once. (Found by an outside probe:
    /// charged only once complete, 700 parallel chunked bodies of 900 KB all passed the check and held 640 MB.)
    ///
    /// What small parts cost past their bytes (`BoundedBodyReader.minimumPartCost`) is always charged, but refuses a
    /// body in debt only past `smallPartSlack`: how TCP splits a declared body that was admitted is not the client's
    /// doing (CI saw admitted bodies refused, sent whole, because their last read was a few bytes long).
    private func readBody(_ request: Request, declared: Int, key: SessionKey) async throws(ChatError) -> ByteBuffer {
        let limit = configuration.maxPayload
        var overhead = 0
        do {
            return try await BoundedBodyReader(limit: limit).read(request.body) { before, buffer in
                // The bytes past the declared length (charged already), and what a small part costs past its bytes.
                let part = buffer.readableBytes
                let undeclared = max(0, before + part - max(declared, before))
                let partOverhead = BoundedBodyReader.cost(ofPart: part) - part
                overhead += partOverhead
                guard undeclared + partOverhead > 0 else { return }
                let wait = restInboundBuckets.withLock { $0.chargeReturningWait(key, Double(undeclared + partOverhead)) }
                if wait > 0 && (undeclared > 0 || overhead > Self.smallPartSlack) {
                    throw ChatError(.rateLimited, "too many request bytes; slow down")
                }
            }
        } catch let tooLarge as BoundedBodyReader.TooLarge {
            // Read up to the limit before it was refused: charged as much.
            restInboundBuckets.withLock { $0.charge(key, Double(max(0, limit - max(declared, tooLarge.read)))) }
            throw Self.bodyTooLarge(limit)
        } catch let error as ChatError {
            throw error
        } catch {
            throw ChatError.invalid("the request body could not be read")
        }
    }

    /// What one body's small parts may cost past their bytes before one read in debt refuses it: four small reads.
    static let smallPartSlack = 4 * BoundedBodyReader.minimumPartCost

    /// The refusal of a write whose body is (or is declared) over `limit` bytes.
    static func bodyTooLarge(_ limit: Int) -> ChatError {
        ChatError(.payloadTooLarge, "request body is larger than \(limit) bytes")
    }

    static func json(_ status: HTTPResponse.Status, _ value: JSONValue) -> Response {
        json(status, encoded: JSONWriter.encode(value))
    }

    static func json(_ status: HTTPResponse.Status, encoded: [UInt8]) -> Response {
        Response(status: status, headers: [.contentType: "application/json; charset=utf-8"], body: ResponseBody(byteBuffer: ByteBuffer(bytes: encoded)))
    }
}
