import ChatCore
import DequeModule
import NIOCore
import NIOWebSocket
import SocketIOCodec
import Synchronization

/// The reading side of one WebSocket of an Engine.IO session: the upgrade of a polling session (`2probe`, then
/// `5`), then the session's packets, handled one at a time in the order they were read. Packets are handled by a task
/// that exists only while packets wait, so an idle WebSocket holds no task and no stack; while `maxQueued` packets
/// (or `maxPayload` bytes of them) wait, the channel stops reading, and TCP slows a client that sends faster than the broker answers.
///
/// `receive` is called by one reader in read order (the channel's handler on its event loop, or the
/// permessage-deflate path's reader task); everything else is thread-safe.
final class WebSocketInbound: Sendable {
    let engine: EngineServer
    let session: EngineSession
    let channel: any Channel
    /// Starts the session's writer on this WebSocket (once, when the session is on it and no polling POST is left).
    private let startWriter: @Sendable (WebSocketInbound) -> Void
    private let state: Mutex<WebSocketInboundState>
    /// Messages come from a reader task (the permessage-deflate path), which holds reading back by waiting in
    /// `waitUntilReadable`: the channel's `autoRead` is left alone there. Turning it on reads the socket at once,
    /// past `NIOAsyncChannel`'s backpressure, which holds reads back only while nothing takes its frames: with
    /// small messages every pause and resume of the budget added a read's worth of frames to its buffer, and one
    /// socket without a token made the broker hold gigabytes (found by an outside probe).
    private let readByTask: Bool

    /// A WebSocket that opens a new session (`upgrading: false`) or upgrades the polling session `session`.
    init(
        engine: EngineServer, session: EngineSession, channel: any Channel, upgrading: Bool, readByTask: Bool = false,
        startWriter: @escaping @Sendable (WebSocketInbound) -> Void
    ) {
        self.engine = engine
        self.session = session
        self.channel = channel
        self.readByTask = readByTask
        self.startWriter = startWriter
        state = Mutex(
            WebSocketInboundState(upgrading: upgrading, maxBytes: engine.configuration.maxPayload, maxBytesBeforeConnect: 2 * engine.maxPayloadBeforeConnect))
        if upgrading {
            // An upgrade that is not complete in time fails: the socket closes, the session stays on polling.
            channel.eventLoop.scheduleTask(in: .nanoseconds(Int64(engine.configuration.upgradeTimeout * 1e9))) { [weak self] in
                guard let self, self.state.withLock({ $0.upgradeTimedOut() }) else { return }
                self.engine.logger.debug("websocket upgrade timed out", metadata: ["connection.id": "\(self.session.sid)"])
                self.failProbe()
            }
        } else {
            startWriter(self)
        }
    }

    /// A whole message read from the socket (fragments already joined).
    func receive(_ data: ByteBuffer, binary: Bool) {
        switch state.withLock({ $0.stage }) {
        case .ended:
            return
        case .probing, .awaitingUpgrade:
            // Only "2probe" or "5" can go on: anything longer fails without becoming a string (comparing a long
            // text would normalize it first, in time quadratic in a run of combining marks).
            upgradeStep(binary || data.readableBytes > 6 ? nil : String(buffer: data))
        case .open:
            // The server closed the session (shutdown): what the client sent before it read the close frame is read
            // and dropped, so that the socket is never closed with unread input (a reset, which makes the client's
            // system drop the acks it has not read yet).
            if session.isClosed { return }
            // Over the session's inbound budget, this message is still handled, and the socket is read again once the
            // debt is paid: what a client can make the broker decode per second is bounded, whatever it sends.
            // A login is not charged the budget the sessions before theirs share (`EngineSession.freeLoginBytes`).
            let login = !binary && data.readableBytes <= EngineSession.freeLoginBytes && session.startsLogin(data)
            let wait = session.chargeInbound(message: data.readableBytes, sharedBeforeConnect: !login)
            if wait > 0 { pauseForBudget(nanoseconds: wait) }
            let packet: EnginePacket
            if binary {
                packet = .binary(Array(buffer: data))
            } else {
                do { packet = try EngineCodec.decode(Array(buffer: data)) } catch {
                    engine.metrics.protocolErrors.increment()
                    engine.logger.debug("undecodable Engine.IO packet", metadata: ["connection.id": "\(session.sid)", "error": "\(error)"])
                    // Nothing more is read; what was read before it is still handled, then the session closes.
                    applyEnd(state.withLock { $0.transportEnded() })
                    return
                }
            }
            // A pong only re-arms the heartbeat (O(1), synchronous, indifferent to the order of the packets around
            // it): handled here on the event loop, not queued for the drain task, so a flood of pongs costs no task
            // per pong (task creation and a thread wake-up were most of a pong's cost).
            if packet.type == .pong, !packet.isBinary {
                if !session.isClosed { engine.pong(session) }
                return
            }
            let connected = session.isConnected
            let action = state.withLock { $0.receive(packet, connected: connected) }
            if action.pause { applyReading() }
            if action.drain { drain() }
        }
    }

