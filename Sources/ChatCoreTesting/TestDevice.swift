import ChatCore
import ChatJSON
import Synchronization

/// A simulated socket: a connected `Device` of the broker, with the events it received kept in order until a
/// test takes them, and a way to wait for the next event of a name.
public final class TestDevice: Sendable {
    public let device: Device
    let supervisor: Supervisor
    private let received = Mutex<[(name: String, data: JSONValue)]>([])

    init(device: Device, supervisor: Supervisor) {
        self.device = device
        self.supervisor = supervisor
    }

    /// Why `next` gave up.
    public struct Timeout: Error, CustomStringConvertible {
        public let description: String
    }

    /// Sends a client event (`chat:send`, `chat:history`, …) as the socket would; returns the ack body or the error.
    public func emit(_ event: String, _ data: JSONValue) async -> Result<JSONValue, ChatError> {
        await supervisor.handle(event: event, data: data, from: device)
    }

    /// `chat:send` of `content` into `thread`.
    public func send(_ thread: ThreadID, _ content: String, tempId: String? = nil) async -> Result<JSONValue, ChatError> {
        await emit("chat:send", Self.sendPayload(thread, content, tempId: tempId))
    }

    public static func sendPayload(_ thread: ThreadID, _ content: String, tempId: String?) -> JSONValue {
        var data: JSONObject = ["threadId": .string(thread), "content": .string(content)]
        if let tempId { data["tempId"] = .string(tempId) }
        return .object(data)
    }

    /// Disconnects the device (its outbox closes).
    public func disconnect() async { await supervisor.disconnect(device) }

    /// Every event received and not yet taken, in order (and takes them).
    public func events() -> [(name: String, data: JSONValue)] {
        collect()
        return received.withLock { r in
            defer { r = [] }
            return r
        }
    }

    /// Waits for the next event named `name` (that `matching` accepts), taking it and leaving the others in
    /// order; throws `Timeout` after `timeout`, or at once if the device's outbox closed.
    public func next(
        _ name: String, timeout: Duration = .seconds(5), matching: @Sendable (JSONValue) -> Bool = { _ in true }
    ) async throws -> JSONValue {
        let deadline = ContinuousClock.now + timeout
        while true {
            collect()
            let found = received.withLock { r -> JSONValue? in
                guard let i = r.firstIndex(where: { $0.name == name && matching($0.data) }) else { return nil }
                return r.remove(at: i).data
            }
            if let found { return found }
            if let reason = device.outbox.closeReason { throw Timeout(description: "outbox closed (\(reason.rawValue)) before \(name) arrived") }
            let remaining = deadline - ContinuousClock.now
            guard remaining > .zero else {
                let seen = received.withLock { $0.map(\.name) }
                throw Timeout(description: "no \(name) within \(timeout); received \(seen)")
            }
            let outbox = device.outbox
            // Wakes the wait at the deadline (and keeps waking it, in case the wait began after the first wake).
            let waker = Task {
                try? await Task.sleep(for: remaining)
                while !Task.isCancelled {
                    outbox.wakeDrainer()
                    try? await Task.sleep(for: .milliseconds(10))
                }
            }
            await outbox.waitForFrames()
            waker.cancel()
        }
    }

    /// Moves what the outbox holds into `received`, decoded.
    private func collect() {
        let frames = device.outbox.takeAvailable()
        guard !frames.isEmpty else { return }
        let decoded = frames.compactMap { supervisor.encoder.decode($0) }
        received.withLock { $0.append(contentsOf: decoded) }
    }
}
