import ChatJSON

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

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
    // REST operations: validated by the same field rules, dispatched by the same `Supervisor.perform`; no socket
    // event parses to them.
    case createThread(name: String?, kind: ThreadKind, memberIds: [UserID])
    /// A page of the caller's threads, after the thread `after` (from the first without it).
    case listThreads(after: ThreadID?)
    case addMembers(ThreadID, [UserID])
    case removeMember(ThreadID, UserID)
    /// An edit addressed by message id alone (the thread is looked up within the caller's company).
    case editMessage(MessageID, content: String)
    /// A delete addressed by message id alone.
    case deleteMessage(MessageID)

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

    /// Tokens the command takes from its class's bucket: one, or for a `chat:sync` one per 10 threads it names.
    public var rateCost: Double {
        switch self {
        case .sync(let cursors): Self.readCost(threads: cursors.count)
        // One signal per 10 ids, as reads count threads: a receipt of 1000 ids is a hundred receipts' work (ids are
        // hashed and compared as Unicode text, which for ids of combining marks costs about ten times ASCII's).
        case .delivered(_, let ids): Self.readCost(threads: ids.count)
        // A thread made or grown with many members (each stored, greeted and listed): one write per 10 ids.
        case .createThread(_, _, let ids), .addMembers(_, let ids): Self.readCost(threads: ids.count)
        default: 1
        }
    }

    /// What reading `threads` threads at once costs in reads: one per 10, at least one (a `chat:sync` by the threads
    /// it names, a page of `GET /chat/threads` by the threads it holds).
    public static func readCost(threads: Int) -> Double { Double(max(1, (threads + 9) / 10)) }

    public var rateClass: RateClass {
        switch self {
        case .send, .edit, .delete: .write
        case .delivered, .markRead, .typingStart, .typingStop: .signal
        default: .read
        }
    }

    /// Longest id (thread, message, user, tempId) in UTF-8 bytes.
    public static let maxIdLength = 256
    static let maxUrlLength = 4096
    static let maxSyncThreads = 1000
    /// Longest thread name in UTF-8 bytes.
    static let maxThreadNameLength = 1024

    /// Validates `data` for `event`; every failure is `invalid_payload` or `payload_too_large` with a sentence.
    public static func parse(event: String, data: JSONValue?, configuration: BrokerConfiguration) throws(ChatError) -> ClientCommand {
        guard let data, case .object = data else {
            throw ChatError.invalid("\(echoed(event)) expects an object payload")
        }
        switch event {
        case "chat:send":
            let threadId = try id(data, "threadId")
            let content = try self.content(data, allowEmpty: true, configuration: configuration)
            var type = MessageType.text
            if let raw = data["type"], !raw.isNull {
                guard let name = raw.stringValue, let parsed = MessageType(rawValue: name) else {
                    throw ChatError.invalid("type must be one of Text, Image, File, System")
                }
                type = parsed
            }
            let attachmentUrl = try optionalString(data, "attachmentUrl", max: maxUrlLength)
            let attachmentType = try optionalString(data, "attachmentType", max: maxIdLength)
            // An empty tempId is no id: taken as none (echoed as null), so a client that defaults it to "" gets every
            // send stored instead of each answered with its first message.
            let tempId = try optionalString(data, "tempId", max: maxIdLength).flatMap { $0.isEmpty ? nil : $0 }
            if content.isEmpty && (attachmentUrl ?? "").isEmpty {
                throw ChatError.invalid("content must not be empty unless an attachmentUrl is given")
            }
            return .send(SendRequest(threadId: threadId, content: content, type: type, attachmentUrl: attachmentUrl, attachmentType: attachmentType, tempId: tempId))
        case "chat:join": return .join(try id(data, "threadId"))
        case "chat:leave": return .leave(try id(data, "threadId"))
        case "chat:typing:start": return .typingStart(try id(data, "threadId"))
        case "chat:typing:stop": return .typingStop(try id(data, "threadId"))
        case "chat:delivered":
            let threadId = try id(data, "threadId")
            return .delivered(threadId, try idList(data, "messageIds", max: configuration.maxReceiptIds, allowEmpty: true))
        case "chat:mark-read":
            return .markRead(try id(data, "threadId"), upToSeq: try optionalInt(data, "upToSeq", min: 0))
        case "chat:edit":
            let threadId = try id(data, "threadId")
            let messageId = try id(data, "messageId")
            return .edit(threadId, messageId, content: try content(data, allowEmpty: false, configuration: configuration))
        case "chat:delete":
            return .delete(try id(data, "threadId"), try id(data, "messageId"))
        case "chat:history":
            let threadId = try id(data, "threadId")
            return historyPage(threadId, beforeSeq: try optionalInt(data, "beforeSeq", min: 1), limit: try optionalInt(data, "limit", min: 1), configuration: configuration)
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
            throw ChatError.invalid("unknown event \(echoed(event))")
        }
    }

    /// A client's event name as an error quotes it: its first 64 bytes at most (a name can be as long as a packet,
    /// and 64 characters can be too: one grapheme may hold any number of scalars), so that a refusal costs a short
    /// reply whatever was sent.
    static func echoed(_ event: String) -> String {
        event.utf8.count <= 64 ? event : String(decoding: event.utf8.prefix(64), as: UTF8.self) + "…"
    }

    // MARK: - REST operations

    /// `POST /chat/threads` `{type, name?, memberIds}`.
    public static func parseCreateThread(_ body: JSONValue, configuration: BrokerConfiguration) throws(ChatError) -> ClientCommand {
        guard let kind = body["type"]?.stringValue.flatMap(ThreadKind.init(rawValue:)) else {
            throw ChatError.invalid("type must be \"direct\" or \"group\"")
        }
        let members = try idList(body, "memberIds", max: configuration.maxMembersPerRequest, allowEmpty: true)
        var name: String?
        if let raw = body["name"], !raw.isNull {
            guard let s = raw.stringValue, s.utf8.count <= maxThreadNameLength else {
                throw ChatError.invalid("name must be a string of at most \(maxThreadNameLength) bytes")
            }
            name = try storable(s, "name")
        }
        return .createThread(name: name, kind: kind, memberIds: members)
    }

    /// `GET /chat/threads?after=`.
    public static func parseListThreads(after: String?) throws(ChatError) -> ClientCommand {
        .listThreads(after: try after.map { value throws(ChatError) in try boundedId(value, "after") })
    }

    /// `POST /chat/threads/:id/members` `{userIds}`.
    public static func parseAddMembers(_ threadId: String, _ body: JSONValue, configuration: BrokerConfiguration) throws(ChatError) -> ClientCommand {
        .addMembers(try pathId(threadId), try idList(body, "userIds", max: configuration.maxMembersPerRequest, allowEmpty: false))
    }

    /// `DELETE /chat/threads/:id/members/:userId`.
    /// The member's id may hold control characters (`hasControlCharacter`): one added before they were refused can
    /// still be removed.
    public static func parseRemoveMember(_ threadId: String, _ userId: String) throws(ChatError) -> ClientCommand {
        .removeMember(try pathId(threadId), try boundedId(userId, "the id in the path", allowingControlCharacters: true))
    }

    /// `PATCH /chat/messages/:id` `{content}`.
    public static func parseEditMessage(_ messageId: String, _ body: JSONValue, configuration: BrokerConfiguration) throws(ChatError) -> ClientCommand {
        .editMessage(try pathId(messageId), content: try content(body, allowEmpty: false, configuration: configuration))
    }

    /// `DELETE /chat/messages/:id`.
    public static func parseDeleteMessage(_ messageId: String) throws(ChatError) -> ClientCommand { .deleteMessage(try pathId(messageId)) }

    /// A history page request (`chat:history`, `GET /chat/threads/:id/messages`): the limit clamped to the maximum.
    public static func historyPage(_ threadId: ThreadID, beforeSeq: Int?, limit: Int?, configuration: BrokerConfiguration) -> ClientCommand {
        .history(threadId, beforeSeq: beforeSeq, limit: min(limit ?? configuration.defaultHistoryLimit, configuration.maxHistoryLimit))
    }

    // MARK: - Field rules

    /// `content`: a string of at most `maxContent` UTF-8 bytes (`payload_too_large` past it), non-empty unless allowed.
    static func content(_ data: JSONValue, allowEmpty: Bool, configuration: BrokerConfiguration) throws(ChatError) -> String {
        guard let content = data["content"]?.stringValue, allowEmpty || !content.isEmpty else {
            throw ChatError.invalid(allowEmpty ? "content must be a string" : "content must be a non-empty string")
        }
        guard content.utf8.count <= configuration.maxContent else {
            throw ChatError(.payloadTooLarge, "content is \(content.utf8.count) bytes; at most \(configuration.maxContent) are allowed")
        }
        return try storable(content, "content")
    }

    /// Every text a client sends to be stored passes here: U+0000 is refused (`invalid_payload`), since no text
    /// column of PostgreSQL can hold it and a chat text has no use for it. Both stores apply the same rule.
    /// The scan is `memchr` over the UTF-8 (a byte-at-a-time `contains` was 2 % of the broker's CPU with 8 KB messages).
    static func storable(_ text: String, _ key: String) throws(ChatError) -> String {
        let hasNul = text.utf8.withContiguousStorageIfAvailable { bytes in
            guard let base = bytes.baseAddress else { return false }
            return memchr(base, 0, bytes.count) != nil
        } ?? text.utf8.contains(0)
        guard !hasNul else { throw ChatError.invalid("\(key) must not contain U+0000") }
        return text
    }

    /// A list of ids as the client sent it: at most `max` entries (counted as sent, before duplicates are
    /// removed; over it `payload_too_large` before any entry is looked at), each a valid id. Duplicates are
    /// dropped in O(1) each, keeping the first occurrence's order.
    public static func idList(_ data: JSONValue, _ key: String, max: Int, allowEmpty: Bool) throws(ChatError) -> [String] {
        guard let items = data[key]?.arrayValue, allowEmpty || !items.isEmpty else {
            throw ChatError.invalid("\(key) must be \(allowEmpty ? "an" : "a non-empty") array of ids")
        }
        guard items.count <= max else { throw ChatError(.payloadTooLarge, "at most \(max) \(key) per request") }
        var seen = Set<String>(minimumCapacity: items.count)
        var ids: [String] = []
        ids.reserveCapacity(items.count)
        for item in items {
            guard let s = item.stringValue, !s.isEmpty, s.utf8.count <= maxIdLength else {
                throw ChatError.invalid("\(key) must be an array of ids (non-empty strings of at most \(maxIdLength) bytes)")
            }
            if seen.insert(try identifier(s, key)).inserted { ids.append(s) }
        }
        return ids
    }

    /// An id taken from a URL path.
    public static func pathId(_ value: String) throws(ChatError) -> String {
        try boundedId(value, "the id in the path")
    }

    /// An id given as text (a path segment, a query parameter): 1 to `maxIdLength` bytes, and an `identifier`.
    static func boundedId(_ value: String, _ key: String, allowingControlCharacters: Bool = false) throws(ChatError) -> String {
        guard !value.isEmpty, value.utf8.count <= maxIdLength else { throw ChatError.invalid("\(key) must be 1 to \(maxIdLength) bytes") }
        return try identifier(value, key, allowingControlCharacters: allowingControlCharacters)
    }

    public static func id(_ data: JSONValue, _ key: String) throws(ChatError) -> String {
        guard let value = data[key]?.stringValue, !value.isEmpty else { throw ChatError.invalid("\(key) must be a non-empty string") }
        guard value.utf8.count <= maxIdLength else { throw ChatError.invalid("\(key) is too long") }
        return try identifier(value, key)
    }

    /// An id a client sends: storable, without control characters (`hasControlCharacter`), and in Unicode
    /// normalization form C (`isNFC`), else `invalid_payload`.
    static func identifier(_ value: String, _ key: String, allowingControlCharacters: Bool = false) throws(ChatError) -> String {
        guard isNFC(value) else { throw ChatError.invalid("\(key) must be in Unicode normalization form C (NFC)") }
        guard allowingControlCharacters || !hasControlCharacter(value) else { throw ChatError.invalid("\(key) must not contain control or invisible characters (U+0000-U+001F, U+007F-U+009F, U+2028, U+2029, format characters such as bidirectional controls and zero-width spaces, other default-ignorable code points)") }
        return try storable(value, key)
    }

    /// Whether `id` holds a control or invisible character: C0 and C1 controls (U+0000–U+001F, U+007F–U+009F), the line
    /// and paragraph separators (U+2028, U+2029), format characters (Unicode category Cf: the bidirectional controls,
    /// zero-width spaces and joiners, the byte order mark, the soft hyphen, tags, interlinear annotations) and every
    /// other default-ignorable code point (variation selectors, Hangul fillers). No id needs one. JSON writes a C0
    /// control as six bytes (`\u0001`): a thread of 10,000 member ids of 256 such bytes was a 15 MB object, six times
    /// the bound its size checks assume, pushed to every added member (found by an outside probe). The others break
    /// lines, turn text around or vanish where an id is shown (a console, a log): `alice\u{202E}nimda` reads as another
    /// user's name, `bob\u{200B}` as `bob` (found by outside probes). Linear in the id; an ASCII id is checked byte by
    /// byte.
    public static func hasControlCharacter(_ id: String) -> Bool {
        var ascii = true
        for byte in id.utf8 {
            if byte < 0x20 || byte == 0x7F { return true }
            if byte >= 0x80 { ascii = false }
        }
        if ascii { return false }
        return id.unicodeScalars.contains(where: isControlOrInvisible)
    }

    /// Whether `scalar` is one an id may not hold (`hasControlCharacter`).
    public static func isControlOrInvisible(_ scalar: Unicode.Scalar) -> Bool {
        let properties = scalar.properties
        switch properties.generalCategory {
        case .control, .format, .lineSeparator, .paragraphSeparator: return true
        default: return properties.isDefaultIgnorableCodePoint
        }
    }

    /// Whether `id` is in Unicode normalization form C. Swift compares and hashes strings by canonical equivalence,
    /// the stores compare bytes: `"caf\u{E9}"` and `"cafe\u{301}"`, or `"K"` and the Kelvin sign `"\u{212A}"`, are one
    /// key in memory and two in a table. Two different NFC strings are never equivalent, so with every id (token
    /// claims included) in NFC the two agree, and an id written another way can never reach another user's or
    /// another company's data. Linear in the id; an ASCII id (a UUID) is NFC at a glance.
    public static func isNFC(_ id: String) -> Bool {
        if id.utf8.allSatisfy({ $0 < 0x80 }) { return true }
        var bytes = id.utf8.makeIterator()
        var same = true
        id._withNFCCodeUnits { unit in
            if same, bytes.next() != unit { same = false }
        }
        return same && bytes.next() == nil
    }

    static func optionalString(_ data: JSONValue, _ key: String, max: Int) throws(ChatError) -> String? {
        guard let value = data[key], !value.isNull else { return nil }
        guard let s = value.stringValue else { throw ChatError.invalid("\(key) must be a string or null") }
        guard s.utf8.count <= max else { throw ChatError(.payloadTooLarge, "\(key) is longer than \(max) bytes") }
        return try storable(s, key)
    }

    /// Any whole number at or above `min`. One of 2^53 or more (a Java or Kotlin client's `Long.MAX_VALUE` for "the
    /// newest") is taken as 2^53 - 1, beyond every seq and limit, as the REST routes take it; so is one past every
    /// Double (10^400, or 1e400: JSON's parser reads it as infinity, as JavaScript's does).
    static func optionalInt(_ data: JSONValue, _ key: String, min: Int) throws(ChatError) -> Int? {
        guard let value = data[key], !value.isNull else { return nil }
        guard case .number(let d) = value, d == .infinity || (d.isFinite && d.rounded(.towardZero) == d), d >= Double(min) else {
            throw ChatError.invalid("\(key) must be an integer >= \(min)")
        }
        return d < Double(JSONValue.maxExactInteger) ? Int(d) : JSONValue.maxExactInteger
    }
}