    /// A ping, pong or close frame, or a continuation frame, was read (the task-free path; hummingbird-websocket reads
    /// control frames on the other): it costs the inbound budget what a small message does, so a flood of them is read
    /// at the budget's pace.
    func receivedControlFrame() {
        chargeInput(EngineSession.minimumInboundCost)
    }

    /// `bytes` the client sent beyond what their message is charged (compressed input that inflated to less) cost the
    /// inbound budget as received bytes do.
    func chargeInput(_ bytes: Int) {
        guard state.withLock({ $0.stage }) != .ended, !session.isClosed else { return }
        let wait = session.chargeInbound(bytes)
        if wait > 0 { pauseForBudget(nanoseconds: wait) }
    }

    /// The socket ended (closed, reset, or its input closed). Packets already read are still handled, then the
    /// session closes; a socket that was being probed leaves its session on polling.
    func transportEnded() {
        applyEnd(state.withLock { $0.transportEnded() })
    }

    private func applyEnd(_ action: WebSocketInboundState.EndAction) {
        switch action {
        case .none: break
        case .closeSocket: end()
        case .failProbe: failProbe()
        case .closeSession: engine.close(session, reason: "transport closed")
        }
    }

    /// `2probe` is answered `3probe`; then `5` moves the session onto this socket. Anything else ends the probe.
    private func upgradeStep(_ text: String?) {
        switch state.withLock({ $0.upgradeMessage(text) }) {
        case .answerProbe:
            // Another socket may be probing the same session: only the one that moved it to `upgrading` may move it back.
            guard session.state.withLock({ $0.transport.probed() }) else { return end() }
            // The upgrade may have timed out meanwhile (with permessage-deflate the timer and this reader run on
            // different threads): then the session goes back to polling here, since the timeout could not.
            guard state.withLock({ $0.takeProbe() }) else {
                session.state.withLock { $0.transport.probeFailed() }
                return end()
            }
            channel.writeAndFlush(WebSocketFrame(fin: true, opcode: .text, data: ByteBuffer(string: "3probe")), promise: nil)
            // A long poll waiting now answers noop, so that the client sends "5".
            session.outbox.wakeDrainer()
        case .upgrade:
            let upgraded = session.state.withLock { s -> Bool in
                guard s.transport.upgraded() else { return false }
                s.channel = channel
                s.probeChannel = nil
                return true
            }
            guard upgraded else { return failProbe() }
            session.outbox.wakeDrainer()
            // A polling POST may still be handling packets the client sent before "5": this socket's packets are
            // handled once it is done, and the writer starts then too.
            Task {
                await session.postEnded()
                startWriter(self)
                if state.withLock({ $0.becameReady() }) { drain() }
            }
        case .fail:
            failProbe()
        }
    }

    /// The probe failed: the session stays on polling (if this socket had moved it to `upgrading`), the socket closes.
    private func failProbe() {
        if state.withLock({ $0.holdsProbe }) { session.state.withLock { $0.transport.probeFailed() } }
        end()
    }

