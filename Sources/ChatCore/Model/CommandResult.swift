import ChatJSON

/// What a `ClientCommand` produced, before a transport shapes it: a Socket.IO acknowledgement body
/// (`socketAck`) or a REST response (the server's routes).
public enum CommandResult: Sendable {
    case done
    /// A message as it is now (sent or edited).
    case message(Message)
    /// A deleted message and the seq of its delete event.
    case deleted(seq: Int, Message)
    case page(messages: [Message], hasMore: Bool)
    /// One entry per cursor of a `chat:sync`: `{threadId, events, hasMore}` or `{threadId, code, error}`.
    case sync([JSONValue])
    /// A thread as the caller sees it; `created` is false when an existing direct thread was returned.
    case thread(ThreadSummary, created: Bool)
    case threads([ThreadSummary], hasMore: Bool)

    /// The Socket.IO acknowledgement body: `{success: true, …}`.
    public var socketAck: JSONValue {
        var body: JSONObject = ["success": .bool(true)]
        switch self {
        case .done, .deleted: break
        case .message(let message): body["message"] = message.json
        case .page(let messages, let hasMore):
            body["messages"] = .array(messages.map(\.json))
            body["hasMore"] = .bool(hasMore)
        case .sync(let threads): body["threads"] = .array(threads)
        case .thread(let summary, _): body["thread"] = summary.json
        case .threads(let summaries, let hasMore):
            body["threads"] = .array(summaries.map(\.json))
            body["hasMore"] = .bool(hasMore)
        }
        return .object(body)
    }
}
