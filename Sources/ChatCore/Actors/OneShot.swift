import Synchronization

/// A value delivered once by a synchronous callback to one async waiter. Completing before anyone waits is
/// fine: the value is kept and the waiter returns at once. The waiter resumes on the completing thread's
/// behalf with no actor hop in between.
public final class OneShot<Value: Sendable>: Sendable {
    private struct State {
        var value: Value?
        var waiter: CheckedContinuation<Value, Never>?
    }

    private let state = Mutex(State())

    public init() {}

    /// Records the value and resumes the waiter, if any. Only the first call counts.
    public func complete(_ value: Value) {
        let waiter = state.withLock { s -> CheckedContinuation<Value, Never>? in
            guard s.value == nil else { return nil }
            s.value = value
            defer { s.waiter = nil }
            return s.waiter
        }
        waiter?.resume(returning: value)
    }

    /// Waits for the value.
    public func value() async -> Value {
        await withCheckedContinuation { (cont: CheckedContinuation<Value, Never>) in
            let ready = state.withLock { s -> Value? in
                if let value = s.value { return value }
                s.waiter = cont
                return nil
            }
            if let ready { cont.resume(returning: ready) }
        }
    }
}
