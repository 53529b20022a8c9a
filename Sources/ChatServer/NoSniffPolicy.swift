import HTTPTypes
import Hummingbird

/// Says `X-Content-Type-Options: nosniff` on every answer: the REST API's JSON, the Engine.IO polling payloads
/// (`text/plain`, which hold text clients sent) and the console, so that no browser takes a body for another type
/// than it is labelled (found missing on polling answers by an outside probe).
struct NoSniffPolicy<Context: RequestContext>: RouterMiddleware {
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        var response: Response
        do { response = try await next(request, context) } catch let error as any HTTPResponseError {
            response = try error.response(from: request, context: context)
        }
        response.headers[.xContentTypeOptions] = "nosniff"
        return response
    }
}

extension HTTPField.Name {
    /// `X-Content-Type-Options` (not among HTTPTypes' names).
    static let xContentTypeOptions = HTTPField.Name("X-Content-Type-Options")!
}
