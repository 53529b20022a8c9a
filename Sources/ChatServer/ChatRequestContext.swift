import Hummingbird
import NIOCore

/// The request context of the broker's HTTP routes: Hummingbird's core context, and the connection's channel, so
/// a route can end the connection after its response.
struct ChatRequestContext: RequestContext {
    var coreContext: CoreRequestContextStorage
    let channel: any Channel

    init(source: ApplicationRequestContextSource) {
        coreContext = .init(source: source)
        channel = source.channel
    }

    /// Ends the HTTP/1 connection once the response being prepared is written. Hummingbird keeps a connection
    /// alive unless the *request* said `Connection: close`; an Engine.IO refusal says it in the response
    /// (RFC 9112 §9.6). Closing the connection's input ends Hummingbird's request loop after this response, and
    /// the connection closes after its last write, so a keep-alive client never sends into a closing socket.
    /// `RequestHeadGuard.EveryHead` closes the input, so that it knows the body left unread ends there (and no second
    /// answer is written for it).
    func closeAfterResponse() {
        channel.triggerUserOutboundEvent(RequestHeadGuard.CloseAfterResponse(), promise: nil)
    }
}
