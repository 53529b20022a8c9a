import ChatCore
import Foundation
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// One process's claim on a SQLite database: an exclusive `flock` on `<database>.lock`, held while the store is open
/// and let go by the kernel when the process ends, however it ends (a `kill -9` leaves no stale lock). A second broker
/// started on the same `--data-dir` is refused at start instead of sharing the file: two committers numbering the
/// same threads each from its own memory fail each other's sends, and neither delivers the other's messages live
/// (found by an outside probe). SQLite's own locks only make the two take turns.
final class DatabaseFileLock: Sendable {
    private let descriptor: Mutex<Int32>

    /// Takes the lock for the database at `path`, or throws if another process (or another open store of this one)
    /// holds it.
    init(path: String) throws {
        let lockPath = path + ".lock"
        let fd = open(lockPath, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw StoreError("cannot open \(lockPath): \(String(cString: strerror(errno)))") }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            let reason = errno == EWOULDBLOCK
                ? "the database \(path) is in use by another process (another broker on the same data directory?)"
                : "cannot lock \(lockPath): \(String(cString: strerror(errno)))"
            close(fd)
            throw StoreError(reason)
        }
        descriptor = Mutex(fd)
    }

    /// Lets the lock go (once the database is closed).
    func release() {
        descriptor.withLock { fd in
            guard fd >= 0 else { return }
            close(fd)
            fd = -1
        }
    }

    deinit { release() }
}
