import Synchronization

/// A gate that tasks wait at while it is closed (`pass()`), all let through when it opens: what a `ForwardingStore`
/// override awaits to hold a call at the worst moment. Thread-safe.
public final class TestGate: Sendable {
    private let state: Mutex<(open: Bool, waiting: [CheckedContinuation<Void, Never>], passes: Int)>

    public init(open: Bool) {
        state = Mutex((open, [], 0))
    }

    /// Tasks that `pass()` from now on wait, until `open()`.
    public func close() { state.withLock { $0.open = false } }

    /// Lets every waiting task through, and every later one at once.
    public func open() {
        let waiting = state.withLock { s in
            s.open = true
            defer { s.waiting = [] }
            return s.waiting
        }
        for waiter in waiting { waiter.resume() }
    }

    /// How many tasks wait at the gate now.
    public var waiting: Int { state.withLock { $0.waiting.count } }

    /// How many times `pass()` was called.
    public var passes: Int { state.withLock { $0.passes } }

    /// Returns at once if the gate is open, else once it opens.
    public func pass() async {
        await withCheckedContinuation { (cont: CheckedContinuation<Void, Never>) in
            let now = state.withLock { s -> Bool in
                s.passes += 1
                if s.open { return true }
                s.waiting.append(cont)
                return false
            }
            if now { cont.resume() }
        }
    }
}
