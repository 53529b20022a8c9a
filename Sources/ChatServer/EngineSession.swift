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

    /// Queues an inbound Socket.IO packet; `false` if too many are waiting.
    func receive(_ packet: [UInt8], limit: Int) -> Bool {
        let accepted = state.withLock { s -> Bool in
            guard !s.closed, s.inboundQueued < limit else { return false }
            s.inboundQueued += 1
            return true
        }
        if accepted { inbound.yield(packet) }
        return accepted
    }

    func processed() { state.withLock { $0.inboundQueued -= 1 } }

    func pong(pingInterval: UInt64) {
        state.withLock { s in
            s.pingSentAt = nil
            s.nextPingAt = monotonicNanos() + pingInterval
        }
    }
}
