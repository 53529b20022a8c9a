import Synchronization

/// A table that every socket event of every connection touches, split into shards by key, each under its own lock:
/// callers with different keys rarely wait for each other, and a shard's clean-up (`TokenBuckets` drops refilled
/// buckets when its table has doubled) holds up only that shard's keys. `State` is one shard's table.
public final class KeyShards<Key: Hashable & Sendable, State: Sendable>: Sendable {
    /// One shard and its lock (a `Mutex` cannot sit in an array itself).
    @usableFromInline final class Shard: Sendable {
        @usableFromInline let state: Mutex<State>
        init(_ state: State) { self.state = Mutex(state) }
    }

    @usableFromInline let shards: [Shard]

    /// `count` shards (at least one), each made by `make`.
    public init(count: Int = 16, _ make: () -> State) {
        shards = (0..<max(1, count)).map { _ in Shard(make()) }
    }

    /// Runs `body` on the shard that holds `key`, under its lock (inlinable: every message of every socket comes here,
    /// from other modules too, and a generic call that is not specialized costs more than the lock).
    @inlinable
    public func withLock<T: Sendable>(_ key: Key, _ body: (inout State) -> T) -> T {
        shards[Int(UInt(bitPattern: key.hashValue) % UInt(shards.count))].state.withLock { state in body(&state) }
    }
}
