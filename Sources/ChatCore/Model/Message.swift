import ChatJSON

/// The kind of a message: `Text` by default; `System` only from service tokens.
public enum MessageType: String, Sendable, CaseIterable {
    case text = "Text"
    case image = "Image"
    case file = "File"
    case system = "System"
}

/// A chat message as it is now (edits applied, deletions cleared). Its `seq` is its place in its thread.
///
/// A value type whose fields live in one shared, copy-on-write box: a message is copied into the history tail,
/// the pending queue, the store write, the reply and the sealed chunk, and each copy costs one reference count
/// instead of one per string field.
public struct Message: Sendable, Equatable {
    /// The fields. Changed only through `unique()`, i.e. when no other copy shares the box (as `Array` does with
    /// its buffer), which is what makes the unchecked `Sendable` sound.
    private final class Fields: @unchecked Sendable {
        var id: MessageID
        var threadId: ThreadID
        var seq: Int
        var senderId: UserID
        var type: MessageType
        var content: String
        var attachmentUrl: String?
        var attachmentType: String?
        var createdAt: Timestamp
        var editedAt: Timestamp?
        var deletedAt: Timestamp?
        var tempId: String?

        init(
            id: MessageID, threadId: ThreadID, seq: Int, senderId: UserID, type: MessageType, content: String, attachmentUrl: String?,
            attachmentType: String?, createdAt: Timestamp, editedAt: Timestamp?, deletedAt: Timestamp?, tempId: String?
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

        func copy() -> Fields {
            Fields(
                id: id, threadId: threadId, seq: seq, senderId: senderId, type: type, content: content, attachmentUrl: attachmentUrl,
                attachmentType: attachmentType, createdAt: createdAt, editedAt: editedAt, deletedAt: deletedAt, tempId: tempId)
        }
    }

    private var fields: Fields

    private mutating func unique() -> Fields {
        if !isKnownUniquelyReferenced(&fields) { fields = fields.copy() }
        return fields
    }

    public var id: MessageID {
        get { fields.id }
        set { unique().id = newValue }
    }
    public var threadId: ThreadID {
        get { fields.threadId }
        set { unique().threadId = newValue }
    }
    public var seq: Int {
        get { fields.seq }
        set { unique().seq = newValue }
    }
    public var senderId: UserID {
        get { fields.senderId }
        set { unique().senderId = newValue }
    }
    public var type: MessageType {
        get { fields.type }
        set { unique().type = newValue }
    }
    public var content: String {
        get { fields.content }
        set { unique().content = newValue }
    }
    public var attachmentUrl: String? {
        get { fields.attachmentUrl }
        set { unique().attachmentUrl = newValue }
    }
    public var attachmentType: String? {
        get { fields.attachmentType }
        set { unique().attachmentType = newValue }
    }
    public var createdAt: Timestamp {
        get { fields.createdAt }
        set { unique().createdAt = newValue }
    }
    public var editedAt: Timestamp? {
        get { fields.editedAt }
        set { unique().editedAt = newValue }
    }
    public var deletedAt: Timestamp? {
        get { fields.deletedAt }
        set { unique().deletedAt = newValue }
    }
    public var tempId: String? {
        get { fields.tempId }
        set { unique().tempId = newValue }
    }

    public init(
        id: MessageID, threadId: ThreadID, seq: Int, senderId: UserID, type: MessageType, content: String,
        attachmentUrl: String? = nil, attachmentType: String? = nil, createdAt: Timestamp,
        editedAt: Timestamp? = nil, deletedAt: Timestamp? = nil, tempId: String? = nil
    ) {
        fields = Fields(
            id: id, threadId: threadId, seq: seq, senderId: senderId, type: type, content: content, attachmentUrl: attachmentUrl,
            attachmentType: attachmentType, createdAt: createdAt, editedAt: editedAt, deletedAt: deletedAt, tempId: tempId)
    }

    public static func == (a: Message, b: Message) -> Bool {
        if a.fields === b.fields { return true }
        let x = a.fields, y = b.fields
        return x.id == y.id && x.threadId == y.threadId && x.seq == y.seq && x.senderId == y.senderId && x.type == y.type
            && x.content == y.content && x.attachmentUrl == y.attachmentUrl && x.attachmentType == y.attachmentType
            && x.createdAt == y.createdAt && x.editedAt == y.editedAt && x.deletedAt == y.deletedAt && x.tempId == y.tempId
    }

    public var isDeleted: Bool { deletedAt != nil }

    /// The wire shape of docs/PROTOCOL.md §4.1: every field present, absent optionals as `null`.
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
        let f = fields
        func key(_ k: StaticString) { appendLiteral(k, to: &out) }
        func optional(_ s: String?) { appendOptionalString(s, to: &out) }
        func time(_ t: Timestamp?) {
            guard let t else { return key("null") }
            out.append(UInt8(ascii: "\""))
            t.writeISO8601(to: &out)
            out.append(UInt8(ascii: "\""))
        }
        key(#"{"id":"#)
        JSONWriter.writeString(f.id, to: &out)
        key(#","threadId":"#)
        JSONWriter.writeString(f.threadId, to: &out)
        key(#","seq":"#)
        JSONWriter.writeInt(f.seq, to: &out)
        key(#","senderId":"#)
        JSONWriter.writeString(f.senderId, to: &out)
        key(#","type":"#)
        JSONWriter.writeString(f.type.rawValue, to: &out)
        key(#","content":"#)
        JSONWriter.writeString(f.content, to: &out)
        key(#","attachmentUrl":"#)
        optional(f.attachmentUrl)
        key(#","attachmentType":"#)
        optional(f.attachmentType)
        key(#","createdAt":"#)
        time(f.createdAt)
        key(#","editedAt":"#)
        time(f.editedAt)
        key(#","deletedAt":"#)
        time(f.deletedAt)
        key(#","tempId":"#)
        optional(f.tempId)
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

    /// The event as history chunks and cluster notices keep it: `{"k":kind,"s":seq,"m":message}`.
    public var record: JSONValue {
        .object(["k": .string(kind.rawValue), "s": .int(seq), "m": message.json])
    }

    /// Appends exactly `JSONWriter.encode(record)`, without building the tree.
    public func writeRecord(to out: inout [UInt8]) {
        appendLiteral(#"{"k":"#, to: &out)
        JSONWriter.writeString(kind.rawValue, to: &out)
        appendLiteral(#","s":"#, to: &out)
        JSONWriter.writeInt(seq, to: &out)
        appendLiteral(#","m":"#, to: &out)
        message.writeJSON(to: &out)
        out.append(UInt8(ascii: "}"))
    }

    /// Reads an event written by `record`; `nil` if any field is missing or malformed.
    public init?(record: JSONValue) {
        guard let kind = record["k"]?.stringValue.flatMap(EventKind.init(rawValue:)), let seq = record["s"]?.intValue,
            let messageJSON = record["m"], let message = Message(json: messageJSON)
        else { return nil }
        self.init(seq: seq, kind: kind, message: message)
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
