import NIOCore
import Synchronization

/// The socket writers of one event loop that have frames waiting. A producer (a thread actor fanning an event out
/// to many sockets) adds each writer here, and one event-loop task drains every writer added since that task was
/// scheduled: an event for twenty sockets of one loop costs one task and at most one wake-up of the loop, instead
/// of a task per socket. The queue holds writers strongly only until that task has run.
final class EventLoopDrainQueue: Sendable {
    private struct State {
        var ready: [SocketWriter] = []
        var scheduled = false
    }

    let eventLoop: any EventLoop
    private let state = Mutex(State())

    init(eventLoop: any EventLoop) {
        self.eventLoop = eventLoop
    }

    /// Asks for `writer.drain()` on the event loop, soon: in the task already scheduled, or in a new one.
    func add(_ writer: SocketWriter) {
        let schedule = state.withLock { s -> Bool in
            s.ready.append(writer)
            guard !s.scheduled else { return false }
            s.scheduled = true
            return true
        }
        if schedule { eventLoop.execute { self.run() } }
    }

    private func run() {
        let writers = state.withLock { s -> [SocketWriter] in
            s.scheduled = false
            var taken: [SocketWriter] = []
            swap(&taken, &s.ready)
            return taken
        }
        for writer in writers { writer.drain() }
    }
}
