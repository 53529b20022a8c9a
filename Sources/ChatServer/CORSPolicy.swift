import HTTPTypes
import Hummingbird

/// CORS for `/socket.io/` and `/chat/*`: `*` or an allow-list of origins; answers preflight `OPTIONS` itself. Other
/// paths (`/metrics`, `/console`, `/health`, `/openapi.json`) get no CORS header: another site's page cannot read them.
struct CORSPolicy<Context: RequestContext>: RouterMiddleware {
    let origins: [String]

    /// Whether CORS applies to `path`: the Engine.IO endpoint and the REST API.
    static func covers(_ path: String) -> Bool {
        let bytes = path.utf8
        func under(_ prefix: String) -> Bool {
            bytes.starts(with: prefix.utf8) && (bytes.count == prefix.utf8.count || bytes.dropFirst(prefix.utf8.count).first == UInt8(ascii: "/"))
        }
        return under("/socket.io") || under("/chat")
    }

    func allowedOrigin(for request: Request) -> String? {
        if origins.contains("*") { return "*" }
        guard let origin = request.headers[.origin], origins.contains(origin) else { return nil }
        return origin
    }

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        guard Self.covers(request.uri.path) else { return try await next(request, context) }
        let allowed = allowedOrigin(for: request)
        if request.method == .options {
            var headers: HTTPFields = [:]
            if let allowed {
                headers[.accessControlAllowOrigin] = allowed
                if allowed != "*" { headers[.accessControlAllowCredentials] = "true" }
                headers[.accessControlAllowMethods] = "GET, POST, PATCH, DELETE, OPTIONS"
                headers[.accessControlAllowHeaders] = Self.allowedHeaders(request.headers[.accessControlRequestHeaders])
                headers[.accessControlMaxAge] = "86400"
            }
            headers[.vary] = variesByOrigin ? "Origin, Access-Control-Request-Headers" : "Access-Control-Request-Headers"
            return Response(status: .noContent, headers: headers)
        }
        var response: Response
        do { response = try await next(request, context) } catch let error as any HTTPResponseError {
            response = try error.response(from: request, context: context)
        }
        if let allowed {
            response.headers[.accessControlAllowOrigin] = allowed
            // A listed origin may send its cookies (`withCredentials`): the cookie a load balancer pins a polling
            // session with (socket.io's `cors.credentials`). Nothing here authenticates by cookie, so they grant it
            // nothing. Never with `*`, which browsers refuse with credentials.
            if allowed != "*" { response.headers[.accessControlAllowCredentials] = "true" }
        }
        if variesByOrigin && !response.headers[values: .vary].contains(where: { $0.caseInsensitiveCompare("Origin") == .orderedSame }) {
            response.headers.append(HTTPField(name: .vary, value: "Origin"))
        }
        return response
    }

    /// The headers a preflight allows: those it asks for (`Access-Control-Request-Headers`), as socket.io's `cors`
    /// answers, so that a browser client's `extraHeaders` are not blocked (an outside contract probe); a list that is not
    /// header names (or over 1 KiB) gets `Authorization, Content-Type`, the headers the API reads.
    static func allowedHeaders(_ requested: String?) -> String {
        let fallback = "Authorization, Content-Type"
        guard let requested, !requested.isEmpty, requested.utf8.count <= 1024 else { return fallback }
        // RFC 9110 §5.6.2 tokens, separated by commas and optional spaces.
        let names = requested.utf8.split(separator: UInt8(ascii: ","), omittingEmptySubsequences: false).map {
            $0.drop { $0 == UInt8(ascii: " ") || $0 == UInt8(ascii: "\t") }.reversed().drop { $0 == UInt8(ascii: " ") || $0 == UInt8(ascii: "\t") }
        }
        let token = Set("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ".utf8)
        guard names.allSatisfy({ !$0.isEmpty && $0.allSatisfy(token.contains) }) else { return fallback }
        return requested
    }

    /// With an allow-list, every answer depends on the request's `Origin`, those without the CORS header too: each says
    /// `Vary: Origin`, so that no cache hands an answer made for one origin (or for none) to another (the Fetch
    /// standard's advice). Before, only answers to a listed origin said it.
    private var variesByOrigin: Bool { !origins.contains("*") }
}