    /// Stops reading this socket and closes it (a socket whose upgrade failed; the session is not on it), and lets
    /// another websocket try the upgrade.
    private func end() {
        state.withLock { $0.end() }
        session.state.withLock { s in
            if let probe = s.probeChannel, probe === channel { s.probeChannel = nil }
        }
        EngineServer.closeWebSocket(channel)
    }

    /// Handles the waiting packets in order, in a task that ends when none is left.
    private func drain() {
        Task {
            while true {
                let connected = session.isConnected
                let next = state.withLock { $0.next(connected: connected) }
                if next.resume { applyReading() }
                switch next.step {
                case .handle(let packet):
                    if !(await engine.handleEnginePacket(packet, session: session)) {
                        state.withLock { $0.end() }
                        if session.isClosed {
                            engine.close(session, reason: "closed")
                        } else if let reason = session.outbox.closeReason {
                            engine.close(session, reason: reason.rawValue)
                        } else {
                            // Nothing is read meanwhile (read and dropped, it cost nothing to the sender: a review).
                            state.withLock { $0.holdReading() }
                            applyReading()
                            await engine.closeAfterReplies(session, reason: "protocol error")
                        }
                        return
                    }
                case .idle:
                    return
                case .closeSession:
                    engine.close(session, reason: "transport closed")
                    return
                }
            }
        }
    }

    /// Reads, or stops reading, as the state says now (on the event loop, so the last word wins).
    private func applyReading() {
        channel.eventLoop.execute { [self] in
            // A closed session's socket is read to its end (`receive`), whatever was paused.
            let read = session.isClosed || state.withLock { !$0.readingPaused }
            if !readByTask { channel.setOption(ChannelOptions.autoRead, value: read).whenComplete { _ in } }
            if read { state.withLock { $0.takeReader() }?.resume() }
        }
    }

    /// The permessage-deflate path's reader calls this after each message: it returns once this socket may be read
    /// again (no more than `maxQueued` packets wait and the inbound budget is out of debt), as `autoRead` holds the
    /// task-free path; at once when the socket no longer waits for anything (`releaseReader`). Without it the reader
    /// went on taking frames that hummingbird-websocket had read already: a 16-KB read of small compressed frames
    /// became megabytes of queued packets, past every bound on what waits (found by an outside probe).
    func waitUntilReadable() async {
        await withCheckedContinuation { (reader: CheckedContinuation<Void, Never>) in
            if state.withLock({ $0.park(reader) }) { reader.resume() }
        }
    }

    /// The socket closed, or its session did: a reader waiting in `waitUntilReadable` goes on (to the end of the
    /// socket's input), and never waits again.
    func releaseReader() {
        state.withLock { $0.releaseReader() }?.resume()
    }

    /// The shortest pause of a socket whose inbound budget is in debt: 10 ms.
    static let minimumBudgetPause: UInt64 = 10_000_000

    /// Stops reading for `nanoseconds` (the session's inbound budget is in debt), unless reading already waits for
    /// the budget.
    private func pauseForBudget(nanoseconds: UInt64) {
        guard state.withLock({ $0.budgetExceeded() }) else { return }
        applyReading()
        resumeReading(after: nanoseconds)
    }

    /// Reads again after `nanoseconds`, or later if the budget is still in debt then: what was read with the message
    /// that ran over (the rest of that read, decoded after the pause began) is owed too, so reading waits for the
    /// whole debt, not the debt of the first message over the budget. (Resumed after the first message's debt, a
    /// read of 1,000 small frames ran the budget 4 s into debt and paused for 10 ms.)
    private func resumeReading(after nanoseconds: UInt64) {
        // At least `minimumBudgetPause`: a socket in debt is read again in bursts of that much budget, not a message per
        // wake-up (a wake-up per tiny message cost the compressed path's reader half a core at the budget's pace).
        let pause = max(nanoseconds, Self.minimumBudgetPause)
        channel.eventLoop.scheduleTask(in: .nanoseconds(Int64(min(pause, UInt64(Int64.max))))) { [weak self] in
            guard let self else { return }
            // The session's own debt (and its user's): not the one sessions before their CONNECT share, which other
            // clients' floods may keep in debt, and which this socket's next message is charged anyway (a login is not).
            let owed = self.session.isClosed ? 0 : self.session.chargeInbound(0, sharedBeforeConnect: false)
            if owed > 0 { return self.resumeReading(after: owed) }
            self.state.withLock { $0.budgetPaid() }
            self.applyReading()
        }
    }
}

