import Synchronization

/// The live user sessions, keyed by (company, user): one object per user while anyone uses it, so the session a
/// thread actor took for a member and the one a connecting device joins are the same. The registry holds them
/// weakly: a session lives while a thread actor has it among its members or a device of the user is connected
/// (a device holds its session), and goes with the last of them, so ids named in member lists do not pile up.
final class SessionRegistry: Sendable {
    private struct Entry {
        weak var session: UserSession?
    }

    private struct State {
        var entries: [SessionKey: Entry] = [:]
        /// Entries added since the last sweep of dead ones.
        var added = 0
    }

    private let state = Mutex(State())

    /// The session for `key`, creating it if none is alive.
    func session(for key: SessionKey) -> UserSession {
        state.withLock { s in
            if let existing = s.entries[key]?.session { return existing }
            let session = UserSession(key: key)
            s.entries[key] = Entry(session: session)
            s.added += 1
            // Dead entries are swept once as many entries were added as are kept: amortized O(1) per session.
            if s.added > max(1024, s.entries.count / 2) {
                s.entries = s.entries.filter { $0.value.session != nil }
                s.added = 0
            }
            return session
        }
    }

    func existing(_ key: SessionKey) -> UserSession? { state.withLock { $0.entries[key]?.session } }

    /// Whether `key`'s user has a live device on this node.
    func isOnline(_ key: SessionKey) -> Bool { existing(key)?.isOnline ?? false }

    func sessions(in company: CompanyID) -> [UserSession] {
        state.withLock { s in s.entries.compactMap { $0.key.companyId == company ? $0.value.session : nil } }
    }
}
