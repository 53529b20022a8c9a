import ChatCore
import ChatJSON
import Foundation
import Logging
import PostgresNIO

/// The NOTIFY payloads nodes exchange on one channel: `{"n": node id, "c": [change, …]}`, each payload under
/// PostgreSQL's 8,000-byte limit. A commit's changes are packed into as few payloads as fit; a change too big for
/// one payload alone (a membership list of thousands of users, a thread advance with many events) is split; an
/// event too big for any payload is announced by position only; anything else still too big (an emitted event
/// with a large body) goes through the `chat.broadcasts` table, and the payload carries its row id instead
/// (`{"n": …, "b": id}`).
enum ClusterNotice {
    static let channel = "chat_changes"
    /// Below PostgreSQL's 8,000-byte payload limit, with room for the envelope.
    static let maxPayload = 7_800

    /// Announces `changes` on `db` (inside the caller's transaction, if any): packed payloads, and a
    /// `chat.broadcasts` row for whatever is too big for one.
    static func announce(_ changes: [ClusterChange], node: String, on db: PostgresConnection, logger: Logger) async throws {
        guard !changes.isEmpty else { return }
        let (payloads, oversized) = pack(node: node, changes: changes)
        if !payloads.isEmpty {
            for try await _ in try await db.execute(PreparedStatements.Notify(channel: channel, payloads: payloads), logger: logger) {}
        }
        try await announceStored(oversized, node: node, on: db, logger: logger)
    }

    /// Changes too big for a payload: stored in `chat.broadcasts`, announced by row id.
    static func announceStored(_ oversized: [ClusterChange], node: String, on db: PostgresConnection, logger: Logger) async throws {
        guard !oversized.isEmpty else { return }
        let stored = encodeStored(oversized)
        for try await id in try await db.collect(
            "INSERT INTO chat.broadcasts(body) VALUES (\(stored)) RETURNING id", logger: logger
        ).decode(Int64.self) {
            let payload = #"{"n":"# + JSONWriter.encodeString(.string(node)) + #","b":\#(id)}"#
            _ = try await db.collect("SELECT pg_notify(\(channel), \(payload))", logger: logger)
        }
    }

