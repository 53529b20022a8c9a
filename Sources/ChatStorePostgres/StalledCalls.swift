import ChatCore
import Synchronization

/// The calls of one store whose deadline passed while their body still runs (a statement PostgreSQL never answered).
/// Past `limit` of them the database is taken for unresponsive: the store's next calls fail at once instead of piling
/// more open transactions onto it, until the stalled bodies end.
///
/// Only deadlines count. A body abandoned because its caller was cancelled (a client went away) says nothing about
/// the database, and a burst of those must not make other callers fail. Each store has its own count, so one store's
/// stalls never refuse another's calls.
final class StalledCalls: Sendable {
    /// Stalled bodies allowed at once (the pool holds 8 connections by default).
    let limit: Int
    private let running = Atomic<Int>(0)

    init(limit: Int = 4) { self.limit = limit }

    /// Stalled bodies still running.
    var count: Int { running.load(ordering: .relaxed) }

    /// The error a call gets instead of running while `limit` bodies are stalled; `nil` while there is room.
    func refusal() -> StoreError? {
        let now = count
        guard now >= limit else { return nil }
        return StoreError("the database is not answering: \(now) earlier calls are still running past their deadline")
    }

    func began() { running.wrappingAdd(1, ordering: .relaxed) }
    func ended() { running.wrappingAdd(-1, ordering: .relaxed) }
}
