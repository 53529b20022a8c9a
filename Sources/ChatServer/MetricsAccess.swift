import ChatCore
import Crypto
import HTTPTypes
import Hummingbird

/// Who may read `GET /metrics`: anyone (the default: put it behind the proxy), or, with `--metrics-token-file`, only a
/// request with `Authorization: Bearer <that token>` (Prometheus: `authorization: {credentials_file: ...}`). The
/// token is compared by its SHA-256 digest, whose comparison takes the same time wherever the first difference is.
struct MetricsAccess: Sendable {
    private let digest: SHA256.Digest?

    init(token: [UInt8]?) {
        digest = token.map { SHA256.hash(data: $0) }
    }

    /// Whether a request with this `Authorization` header may read the metrics.
    func allows(_ authorization: String?) -> Bool {
        guard let digest else { return true }
        guard let presented = EngineServer.bearer(authorization) else { return false }
        return SHA256.hash(data: Array(presented.utf8)) == digest
    }

    /// The answer to a request that may not read them: `401` with the API's error body and the scheme to use.
    static func refusal(_ authorization: String?) -> Response {
        let reason = authorization == nil ? "/metrics needs Authorization: Bearer <metrics token>" : "wrong metrics token"
        var response = RESTRoutes.json(.unauthorized, ChatError(.unauthenticated, reason).restBody)
        response.headers[.wwwAuthenticate] = "Bearer realm=\"metrics\""
        return response
    }
}
