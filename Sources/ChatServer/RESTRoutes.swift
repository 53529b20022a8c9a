import ChatCore
import ChatJSON
import HTTPTypes
import Hummingbird
import NIOCore
import Synchronization

/// The REST API of PROTOCOL.md section 4, with the same company and membership checks as the socket path and
/// the same error codes (`{code, error}` with 400/401/403/404/413/429).
final class RESTRoutes: Sendable {
    let supervisor: Supervisor
    let tokens: TokenVerifier
    let configuration: ServerConfiguration
    let restBuckets = Mutex<[SessionKey: TokenBucket]>([:])

    init(supervisor: Supervisor, tokens: TokenVerifier, configuration: ServerConfiguration) {
        self.supervisor = supervisor
        self.tokens = tokens
        self.configuration = configuration
    }

    func register(on router: Router<BasicRequestContext>) {
        let chat = router.group("chat")
        chat.post("threads") { [self] request, _ in await respond(request, write: true) { principal, body throws(ChatError) in
            let kindName = body["type"]?.stringValue ?? ""
            guard let kind = ThreadKind(rawValue: kindName) else { throw ChatError.invalid("type must be \"direct\" or \"group\"") }
            guard let members = body["memberIds"]?.arrayValue else { throw ChatError.invalid("memberIds must be an array of user ids") }
            var ids: [UserID] = []
            for member in members {
                guard let id = member.stringValue, !id.isEmpty, id.utf8.count <= 256 else { throw ChatError.invalid("memberIds must be an array of user ids") }
                ids.append(id)
            }
            var name: String?
            if let raw = body["name"], !raw.isNull {
                guard let s = raw.stringValue, s.utf8.count <= 1024 else { throw ChatError.invalid("name must be a string of at most 1024 bytes") }
                name = s
            }
            let (summary, created) = try await supervisor.createThread(name: name, kind: kind, memberIds: ids, by: principal)
            return (created ? .created : .ok, .object(["thread": summary.json]))
        } }
        chat.get("threads") { [self] request, _ in await respond(request) { principal, _ throws(ChatError) in
            let threads = try await supervisor.listThreads(as: principal)
            return (.ok, .object(["threads": .array(threads.map(\.json))]))
        } }
        chat.get("threads/:id/messages") { [self] request, context in await respond(request) { principal, _ throws(ChatError) in
            let id = context.parameters.get("id") ?? ""
            let beforeSeq = try queryInt(request, "beforeSeq", min: 1)
            let limit = min(try queryInt(request, "limit", min: 1) ?? configuration.broker.defaultHistoryLimit, configuration.broker.maxHistoryLimit)
            let page = try await supervisor.withThread(id, as: principal) { actor throws(ChatError) in
                try await actor.history(beforeSeq: beforeSeq, limit: limit, by: principal)
            }
            return (.ok, .object(["messages": .array(page.messages.map(\.json)), "hasMore": .bool(page.hasMore)]))
        } }
        chat.post("threads/:id/members") { [self] request, context in await respond(request, write: true) { principal, body throws(ChatError) in
            let id = context.parameters.get("id") ?? ""
            guard let users = body["userIds"]?.arrayValue, !users.isEmpty else { throw ChatError.invalid("userIds must be a non-empty array of user ids") }
            var ids: [UserID] = []
            for user in users {
                guard let s = user.stringValue, !s.isEmpty, s.utf8.count <= 256 else { throw ChatError.invalid("userIds must be a non-empty array of user ids") }
                ids.append(s)
            }
            let summary = try await supervisor.withThread(id, as: principal) { actor throws(ChatError) in try await actor.addMembers(ids, by: principal) }
            return (.ok, .object(["thread": summary.json]))
        } }
        chat.delete("threads/:id/members/:userId") { [self] request, context in await respond(request, write: true) { principal, _ throws(ChatError) in
            let id = context.parameters.get("id") ?? ""
            let user = context.parameters.get("userId") ?? ""
            let summary = try await supervisor.withThread(id, as: principal) { actor throws(ChatError) in try await actor.removeMember(user, by: principal) }
            return (.ok, .object(["thread": summary.json]))
        } }
        chat.patch("messages/:id") { [self] request, context in await respond(request, write: true) { principal, body throws(ChatError) in
            let messageId = context.parameters.get("id") ?? ""
            guard let content = body["content"]?.stringValue, !content.isEmpty else { throw ChatError.invalid("content must be a non-empty string") }
            guard content.utf8.count <= configuration.broker.maxContent else {
                throw ChatError(.payloadTooLarge, "content is \(content.utf8.count) bytes; at most \(configuration.broker.maxContent) are allowed")
            }
            let threadId = try await supervisor.thread(ofMessage: messageId, as: principal)
            let (_, message) = try await supervisor.withThread(threadId, as: principal) { actor throws(ChatError) in
                try await actor.edit(messageId, content: content, by: principal)
            }
            return (.ok, .object(["message": message.json]))
        } }
        chat.delete("messages/:id") { [self] request, context in await respond(request, write: true) { principal, _ throws(ChatError) in
            let messageId = context.parameters.get("id") ?? ""
            let threadId = try await supervisor.thread(ofMessage: messageId, as: principal)
            let (seq, message) = try await supervisor.withThread(threadId, as: principal) { actor throws(ChatError) in
                try await actor.delete(messageId, by: principal)
            }
            return (.ok, .object(["success": .bool(true), "seq": .int(seq), "message": message.json]))
        } }
        chat.get("presence") { [self] request, _ in await respond(request) { principal, _ throws(ChatError) in
            let raw = request.uri.queryParameters.get("userIds") ?? ""
            let users = raw.split(separator: ",").map { String($0) }.filter { !$0.isEmpty }
            guard users.count <= configuration.broker.maxReceiptIds else { throw ChatError(.payloadTooLarge, "too many userIds") }
            let online = supervisor.presence(of: users, as: principal)
            return (.ok, .object(["online": .object(JSONObject(online.map { (key: $0.0, value: .bool($0.1)) }))]))
        } }
        chat.post("emit") { [self] request, _ in await respond(request, write: true) { principal, body throws(ChatError) in
            guard principal.isService else { throw ChatError(.forbidden, "only service tokens may emit") }
            guard let event = body["event"]?.stringValue, event.hasPrefix("app:"), event.utf8.count <= 256 else {
                throw ChatError.invalid("event must be a string starting with \"app:\"")
            }
            let data = body["data"] ?? .null
            let target: Supervisor.EmitTarget
            if let users = body["userIds"]?.arrayValue {
                target = .users(users.compactMap(\.stringValue))
            } else if let thread = body["threadId"]?.stringValue {
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

    func queryInt(_ request: Request, _ key: String, min: Int) throws(ChatError) -> Int? {
        guard let raw = request.uri.queryParameters.get(key), !raw.isEmpty else { return nil }
        guard let n = Int(raw), n >= min else { throw ChatError.invalid("\(key) must be an integer >= \(min)") }
        return n
    }

    /// Authenticates, reads a JSON body (for writes), applies the per-user REST write rate, runs `body`.
    func respond(
        _ request: Request, write: Bool = false,
        _ handler: (Principal, JSONValue) async throws(ChatError) -> (HTTPResponse.Status, JSONValue)
    ) async -> Response {
        do throws(ChatError) {
            let principal: Principal
            do { principal = try await tokens.verify(EngineServer.bearer(request.headers[.authorization])) } catch {
                throw ChatError(.unauthenticated, error.message)
            }
            var body: JSONValue = .object([:])
            if write {
                let allowed = restBuckets.withLock { map -> Bool in
                    var bucket = map[principal.sessionKey]
                        ?? TokenBucket(rate: configuration.broker.ratePerSecond, burst: configuration.broker.rateBurst)
                    let ok = bucket.take()
                    map[principal.sessionKey] = bucket
                    return ok
                }
                guard allowed else { throw ChatError(.rateLimited, "too many requests; slow down") }
                if request.method == .post || request.method == .patch {
                    let buffer: ByteBuffer
                    do { buffer = try await request.body.collect(upTo: configuration.maxPayload) } catch {
                        throw ChatError(.payloadTooLarge, "request body is larger than \(configuration.maxPayload) bytes")
                    }
                    do { body = try JSONParser.parse(Array(buffer: buffer)) } catch { throw ChatError.invalid("body is not valid JSON: \(error.description)") }
                    guard case .object = body else { throw ChatError.invalid("body must be a JSON object") }
                }
            }
            let (status, json) = try await handler(principal, body)
            return Self.json(status, json)
        } catch {
            return Self.json(HTTPResponse.Status(code: error.httpStatus), error.restBody)
        }
    }

    static func json(_ status: HTTPResponse.Status, _ value: JSONValue) -> Response {
        Response(
            status: status, headers: [.contentType: "application/json; charset=utf-8"],
            body: ResponseBody(byteBuffer: ByteBuffer(bytes: JSONWriter.encode(value))))
    }
}
