import ChatCore
import NIOCore
import Synchronization

/// One Engine.IO session (`sid`): its transport (polling, then maybe websocket), its outbox (the same one the
/// core's device writes into, so backpressure holds on both transports), heartbeat state, and the Socket.IO
/// connection to `/chat` once the client sends CONNECT. Inbound packets are handled in order by the transport
/// that read them (the WebSocket reader, or the one polling POST a session may have in flight), so a client
/// that sends faster than the broker answers is slowed by TCP backpressure.
final class EngineSession: Sendable {
    struct State {
        /// Polling, probing a websocket, on a websocket, or closed; the polling requests in flight.
        var transport: EngineTransport
        var device: Device?
        var connecting = false
        /// Binary messages still owed to a BINARY_EVENT or BINARY_ACK (consumed, never used: attachments are not
        /// supported). A binary message when none is owed is a protocol error.
        var attachmentsOwed = 0
        /// The heartbeat's cycle: a pong moves it on, and a ping or ping deadline armed in an earlier cycle does
        /// nothing when it fires. Timers are never cancelled: a cancel scans the event loop's whole timer heap.
        var heartbeat: UInt64 = 0
        /// A ping was sent in this cycle and its pong has not come.
        var awaitingPong = false
        /// When the session closes unless it has connected to `/chat` by then (set at the handshake and again after a
        /// DISCONNECT). No timer of its own: the server's sweep of the sessions awaiting a CONNECT finds it
        /// (`EngineServer.expireConnectDeadlines`), so a session evicted or closed before its CONNECT leaves nothing
        /// scheduled behind.
        var connectDeadline = NIODeadline.distantFuture
        /// The CONNECT deadline passed while a CONNECT was being checked: the session closes if it is refused.
        var deadlinePassed = false
        /// Why the handshake's `Authorization` token was refused, once it was checked: a CONNECT without a token of
        /// its own is refused for the same reason without checking that token again.
        var handshakeTokenRefusal: String?
        /// CONNECTs to `/chat` refused so far; the session closes at
        /// `EngineServer.maxRefusedConnects`.
        var refusedConnects = 0
        /// CONNECTs to namespaces other than `/chat` so far: `EngineServer.maxOtherNamespaceConnects`.
        var otherNamespaceConnects = 0
        /// Connected to the default namespace `/` (`EngineServer.routeDefaultNamespace`).
        var defaultNamespaceConnected = false
        /// A CONNECT to `/` was taken as the start of the login (`startsLogin`): once per session.
        var rootLoginStarted = false
        /// Closed for a polling POST over its bound: a long poll then answers an error status, which clients take as a
        /// transport error and reconnect after (`EngineServer.closedAnswer`).
        var closedForOversizedPost = false
        /// CONNECTs this session may still begin (`EngineServer.connectRate`): a client that connects and disconnects
        /// `/chat` in a loop on one connection makes the broker check a token and join a user each time for a few
        /// bytes; over the rate its CONNECT is refused before the token is checked.
        var connects = TokenBucket(rate: EngineServer.connectRate, burst: EngineServer.connectBurst)
        /// Bytes of messages this session's client may have the broker read and decode (`--inbound-bytes-per-sec`,
        /// `--inbound-bytes-burst`), on whichever transport: charged as messages are read; a session in debt is read
        /// again once the debt is paid (`chargeInbound`).
        var inbound: TokenBucket
        var repliesInFlight = 0
        /// Frames a permessage-deflate session's write loop took from the outbox and has not written yet (the
        /// task-free writer hands what it takes to the channel at once).
        var framesBeingWritten = 0
        var replyWaiters: [CheckedContinuation<Void, Never>] = []
        /// Waiting for the polling POST in flight to end (an upgrade's WebSocket reader starts after it).
        var postWaiters: [CheckedContinuation<Void, Never>] = []
        var channel: (any Channel)?
        /// The one websocket upgrading this polling session (from its opening until it carries the session, fails or
        /// times out): a second one is refused, and closing the session closes it.
        var probeChannel: (any Channel)?
        var writer: SocketWriter?

        var closed: Bool { transport.isClosed }
    }

    let sid: String
    let outbox: Outbox
    /// A bearer token from the handshake's `Authorization` header, used when CONNECT carries none.
    let handshakeToken: String?
    let state: Mutex<State>

