import ChatJSON

/// The kind of a message: `Text` by default; `System` only from service tokens.
public enum MessageType: String, Sendable, CaseIterable {
    case text = "Text"
    case image = "Image"
    case file = "File"
    case system = "System"
}

/// A chat message as it is now (edits applied, deletions cleared). Its `seq` is its place in its thread.
public struct Message: Sendable, Equatable {
    public var id: MessageID
    public var threadId: ThreadID
    public var seq: Int
    public var senderId: UserID
    public var type: MessageType
    public var content: String
    public var attachmentUrl: String?
    public var attachmentType: String?
    public var createdAt: Timestamp
    public var editedAt: Timestamp?
    public var deletedAt: Timestamp?
    public var tempId: String?

    public init(
        id: MessageID, threadId: ThreadID, seq: Int, senderId: UserID, type: MessageType, content: String,
        attachmentUrl: String? = nil, attachmentType: String? = nil, createdAt: Timestamp,
        editedAt: Timestamp? = nil, deletedAt: Timestamp? = nil, tempId: String? = nil
    ) {
        self.id = id
        self.threadId = threadId
        self.seq = seq
        self.senderId = senderId
        self.type = type
        self.content = content
        self.attachmentUrl = attachmentUrl
        self.attachmentType = attachmentType
        self.createdAt = createdAt
        self.editedAt = editedAt
        self.deletedAt = deletedAt
        self.tempId = tempId
    }

    public var isDeleted: Bool { deletedAt != nil }

    /// The wire shape of PROTOCOL.md: every field present, absent optionals as `null`.
    public var json: JSONValue {
        .object([
            "id": .string(id),
            "threadId": .string(threadId),
            "seq": .int(seq),
            "senderId": .string(senderId),
            "type": .string(type.rawValue),
            "content": .string(content),
            "attachmentUrl": .optional(attachmentUrl),
            "attachmentType": .optional(attachmentType),
            "createdAt": .string(createdAt.iso8601),
            "editedAt": .optional(editedAt?.iso8601),
            "deletedAt": .optional(deletedAt?.iso8601),
            "tempId": .optional(tempId),
        ])
    }

    /// Appends exactly `JSONWriter.encode(json)`, without building the tree (the send path's hot spot).
    public func writeJSON(to out: inout [UInt8]) {
        func key(_ k: StaticString) { appendLiteral(k, to: &out) }
        func optional(_ s: String?) { appendOptionalString(s, to: &out) }
        func time(_ t: Timestamp?) {
            guard let t else { return key("null") }
            out.append(UInt8(ascii: "\""))
            t.writeISO8601(to: &out)
            out.append(UInt8(ascii: "\""))
        }
        key(#"{"id":"#)
        JSONWriter.writeString(id, to: &out)
        key(#","threadId":"#)
        JSONWriter.writeString(threadId, to: &out)
        key(#","seq":"#)
        JSONWriter.writeInt(seq, to: &out)
        key(#","senderId":"#)
        JSONWriter.writeString(senderId, to: &out)
        key(#","type":"#)
        JSONWriter.writeString(type.rawValue, to: &out)
        key(#","content":"#)
        JSONWriter.writeString(content, to: &out)
        key(#","attachmentUrl":"#)
        optional(attachmentUrl)
        key(#","attachmentType":"#)
        optional(attachmentType)
        key(#","createdAt":"#)
        time(createdAt)
        key(#","editedAt":"#)
        time(editedAt)
        key(#","deletedAt":"#)
        time(deletedAt)
        key(#","tempId":"#)
        optional(tempId)
        out.append(UInt8(ascii: "}"))
    }
}

/// What a thread event did: each takes the next `seq` of its thread.
public enum EventKind: String, Sendable {
    case message
    case edited
    case deleted

    /// The Socket.IO event name of this kind.
    public var eventName: String {
        switch self {
        case .message: "chat:message"
        case .edited: "chat:message:edited"
        case .deleted: "chat:message:deleted"
        }
    }
}

/// One entry of a thread's ordered log: the event at `seq` and the message it concerns (as it is now).
public struct ThreadEvent: Sendable, Equatable {
    public var seq: Int
    public var kind: EventKind
    public var message: Message

    public init(seq: Int, kind: EventKind, message: Message) {
        self.seq = seq
        self.kind = kind
        self.message = message
    }

    /// The live event's payload, the same shape `chat:sync` returns.
    public var payload: JSONValue {
        switch kind {
        case .message:
            .object(["threadId": .string(message.threadId), "message": message.json, "tempId": .optional(message.tempId)])
        case .edited:
            .object(["threadId": .string(message.threadId), "seq": .int(seq), "message": message.json])
        case .deleted:
            .object(["threadId": .string(message.threadId), "seq": .int(seq), "messageId": .string(message.id)])
        }
    }

    /// Appends exactly `JSONWriter.encode(payload)`, without building the tree.
    public func writePayload(to out: inout [UInt8]) {
        func key(_ k: StaticString) { appendLiteral(k, to: &out) }
        key(#"{"threadId":"#)
        JSONWriter.writeString(message.threadId, to: &out)
        switch kind {
        case .message:
            key(#","message":"#)
            message.writeJSON(to: &out)
            key(#","tempId":"#)
            appendOptionalString(message.tempId, to: &out)
        case .edited:
            key(#","seq":"#)
            JSONWriter.writeInt(seq, to: &out)
            key(#","message":"#)
            message.writeJSON(to: &out)
        case .deleted:
            key(#","seq":"#)
            JSONWriter.writeInt(seq, to: &out)
            key(#","messageId":"#)
            JSONWriter.writeString(message.id, to: &out)
        }
        out.append(UInt8(ascii: "}"))
    }

    /// `{event, data}` as `chat:sync` returns it.
    public var syncEntry: JSONValue {
        .object(["event": .string(kind.eventName), "data": payload])
    }
}

/// Appends literal JSON text (keys and punctuation) as it is.
private func appendLiteral(_ text: StaticString, to out: inout [UInt8]) {
    text.withUTF8Buffer { out.append(contentsOf: $0) }
}

/// Appends a JSON string, or `null`.
private func appendOptionalString(_ value: String?, to out: inout [UInt8]) {
    if let value { JSONWriter.writeString(value, to: &out) } else { appendLiteral("null", to: &out) }
}
