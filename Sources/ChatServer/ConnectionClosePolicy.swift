import HTTPTypes
import Hummingbird

/// Says `Connection: close` in the response to a request that asked for it (RFC 9112 §9.6): Hummingbird closes
/// such a connection after the response, and a client's connection pool (Node's keep-alive agent) only lets the
/// socket go when the response says so.
struct ConnectionClosePolicy<Context: RequestContext>: RouterMiddleware {
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        var response = try await next(request, context)
        if request.headers[.connection]?.lowercased() == "close" { response.headers[.connection] = "close" }
        return response
    }
}
