import Testing

@testable import ChatCore

/// The registry holds sessions strongly and sweeps the ones only it holds: sessions in use survive every sweep, and
/// unused ones do not pile up.
@Suite struct SessionRegistryTests {
    static func key(_ n: Int) -> SessionKey { SessionKey(companyId: "acme", userId: "u\(n)") }

    @Test func sessionsInUseSurviveSweepsAndUnusedOnesAreDropped() {
        let registry = SessionRegistry()
        // Sessions someone holds (as a thread actor or a device would).
        let held = (0..<10).map { registry.session(for: Self.key($0)) }
        // Many sessions nobody keeps: enough to trigger several sweeps.
        for n in 10..<5_000 { _ = registry.session(for: Self.key(n)) }
        #expect(registry.count < 2_100, "unused sessions are swept (\(registry.count) kept)")
        for (n, session) in held.enumerated() {
            #expect(registry.session(for: Self.key(n)) === session, "a session in use is the one the registry returns")
            #expect(registry.existing(Self.key(n)) === session)
        }
    }
}
