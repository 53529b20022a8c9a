import ChatJSON

/// A failure that becomes a wire error: a stable `code` from docs/PROTOCOL.md §7 and a human-readable sentence.
public struct ChatError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The machine-readable failure codes of the contract.
    public enum Code: String, Sendable {
        case unauthenticated
        case invalidPayload = "invalid_payload"
        case notFound = "not_found"
        case notAMember = "not_a_member"
        case forbidden
        case payloadTooLarge = "payload_too_large"
        case rateLimited = "rate_limited"
        case `internal`
        /// Not part of the wire contract: the thread actor was passivated while the command was routed; the
        /// supervisor retries on a fresh actor and never lets this escape.
        case retired
        /// Not part of the wire contract either: a membership change was stored, then its actor retired (another
        /// command's write failed) before it could answer; the supervisor asks the thread's next actor for the answer.
        case storedThenRetired
    }

    public var code: Code
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { "\(code.rawValue): \(message)" }

    /// The HTTP status REST answers with for this error.
    public var httpStatus: Int {
        switch code {
        case .unauthenticated: 401
        case .invalidPayload: 400
        case .notFound: 404
        case .notAMember, .forbidden: 403
        case .payloadTooLarge: 413
        case .rateLimited: 429
        case .internal, .retired, .storedThenRetired: 500
        }
    }

    /// The Socket.IO acknowledgement body: `{success:false, code, error}`.
    public var ackBody: JSONValue {
        .object(["success": .bool(false), "code": .string(code.rawValue), "error": .string(message)])
    }

    /// The REST body: `{code, error}`.
    public var restBody: JSONValue {
        .object(["code": .string(code.rawValue), "error": .string(message)])
    }

    public static func invalid(_ message: String) -> ChatError { ChatError(.invalidPayload, message) }
    public static let threadNotFound = ChatError(.notFound, "thread not found")
    public static let messageNotFound = ChatError(.notFound, "message not found")
    public static let notAMember = ChatError(.notAMember, "you are not a member of this thread")
    public static let storeFailure = ChatError(.internal, "the message store could not save the change; nothing was acknowledged")
    static let retired = ChatError(.retired, "thread actor retired")
    static let storedThenRetired = ChatError(.storedThenRetired, "the change was stored; thread actor retired before answering")
}
