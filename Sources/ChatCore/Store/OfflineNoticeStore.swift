/// Which pending offline notice: one per (thread, message, user).
public struct OfflineNoticeKey: Sendable, Hashable {
    public var thread: ThreadID
    public var messageId: MessageID
    public var userId: UserID

    public init(thread: ThreadID, messageId: MessageID, userId: UserID) {
        self.thread = thread
        self.messageId = messageId
        self.userId = userId
    }
}

/// A pending offline notice as the store holds it, with what deciding and sending it needs: the message as it is now
/// and the user's receipt marks in the thread.
public struct OfflineNotice: Sendable {
    public var key: OfflineNoticeKey
    public var companyId: CompanyID
    /// The message as it is now; `nil` if it is gone.
    public var message: Message?
    /// The user's receipt marks in the thread; `nil` if the user is no longer a member.
    public var marks: MemberMarks?
    /// Attempts made so far (0 before the first request).
    public var attempts: Int
    /// When the notice was written (with its message).
    public var queuedAt: Timestamp

    public init(key: OfflineNoticeKey, companyId: CompanyID, message: Message?, marks: MemberMarks?, attempts: Int, queuedAt: Timestamp) {
        self.key = key
        self.companyId = companyId
        self.message = message
        self.marks = marks
        self.attempts = attempts
        self.queuedAt = queuedAt
    }

    /// Whether the notice need not be sent: the user read the message or got it on a device (receipt marks at or
    /// past its seq), left the thread, or the message is gone or deleted.
    public var isMoot: Bool {
        guard let message, message.deletedAt == nil, let marks else { return true }
        return marks.readSeq >= message.seq || marks.deliveredSeq >= message.seq
    }
}

/// A store that keeps offline notices (`StoreWrite.offlineNotice`) as a transactional outbox: a notice is written in
/// the transaction that stores its message, so a crash between the commit and the webhook request loses nothing.
/// Several dispatchers (one per node) may share the outbox: a claim leases the notices it returns, so another
/// dispatcher skips them until the lease ends; a dispatcher that dies leaves them to be claimed again once it has.
public protocol OfflineNoticeStore: MessageStore {
    /// Up to `limit` notices that are due (oldest due first), each leased for `lease` seconds: none of them is
    /// returned by another claim before the lease ends or the notice is settled.
    func claimOfflineNotices(limit: Int, lease: Double) async throws -> [OfflineNotice]
    /// Removes the notices in `done` (sent, coalesced or dropped) and puts each of `retry` back, due `after`
    /// seconds from now with one more attempt counted.
    func settleOfflineNotices(done: [OfflineNoticeKey], retry: [(key: OfflineNoticeKey, after: Double)]) async throws
    /// How many notices are pending (due or not).
    func pendingOfflineNotices() async throws -> Int
}