    /// Where the session's timers run (the WebSocket's own event loop for a direct WebSocket).
    let eventLoop: any EventLoop
    /// The inbound budget the user's sessions share, charged once the session is connected.
    let userInbound: UserInboundBudget

    init(
        sid: String, transport: EngineTransport.Kind, outbox: Outbox, handshakeToken: String?, eventLoop: any EventLoop,
        inboundBudget: (rate: Double, burst: Double), userInbound: UserInboundBudget
    ) {
        self.sid = sid
        self.outbox = outbox
        self.handshakeToken = handshakeToken
        self.eventLoop = eventLoop
        self.userInbound = userInbound
        state = Mutex(State(transport: EngineTransport(transport), inbound: TokenBucket(rate: inboundBudget.rate, burst: inboundBudget.burst)))
    }

    /// The least one websocket message, control frame or polling packet costs the inbound budget, what handling it
    /// costs whatever its size (a body part's minimum, `BoundedBodyReader.minimumPartCost`). Charged by their bytes
    /// alone, tiny ones were nearly free: one socket without a token sending 1-byte messages or empty pings, within
    /// its 1 MB/s, kept a core busy and made another company's sends 10 to 50 times slower (found by an outside
    /// probe).
    static let minimumInboundCost = BoundedBodyReader.minimumPartCost

    /// `chargeInbound` for one message, control frame or packet of `bytes` bytes: at least `minimumInboundCost`.
    func chargeInbound(message bytes: Int, sharedBeforeConnect: Bool = true) -> UInt64 {
        chargeInbound(max(bytes, Self.minimumInboundCost), sharedBeforeConnect: sharedBeforeConnect)
    }

    /// Charges `bytes` the client sent (one websocket message, or one polling body) to the session's inbound budget,
    /// and to its user's once connected, or before that (with `sharedBeforeConnect`) to the budget all sessions before
    /// their CONNECT share (`UserInboundBudget`). Returns how long the transport waits before reading the client
    /// again: 0 within both; in debt, until the larger debt is paid (the message that ran over is still handled: its
    /// cost is known only once it is read).
    func chargeInbound(_ bytes: Int, sharedBeforeConnect: Bool = true) -> UInt64 {
        let (own, user) = state.withLock { ($0.inbound.charge(Double(bytes)), $0.device?.principal.sessionKey) }
        guard user != nil || sharedBeforeConnect else { return own }
        return max(own, userInbound.charge(user, bytes))
    }

    /// The first `freeLoginBytes` of a session's login (`startsLogin`) are charged its own budget only, not the one
    /// the sessions before their CONNECT share: a flood of other tokenless sessions keeping that one in debt must not
    /// hold a client's login (a polling CONNECT waited for the whole debt: found by a review). Once per session for a
    /// CONNECT to `/chat`, and once for a first CONNECT to `/` (which python-socketio sends before `/chat` when the
    /// application handles `/`, as does a page that opens `io(url)` too: charged the shared budget, it held the
    /// `/chat` CONNECT behind it for seconds under a tokenless flood; an outside probe). Other namespaces, a CONNECT
    /// after a refused one, or a second to `/`, are charged the shared budget (exempt, every CONNECT let a tokenless
    /// client have the broker parse 64 KB for free, 34 times per connection; found by a second review). 16 KiB holds
    /// a token.
    static let freeLoginBytes = 16_384

    /// Whether `head` (the first bytes of a websocket message, or of a polling body) starts this session's login: an
    /// Engine.IO message carrying a Socket.IO CONNECT to `/chat`, while the session is not connected and has had no
    /// CONNECT refused; or its first CONNECT to `/` (taken as such by this call).
    func startsLogin(_ head: ByteBuffer) -> Bool {
        guard let bytes = head.getBytes(at: head.readerIndex, length: min(head.readableBytes, 8)), bytes.first == UInt8(ascii: "4")
        else { return false }
        let packet = Array(bytes.dropFirst())
        if EngineServer.isChatConnect(packet) {
            return state.withLock { $0.device == nil && !$0.connecting && $0.refusedConnects == 0 }
        }
        guard EngineServer.isRootConnect(packet) else { return false }
        return state.withLock { s in
            guard s.device == nil, !s.rootLoginStarted else { return false }
            s.rootLoginStarted = true
            return true
        }
    }

