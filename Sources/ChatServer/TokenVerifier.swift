import ChatCore
import ChatJSON
import Crypto
import Foundation
import JWTKit
import SocketIOCodec

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
/// checked before the signature, so `none`, HS384/HS512 and RS256 confusion are refused. A header with `crit` is
/// refused too: it names extensions the token must not be accepted without (RFC 7515 §4.1.11), and the broker
/// understands none.
///
/// The signature is checked first, over the token's bytes, before any part is decoded or parsed: a token the secret
/// did not sign costs one HMAC over at most 8 KiB, whatever it holds. (Parsed first, a well-formed 8 KB token with a
/// wrong signature cost about 1 ms of CPU, and tokenless requests could keep both cores busy: an outside probe.)
public final class TokenVerifier: Sendable {
    private let keys: JWTKeyCollection
    private let key: SymmetricKey
    /// Tokens longer than this are refused without parsing.
    public static let maxTokenLength = 8192

    public init(secret: [UInt8]) async {
        let keys = JWTKeyCollection()
        await keys.add(hmac: HMACKey(from: secret), digestAlgorithm: .sha256)
        self.keys = keys
        key = SymmetricKey(data: secret)
    }

    /// Whether `token` may pass `verify`: at most `maxTokenLength` bytes of ASCII, signed with the secret (`isSigned`).
    /// What a token refused here would be refused for by `verify` is `invalid token`.
    func mayBeValid(_ token: String) -> Bool {
        token.utf8.count <= Self.maxTokenLength && token.utf8.allSatisfy({ $0 < 0x80 }) && isSigned(token)
    }

    /// Whether `token` is three base64url parts whose third is the HMAC-SHA256 of the first two (with the dot between)
    /// under the secret, written the one way base64url allows. Linear in the token, nothing parsed; compared in
    /// constant time.
    func isSigned(_ token: String) -> Bool {
        let bytes = Array(token.utf8)
        guard let first = bytes.firstIndex(of: UInt8(ascii: ".")),
            let second = bytes[(first + 1)...].firstIndex(of: UInt8(ascii: ".")),
            !bytes[(second + 1)...].contains(UInt8(ascii: ".")),
            let signature = Base64.decode(bytes[(second + 1)...], alphabet: .url, canonical: true)
        else { return false }
        return HMAC<SHA256>.isValidAuthenticationCode(signature, authenticating: bytes[..<second], using: key)
    }

    /// The principal of a valid token.
    public func verify(_ token: String?) async throws(TokenError) -> Principal {
        guard let token, !token.isEmpty else { throw .missing }
        // A compact JWS is base64url and dots: ASCII, so splitting it compares no grapheme clusters.
        guard mayBeValid(token) else { throw .invalid }
        let parts = token.split(separator: ".", omittingEmptySubsequences: false)
        // The header, and the claims' JSON, are read with the broker's parser first: its limits (stream-safe strings,
        // depth) hold before JWTKit decodes them, and a key named twice makes the token invalid (RFC 7515 §4 allows
        // refusing it): JWTKit's decoder takes a repeated claim's first value where JavaScript takes its last, so a
        // token with `"companyId":"X","companyId":"Y"` meant another company here than in a NestJS gateway. Each
        // part must be written the one way base64url allows (no padding, no spaces, no stray bits): otherwise one
        // token has several spellings, which a deny-list or cache of tokens would take for different tokens.
        guard parts.count == 3, let header = Base64.decode(parts[0].utf8, alphabet: .url, canonical: true),
            let headerJSON = try? JSONParser.parse(header, maxDepth: 4, refusingDuplicateKeys: true), headerJSON["alg"]?.stringValue == "HS256",
            headerJSON["crit"] == nil, let payload = Base64.decode(parts[1].utf8, alphabet: .url, canonical: true),
            let payloadJSON = try? JSONParser.parse(payload, refusingDuplicateKeys: true),
            Self.timeClaimsAreNumbers(payloadJSON)
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
        guard Self.isUsableId(claims.sub.value), Self.isUsableId(claims.companyId) else { throw .invalid }
        return Principal(userId: claims.sub.value, companyId: claims.companyId, isService: claims.role == "service")
    }

    /// `exp` and `nbf`, when present, are numbers: `"nbf": null` read as no `nbf` here, while the
    /// jsonwebtoken library of the NestJS gateway this broker replaces refuses it ("invalid nbf value"), and a token
    /// one of them refuses the other must refuse too.
    static func timeClaimsAreNumbers(_ claims: JSONValue) -> Bool {
        for name in ["exp", "nbf"] {
            guard let value = claims[name] else { continue }
            guard case .number = value else { return false }
        }
        return true
    }

    /// Whether `id` may be a token's `sub` or `companyId`. The ids are stored with messages and members: the same
    /// rules as ids a client sends (non-empty, no control character, 256 bytes, NFC: an id written another way must
    /// not name the same user or company in memory, `ClientCommand.isNFC`).
    public static func isUsableId(_ id: String) -> Bool {
        !id.isEmpty && id.utf8.count <= ClientCommand.maxIdLength && !ClientCommand.hasControlCharacter(id) && ClientCommand.isNFC(id)
    }

    /// Mints a token for `user` in `company`, valid for `ttl` seconds.
    public func mint(user: String, company: String, ttl: Double, role: String? = nil) async throws -> String {
        let claims = ChatClaims(
            sub: SubjectClaim(value: user), companyId: company,
            // A whole second (rounded up): some verifiers take only an integer NumericDate.
            exp: ExpirationClaim(value: Date(timeIntervalSince1970: (Date().timeIntervalSince1970 + ttl).rounded(.up))), nbf: nil, role: role)
        return try await keys.sign(claims)
    }
}
