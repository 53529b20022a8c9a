import HTTPTypes
import Hummingbird

/// Which responses end their HTTP/1 connection, and say so with `Connection: close` (RFC 9112 §9.6):
/// - the response to a request that asked for it: Hummingbird closes such a connection after the response, and a
///   client's connection pool (Node's keep-alive agent) only lets the socket go when the response says so;
/// - the response to a request with a body the broker did not read: a refusal (any status from 400), or a method
///   whose routes read no body (`GET`, `DELETE`, ...). Hummingbird would read such a body to its end to keep the
///   connection, at whatever pace the client sends and past the inbound budget: a refused `POST` declaring 10 GB
///   was read at 580 MB/s until the request's deadline (found by an outside probe). The connection's input is closed
///   instead (`ChatRequestContext.closeAfterResponse`), as an Engine.IO refusal's is.
struct ConnectionClosePolicy: RouterMiddleware {
    typealias Context = ChatRequestContext

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        var response = try await next(request, context)
        if request.headers[.connection]?.lowercased() == "close" { response.headers[.connection] = "close" }
        let declaresBody = request.headers[.transferEncoding] != nil || (request.headers[.contentLength].flatMap { Int($0) } ?? 0) > 0
        let bodyRead = request.method == .post || request.method == .patch
        if declaresBody, response.status.code >= 400 || !bodyRead {
            response.headers[.connection] = "close"
            context.closeAfterResponse()
        }
        return response
    }
}