    var device: Device? { state.withLock { $0.device } }
    /// Connected to `/chat`: its token was checked and accepted. Only then may the session send messages of up to
    /// `maxPayload` (before, `maxPayloadBeforeConnect`: a client sends only its CONNECT then).
    var isConnected: Bool { state.withLock { $0.device != nil } }
    /// Open, with no Socket.IO connection and none being checked (a CONNECT whose token is being verified is not
    /// waiting: its connections are not closed for a newcomer; a review).
    var awaitsConnect: Bool { state.withLock { $0.device == nil && !$0.connecting && !$0.closed } }
    var isClosed: Bool { state.withLock { $0.closed } }
    /// On polling (or probing a websocket): a websocket may still upgrade it.
    var isPolling: Bool { state.withLock { $0.transport.isPolling } }

    /// Enqueues a control frame (open, ping, ack, connect answers).
    func send(_ text: [UInt8], name: String = "control") {
        outbox.enqueue(OutboundFrame(name: name, bytes: ByteBuffer(bytes: text)))
    }

    /// Waits until fewer than `limit` replies are outstanding, then takes a slot. `false` if the session closed.
    func acquireReplySlot(limit: Int) async -> Bool {
        while true {
            let acquired = state.withLock { s -> Bool? in
                if s.closed { return false }
                guard s.repliesInFlight < limit else { return nil }
                s.repliesInFlight += 1
                return true
            }
            if let acquired { return acquired }
            await withCheckedContinuation { (cont: CheckedContinuation<Void, Never>) in
                let resumeNow = state.withLock { s -> Bool in
                    if s.repliesInFlight < limit || s.closed { return true }
                    s.replyWaiters.append(cont)
                    return false
                }
                if resumeNow { cont.resume() }
            }
        }
    }

    func releaseReplySlot() { wakeReaders(releasingSlot: true) }

    /// Returns once no event of this session is being worked on (each reply given wakes it to look again), or the
    /// session closed.
    func repliesGiven() async {
        while state.withLock({ $0.repliesInFlight > 0 && !$0.closed }) {
            await withCheckedContinuation { (cont: CheckedContinuation<Void, Never>) in
                let now = state.withLock { s -> Bool in
                    if s.repliesInFlight == 0 || s.closed { return true }
                    s.replyWaiters.append(cont)
                    return false
                }
                if now { cont.resume() }
            }
        }
    }

    /// Whether an event of this session is being worked on (its reply not given yet).
    var hasRepliesInFlight: Bool { state.withLock { $0.repliesInFlight > 0 } }

    /// Whether frames of this session are queued or being written (not yet handed to its socket).
    var hasFramesToWrite: Bool {
        outbox.queuedBytes > 0 && outbox.closeReason == nil || state.withLock { $0.framesBeingWritten > 0 }
    }

    /// Wakes every reader waiting for a reply slot or for a POST to end (on close); each checks again and sees the
    /// session closed.
    func releaseReaders() { wakeReaders(releasingSlot: false, endingPost: false) }

    /// The polling POST in flight is done: the next may come, and a WebSocket reader waiting for it starts.
    func endPost() { wakeReaders(releasingSlot: false, endingPost: true) }

    /// Returns once no polling POST is being handled, or the session closed.
    func postEnded() async {
        await withCheckedContinuation { (cont: CheckedContinuation<Void, Never>) in
            let now = state.withLock { s -> Bool in
                if !s.transport.postInFlight || s.closed { return true }
                s.postWaiters.append(cont)
                return false
            }
            if now { cont.resume() }
        }
    }

    private func wakeReaders(releasingSlot: Bool, endingPost: Bool = false) {
        let waiters = state.withLock { s -> [CheckedContinuation<Void, Never>] in
            if releasingSlot { s.repliesInFlight -= 1 }
            var woken = s.replyWaiters
            s.replyWaiters = []
            if endingPost { s.transport.endPost() }
            if endingPost || s.closed {
                woken += s.postWaiters
                s.postWaiters = []
            }
            return woken
        }
        for waiter in waiters { waiter.resume() }
    }

}