    static func pack(node: String, changes: [ClusterChange]) -> (payloads: [String], oversized: [ClusterChange]) {
        let envelope = envelopeSize(node)
        var payloads: [String] = []
        var oversized: [ClusterChange] = []
        var current: [String] = []
        var size = envelope
        func flush() {
            guard !current.isEmpty else { return }
            payloads.append(#"{"n":"# + JSONWriter.encodeString(.string(node)) + #","c":["# + current.joined(separator: ",") + "]}")
            current = []
            size = envelope
        }
        func add(_ text: String) {
            if size + text.utf8.count + 1 > maxPayload { flush() }
            current.append(text)
            size += text.utf8.count + 1
        }
        for change in changes.flatMap({ split($0, envelope: envelope) }) {
            if case .advanced(let id, _, _, let events?) = change {
                for text in advancedTexts(id, events, room: maxPayload - envelope) { add(text) }
                continue
            }
            let text = JSONWriter.encodeString(change.json)
            if envelope + text.utf8.count > maxPayload {
                oversized.append(change)
                continue
            }
            add(text)
        }
        flush()
        return (payloads, oversized)
    }

    /// A thread's advance with its events, as the texts of one or more `.advanced` changes of at most `room` bytes
    /// each, in seq order: consecutive events are grouped while they fit; an event too big for any payload alone
    /// is announced by position only (the other nodes read it from the store).
    static func advancedTexts(_ thread: ThreadID, _ events: [ThreadEvent], room: Int) -> [String] {
        let id = JSONWriter.encodeString(.string(thread))
        // `["a",id,first,last,[…]]` with room for two 20-digit numbers.
        let room = room - (id.utf8.count + 52)
        var texts: [String] = []
        var group: [UInt8] = []
        var groupFirst = 0
        var groupLast = 0
        func flush() {
            guard !group.isEmpty else { return }
            texts.append(#"["a",\#(id),\#(groupFirst),\#(groupLast),["# + String(decoding: group, as: UTF8.self) + "]]")
            group.removeAll(keepingCapacity: true)
        }
        var record: [UInt8] = []
        for event in events {
            record.removeAll(keepingCapacity: true)
            event.writeRecord(to: &record)
            if record.count > room {
                flush()
                texts.append(#"["a",\#(id),\#(event.seq),\#(event.seq)]"#)
                continue
            }
            if !group.isEmpty && group.count + 1 + record.count > room { flush() }
            if group.isEmpty {
                groupFirst = event.seq
            } else {
                group.append(UInt8(ascii: ","))
            }
            group.append(contentsOf: record)
            groupLast = event.seq
        }
        flush()
        return texts
    }

    private static func envelopeSize(_ node: String) -> Int {
        JSONWriter.encodeString(.string(node)).utf8.count + 16
    }

    /// A membership change with many users as several smaller ones, each of which fits one payload beside the
    /// envelope (so none goes through `chat.broadcasts`, which is announced after the commit's payloads: a member
    /// added in a commit must be announced before that commit's events). Each piece still says whether the thread
    /// is new.
    static func split(_ change: ClusterChange, envelope: Int) -> [ClusterChange] {
        guard case .membership(let id, let company, let asOf, let created, let added, let removed, let version) = change,
            envelope + JSONWriter.encodeString(change.json).utf8.count > maxPayload
        else { return [change] }
        // `["c",id,company,asOf,created,[added],[removed],version]` with room for the numbers and the punctuation.
        let room = maxPayload - envelope - JSONWriter.encodeString(.string(id)).utf8.count
            - JSONWriter.encodeString(.string(company)).utf8.count - 96
        func pieces(_ users: [UserID]) -> [[UserID]] {
            var out: [[UserID]] = []
            var piece: [UserID] = []
            var size = 0
            for user in users {
                let length = JSONWriter.encodeString(.string(user)).utf8.count + 1
                if !piece.isEmpty && size + length > room {
                    out.append(piece)
                    piece = []
                    size = 0
                }
                piece.append(user)
                size += length
            }
            if !piece.isEmpty { out.append(piece) }
            return out
        }
        // Every piece carries the version after the whole change: only an addition is ever split (a removal names one
        // member), and a node between two pieces then at worst refuses a send of a member it has not added yet.
        return pieces(added).map { .membership(id, company: company, asOf: asOf, created: created, added: $0, removed: [], membersVersion: version) }
            + pieces(removed).map { .membership(id, company: company, asOf: asOf, created: false, added: [], removed: $0, membersVersion: version) }
    }

    /// A payload's sender, and either its changes or the id of the `chat.broadcasts` row that holds them.
    enum Decoded {
        case changes(node: String, [ClusterChange])
        case broadcast(node: String, id: Int64)
    }

    /// Whether `payload` was sent by `node`, read from its first bytes (`{"n":"<node>",`) without parsing the rest:
    /// a node skips its own notices, which may carry a commit's events.
    /// A node's marker for its own listener (`{"n": node, "w": server time in ms}`): other nodes ignore it (it
    /// carries no changes).
    static func marker(node: String, at serverTime: Date) -> String {
        #"{"n":"# + JSONWriter.encodeString(.string(node)) + #","w":\#(Timestamp(roundingDown: serverTime).millis)}"#
    }

    /// The server time of `node`'s marker, or `nil` when `payload` is not one (a prefix compare, then the digits).
    static func markerTime(_ payload: String, node: String) -> Timestamp? {
        let prefix = #"{"n":"# + JSONWriter.encodeString(.string(node)) + #","w":"#
        guard payload.utf8.starts(with: prefix.utf8), payload.utf8.last == UInt8(ascii: "}") else { return nil }
        let digits = payload.utf8.dropFirst(prefix.utf8.count).dropLast()
        guard let millis = Int64(String(decoding: digits, as: UTF8.self)) else { return nil }
        return Timestamp(millis: millis)
    }

    static func isFrom(_ node: String, _ payload: String) -> Bool {
        payload.utf8.starts(with: (#"{"n":"# + JSONWriter.encodeString(.string(node)) + ",").utf8)
    }

    static func decode(_ payload: String) -> Decoded? {
        guard let value = try? JSONParser.parse(payload, maxDepth: 256, maxObjectMembers: .max, streamSafe: false), let node = value["n"]?.stringValue else { return nil }
        if let id = value["b"]?.intValue { return .broadcast(node: node, id: Int64(id)) }
        guard let list = value["c"]?.arrayValue else { return nil }
        return .changes(node: node, list.compactMap(ClusterChange.init(json:)))
    }

    /// The stored form of changes too big for a payload (a `chat.broadcasts` row).
    static func encodeStored(_ changes: [ClusterChange]) -> String {
        JSONWriter.encodeString(.array(changes.map(\.json)))
    }

    static func decodeStored(_ text: String) -> [ClusterChange] {
        guard let value = try? JSONParser.parse(text, maxDepth: 256, maxObjectMembers: .max, streamSafe: false), let list = value.arrayValue else { return [] }
        return list.compactMap(ClusterChange.init(json:))
    }
}