/// The rules of `WebSocketInbound`, as a state machine whose transitions say what the caller must do (tested by
/// calling them, in `WebSocketInboundStateTests`).
struct WebSocketInboundState: Sendable {
    enum Stage: Equatable, Sendable {
        /// Upgrading a polling session: `2probe` expected.
        case probing
        /// The probe was answered: `5` expected.
        case awaitingUpgrade
        /// The session's packets.
        case open
        /// Nothing more is read or handled.
        case ended
    }

    /// Packets waiting before reading pauses; reading resumes once half of them are handled.
    static let maxQueued = 64
    /// The same before the session is connected to `/chat`: a client sends its CONNECT and waits for the answer.
    static let maxQueuedBeforeConnect = 4
    /// Bytes of waiting packets before reading pauses (the session's `maxPayload`: one largest message), resumed
    /// at half.
    let maxBytes: Int
    /// The same before the session is connected (twice `maxPayloadBeforeConnect`): what a socket without a checked
    /// token makes the broker hold stays about two CONNECTs' worth, not a connected client's largest message.
    let maxBytesBeforeConnect: Int
    private(set) var queuedBytes = 0

    private(set) var stage: Stage
    private(set) var queue = Deque<EnginePacket>()
    /// A task is handling the queue.
    private(set) var draining = false
    /// Reading is paused (too many packets wait).
    private(set) var paused = false
    /// Reading stays paused until the session closes (`holdReading`).
    private(set) var held = false
    /// Reading waits for the session's inbound budget to be out of debt.
    private(set) var budgetPaused = false
    /// The socket is not read: too many packets wait, or the budget is in debt.
    var readingPaused: Bool { paused || budgetPaused }
    /// Packets may be handled (an upgrade's polling POST is done).
    private(set) var ready: Bool
    private(set) var socketEnded = false
    /// This socket moved the session to `upgrading` (answered its probe).
    private(set) var holdsProbe = false
    /// The permessage-deflate path's reader, waiting for reading to go on (`WebSocketInbound.waitUntilReadable`).
    private var parkedReader: CheckedContinuation<Void, Never>?
    /// The socket or its session closed: the reader no longer waits.
    private var readerReleased = false

    init(upgrading: Bool, maxBytes: Int, maxBytesBeforeConnect: Int) {
        self.maxBytes = maxBytes
        self.maxBytesBeforeConnect = min(maxBytes, maxBytesBeforeConnect)
        stage = upgrading ? .probing : .open
        ready = !upgrading
    }

    enum UpgradeAction: Equatable { case answerProbe, upgrade, fail }

    /// A text message (`nil` for binary) while the upgrade is under way.
    mutating func upgradeMessage(_ text: String?) -> UpgradeAction {
        switch (stage, text) {
        case (.probing, "2probe"):
            stage = .awaitingUpgrade
            return .answerProbe
        case (.awaitingUpgrade, "5"):
            stage = .open
            return .upgrade
        default:
            stage = .ended
            return .fail
        }
    }

    /// The session moved to `upgrading` for this socket's probe: this socket holds the probe from now on, unless the
    /// upgrade ended meanwhile (timed out), which `false` says.
    mutating func takeProbe() -> Bool {
        guard stage == .awaitingUpgrade else { return false }
        holdsProbe = true
        return true
    }

    /// The upgrade's time is up. `true` if it was still under way (it has failed now: nothing more is read).
    mutating func upgradeTimedOut() -> Bool {
        guard stage == .probing || stage == .awaitingUpgrade else { return false }
        stage = .ended
        return true
    }

    /// The upgrade's POST is done: packets may be handled. `true`: start draining.
    mutating func becameReady() -> Bool {
        ready = true
        guard stage == .open, !draining, !queue.isEmpty || socketEnded else { return false }
        draining = true
        return true
    }

