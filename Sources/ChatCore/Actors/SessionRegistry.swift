import Synchronization

/// The live user sessions, keyed by (company, user): one object per user while anyone uses it, so the session a
/// thread actor took for a member and the one a connecting device joins are the same. A session is in use while a
/// thread actor has it among its members or a device of the user is connected (a device holds its session). The
/// registry holds sessions strongly (a weak reference would send every retain of a session, one per member per
/// fanned-out event, down the runtime's slow path) and drops the ones only it still holds in amortized sweeps, so ids
/// named in member lists do not pile up.
final class SessionRegistry: Sendable {
    private struct State {
        var sessions: [SessionKey: UserSession] = [:]
        /// Sessions added since the last sweep.
        var added = 0
    }

    private let state = Mutex(State())

    /// The session for `key`, creating it if there is none.
    func session(for key: SessionKey) -> UserSession {
        state.withLock { s in
            if let existing = s.sessions[key] { return existing }
            let session = UserSession(key: key)
            s.sessions[key] = session
            s.added += 1
            // Sessions only the registry holds are swept once as many were added as are kept: amortized O(1) each.
            if s.added > max(1024, s.sessions.count / 2) {
                Self.sweep(&s)
            }
            return session
        }
    }

    /// Drops the sessions nobody but the registry holds. No other reference to such a session exists, and a new one
    /// can only come from the registry, under this lock, so the check cannot race.
    private static func sweep(_ s: inout State) {
        var unused: [SessionKey] = []
        var index = s.sessions.values.startIndex
        while index != s.sessions.values.endIndex {
            if isKnownUniquelyReferenced(&s.sessions.values[index]) { unused.append(s.sessions.keys[index]) }
            s.sessions.values.formIndex(after: &index)
        }
        for key in unused { s.sessions.removeValue(forKey: key) }
        s.added = 0
    }

    func existing(_ key: SessionKey) -> UserSession? { state.withLock { $0.sessions[key] } }

    /// Whether `key`'s user has a live device on this node.
    func isOnline(_ key: SessionKey) -> Bool { existing(key)?.isOnline ?? false }

    /// The sessions of `company` that have a live device.
    func sessions(in company: CompanyID) -> [UserSession] {
        state.withLock { s in s.sessions.compactMap { $0.key.companyId == company && $0.value.hasDevices ? $0.value : nil } }
    }

    /// Every user with a live device on this node.
    func onlineKeys() -> [SessionKey] {
        state.withLock { s in s.sessions.compactMap { $0.value.hasDevices ? $0.key : nil } }
    }

    /// How many sessions the registry holds (tests).
    var count: Int { state.withLock { $0.sessions.count } }
}
