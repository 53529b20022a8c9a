/// A request's query read as browsers and `URLSearchParams` write it (WHATWG's application/x-www-form-urlencoded
/// parser): pairs split at `&`, a name from its value at the first `=`, `+` read as a space, `%XX` as the byte it
/// names (a `%` not followed by two hex digits stays as it is), then UTF-8 (a malformed sequence becomes U+FFFD).
/// Hummingbird's `queryParameters` decodes values only, and keeps `+`: a user id with a space, sent as `+` by every
/// form encoder, was read as another id. Linear in the query's length.
struct FormQuery {
    /// Each pair's decoded name and its value as sent (decoded when asked for: most are never looked at).
    private var pairs: [(name: String, value: Substring.UTF8View)] = []

    init(_ query: String?) {
        guard let query else { return }
        for pair in query[...].utf8.split(separator: UInt8(ascii: "&"), omittingEmptySubsequences: true) {
            if let equals = pair.firstIndex(of: UInt8(ascii: "=")) {
                pairs.append((Self.decode(pair[..<equals]), pair[pair.index(after: equals)...]))
            } else {
                pairs.append((Self.decode(pair), pair[pair.endIndex...]))
            }
        }
    }

    /// Every value given for `name` (compared as bytes: "\u{212A}ey" is not "Key"), in the order given.
    func values(_ name: String) -> [String] {
        pairs.compactMap { $0.name.utf8.elementsEqual(name.utf8) ? Self.decode($0.value) : nil }
    }

    private static func decode(_ bytes: Substring.UTF8View) -> String {
        String(decoding: PercentDecoding.decode(bytes, plusIsSpace: true).bytes, as: UTF8.self)
    }
}
