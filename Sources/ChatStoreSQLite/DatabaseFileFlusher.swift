#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

/// A read-only descriptor of the database file, kept open to flush the file's written pages to disk from the
/// checkpointer's thread.
///
/// SQLite's passive checkpoint copies pages from the WAL into the database file but leaves their flush to the
/// checkpoint that completes, and under steady load that is the committer's WAL restart: it then flushed a couple of
/// seconds of copied pages (25–40 ms on this project's machine, measured with `strace`) while every commit waited.
/// Flushing after each passive checkpoint, outside any lock, leaves the restart little to write. It only does early
/// what SQLite does later (`fdatasync` acts on the file, whichever descriptor names it), so it changes no guarantee.
final class DatabaseFileFlusher: Sendable {
    private let descriptor: Int32

    /// Opens `path`; `nil` if it cannot be opened (the store then works as before, with slower restarts).
    init?(path: String) {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        descriptor = fd
    }

    /// Writes the file's dirty pages (and its size) to disk. A failure loses nothing: SQLite's own flush at the
    /// restart still writes them.
    func flush() { _ = fdatasync(descriptor) }

    deinit { close(descriptor) }
}
