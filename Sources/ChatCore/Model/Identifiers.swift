/// A user id as carried in a token's `sub` claim.
public typealias UserID = String
/// A company id as carried in a token's `companyId` claim; a hard tenancy boundary.
public typealias CompanyID = String
/// A thread id (a lowercase UUID for threads created here).
public typealias ThreadID = String
/// A message id (a lowercase UUID).
public typealias MessageID = String

/// Who a connection or request acts as: a user inside one company, optionally a service.
public struct Principal: Sendable, Hashable {
    public var userId: UserID
    public var companyId: CompanyID
    /// `true` for tokens with the claim `role: "service"` (may send `System` messages and use `/chat/emit`).
    public var isService: Bool

    public init(userId: UserID, companyId: CompanyID, isService: Bool = false) {
        self.userId = userId
        self.companyId = companyId
        self.isService = isService
    }

    /// The key that identifies this user inside its company: a user id means nothing outside its company.
    public var sessionKey: SessionKey { SessionKey(companyId: companyId, userId: userId) }
}

/// A user scoped to its company: the identity user sessions are keyed by.
public struct SessionKey: Sendable, Hashable {
    public var companyId: CompanyID
    public var userId: UserID
    public init(companyId: CompanyID, userId: UserID) {
        self.companyId = companyId
        self.userId = userId
    }
}
