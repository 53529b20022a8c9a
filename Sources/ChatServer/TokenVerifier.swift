import ChatCore
import ChatJSON
import Foundation
import JWTKit

/// The claims of a ChatBroker token: `sub`, `companyId`, `exp`, optional `nbf` and `role`.
struct ChatClaims: JWTPayload {
    var sub: SubjectClaim
    var companyId: String
    var exp: ExpirationClaim
    var nbf: NotBeforeClaim?
    var role: String?

    func verify(using algorithm: some JWTAlgorithm) async throws {
        try exp.verifyNotExpired()
        try nbf?.verifyNotBefore()
    }
}

/// Why a token was refused; `message` is what the client is told (`missing token`, `invalid token`, `token expired`).
public struct TokenError: Error, Sendable, Equatable {
    public let message: String
    public static let missing = TokenError(message: "missing token")
    public static let invalid = TokenError(message: "invalid token")
    public static let expired = TokenError(message: "token expired")
}

/// Verifies and mints HS256 tokens with the configured secret. Only HS256 is accepted: the header's `alg` is
/// checked before the signature, so `none`, HS384/HS512 and RS256 confusion are refused.
public final class TokenVerifier: Sendable {
    private let keys: JWTKeyCollection
    /// Tokens longer than this are refused without parsing.
    public static let maxTokenLength = 8192

    public init(secret: [UInt8]) async {
        let keys = JWTKeyCollection()
        await keys.add(hmac: HMACKey(from: secret), digestAlgorithm: .sha256)
        self.keys = keys
    }

    /// The principal of a valid token.
    public func verify(_ token: String?) async throws(TokenError) -> Principal {
        guard let token, !token.isEmpty else { throw .missing }
        guard token.utf8.count <= Self.maxTokenLength else { throw .invalid }
        let parts = token.split(separator: ".", omittingEmptySubsequences: false)
        guard parts.count == 3, let header = Self.base64URLDecode(parts[0]),
            let headerJSON = try? JSONParser.parse(header, maxDepth: 4), headerJSON["alg"]?.stringValue == "HS256"
        else { throw .invalid }
        let claims: ChatClaims
        do {
            claims = try await keys.verify(token, as: ChatClaims.self)
        } catch let error as JWTError {
            if error.errorType == .claimVerificationFailure, error.failedClaim is ExpirationClaim { throw .expired }
            throw .invalid
        } catch {
            throw .invalid
        }
        guard !claims.sub.value.isEmpty, !claims.companyId.isEmpty else { throw .invalid }
        return Principal(userId: claims.sub.value, companyId: claims.companyId, isService: claims.role == "service")
    }

    /// Mints a token for `user` in `company`, valid for `ttl` seconds.
    public func mint(user: String, company: String, ttl: Double, role: String? = nil) async throws -> String {
        let claims = ChatClaims(
            sub: SubjectClaim(value: user), companyId: company,
            exp: ExpirationClaim(value: .init(timeIntervalSinceNow: ttl)), nbf: nil, role: role)
        return try await keys.sign(claims)
    }

    static func base64URLDecode(_ text: Substring) -> [UInt8]? {
        var values: [UInt8] = []
        values.reserveCapacity(text.utf8.count)
        for c in text.utf8 {
            switch c {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"): values.append(c - 65)
            case UInt8(ascii: "a")...UInt8(ascii: "z"): values.append(c - 97 + 26)
            case UInt8(ascii: "0")...UInt8(ascii: "9"): values.append(c - 48 + 52)
            case UInt8(ascii: "-"), UInt8(ascii: "+"): values.append(62)
            case UInt8(ascii: "_"), UInt8(ascii: "/"): values.append(63)
            case UInt8(ascii: "="): continue
            default: return nil
            }
        }
        var out: [UInt8] = []
        var i = 0
        while i + 1 < values.count {
            let a = values[i], b = values[i + 1]
            out.append(a << 2 | b >> 4)
            if i + 2 < values.count {
                let c = values[i + 2]
                out.append((b & 0x0F) << 4 | c >> 2)
                if i + 3 < values.count { out.append((c & 0x03) << 6 | values[i + 3]) }
            }
            i += 4
        }
        return out
    }
}
