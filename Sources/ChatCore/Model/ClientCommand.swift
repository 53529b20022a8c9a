import ChatJSON

/// A validated `chat:send` payload.
public struct SendRequest: Sendable, Equatable {
    public var threadId: ThreadID
    public var content: String
    public var type: MessageType
    public var attachmentUrl: String?
    public var attachmentType: String?
    public var tempId: String?

    public init(
        threadId: ThreadID, content: String, type: MessageType = .text, attachmentUrl: String? = nil,
        attachmentType: String? = nil, tempId: String? = nil
    ) {
        self.threadId = threadId
        self.content = content
        self.type = type
        self.attachmentUrl = attachmentUrl
        self.attachmentType = attachmentType
        self.tempId = tempId
    }
}

/// A decoded, validated client event of the `/chat` namespace.
public enum ClientCommand: Sendable, Equatable {
    case send(SendRequest)
    case join(ThreadID)
    case leave(ThreadID)
    case delivered(ThreadID, [MessageID])
    case markRead(ThreadID, upToSeq: Int?)
    case typingStart(ThreadID)
    case typingStop(ThreadID)
    case edit(ThreadID, MessageID, content: String)
    case delete(ThreadID, MessageID)
    case history(ThreadID, beforeSeq: Int?, limit: Int)
    case sync([SyncCursor])

    /// One thread of a `chat:sync` request.
    public struct SyncCursor: Sendable, Equatable {
        public var threadId: ThreadID
        public var afterSeq: Int
        public init(threadId: ThreadID, afterSeq: Int) {
            self.threadId = threadId
            self.afterSeq = afterSeq
        }
    }

    /// How the command is rate limited.
    public enum RateClass: Sendable { case write, signal, read }

    public var rateClass: RateClass {
        switch self {
        case .send, .edit, .delete: .write
        case .delivered, .markRead, .typingStart, .typingStop: .signal
        default: .read
        }
    }

    static let maxIdLength = 256
    static let maxUrlLength = 4096
    static let maxSyncThreads = 1000

    /// Validates `data` for `event`; every failure is `invalid_payload` or `payload_too_large` with a sentence.
    public static func parse(event: String, data: JSONValue?, configuration: BrokerConfiguration) throws(ChatError) -> ClientCommand {
        guard let data, case .object = data else {
            throw ChatError.invalid("\(event) expects an object payload")
        }
        switch event {
        case "chat:send":
            let threadId = try id(data, "threadId")
            guard let content = data["content"]?.stringValue else { throw ChatError.invalid("content must be a string") }
            guard content.utf8.count <= configuration.maxContent else {
                throw ChatError(.payloadTooLarge, "content is \(content.utf8.count) bytes; at most \(configuration.maxContent) are allowed")
            }
            var type = MessageType.text
            if let raw = data["type"], !raw.isNull {
                guard let name = raw.stringValue, let parsed = MessageType(rawValue: name) else {
                    throw ChatError.invalid("type must be one of Text, Image, File, System")
                }
                type = parsed
            }
            let attachmentUrl = try optionalString(data, "attachmentUrl", max: maxUrlLength)
            let attachmentType = try optionalString(data, "attachmentType", max: maxIdLength)
            let tempId = try optionalString(data, "tempId", max: maxIdLength)
            if content.isEmpty && attachmentUrl == nil {
                throw ChatError.invalid("content must not be empty unless an attachment is given")
            }
            return .send(SendRequest(threadId: threadId, content: content, type: type, attachmentUrl: attachmentUrl, attachmentType: attachmentType, tempId: tempId))
        case "chat:join": return .join(try id(data, "threadId"))
        case "chat:leave": return .leave(try id(data, "threadId"))
        case "chat:typing:start": return .typingStart(try id(data, "threadId"))
        case "chat:typing:stop": return .typingStop(try id(data, "threadId"))
        case "chat:delivered":
            let threadId = try id(data, "threadId")
            guard let items = data["messageIds"]?.arrayValue else { throw ChatError.invalid("messageIds must be an array of strings") }
            guard items.count <= configuration.maxReceiptIds else {
                throw ChatError(.payloadTooLarge, "at most \(configuration.maxReceiptIds) messageIds per receipt")
            }
            var ids: [MessageID] = []
            ids.reserveCapacity(items.count)
            for item in items {
                guard let s = item.stringValue, !s.isEmpty, s.utf8.count <= maxIdLength else {
                    throw ChatError.invalid("messageIds must be an array of strings")
                }
                ids.append(s)
            }
            return .delivered(threadId, ids)
        case "chat:mark-read":
            return .markRead(try id(data, "threadId"), upToSeq: try optionalInt(data, "upToSeq", min: 0))
        case "chat:edit":
            let threadId = try id(data, "threadId")
            let messageId = try id(data, "messageId")
            guard let content = data["content"]?.stringValue, !content.isEmpty else {
                throw ChatError.invalid("content must be a non-empty string")
            }
            guard content.utf8.count <= configuration.maxContent else {
                throw ChatError(.payloadTooLarge, "content is \(content.utf8.count) bytes; at most \(configuration.maxContent) are allowed")
            }
            return .edit(threadId, messageId, content: content)
        case "chat:delete":
            return .delete(try id(data, "threadId"), try id(data, "messageId"))
        case "chat:history":
            let threadId = try id(data, "threadId")
            let beforeSeq = try optionalInt(data, "beforeSeq", min: 1)
            let limit = try optionalInt(data, "limit", min: 1) ?? configuration.defaultHistoryLimit
            return .history(threadId, beforeSeq: beforeSeq, limit: min(limit, configuration.maxHistoryLimit))
        case "chat:sync":
            guard let items = data["threads"]?.arrayValue else { throw ChatError.invalid("threads must be an array of {threadId, afterSeq}") }
            guard items.count <= maxSyncThreads else { throw ChatError(.payloadTooLarge, "at most \(maxSyncThreads) threads per sync") }
            var cursors: [SyncCursor] = []
            for item in items {
                guard case .object = item else { throw ChatError.invalid("threads must be an array of {threadId, afterSeq}") }
                cursors.append(SyncCursor(threadId: try id(item, "threadId"), afterSeq: try optionalInt(item, "afterSeq", min: 0) ?? 0))
            }
            return .sync(cursors)
        default:
            throw ChatError.invalid("unknown event \(event.prefix(64))")
        }
    }

    static func id(_ data: JSONValue, _ key: String) throws(ChatError) -> String {
        guard let value = data[key]?.stringValue, !value.isEmpty else { throw ChatError.invalid("\(key) must be a non-empty string") }
        guard value.utf8.count <= maxIdLength else { throw ChatError.invalid("\(key) is too long") }
        return value
    }

    static func optionalString(_ data: JSONValue, _ key: String, max: Int) throws(ChatError) -> String? {
        guard let value = data[key], !value.isNull else { return nil }
        guard let s = value.stringValue else { throw ChatError.invalid("\(key) must be a string or null") }
        guard s.utf8.count <= max else { throw ChatError(.payloadTooLarge, "\(key) is longer than \(max) bytes") }
        return s
    }

    static func optionalInt(_ data: JSONValue, _ key: String, min: Int) throws(ChatError) -> Int? {
        guard let value = data[key], !value.isNull else { return nil }
        guard let n = value.intValue, n >= min else { throw ChatError.invalid("\(key) must be an integer >= \(min)") }
        return n
    }
}