    /// How many packets, and bytes of them, may wait before reading pauses: fewer until the session is `connected`.
    private func limits(connected: Bool) -> (packets: Int, bytes: Int) {
        connected ? (Self.maxQueued, maxBytes) : (Self.maxQueuedBeforeConnect, maxBytesBeforeConnect)
    }

    /// A packet was read (`connected`: the session is connected to `/chat`). `drain`: start a task to handle the
    /// queue; `pause`: stop reading.
    mutating func receive(_ packet: EnginePacket, connected: Bool) -> (drain: Bool, pause: Bool) {
        guard stage == .open, !socketEnded else { return (false, false) }
        queue.append(packet)
        queuedBytes += packet.payload.count
        var pause = false
        let limit = limits(connected: connected)
        if queue.count >= limit.packets || queuedBytes >= limit.bytes, !paused {
            paused = true
            pause = true
        }
        guard ready, !draining else { return (false, pause) }
        draining = true
        return (true, pause)
    }

    enum Step: Equatable {
        case handle(EnginePacket)
        /// Nothing waits: the draining task ends.
        case idle
        /// Nothing waits and the socket ended: the session closes.
        case closeSession
    }

    /// What the draining task does next (`connected` as for `receive`); `resume`: read again.
    mutating func next(connected: Bool) -> (step: Step, resume: Bool) {
        guard stage == .open, let packet = queue.popFirst() else {
            draining = false
            if socketEnded, stage == .open {
                stage = .ended
                return (.closeSession, false)
            }
            return (.idle, false)
        }
        queuedBytes -= packet.payload.count
        var resume = false
        let limit = limits(connected: connected)
        if paused, queue.count <= limit.packets / 2, queuedBytes <= limit.bytes / 2 {
            paused = false
            resume = true
        }
        return (.handle(packet), resume)
    }

    /// The session's inbound budget went into debt: reading stops until it is paid. `false` if it waits already.
    mutating func budgetExceeded() -> Bool {
        guard !budgetPaused else { return false }
        budgetPaused = true
        return true
    }

    /// The budget's debt is paid: reading goes on unless too many packets wait.
    mutating func budgetPaid() {
        budgetPaused = false
    }

    /// The reader asks to wait until reading goes on: `true` if it need not (it goes on at once), else it is kept to be
    /// resumed by `takeReader` or `releaseReader`.
    mutating func park(_ reader: CheckedContinuation<Void, Never>) -> Bool {
        guard readingPaused, !readerReleased, stage != .ended || held else { return true }
        parkedReader = reader
        return false
    }

    /// Reading goes on: the parked reader, to be resumed.
    mutating func takeReader() -> CheckedContinuation<Void, Never>? {
        defer { parkedReader = nil }
        return parkedReader
    }

    /// The socket or its session closed: the parked reader, to be resumed; none parks from now on.
    mutating func releaseReader() -> CheckedContinuation<Void, Never>? {
        readerReleased = true
        return takeReader()
    }

    enum EndAction: Equatable {
        /// The draining task (or the upgrade, once its POST is done) closes the session after what waits.
        case none
        /// Only the socket is to be closed (the session is not on it, or was closed already).
        case closeSocket
        /// This socket's probe failed: the session goes back to polling, the socket closes.
        case failProbe
        case closeSession
    }

    /// The socket ended (or sent something undecodable: nothing more is read from it). Waiting packets are still
    /// handled (the draining task closes the session after them).
    mutating func transportEnded() -> EndAction {
        socketEnded = true
        switch stage {
        case .ended:
            return .closeSocket
        case .probing, .awaitingUpgrade:
            stage = .ended
            return holdsProbe ? .failProbe : .closeSocket
        case .open:
            // The draining task, or the upgrade once its POST is done, closes the session after what waits.
            if draining || !ready { return .none }
            stage = .ended
            return .closeSession
        }
    }

    /// Nothing more is handled, and the socket is not read until its session closes (then it is read to its end, and
    /// dropped): the session closes once its replies are written (`EngineServer.closeAfterReplies`).
    mutating func holdReading() {
        held = true
        paused = true
    }

    /// Nothing more is read or handled.
    mutating func end() {
        stage = .ended
        queue.removeAll()
        queuedBytes = 0
    }
}
