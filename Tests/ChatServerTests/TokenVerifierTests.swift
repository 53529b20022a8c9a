import Testing

@testable import ChatServer

/// The bearer token of an `Authorization` header, and the signature checked before anything of a token is parsed.
struct TokenVerifierTests {
    @Test func theBearerTokenIsReadByBytes() {
        #expect(EngineServer.bearer("Bearer abc.def.ghi") == "abc.def.ghi")
        #expect(EngineServer.bearer("bEaReR \t abc \t ") == "abc")
        #expect(EngineServer.bearer("  Bearer abc") == "abc")
        #expect(EngineServer.bearer("Bearer ") == "")
        #expect(EngineServer.bearer("Bearer") == nil)
        #expect(EngineServer.bearer("Bearer\tabc") == nil)
        #expect(EngineServer.bearer("Basic abc") == nil)
        #expect(EngineServer.bearer("Bearerx abc") == nil)
        #expect(EngineServer.bearer(nil) == nil)
        // At most one byte past the longest token is kept, so that it is refused as too long.
        let long = EngineServer.bearer("Bearer " + String(repeating: "a", count: 20_000) + " ")
        #expect(long?.utf8.count == TokenVerifier.maxTokenLength + 1)
        // Non-ASCII is kept as sent (and refused by the verifier).
        #expect(EngineServer.bearer("Bearer é.x.y") == "é.x.y")
    }

    @Test func onlyTokensTheSecretSignedPassTheSignatureCheck() async throws {
        let verifier = await TokenVerifier(secret: Array("secret-secret-secret-secret-32by".utf8))
        let token = try await verifier.mint(user: "alice", company: "acme", ttl: 60)
        #expect(verifier.isSigned(token))
        #expect(try await verifier.verify(token).userId == "alice")
        let other = await TokenVerifier(secret: Array("another-secret-another-secret-32".utf8))
        #expect(!other.isSigned(token))
        let parts = token.split(separator: ".").map(String.init)
        // A claim changed, or a signature cut, written another way or moved: refused before anything is parsed.
        #expect(!verifier.isSigned(parts[0] + "." + parts[1] + "x." + parts[2]))
        #expect(!verifier.isSigned(parts[0] + "." + parts[1] + "." + parts[2].dropLast()))
        #expect(!verifier.isSigned(parts[0] + "." + parts[1] + "." + parts[2] + "="))
        #expect(!verifier.isSigned(parts[0] + "." + parts[1] + "." + parts[2] + ".x"))
        #expect(!verifier.isSigned(parts[0] + parts[1] + "." + parts[2]))
        // A forged token with well-formed claims is refused as `invalid token` (where its cost went is measured by the
        // benchmarks, not here).
        await #expect(throws: TokenError.invalid) { try await other.verify(token) }
    }
}
