import ChatCore
import NIOCore
import Synchronization

/// One Engine.IO session (`sid`): its transport (polling, then maybe websocket), its outbox (the same one the
/// core's device writes into, so backpressure holds on both transports), heartbeat state, and the Socket.IO
/// connection to `/chat` once the client sends CONNECT. Inbound packets are handled in order by the transport
/// that read them (the WebSocket reader, or the one polling POST a session may have in flight), so a client
/// that sends faster than the broker answers is slowed by TCP backpressure.
final class EngineSession: Sendable {
    enum Transport: Sendable { case polling, websocket }

    struct State {
        var transport: Transport
        var upgrading = false
        var pollPending = false
        var postPending = false
        var device: Device?
        var connecting = false
        var closed = false
        var pingSentAt: UInt64?
        var nextPingAt: UInt64
        var repliesInFlight = 0
        var replyWaiters: [CheckedContinuation<Void, Never>] = []
        var channel: (any Channel)?
        var writer: SocketWriter?
    }

    let sid: String
    let outbox: Outbox
    let createdAt = monotonicNanos()
    /// A bearer token from the handshake's `Authorization` header, used when CONNECT carries none.
    let handshakeToken: String?
    let state: Mutex<State>

    init(sid: String, transport: Transport, outbox: Outbox, handshakeToken: String?, pingInterval: UInt64) {
        self.sid = sid
        self.outbox = outbox
        self.handshakeToken = handshakeToken
        state = Mutex(State(transport: transport, nextPingAt: monotonicNanos() + pingInterval))
    }

    var device: Device? { state.withLock { $0.device } }
    var isClosed: Bool { state.withLock { $0.closed } }
    var transport: Transport { state.withLock { $0.transport } }

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

    func releaseReplySlot() {
        let waiters = state.withLock { s -> [CheckedContinuation<Void, Never>] in
            s.repliesInFlight -= 1
            defer { s.replyWaiters = [] }
            return s.replyWaiters
        }
        for waiter in waiters { waiter.resume() }
    }

    /// Wakes every reader waiting for a reply slot (on close); each checks again and sees the session closed.
    func releaseReaders() {
        let waiters = state.withLock { s -> [CheckedContinuation<Void, Never>] in
            defer { s.replyWaiters = [] }
            return s.replyWaiters
        }
        for waiter in waiters { waiter.resume() }
    }

    func pong(pingInterval: UInt64) {
        state.withLock { s in
            s.pingSentAt = nil
            s.nextPingAt = monotonicNanos() + pingInterval
        }
    }
}
