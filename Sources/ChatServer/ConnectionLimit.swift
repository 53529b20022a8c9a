import Glibc
import Logging
import NIOCore
import Prometheus
import Synchronization

/// How many TCP connections the broker holds at once (`--max-connections`): a connection accepted past it is closed
/// at once, before anything is read from it. Without a bound, connections that send nothing (each held until
/// `--request-read-timeout`) could take every file descriptor the process may open: the broker then could not
/// accept anyone, spun on its listening socket, and libdispatch, failing to open a file, stopped the process. By
/// default the bound is the open-file limit less `reserve` descriptors (the database, its files, the webhook's
/// connections, logs), so the process always has some left.
final class ConnectionLimit: Sendable {
    let max: Int
    private let open = Atomic<Int>(0)
    private let refused: Counter

    /// Descriptors kept for everything that is not a client connection.
    static let reserve = 256

    init(max: Int, metrics: BrokerMetrics) {
        self.max = max
        refused = metrics.connectionsOverLimit
    }

    /// Runs a new connection's `setUp` if it is admitted (`admit`); a set-up that fails closes the channel (NIO leaves
    /// it open otherwise), so that it is counted out.
    func setUp<Value: Sendable>(_ channel: any Channel, _ setUp: () -> EventLoopFuture<Value>) -> EventLoopFuture<Value> {
        guard admit(channel) else { return channel.eventLoop.makeFailedFuture(ConnectionOverLimit()) }
        return setUp().flatMapError { error in
            channel.close(promise: nil)
            return channel.eventLoop.makeFailedFuture(error)
        }
    }

    /// Counts `channel` among the open connections until it closes, or closes it at once if `max` are open.
    private func admit(_ channel: any Channel) -> Bool {
        let now = open.wrappingAdd(1, ordering: .relaxed).newValue
        guard now <= max else {
            open.wrappingSubtract(1, ordering: .relaxed)
            refused.increment()
            channel.close(promise: nil)
            return false
        }
        channel.closeFuture.whenComplete { _ in self.open.wrappingSubtract(1, ordering: .relaxed) }
        return true
    }

    /// The connection bound when none is configured: the open-file limit (raised to its hard limit first, as most
    /// servers do at start; `raiseOpenFileLimit`) less the reserve, at least 1.
    static func defaultMax(openFileLimit: Int) -> Int {
        Swift.max(1, openFileLimit - reserve)
    }

    /// Raises the soft open-file limit to the hard one; returns the soft limit in force afterwards (`nil` if it
    /// cannot be read).
    @discardableResult
    static func raiseOpenFileLimit(logger: Logger) -> Int? {
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return nil }
        if limit.rlim_cur < limit.rlim_max {
            var raised = limit
            raised.rlim_cur = limit.rlim_max
            if setrlimit(Int32(RLIMIT_NOFILE.rawValue), &raised) == 0 {
                logger.debug("open-file limit raised", metadata: ["from": "\(limit.rlim_cur)", "to": "\(raised.rlim_cur)"])
                limit = raised
            }
        }
        return limit.rlim_cur >= rlim_t(Int.max) ? Int.max : Int(limit.rlim_cur)
    }
}

/// An error that makes the server drop a connection `ConnectionLimit` closed.
struct ConnectionOverLimit: Error {}
