import ChatJSON
import Hummingbird

/// Answers a request that no route matches with the API's error body, `404 {"code":"not_found","error":…}`, instead
/// of an empty 404: every error of the HTTP API has the documented `{code, error}` shape, unknown paths included.
struct NotFoundPolicy<Context: RequestContext>: RouterMiddleware {
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let error as HTTPError where error.status == .notFound {
            return RESTRoutes.json(.notFound, .object(["code": .string("not_found"), "error": .string("no such route")]))
        }
    }
}
