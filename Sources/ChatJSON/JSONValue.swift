/// A JSON document held in memory: what every Socket.IO payload and chat event is made of.
///
/// Objects keep their keys in insertion order so that encoded events are stable byte for byte.
public enum JSONValue: Sendable, Equatable {
    case null
    case bool(Bool)
    case number(Double)
    case string(String)
    case array([JSONValue])
    case object(JSONObject)

    /// The member `key` of an object, or `nil` for a missing member or a non-object.
    public subscript(key: String) -> JSONValue? {
        if case .object(let object) = self { return object[key] }
        return nil
    }

    public var stringValue: String? {
        if case .string(let s) = self { return s }
        return nil
    }

    public var arrayValue: [JSONValue]? {
        if case .array(let a) = self { return a }
        return nil
    }

    public var objectValue: JSONObject? {
        if case .object(let o) = self { return o }
        return nil
    }

    public var boolValue: Bool? {
        if case .bool(let b) = self { return b }
        return nil
    }

    public var isNull: Bool {
        if case .null = self { return true }
        return false
    }

    /// An integer value, only when the number is integral and fits in `Int`.
    public var intValue: Int? {
        guard case .number(let d) = self, d.isFinite, d.rounded(.towardZero) == d,
            d >= -Double(Self.maxExactInteger), d <= Double(Self.maxExactInteger)
        else { return nil }
        return Int(d)
    }

    public static func int(_ value: Int) -> JSONValue { .number(Double(value)) }

    /// 2^53 - 1: the largest integer a JSON number (a double) holds exactly.
    public static let maxExactInteger = 9_007_199_254_740_991

    /// A string, or `null` for `nil`.
    public static func optional(_ value: String?) -> JSONValue {
        value.map { .string($0) } ?? .null
    }
}

/// An object key as JSON compares keys (as JavaScript does): by its code units, here its UTF-8 bytes, not by
/// Swift's `String` equality, which treats canonically equivalent text as equal and normalizes non-ASCII strings to
/// compare and hash them. That normalization made a key of a letter and 30 combining marks cost microseconds to hash:
/// an object of 9,999 such keys (0.7 MB) cost 68 ms to parse, before any rate limit, and two sockets sending them
/// stalled the broker (outside probe). Bytes hash and compare at memory speed.
struct JSONKey: Hashable {
    let text: String

    init(_ text: String) { self.text = text }

    static func same(_ a: String, _ b: String) -> Bool {
        // The byte counts first (constant time for native strings), then the bytes as two buffers.
        guard a.utf8.count == b.utf8.count else { return false }
        var a = a, b = b
        return a.withUTF8 { x in b.withUTF8 { y in x.elementsEqual(y) } }
    }

    static func == (lhs: JSONKey, rhs: JSONKey) -> Bool { same(lhs.text, rhs.text) }

    func hash(into hasher: inout Hasher) {
        var text = text
        text.withUTF8 { hasher.combine(bytes: UnsafeRawBufferPointer($0)) }
    }
}

/// An ordered JSON object: a list of members with key lookup.
public struct JSONObject: Sendable, Equatable, ExpressibleByDictionaryLiteral {
    public private(set) var members: [(key: String, value: JSONValue)]

    public init() { members = [] }

    public init(dictionaryLiteral elements: (String, JSONValue)...) {
        members = elements.map { (key: $0.0, value: $0.1) }
    }

    public init(_ members: [(key: String, value: JSONValue)]) { self.members = members }

    public subscript(key: String) -> JSONValue? {
        get {
            for member in members where JSONKey.same(member.key, key) { return member.value }
            return nil
        }
        set {
            if let index = members.firstIndex(where: { JSONKey.same($0.key, key) }) {
                if let newValue { members[index].value = newValue } else { members.remove(at: index) }
            } else if let newValue {
                members.append((key: key, value: newValue))
            }
        }
    }

    public var count: Int { members.count }

    public static func == (lhs: JSONObject, rhs: JSONObject) -> Bool {
        guard lhs.members.count == rhs.members.count else { return false }
        for (l, r) in zip(lhs.members, rhs.members) where !JSONKey.same(l.key, r.key) || l.value != r.value { return false }
        return true
    }
}
