import ChatJSON

/// `direct` (exactly two members) or `group`.
public enum ThreadKind: String, Sendable {
    case direct
    case group
}

/// A thread's fixed description: it belongs to exactly one company for its whole life.
public struct ThreadInfo: Sendable, Equatable {
    public var id: ThreadID
    public var companyId: CompanyID
    public var name: String?
    public var kind: ThreadKind
    public var createdBy: UserID
    public var createdAt: Timestamp

    public init(id: ThreadID, companyId: CompanyID, name: String?, kind: ThreadKind, createdBy: UserID, createdAt: Timestamp) {
        self.id = id
        self.companyId = companyId
        self.name = name
        self.kind = kind
        self.createdBy = createdBy
        self.createdAt = createdAt
    }
}

/// A member's receipt watermarks: every message up to `deliveredSeq` was delivered, up to `readSeq` read.
public struct MemberMarks: Sendable, Equatable {
    public var deliveredSeq: Int
    public var readSeq: Int
    public init(deliveredSeq: Int = 0, readSeq: Int = 0) {
        self.deliveredSeq = deliveredSeq
        self.readSeq = readSeq
    }

    /// These marks raised by `other`: each watermark the larger of the two (they never go back), and delivered never
    /// below read (what a member read was delivered to it).
    public func raised(by other: MemberMarks) -> MemberMarks {
        let read = max(readSeq, other.readSeq)
        return MemberMarks(deliveredSeq: max(deliveredSeq, other.deliveredSeq, read), readSeq: read)
    }
}

/// A thread as one member sees it in a listing (`GET /chat/threads`).
public struct ThreadSummary: Sendable {
    public var info: ThreadInfo
    public var members: [UserID]
    public var lastSeq: Int
    public var lastMessage: Message?
    public var readSeq: Int
    public var unreadCount: Int

    /// The `{thread}` object of `chat:thread:created` and the REST answers.
    public var json: JSONValue {
        .object([
            "id": .string(info.id),
            "companyId": .string(info.companyId),
            "name": .optional(info.name),
            "type": .string(info.kind.rawValue),
            "createdBy": .string(info.createdBy),
            "createdAt": .string(info.createdAt.iso8601),
            "members": .array(members.map { .string($0) }),
            "lastSeq": .int(lastSeq),
            "lastMessage": lastMessage?.json ?? .null,
            "readSeq": .int(readSeq),
            "unreadCount": .int(unreadCount),
        ])
    }
}
