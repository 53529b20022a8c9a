import Synchronization

/// One user of one company: the set of that user's live devices. A session exists for every member of an
/// active thread (its actor holds it) and for every connected user (each device holds it), whether or not a
/// device is live, so a thread actor holds its members' sessions from activation on and a device that connects
/// later is reached at once, with no hand-over between the connect and the thread.
///
/// Lifecycle changes (devices arriving and leaving) are serialised by the actor. The fan-out path is
/// `nonisolated` and synchronous: it reads an atomically published device list, so a thread actor never
/// awaits a session or a device, and a thread's frames enter each outbox in the order the thread emitted them.
///
/// Hold sessions strongly only (no `weak` or `unowned` references): `SessionRegistry` drops a session when it is
/// the only holder, and a reference it cannot see could bring back a session the registry already replaced.
public actor UserSession {
    public nonisolated let key: SessionKey
    private nonisolated let published = Mutex<[Device]>([])
    /// How many devices `published` holds: fan-out skips a member with none without taking the lock.
    private nonisolated let deviceCount = Atomic<Int>(0)
    /// The outbound bytes the user's connected devices here hold together (`Outbox.share`).
    public nonisolated let outboundBudget = UserOutboundBudget()

    init(key: SessionKey) { self.key = key }

    /// Adds a device unless the user already has `limit`; returns how many the user now has, or `nil` (nothing
    /// added). `greeting` is queued to the device first, under the same lock that publishes it: no frame of a thread
    /// can reach the device before it (the transport's CONNECT answer comes before any event).
    func add(_ device: Device, limit: Int = .max, greeting: OutboundFrame? = nil) -> Int? {
        published.withLock { devices in
            guard devices.count < limit else { return nil }
            if let greeting { device.outbox.enqueue(greeting) }
            devices.append(device)
            deviceCount.store(devices.count, ordering: .releasing)
            return devices.count
        }
    }

    /// Removes a device; returns how many the user still has.
    func remove(_ device: Device) -> Int {
        published.withLock { devices in
            devices.removeAll { $0 === device }
            deviceCount.store(devices.count, ordering: .releasing)
            return devices.count
        }
    }

    /// The user's live devices.
    public nonisolated var devices: [Device] { published.withLock { $0 } }

    /// Whether the user has a live device (the gateway's `isUserOnline`).
    public nonisolated var isOnline: Bool { published.withLock { !$0.isEmpty } }

    /// Whether the user has a live device, without taking the lock (the send path asks it for every member).
    nonisolated var hasDevices: Bool { deviceCount.load(ordering: .acquiring) > 0 }

    /// How many live devices the user has here, without taking the lock.
    nonisolated var liveDevices: Int { deviceCount.load(ordering: .acquiring) }

    /// Enqueues `frame` to every device of this user that receives `thread` (and, for a thread event, its `seq`),
    /// except `excluded`. Returns how many devices it reached.
    @discardableResult
    nonisolated func deliver(_ frame: OutboundFrame, thread: ThreadID, seq: Int? = nil, except excluded: Device? = nil) -> Int {
        guard deviceCount.load(ordering: .acquiring) > 0 else { return 0 }
        // Under the lock, borrowing the devices instead of copying the list. The lock guards adds and removes; while
        // it is held, an enqueue takes the outbox's lock and may wake an event loop (the drain signal), and neither
        // ever waits for this lock.
        return published.withLock { devices in
            var reached = 0
            for device in devices where device !== excluded && device.receives(thread, seq: seq) {
                if device.outbox.enqueue(frame) != .closed { reached += 1 }
            }
            return reached
        }
    }

    /// Enqueues `frame` to every device of this user, whatever rooms they receive.
    @discardableResult
    nonisolated func deliverToAll(_ frame: OutboundFrame) -> Int {
        guard deviceCount.load(ordering: .acquiring) > 0 else { return 0 }
        let devices = published.withLock { $0 }
        var reached = 0
        for device in devices where device.outbox.enqueue(frame) != .closed { reached += 1 }
        return reached
    }

    /// Puts every device of the user back in `thread`'s room (the user was added to it, or removed from it: a leave
    /// lasts until then), but those in `except` (by id).
    nonisolated func joinAll(_ thread: ThreadID, except: Set<UInt64> = []) {
        for device in devices where !except.contains(device.id) { device.join(thread) }
    }
}
