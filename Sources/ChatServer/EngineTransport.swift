/// The transport of one Engine.IO session as a state machine, with engine.io's rules: which transport carries the
/// session (long polling, a websocket being probed, a websocket), which polling requests are in flight, and whether
/// the session is closed. `EngineSession` keeps it under its lock; each event is a mutating method whose result says
/// what the caller must do, so the rules are tested by calling them (`EngineTransportTests`).
struct EngineTransport: Equatable, Sendable {
    /// The transport a session starts on.
    enum Kind: Sendable, Equatable { case polling, websocket }

    enum Phase: Equatable, Sendable {
        /// Long polling: `get`/`post` say whether a long-poll GET or a POST is in flight (at most one of each).
        case polling(get: Bool, post: Bool)
        /// A websocket answered the probe (`2probe`/`3probe`); until it sends `5`, polling still carries the
        /// client's packets, and a long poll answers `noop` at once so that the client can switch.
        case upgrading(get: Bool, post: Bool)
        /// On a websocket. `post`: a polling POST sent before the switch is still being handled (the websocket's
        /// reader starts after it, so the client's packets are handled in the order it sent them).
        case websocket(post: Bool)
        /// Closed; `byClient`: the client asked for it with a `close` packet (a long poll then answers `noop`).
        case closed(byClient: Bool)
    }

    private(set) var phase: Phase
    /// The client sent `close`: the session is about to close, at the client's request.
    private(set) var closeRequested = false

    init(_ kind: Kind) {
        phase = kind == .polling ? .polling(get: false, post: false) : .websocket(post: false)
    }

    /// Whether a polling request may start.
    enum Admission: Equatable, Sendable {
        case admitted
        /// The session is not on a transport that takes this request: answered `400`, the session goes on.
        case wrongTransport
        /// One of the same kind is already in flight: a protocol error that ends the session (engine.io's rule).
        case overlapping
        /// The session is closed.
        case closed
    }

    var isClosed: Bool {
        if case .closed = phase { return true }
        return false
    }

    /// Still on polling (probing a websocket included): a websocket may upgrade it and the handshake offers one.
    var isPolling: Bool {
        switch phase {
        case .polling, .upgrading: true
        case .websocket, .closed: false
        }
    }

    /// A long poll must answer `noop` now instead of waiting: the client is switching to, or is on, a websocket.
    var longPollEnds: Bool {
        switch phase {
        case .upgrading, .websocket: true
        case .polling, .closed: false
        }
    }

    /// A polling POST is being handled.
    var postInFlight: Bool {
        switch phase {
        case .polling(_, let post), .upgrading(_, let post), .websocket(let post): post
        case .closed: false
        }
    }

    /// A long-poll GET arrives.
    mutating func beginPoll() -> Admission { begin(poll: true) }

    /// A polling POST arrives (allowed while a websocket is being probed: the client keeps sending on polling).
    mutating func beginPost() -> Admission { begin(poll: false) }

    /// The long-poll GET in flight was answered.
    mutating func endPoll() { end(poll: true) }

    /// The POST in flight was handled.
    mutating func endPost() { end(poll: false) }

    /// The polling requests in flight, if the session is on polling (or probing a websocket).
    private var polling: (upgrading: Bool, get: Bool, post: Bool)? {
        switch phase {
        case .polling(let get, let post): (false, get, post)
        case .upgrading(let get, let post): (true, get, post)
        case .websocket, .closed: nil
        }
    }

    private mutating func setPolling(upgrading: Bool, get: Bool, post: Bool) {
        phase = upgrading ? .upgrading(get: get, post: post) : .polling(get: get, post: post)
    }

    private mutating func begin(poll: Bool) -> Admission {
        guard let (upgrading, get, post) = polling else { return isClosed ? .closed : .wrongTransport }
        if poll ? get : post { return .overlapping }
        setPolling(upgrading: upgrading, get: get || poll, post: post || !poll)
        return .admitted
    }

    private mutating func end(poll: Bool) {
        if let (upgrading, get, post) = polling {
            setPolling(upgrading: upgrading, get: poll ? false : get, post: poll ? post : false)
        } else if !poll, case .websocket = phase {
            phase = .websocket(post: false)
        }
    }

    /// A websocket answered the probe. `false` if the session is not on polling (any more).
    mutating func probed() -> Bool {
        guard case .polling(let get, let post) = phase else { return false }
        phase = .upgrading(get: get, post: post)
        return true
    }

    /// The probing websocket went away or sent something else than `5`: the session stays on polling.
    mutating func probeFailed() {
        if case .upgrading(let get, let post) = phase { phase = .polling(get: get, post: post) }
    }

    /// The probing websocket sent `5`: the session is on it from now on. `false` if it closed meanwhile.
    mutating func upgraded() -> Bool {
        guard case .upgrading(_, let post) = phase else { return false }
        phase = .websocket(post: post)
        return true
    }

    /// The client sent `close`; the session closes next (`close()`).
    mutating func requestClose() { closeRequested = true }

    /// Closes the session. `true` if it was open (the caller then releases what the session holds, once).
    mutating func close() -> Bool {
        if isClosed { return false }
        phase = .closed(byClient: closeRequested)
        return true
    }
}
