import ChatJSON

/// What one node tells the others through a shared store: positions, small facts and, when they fit, the events
/// themselves (otherwise those are read from the store). A change is a hint; the store's tables are the truth.
public enum ClusterChange: Sendable, Equatable {
    /// The thread's log grew: its events `first...last` are committed (a message, an edit or a delete each).
    /// `events`, when the notice carries them, are exactly those events as committed (each message as it was at
    /// its event), so the other nodes need not read them back; `nil` when they did not fit.
    case advanced(ThreadID, first: Int, last: Int, events: [ThreadEvent]? = nil)
    /// A member's receipt watermarks moved, from `from` when the writing node said where they stood before (a node
    /// that activates the thread for this change reads the new watermarks in its snapshot, and tells the senders
    /// what lies between).
    case marks(ThreadID, UserID, MemberMarks, from: MemberMarks? = nil)
    /// A thread was created with `added` as its members, or members were added or removed, in a commit that began when
    /// the thread's log ended at `asOf`: a node applies it once it has fanned out the events up to `asOf`, and before
    /// any later one (those of the change's own commit included, as on the writing node). `membersVersion` is the
    /// thread's members version after the change (`StoreWrite.fence`), `nil` when the sender did not say (a node
    /// applying it then takes its members version for unknown).
    case membership(
        ThreadID, company: CompanyID, asOf: Int, created: Bool, added: [UserID], removed: [UserID], membersVersion: Int64? = nil)
    /// A member started or stopped typing (ephemeral: never stored).
    case typing(ThreadID, UserID, started: Bool)
    /// An application event from `POST /chat/emit`, for the live devices of this node that `target` selects.
    case emit(CompanyID, ClusterEmitTarget, event: String, data: JSONValue)
    /// The listener lost its connection and is back (or its consumer fell too far behind): anything may have been
    /// missed, so every active thread re-reads its state from the store, and the inactive threads the store names
    /// (`SharedStore.missed(by:since:)`) are delivered as if announced. `since` is the store's clock from which
    /// changes may have been missed; `nil` when the store cannot tell (its listener never heard an answer).
    case resync(since: Timestamp?)

    /// The thread the change is about, if any.
    public var threadId: ThreadID? {
        switch self {
        case .advanced(let id, _, _, _), .marks(let id, _, _, _), .membership(let id, _, _, _, _, _, _), .typing(let id, _, _): id
        case .emit(_, .thread(let id), _, _): id
        case .emit, .resync: nil
        }
    }
}

/// Where an emitted event goes on each node.
public enum ClusterEmitTarget: Sendable, Equatable {
    case users([UserID])
    case thread(ThreadID)
    case company
}

extension ClusterChange {
    /// The members version a membership change set (`nil` for other changes, or one without a version).
    var membersVersion: Int64? {
        if case .membership(_, _, _, _, _, _, let version) = self { version } else { nil }
    }
}

// MARK: - Wire form (JSON, as carried by a NOTIFY payload)

extension ClusterChange {
    /// The change as a compact JSON array whose first element names its kind.
    public var json: JSONValue {
        func strings(_ values: [String]) -> JSONValue { .array(values.map { .string($0) }) }
        switch self {
        case .advanced(let id, let first, let last, let events):
            // A node that predates carried events reads the first four elements and ignores the rest.
            let head: [JSONValue] = [.string("a"), .string(id), .int(first), .int(last)]
            return .array(events.map { head + [.array($0.map(\.record))] } ?? head)
        case .marks(let id, let user, let marks, let from):
            // A node that predates `from` reads the first five elements and ignores the rest.
            let head: [JSONValue] = [.string("m"), .string(id), .string(user), .int(marks.deliveredSeq), .int(marks.readSeq)]
            return .array(from.map { head + [.int($0.deliveredSeq), .int($0.readSeq)] } ?? head)
        case .membership(let id, let company, let asOf, let created, let added, let removed, let version):
            // A node that predates members versions reads the first seven elements and ignores the rest.
            let head: [JSONValue] = [.string("c"), .string(id), .string(company), .int(asOf), .bool(created), strings(added), strings(removed)]
            return .array(version.map { head + [.int(Int($0))] } ?? head)
        case .typing(let id, let user, let started):
            return .array([.string("t"), .string(id), .string(user), .bool(started)])
        case .emit(let company, let target, let event, let data):
            let targetJSON: JSONValue = switch target {
            case .users(let users): .array([.string("u"), strings(users)])
            case .thread(let id): .array([.string("t"), .string(id)])
            case .company: .array([.string("c")])
            }
            return .array([.string("e"), .string(company), targetJSON, .string(event), data])
        case .resync:
            // Never sent to another node; `since` is this node's own.
            return .array([.string("r")])
        }
    }

