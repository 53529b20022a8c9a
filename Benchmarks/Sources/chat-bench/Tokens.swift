import Foundation
import JWTKit

/// The claims docs/PROTOCOL.md §2 requires: `sub`, `companyId`, `exp`.
struct BenchClaims: JWTPayload {
    var sub: SubjectClaim
    var companyId: String
    var exp: ExpirationClaim

    func verify(using algorithm: some JWTAlgorithm) async throws {}
}

/// Mints HS256 tokens with the broker's secret, so the harness needs nothing but a URL and the secret.
struct TokenMinter: Sendable {
    let keys: JWTKeyCollection
    let company: String

    init(secret: String, company: String) async throws(BenchError) {
        guard secret.utf8.count >= 32 else {
            throw BenchError("the JWT secret must be at least 32 bytes (brokers refuse shorter ones); pass --secret or set CHAT_JWT_SECRET")
        }
        let keys = JWTKeyCollection()
        await keys.add(hmac: HMACKey(from: Array(secret.utf8)), digestAlgorithm: .sha256)
        self.keys = keys
        self.company = company
    }

    /// A token for `user`, valid for `ttl` seconds (long enough to outlive any run).
    func token(user: String, ttl: Double = 6 * 3600) async throws -> String {
        let claims = BenchClaims(
            sub: SubjectClaim(value: user), companyId: company,
            exp: ExpirationClaim(value: .init(timeIntervalSinceNow: ttl)))
        return try await keys.sign(claims)
    }
}
