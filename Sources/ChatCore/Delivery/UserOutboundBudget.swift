import Synchronization

/// The outbound bytes one user's connections on this node hold together: what their outboxes queue, and what their
/// writers took and have not finished writing (`Outbox.sent`). Each outbox of the user's devices adds and removes
/// its own bytes here (`Outbox.share`); an outbox that is behind while the total is past its user's bound is closed
/// as a slow consumer if it stays so for the grace period, or at once past twice the bound (`Outbox.enqueue`,
/// `Outbox.closeIfStalled`).
///
/// Without it, what a user's connections held was bounded per connection only: one user's 256 sockets, each
/// answered history pages it never read and kept alive with pongs sent blind, held about 240 MB, and four users 1 GB
/// (found by an outside probe).
public final class UserOutboundBudget: Sendable {
    private let held = Atomic<Int>(0)

    public init() {}

    /// Bytes the user's connections hold now.
    public var bytes: Int { held.load(ordering: .relaxed) }

    /// Adds `count` bytes; returns the new total.
    func add(_ count: Int) -> Int {
        held.wrappingAdd(count, ordering: .relaxed).newValue
    }

    /// Removes `count` bytes.
    func remove(_ count: Int) {
        guard count != 0 else { return }
        held.wrappingSubtract(count, ordering: .relaxed)
    }
}
