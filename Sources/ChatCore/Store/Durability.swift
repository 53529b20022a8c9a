/// How far a commit goes before a send is acknowledged (every store reads it the same way).
public enum Durability: String, Sendable, CaseIterable {
    /// Flushed to disk before the ack: survives a process kill and a power loss (SQLite `synchronous=FULL`;
    /// PostgreSQL `synchronous_commit=on`).
    case full
    /// Survives a crash of the broker's process, not a power loss (SQLite `synchronous=NORMAL` in WAL mode;
    /// PostgreSQL `synchronous_commit=off`).
    case process
}