    /// Reads a change written by `json`; `nil` for anything else (a newer node's kind is skipped, not fatal).
    public init?(json: JSONValue) {
        guard let a = json.arrayValue, let kind = a.first?.stringValue else { return nil }
        func string(_ i: Int) -> String? { i < a.count ? a[i].stringValue : nil }
        func int(_ i: Int) -> Int? { i < a.count ? a[i].intValue : nil }
        /// A thread id as a client may name one (1 to 256 bytes, NFC, no U+0000): a notice a role that may NOTIFY
        /// wrote by hand cannot make a node ask the store about an id no thread can have.
        func thread(_ i: Int) -> ThreadID? {
            guard let id = string(i) else { return nil }
            return try? ClientCommand.boundedId(id, "threadId")
        }
        func strings(_ i: Int) -> [String]? {
            guard i < a.count, let values = a[i].arrayValue else { return nil }
            let out = values.compactMap(\.stringValue)
            return out.count == values.count ? out : nil
        }
        switch kind {
        case "a":
            guard let id = thread(1), let first = int(2), let last = int(3), first <= last else { return nil }
            self = .advanced(id, first: first, last: last, events: a.count > 4 ? Self.events(a[4], of: id, first: first, last: last) : nil)
        case "m":
            guard let id = thread(1), let user = string(2), let delivered = int(3), let read = int(4) else { return nil }
            let from = int(5).flatMap { d in int(6).map { MemberMarks(deliveredSeq: d, readSeq: $0) } }
            self = .marks(id, user, MemberMarks(deliveredSeq: delivered, readSeq: read), from: from)
        case "c":
            guard let id = thread(1), let company = string(2), let asOf = int(3), a.count > 4, let created = a[4].boolValue,
                let added = strings(5), let removed = strings(6)
            else { return nil }
            let version = int(7).map(Int64.init)
            self = .membership(id, company: company, asOf: asOf, created: created, added: added, removed: removed, membersVersion: version)
        case "t":
            guard let id = thread(1), let user = string(2), a.count > 3, let started = a[3].boolValue else { return nil }
            self = .typing(id, user, started: started)
        case "e":
            // Only what `POST /chat/emit` accepts: an `app:` event name of at most 256 bytes, without control or invisible
            // characters (a notice is not signed, so one sent by hand cannot name a protocol event such as
            // `chat:message`, nor a name the API refuses).
            guard let company = string(1), a.count > 4, let t = a[2].arrayValue, let tk = t.first?.stringValue, let event = string(3),
                event.hasPrefix("app:"), event.utf8.count <= ClientCommand.maxIdLength, !ClientCommand.hasControlCharacter(event)
            else {
                return nil
            }
            let target: ClusterEmitTarget
            switch tk {
            case "u":
                guard t.count > 1, let values = t[1].arrayValue else { return nil }
                target = .users(values.compactMap(\.stringValue))
            case "t":
                guard t.count > 1, let id = t[1].stringValue, let id = try? ClientCommand.boundedId(id, "threadId") else { return nil }
                target = .thread(id)
            case "c": target = .company
            default: return nil
            }
            self = .emit(company, target, event: event, data: a[4])
        case "r":
            self = .resync(since: nil)
        default:
            return nil
        }
    }

    /// Carried events, only if they are exactly the thread's events `first...last` (otherwise the receiver reads
    /// the range from the store, as if none were carried).
    private static func events(_ json: JSONValue, of thread: ThreadID, first: Int, last: Int) -> [ThreadEvent]? {
        guard let list = json.arrayValue, list.count == last - first + 1 else { return nil }
        var events: [ThreadEvent] = []
        events.reserveCapacity(list.count)
        for (i, item) in list.enumerated() {
            // A new message is at its own seq; an edit or delete names an earlier message.
            guard let event = ThreadEvent(record: item), event.seq == first + i, event.message.threadId == thread,
                event.kind == .message ? event.message.seq == event.seq : event.message.seq < event.seq
            else { return nil }
            events.append(event)
        }
        return events
    }
}
