/// How far a commit goes before a send is acknowledged.
public enum Durability: String, Sendable, CaseIterable {
    /// fsync before ack (`PRAGMA synchronous=FULL`): survives a process kill and a power loss.
    case full
    /// survives a process crash, not a power loss (`PRAGMA synchronous=NORMAL` in WAL mode).
    case process
}
