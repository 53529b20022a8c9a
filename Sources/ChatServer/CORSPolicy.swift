import HTTPTypes
import Hummingbird

/// CORS for `/socket.io/` and `/chat/*`: `*` or an allow-list of origins; answers preflight `OPTIONS` itself.
struct CORSPolicy<Context: RequestContext>: RouterMiddleware {
    let origins: [String]

    func allowedOrigin(for request: Request) -> String? {
        if origins.contains("*") { return "*" }
        guard let origin = request.headers[.origin], origins.contains(origin) else { return nil }
        return origin
    }

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        let allowed = allowedOrigin(for: request)
        if request.method == .options {
            var headers: HTTPFields = [:]
            if let allowed {
                headers[.accessControlAllowOrigin] = allowed
                headers[.accessControlAllowMethods] = "GET, POST, PATCH, DELETE, OPTIONS"
                headers[.accessControlAllowHeaders] = "Authorization, Content-Type"
                headers[.accessControlMaxAge] = "86400"
                if allowed != "*" { headers[.vary] = "Origin" }
            }
            return Response(status: .noContent, headers: headers)
        }
        var response: Response
        do { response = try await next(request, context) } catch let error as any HTTPResponseError {
            response = try error.response(from: request, context: context)
        }
        if let allowed {
            response.headers[.accessControlAllowOrigin] = allowed
            if allowed != "*" { response.headers[.vary] = "Origin" }
        }
        return response
    }
}
