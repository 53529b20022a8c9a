import Synchronization

/// Every user session since start, keyed by (company, user): one object per user, so the session a thread
/// actor took for a member and the one a connecting device joins are the same. Sessions are kept once created
/// (a few hundred bytes each) so thread actors can hold them without racing a session's teardown.
final class SessionRegistry: Sendable {
    private let sessions = Mutex<[SessionKey: UserSession]>([:])

    /// The session for `key`, creating it if needed; `created` tells whether it is new.
    func session(for key: SessionKey) -> (session: UserSession, created: Bool) {
        sessions.withLock { map in
            if let existing = map[key] { return (existing, false) }
            let session = UserSession(key: key)
            map[key] = session
            return (session, true)
        }
    }

    func existing(_ key: SessionKey) -> UserSession? { sessions.withLock { $0[key] } }

    func sessions(in company: CompanyID) -> [UserSession] {
        sessions.withLock { $0.values.filter { $0.key.companyId == company } }
    }
}
