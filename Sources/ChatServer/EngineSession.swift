import ChatCore
import NIOCore
import Synchronization

/// One Engine.IO session (`sid`): its transport (polling, then maybe websocket), its outbox (the same one the
/// core's device writes into, so backpressure holds on both transports), heartbeat state, and the Socket.IO
/// connection to `/chat` once the client sends CONNECT. Inbound Socket.IO packets are queued and processed in
/// order by one task per session.
final class EngineSession: Sendable {
    enum Transport: Sendable { case polling, websocket }

    struct State {
        var transport: Transport
        var upgrading = false
        var pollPending = false
        var device: Device?
        var connecting = false
        var closed = false
        var pingSentAt: UInt64?
        var nextPingAt: UInt64
        var inboundQueued = 0
        var spaceWaiters: [CheckedContinuation<Void, Never>] = []
        var repliesInFlight = 0
        var replyWaiter: CheckedContinuation<Void, Never>?
        var channel: (any Channel)?
    }

    let sid: String
    let outbox: Outbox
    let createdAt = monotonicNanos()
    /// A bearer token from the handshake's `Authorization` header, used when CONNECT carries none.
    let handshakeToken: String?
    let state: Mutex<State>
    let inbound: AsyncStream<[UInt8]>.Continuation
    let inboundStream: AsyncStream<[UInt8]>

    init(sid: String, transport: Transport, outbox: Outbox, handshakeToken: String?, pingInterval: UInt64) {
        self.sid = sid
        self.outbox = outbox
        self.handshakeToken = handshakeToken
        state = Mutex(State(transport: transport, nextPingAt: monotonicNanos() + pingInterval))
        (inboundStream, inbound) = AsyncStream.makeStream(of: [UInt8].self)
    }

    var device: Device? { state.withLock { $0.device } }
    var isClosed: Bool { state.withLock { $0.closed } }
    var transport: Transport { state.withLock { $0.transport } }

    /// Enqueues a control frame (open, ping, ack, connect answers).
    func send(_ text: [UInt8], name: String = "control") {
        outbox.enqueue(OutboundFrame(name: name, bytes: ByteBuffer(bytes: text)))
    }

    /// Queues an inbound Socket.IO packet. When `limit` packets are already waiting, the caller (the
    /// transport's reader) waits for room: the client is slowed by TCP backpressure instead of being dropped.
    /// Returns `false` once the session is closed.
    func receive(_ packet: [UInt8], limit: Int) async -> Bool {
        while true {
            enum Admission { case accepted, closed, full }
            let admission = state.withLock { s -> Admission in
                if s.closed { return .closed }
                guard s.inboundQueued < limit else { return .full }
                s.inboundQueued += 1
                return .accepted
            }
            switch admission {
            case .accepted:
                inbound.yield(packet)
                return true
            case .closed:
                return false
            case .full:
                await withCheckedContinuation { (cont: CheckedContinuation<Void, Never>) in
                    let resumeNow = state.withLock { s -> Bool in
                        if s.closed || s.inboundQueued < limit { return true }
                        s.spaceWaiters.append(cont)
                        return false
                    }
                    if resumeNow { cont.resume() }
                }
            }
        }
    }

    /// One queued packet was handled; wakes a reader waiting for room.
    func processed() {
        let waiters = state.withLock { s -> [CheckedContinuation<Void, Never>] in
            s.inboundQueued -= 1
            defer { s.spaceWaiters = [] }
            return s.spaceWaiters
        }
        for waiter in waiters { waiter.resume() }
    }

    /// Waits until fewer than `limit` pipelined replies are outstanding, then takes a slot.
    func acquireReplySlot(limit: Int) async {
        while true {
            let acquired = state.withLock { s -> Bool in
                guard s.repliesInFlight < limit else { return false }
                s.repliesInFlight += 1
                return true
            }
            if acquired { return }
            await withCheckedContinuation { (cont: CheckedContinuation<Void, Never>) in
                let resumeNow = state.withLock { s -> Bool in
                    if s.repliesInFlight < limit { return true }
                    s.replyWaiter = cont
                    return false
                }
                if resumeNow { cont.resume() }
            }
        }
    }

    func releaseReplySlot() {
        let waiter = state.withLock { s -> CheckedContinuation<Void, Never>? in
            s.repliesInFlight -= 1
            defer { s.replyWaiter = nil }
            return s.replyWaiter
        }
        waiter?.resume()
    }

    /// Wakes every reader waiting for room (on close).
    func releaseReaders() {
        let waiters = state.withLock { s -> [CheckedContinuation<Void, Never>] in
            defer { s.spaceWaiters = [] }
            return s.spaceWaiters
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
