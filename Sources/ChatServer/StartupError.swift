/// The broker cannot start with what it was given: a data directory it cannot use, a database it cannot use
/// (unreachable, refused, unknown, a newer schema), an address it cannot listen on. `options` names the flags at
/// fault; `chat-broker serve` reports it as a usage error (exit 64), as a bad flag value is.
public struct StartupError: Error, CustomStringConvertible {
    /// The options at fault, without their dashes (`["database-url"]`, `["host", "port"]`).
    public let options: [String]
    public let reason: String

    public init(_ options: [String], _ reason: String) {
        self.options = options
        self.reason = reason
    }

    public var description: String { reason }
}
