import ChatJSON
import Logging
import Synchronization

/// The broker's core and its embedding API: routes decoded commands to the thread actor that owns them,
/// activates thread actors from the store on demand and passivates idle ones, keeps user sessions, and
/// enforces the company boundary before anything reaches a thread (a thread of another company is
/// indistinguishable from one that does not exist).
public final class Supervisor: Sendable {
    public let configuration: BrokerConfiguration
    public let store: any MessageStore
    public let stats: BrokerStats
    public let encoder: FrameEncoder
    let registry = SessionRegistry()
    let logger: Logger
    private let threads = Mutex<[ThreadID: Slot]>([:])
    private let directCreations = Mutex<[String: Task<(ThreadID, Bool), any Error>]>([:])
    let userLimits: UserRateLimits
    /// When the offline notices each company queues come due (shared by the node's thread actors).
    let noticePacer: OfflineNoticePacer
    /// Several nodes: per thread, the last seq the cluster feed announced here lately (or a retiring actor fanned out),
    /// and when (pruned `positionMemory`, a minute, before the feed's last batch). An actor activated meanwhile fans out what its snapshot
    /// holds beyond it, and after the feed's outage it is what this node's devices were given (`catchUpMissed`).
    /// `leftBy`: the incarnation of the actor that retired after a store failure leaving this position, which a batch
    /// handed to that actor before it retired does not raise (its devices were given no more).
    let announced = Mutex<[ThreadID: (seq: Int, at: UInt64, leftBy: Int?)]>([:])
    /// Several nodes: per thread, the receipt marks an actor that retired after a store failure had told this node's
    /// senders (`ThreadActor.retireAfterFailureIfSettled`), for its successor to tell what lies beyond them
    /// (`ThreadActor.activated`); pruned as `announced` is, taken at the next activation.
    let toldReceipts = Mutex<[ThreadID: (marks: [UserID: MemberMarks], at: UInt64)]>([:])
    /// Several nodes: per thread, the members that this node's membership changes, and the feed's, added lately (less
    /// those removed since), greeted here then: the catch-up after the feed's outage, which names every member added
    /// since a margin before it, leaves them out (`catchUpMissed`). Pruned as `announced` is.
    let addedLately = Mutex<[ThreadID: (users: Set<UserID>, at: UInt64)]>([:])
    /// Several nodes: threads whose announcements this node could not act on, tried again (`retryOwedActivations`).
    let owed = Mutex<[ThreadID: OwedActivation]>([:])
    /// When the cluster feed last handed over a batch (`monotonicNanos`): `announced` keeps what was noted in the
    /// minute before it, so an outage of the feed (up to an hour) leaves the positions of its last minute in place.
    let lastFeedBatch = Atomic<UInt64>(0)

    public init(store: any MessageStore, configuration: BrokerConfiguration = BrokerConfiguration(), logger: Logger = Logger(label: "chat.core"), stats: BrokerStats = BrokerStats()) {
        self.store = store
        self.configuration = configuration
        self.logger = logger
        self.stats = stats
        userLimits = UserRateLimits(configuration)
        noticePacer = OfflineNoticePacer(perSecond: configuration.offlineNoticesPerSecondPerCompany, burst: configuration.offlineNoticeBurstPerCompany)
        encoder = FrameEncoder(prefix: configuration.framePrefix, webSocketText: configuration.webSocketFrames)
    }

    // MARK: - Thread actors

    private enum Slot {
        case loading(Task<ThreadActor?, any Error>)
        case active(ThreadActor)
    }

    /// The active actor of `id`, activating it from the store if needed; `nil` if the thread does not exist.
    func actor(for id: ThreadID) async throws(ChatError) -> ThreadActor? {
        let slot: Slot = threads.withLock { map in
            if let existing = map[id] { return existing }
            let task = Task<ThreadActor?, any Error> { [self] in
                guard let snapshot = try await store.loadThread(id, recentChunks: configuration.residentChunks) else { return nil }
                let actor = makeActor(snapshot)
                if let shared = store as? any SharedStore {
                    let told = toldReceipts.withLock { $0.removeValue(forKey: id)?.marks }
                    await actor.activated(announced: await announcedPosition(of: id, shared: shared), told: told)
                }
                return actor
            }
            map[id] = .loading(task)
            return .loading(task)
        }
        switch slot {
        case .active(let actor):
            return actor
        case .loading(let task):
            do {
                let actor = try await task.value
                threads.withLock { map in
                    guard case .loading(let current) = map[id], current == task else { return }
                    if let actor {
                        map[id] = .active(actor)
                        stats.add(stats.activeThreads)
                    } else {
                        map[id] = nil
                    }
                }
                return actor
            } catch {
                threads.withLock { map in
                    if case .loading(let current) = map[id], current == task { map[id] = nil }
                }
                logger.error("thread activation failed", metadata: ["thread.id": "\(id)", "error": "\(error)"])
                throw ChatError(.internal, "the thread could not be loaded")
            }
        }
    }

    private func makeActor(_ snapshot: ThreadSnapshot) -> ThreadActor {
        ThreadActor(
            snapshot: snapshot, store: store, configuration: configuration, encoder: encoder, stats: stats,
            registry: registry, noticePacer: noticePacer
        ) { [weak self] retired, fannedOut, told, owes in
            guard let self else { return }
            noteFannedOut(retired.info.id, fannedOut, leftBy: retired.incarnation)
            if store is any SharedStore { toldReceipts.withLock { $0[retired.info.id] = (told, monotonicNanos()) } }
            forget(retired)
            logger.warning("thread actor retired after a store failure", metadata: ["thread.id": "\(retired.info.id)"])
            // It knew of events it had not fanned out: a successor is activated (once the store answers, if a member is
            // online here) to fan them out, instead of waiting for the thread's next event or command.
            if owes, store is any SharedStore { owe([retired.info.id], changes: [:]) }
        }
    }

    /// Several nodes: a retiring actor's last fanned-out seq, so that the thread's next actor fans out, at activation,
    /// what this node's live devices have not received yet. `leftBy`: the incarnation of an actor that retired after a
    /// store failure (a passivated actor fanned out everything it was handed).
    func noteFannedOut(_ id: ThreadID, _ seq: Int, leftBy: Int? = nil) {
        guard store is any SharedStore else { return }
        announced.withLock { map in map[id] = (seq, monotonicNanos(), leftBy) }
    }

    /// Several nodes: up to where this node's devices were given the thread's events when an actor is activated for
    /// it. The position the feed announced (or a retiring actor left) if it is remembered; otherwise the events stored
    /// within the last `positionMemory` (less a margin) were not announced here yet (an announcement is remembered
    /// for longer than that), so the last one stored before then; `nil` if the store cannot tell.
    private func announcedPosition(of id: ThreadID, shared: any SharedStore) async -> Int? {
        if let seq = announcedSeq(of: id) { return seq }
        let memory = configuration.positionMemory
        let age = max(memory - 5, memory / 2)
        return try? await shared.seqStored(before: .milliseconds(Int64(age * 1000)), of: id)
    }

    /// Drops `actor` from the routing table if it is still the active one for its thread.
    private func forget(_ actor: ThreadActor) {
        let removed = threads.withLock { map -> Bool in
            guard case .active(let current) = map[actor.info.id], current === actor else { return false }
            map[actor.info.id] = nil
            return true
        }
        if removed { stats.activeThreads.wrappingAdd(-1, ordering: .relaxed) }
    }

    /// Runs `body` on the thread's actor after the company check (and, for a thread not active here, the membership
    /// check: `requireAccess`); retries on a fresh actor if the one found was retired meanwhile.
    public func withThread<T: Sendable>(
        _ id: ThreadID, as principal: Principal, _ body: (ThreadActor) async throws(ChatError) -> T
    ) async throws(ChatError) -> T {
        try await withThread(id, as: principal, checkingAccess: true, body)
    }

    /// `withThread`; without `checkingAccess`, a thread not active here is loaded with the company check only (for a
    /// change the principal was allowed to make and that is stored already).
    func withThread<T: Sendable>(
        _ id: ThreadID, as principal: Principal, checkingAccess: Bool, _ body: (ThreadActor) async throws(ChatError) -> T
    ) async throws(ChatError) -> T {
        try requireNFC(principal)
        if checkingAccess { try await requireAccess(to: id, principal, else: .threadNotFound) }
        var caughtUp = false
        for _ in 0..<8 {
            guard let actor = try await actor(for: id), actor.info.companyId == principal.companyId else {
                throw ChatError.threadNotFound
            }
            do {
                return try await body(actor)
            } catch where error.code == .retired {
                forget(actor)
                continue
            } catch where error.code == .notAMember && !caughtUp && store is any SharedStore {
                // Another node may have added the user moments ago (the client had its 200 there) while the
                // announcement is on its way: if the store lists them, the actor catches up with the member log and
                // the command runs once more. (Found by an outside probe: a member just added on one node was
                // refused `not_a_member` on another in 9 rounds of 60.)
                caughtUp = true
                // A refusal the actor's list does not explain (a typing start from a device that left the room) asks
                // nothing of the store.
                guard await !actor.isMember(principal.userId),
                    let head = try? await store.threadHead(of: id, reader: principal.userId, company: principal.companyId), head.isMember,
                    await actor.catchUpMembers(for: principal.userId)
                else { throw error }
                continue
            }
        }
        throw ChatError(.internal, "the thread is restarting; try again")
    }

    /// Runs a membership change on the thread's actor. If the change was stored and the actor then retired before it
    /// could answer (another command's write failed), the answer is the thread as its next actor has it, with no
    /// membership check (the principal may have just removed themselves).
    private func membershipChange(
        _ id: ThreadID, by principal: Principal, _ change: (ThreadActor) async throws(ChatError) -> ThreadSummary
    ) async throws(ChatError) -> ThreadSummary {
        do {
            return try await withThread(id, as: principal, change)
        } catch where error.code == .storedThenRetired {
            return try await withThread(id, as: principal, checkingAccess: false) { actor throws(ChatError) in try await actor.summary(for: principal.userId) }
        }
    }

    /// Throws `missing` unless thread `id` is of the principal's company, and `not_a_member` unless the principal is
    /// one of its members (a service token is checked for the company only), asking the store (`threadHead`, a row
    /// and a key) when the thread has no actor here: a thread is never loaded for a request of another company's
    /// user, so its id costs a lookup and the thread stays out of memory (where a faster answer next time would tell
    /// that it exists), nor for a non-member's, who could otherwise keep threads they may not read in memory. An
    /// active thread's actor checks membership itself; another company's active thread is refused after the same
    /// store read as an unknown id (found by an outside probe: answered from memory, it took 0.87 ms where an unknown
    /// id took 1.35, which told that it exists and is in use), which passes over another company's row as it does a
    /// missing one.
    private func requireAccess(to id: ThreadID, _ principal: Principal, else missing: ChatError) async throws(ChatError) {
        if let actor = activeActor(for: id) {
            guard actor.info.companyId != principal.companyId else { return }
            _ = try? await store.threadHead(of: id, reader: principal.userId, company: principal.companyId)
            throw missing
        }
        guard !isLoadingOrActive(id) else { return }
        let head = try await threadHead(of: id, principal, else: missing)
        guard head.isMember || principal.isService else { throw ChatError.notAMember }
    }

    /// The store's row of thread `id` (`MessageStore.threadHead`) for `principal`; `missing` if there is none in the
    /// principal's company.
    private func threadHead(of id: ThreadID, _ principal: Principal, else missing: ChatError) async throws(ChatError) -> ThreadHead {
        let head: ThreadHead?
        do { head = try await store.threadHead(of: id, reader: principal.userId, company: principal.companyId) } catch {
            throw ChatError(.internal, "the thread could not be loaded")
        }
        guard let head, head.company == principal.companyId else { throw missing }
        return head
    }

    /// Passivates thread actors idle for `configuration.idleSeconds`. Returns how many were retired.
    @discardableResult
    public func passivateIdle() async -> Int {
        // `positionMemory` before the feed's last batch (or now), and never more than an hour back.
        let now = monotonicNanos(), memory = UInt64(configuration.positionMemory * 1e9), hour: UInt64 = 3_600_000_000_000
        let heard = min(now, lastFeedBatch.load(ordering: .relaxed))
        let cutoff = max(heard > memory ? heard - memory : 0, now > hour ? now - hour : 0)
        announced.withLock { map in map = map.filter { $0.value.at >= cutoff } }
        toldReceipts.withLock { map in map = map.filter { $0.value.at >= cutoff } }
        addedLately.withLock { map in map = map.filter { $0.value.at >= cutoff } }
        let active = activeActors()
        let idle = UInt64(configuration.idleSeconds * 1e9)
        var retired = 0
        for actor in active where await passivate(actor, idleNanos: idle) { retired += 1 }
        return retired
    }

    /// Retires `actor` if it has been idle for `idleNanos` and nothing of its own is in flight
    /// (`ThreadActor.retireIfIdle`; `savedChunks` for the memory budget), noting where it stood, and forgets it.
    private func passivate(_ actor: ThreadActor, idleNanos: UInt64, savedChunks: Bool = false) async -> Bool {
        let id = actor.info.id
        guard await actor.retireIfIdle(idleNanos: idleNanos, savedChunks: savedChunks, note: { self.noteFannedOut(id, $0) }) else { return false }
        forget(actor)
        stats.add(stats.passivations)
        return true
    }

    /// Keeps the active threads' history within `configuration.threadMemoryBudget`: past it, passivates threads (as
    /// idle ones are, if nothing of theirs is in flight) until they hold three quarters of it, taking from the company
    /// whose threads hold the most, least recently active first: one company's busy threads do not push every other
    /// company's out of memory. A passivated thread is loaded again from the store by its next event. Returns how many
    /// were passivated; `nextCheck` is when to look again (sooner the closer to the budget).
    @discardableResult
    public func enforceMemoryBudget() async -> (passivated: Int, nextCheck: Double) {
        let period = max(0.05, configuration.memoryCheckSeconds)
        guard let budget = configuration.threadMemoryBudget else { return (0, period) }
        struct Held { var bytes = 0; var threads: [(actor: ThreadActor, bytes: Int, lastActivity: UInt64)] = []; var next = 0 }
        var companies: [CompanyID: Held] = [:]
        var total = 0
        for actor in activeActors() {
            let (bytes, lastActivity) = await actor.footprint()
            companies[actor.info.companyId, default: Held()].bytes += bytes
            companies[actor.info.companyId, default: Held()].threads.append((actor, bytes, lastActivity))
            total += bytes
        }
        stats.threadMemoryBytes.store(total, ordering: .relaxed)
        // Well under the budget, the next look can wait longer (each costs a hop to every active thread).
        guard total > budget else { return (0, total < budget / 2 ? period * 5 : period) }
        for key in companies.keys { companies[key]!.threads.sort { $0.lastActivity < $1.lastActivity } }
        var retired = 0
        while total > budget / 4 * 3, let company = companies.max(by: { $0.value.bytes < $1.value.bytes })?.key {
            let held = companies[company]!
            guard held.next < held.threads.count else {
                companies[company] = nil
                continue
            }
            let entry = held.threads[held.next]
            companies[company]!.next += 1
            // Counted out of the company's share either way: one that cannot retire now is not tried again.
            companies[company]!.bytes -= entry.bytes
            guard await passivate(entry.actor, idleNanos: 0, savedChunks: true) else { continue }
            total -= entry.bytes
            retired += 1
            stats.add(stats.memoryPassivations)
        }
        stats.threadMemoryBytes.store(total, ordering: .relaxed)
        if retired > 0 {
            logger.info("thread memory over its budget: passivated threads of the companies holding the most", metadata: [
                "passivated": "\(retired)", "held": "\(total)", "budget": "\(budget)",
            ])
        }
        return (retired, period)
    }

    /// The active actor of `id`, without activating one.
    func activeActor(for id: ThreadID) -> ThreadActor? {
        threads.withLock { map in
            if case .active(let actor) = map[id] { return actor }
            return nil
        }
    }

    /// Whether `id` has an actor here, loading or active.
    func isLoadingOrActive(_ id: ThreadID) -> Bool {
        threads.withLock { $0[id] != nil }
    }

    /// Whether `id` is active here as a thread of `company`. What a caller is charged by this is the same for another
    /// company's thread, active or not, as for an id that is no thread (charged by whether the thread was loaded, a
    /// `chat:sync` naming another company's active thread cost less than one naming an unknown id: an existence
    /// oracle across companies, found by an outside probe).
    func isActive(_ id: ThreadID, of company: CompanyID) -> Bool {
        threads.withLock { map in
            if case .active(let actor) = map[id] { return actor.info.companyId == company }
            return false
        }
    }

    /// Every active actor.
    func activeActors() -> [ThreadActor] {
        threads.withLock { map in
            map.values.compactMap { slot in
                if case .active(let actor) = slot { return actor }
                return nil
            }
        }
    }

    /// Passivates idle threads periodically until cancelled; on a shared store, also applies other nodes' changes.
    public func run() async {
        await withTaskGroup(of: Void.self) { group in
            if let shared = store as? any SharedStore {
                group.addTask { await self.followCluster(shared) }
                group.addTask { await self.retryOwedActivations(shared) }
            }
            if configuration.threadMemoryBudget != nil {
                group.addTask {
                    var wait = max(0.05, self.configuration.memoryCheckSeconds)
                    while !Task.isCancelled {
                        try? await Task.sleep(nanoseconds: UInt64(wait * 1e9))
                        if Task.isCancelled { break }
                        wait = await self.enforceMemoryBudget().nextCheck
                    }
                }
            }
            group.addTask {
                let period = max(1.0, min(self.configuration.idleSeconds / 2, 60))
                while !Task.isCancelled {
                    try? await Task.sleep(nanoseconds: UInt64(period * 1e9))
                    if Task.isCancelled { break }
                    await self.passivateIdle()
                }
            }
            await group.next()
            group.cancelAll()
        }
    }

    /// How many thread actors are active.
    public var activeThreadCount: Int { threads.withLock { $0.count } }

    // MARK: - Devices

    /// A token verifier refuses principals whose ids are not NFC (`ClientCommand.isNFC`); the embedding API holds an
    /// embedder's principal to the same rule wherever it acts as one (connect, commands and every thread access,
    /// thread pages, presence, emit). Ids inside a `ClientCommand` an embedder builds itself are its own to keep NFC
    /// (the parsers check the ones clients send).
    private func requireNFC(_ principal: Principal) throws(ChatError) {
        guard ClientCommand.isNFC(principal.userId), ClientCommand.isNFC(principal.companyId) else {
            throw ChatError.invalid("user and company ids must be in Unicode normalization form C (NFC)")
        }
    }

    /// Connects a device of `principal` to its user's session. It receives every thread its user is a member of
    /// (each thread actor fans out to its members' sessions) and touches no thread: a user in 5,000 threads
    /// connects in O(1), and threads that are not active pick the session up when they are activated.
    /// A transport passes the outbox it drains; embedded devices get their own. `greeting` (a transport's answer to
    /// the connect) is queued before any frame of a thread can reach the device, and only if it connects.
    public func connect(_ principal: Principal, outbox: Outbox? = nil, greeting: OutboundFrame? = nil) async throws(ChatError) -> Device {
        try requireNFC(principal)
        let session = registry.session(for: principal.sessionKey)
        let device = Device(principal: principal, session: session, configuration: configuration, stats: stats, outbox: outbox)
        guard let count = await session.add(device, limit: configuration.maxDevicesPerUser, greeting: greeting) else {
            stats.add(stats.devicesRefused)
            throw ChatError(.forbidden, "too many connections for this user (at most \(configuration.maxDevicesPerUser))")
        }
        device.outbox.share(session.outboundBudget, limit: configuration.userOutboundLimit)
        stats.add(stats.connectedDevices)
        if count == 1 { presenceChanged(session) }
        return device
    }

    /// Disconnects a device: its outbox closes (unless the transport keeps it for a later CONNECT on the same
    /// connection) and any typing it started is announced as stopped.
    public func disconnect(_ device: Device, closingOutbox: Bool = true) async {
        if closingOutbox { device.outbox.close() } else { device.outbox.unshare() }
        if await device.session.remove(device) == 0 { presenceChanged(device.session) }
        stats.connectedDevices.wrappingAdd(-1, ordering: .relaxed)
        for id in device.takeTypingThreads() {
            _ = try? await withThread(id, as: device.principal) { actor throws(ChatError) in await actor.deviceGone(device) }
        }
    }

    /// Several nodes: tells the store the session's user may have come online or gone offline here.
    private func presenceChanged(_ session: UserSession) {
        guard let shared = store as? any SharedStore else { return }
        let registry = registry, key = session.key
        shared.presenceChanged(key) { registry.isOnline(key) }
    }

    /// Whether each user (of the caller's company) has a live device: on this node, or (several nodes) on any
    /// node that is alive.
    public func presence(of users: [UserID], as principal: Principal) async throws(ChatError) -> [(UserID, Bool)] {
        try requireNFC(principal)
        let found = try await onlineUsers(company: principal.companyId, among: users)
        // An id not in NFC is no one's; the set would find its NFC spelling (strings compare by equivalence).
        return users.map { ($0, ClientCommand.isNFC($0) && found.contains($0)) }
    }

    /// Which of `users` of `company` have a live device on this node or (several nodes) on any node that is alive.
    public func onlineUsers(company: CompanyID, among users: [UserID]) async throws(ChatError) -> Set<UserID> {
        var (online, elsewhere) = onlineHere(company: company, among: users)
        guard let shared = store as? any SharedStore, !elsewhere.isEmpty else { return online }
        do { online.formUnion(try await shared.onlineElsewhere(company: company, among: elsewhere)) } catch { throw ChatError.wrap(error) }
        return online
    }

    /// Which of `users` of `company` have a live device on this node, and the others worth asking the store about.
    private func onlineHere(company: CompanyID, among users: [UserID]) -> (online: Set<UserID>, elsewhere: [UserID]) {
        guard ClientCommand.isNFC(company) else { return ([], []) }
        var online = Set<UserID>()
        var elsewhere: [UserID] = []
        // An id with a control character or not in NFC is no one's (tokens refuse both; `ClientCommand.isNFC`), and
        // PostgreSQL's text cannot hold U+0000: never looked for.
        for user in users where !ClientCommand.hasControlCharacter(user) && ClientCommand.isNFC(user) {
            if registry.isOnline(SessionKey(companyId: company, userId: user)) {
                online.insert(user)
            } else {
                elsewhere.append(user)
            }
        }
        return (online, elsewhere)
    }

    /// `onlineUsers`, for a decision about what was stored at `since`: a user online only on another node whose newest
    /// heartbeat is not after `since` is `unsure` (that node may have died before it, and the user has no live device
    /// anywhere; its presence counts until its heartbeat is too old).
    public func onlineUsers(company: CompanyID, among users: [UserID], heardAfter since: Timestamp) async throws(ChatError) -> (online: Set<UserID>, unsure: Set<UserID>) {
        var (online, elsewhere) = onlineHere(company: company, among: users)
        guard let shared = store as? any SharedStore, !elsewhere.isEmpty else { return (online, []) }
        let heard: [UserID: Timestamp]
        do { heard = try await shared.onlineElsewhereHeard(company: company, among: elsewhere) } catch { throw ChatError.wrap(error) }
        var unsure = Set<UserID>()
        for (user, at) in heard {
            if at.millis > since.millis { online.insert(user) } else { unsure.insert(user) }
        }
        return (online, unsure)
    }

    // MARK: - Commands

    /// Validates and runs one client event from `device`; returns the acknowledgement body.
    public func handle(event: String, data: JSONValue?, from device: Device) async -> Result<JSONValue, ChatError> {
        do throws(ChatError) {
            return .success(try await execute(try admit(event: event, data: data, from: device), from: device))
        } catch {
            return .failure(error)
        }
    }

    /// Validates an event's payload and takes its tokens from the device's bucket for its rate class, then from its
    /// user's (`UserRateLimits`). An event the user's bucket refuses costs the device nothing.
    private func admit(event: String, data: JSONValue?, from device: Device) throws(ChatError) -> ClientCommand {
        let command = try ClientCommand.parse(event: event, data: data, configuration: configuration)
        let rateClass = command.rateClass, cost = command.rateCost
        guard device.allow(rateClass, cost: cost) else { throw rateLimited(event) }
        guard userLimits.take(device.principal.sessionKey, rateClass, cost: cost) else {
            device.giveBack(rateClass, cost: cost)
            throw rateLimited(event)
        }
        return command
    }

    private func rateLimited(_ event: String) -> ChatError {
        stats.add(stats.rateLimited)
        return ChatError(.rateLimited, "too many \(event) events; slow down")
    }

    /// Like `handle`, but answers through `reply`, and a `chat:send` returns as soon as its seq is assigned and
    /// its write queued; `reply` is called once it is durable. A transport that dispatches a socket's packets in
    /// order pipelines that socket's sends while keeping their order, with no task waiting per send.
    public func dispatch(
        event: String, data: JSONValue?, from device: Device, reply: @escaping @Sendable (Result<JSONValue, ChatError>) -> Void
    ) async {
        guard event == "chat:send" else { return reply(await handle(event: event, data: data, from: device)) }
        do throws(ChatError) {
            guard case .send(let request) = try admit(event: event, data: data, from: device) else {
                throw ChatError.invalid("chat:send expects a send payload")
            }
            let principal = device.principal
            let begin = { [self] () async throws(ChatError) in
                try await withThread(request.threadId, as: principal) { actor throws(ChatError) in
                    try await actor.beginSend(request, from: principal) { outcome in
                        reply(outcome.map { CommandResult.message($0).socketAck })
                    }
                }
            }
            // Without the offline webhook a send costs its one token: nothing to meter on this path.
            guard configuration.offlineNoticeDelay != nil else { return try await begin() }
            // The offline notices the send queues are charged as its write is queued: at once, or when a send held
            // behind a catch-up or an edit is written (`HeldSend.meter`).
            let meter = HistoryMeter { [self] notices in userLimits.charge(principal.sessionKey, .write, noticeWriteTokens(notices)) }
            try await metered(meter, begin)
        } catch {
            reply(.failure(error))
        }
    }

    /// Runs a validated command from `device` (the embedding API's typed entry point); returns the ack body.
    public func execute(_ command: ClientCommand, from device: Device) async throws(ChatError) -> JSONValue {
        try await perform(command, as: device.principal, device: device).socketAck
    }

    /// The one dispatch path of every command, from a socket (`device` set) or from REST (`device` nil: room
    /// and typing commands need a device and are never built by REST). Every command reaches its thread through
    /// `withThread`, so the company check holds on every path. Once it is done, whatever its outcome, the user is
    /// charged for the history it made the broker decode or answer (read tokens,
    /// `BrokerConfiguration.historyBytesPerReadToken`) and reseal (write tokens, `rewrittenBytesPerWriteToken`);
    /// `meter` tells a caller with buckets of its own (REST) what was counted.
    public func perform(
        _ command: ClientCommand, as principal: Principal, device: Device?, meter: HistoryMeter = HistoryMeter()
    ) async throws(ChatError) -> CommandResult {
        var answered = 0
        defer {
            chargeHistory(principal, bytes: meter.decoded + answered)
            chargeWrites(principal, meter)
            let reads = extraReadTokens(meter)
            if reads > 0 { userLimits.charge(principal.sessionKey, .read, reads) }
            let signals = extraSignalTokens(meter)
            if signals > 0 { userLimits.charge(principal.sessionKey, .signal, signals) }
        }
        let result = try await metered(meter) { () async throws(ChatError) in try await performMetered(command, as: principal, device: device) }
        // A sync answer's bytes are charged as they are counted (`.sync` below).
        if case .page(let messages, _) = result { answered = messages.reduce(0) { $0 + ThreadHistory.estimatedSize($1) } }
        return result
    }

    /// Runs `body` with `meter` counting its work (`HistoryMeter.current`).
    private func metered<T>(_ meter: HistoryMeter, _ body: () async throws(ChatError) -> T) async throws(ChatError) -> T {
        do {
            return try await HistoryMeter.$current.withValue(meter) { try await body() }
        } catch let error as ChatError {
            throw error
        } catch {
            throw ChatError.storeFailure
        }
    }

    /// A `chat:sync` entry for a thread that is not active, once the answer's budget is spent: no events, and
    /// `hasMore` if the thread has events after the cursor; the same refusals as a loaded thread's.
    private func syncEntryPastBudget(_ cursor: ClientCommand.SyncCursor, _ principal: Principal) async throws(ChatError) -> JSONValue {
        let head = try await threadHead(of: cursor.threadId, principal, else: .threadNotFound)
        guard head.isMember else { throw ChatError.notAMember }
        return .object(["threadId": .string(cursor.threadId), "events": .array([]), "hasMore": .bool(head.lastSeq > cursor.afterSeq)])
    }

    /// Charges `bytes` of history decoded or answered to the user's read tokens (`historyBytesPerReadToken`).
    private func chargeHistory(_ principal: Principal, bytes: Int) {
        guard bytes > 0 else { return }
        userLimits.charge(principal.sessionKey, .read, Double(bytes) / Double(max(1, configuration.historyBytesPerReadToken)))
    }

    /// What a command's reads cost past its token: the thread ids a page of threads read (`threadIdsPerReadToken`),
    /// and the messages the store looked at to count unread ones (`unreadCountedPerReadToken`), and one per thread head
    /// asked of the store (`storeLookups`).
    public func extraReadTokens(_ meter: HistoryMeter) -> Double {
        Double(meter.listed) / Double(max(1, configuration.threadIdsPerReadToken))
            + Double(meter.counted) / Double(max(1, configuration.unreadCountedPerReadToken))
            + Double(meter.storeLookups)
    }

    /// What a mark's receipts cost past its token, in tokens of its own class (signals; REST writes): the messages
    /// looked at to list them by sender (`receiptListedPerSignalToken`).
    public func extraSignalTokens(_ meter: HistoryMeter) -> Double {
        Double(meter.receiptListed) / Double(max(1, configuration.receiptListedPerSignalToken))
    }

    /// The write tokens the work `meter` counted costs beyond the command's own: resealed history and thread
    /// descriptions written to devices (`rewrittenBytesPerWriteToken`), and offline notices queued
    /// (`offlineNoticesPerWriteToken`).
    public func extraWriteTokens(_ meter: HistoryMeter) -> Double {
        Double(meter.rewritten + meter.greeted) / Double(max(1, configuration.rewrittenBytesPerWriteToken))
            + noticeWriteTokens(meter.notices)
    }

    /// The write tokens `notices` offline notices queued cost (`offlineNoticesPerWriteToken`).
    func noticeWriteTokens(_ notices: Int) -> Double {
        Double(notices) / Double(max(1, configuration.offlineNoticesPerWriteToken))
    }

    private func chargeWrites(_ principal: Principal, _ meter: HistoryMeter) {
        let tokens = extraWriteTokens(meter)
        if tokens > 0 { userLimits.charge(principal.sessionKey, .write, tokens) }
    }

    private func performMetered(_ command: ClientCommand, as principal: Principal, device: Device?) async throws(ChatError) -> CommandResult {
        try requireNFC(principal)
        func requireDevice() throws(ChatError) -> Device {
            guard let device else { throw ChatError.invalid("this command needs a socket") }
            return device
        }
        switch command {
        case .send(let request):
            return .message(try await withThread(request.threadId, as: principal) { actor throws(ChatError) in
                try await actor.send(request, from: principal)
            })
        case .join(let id):
            let device = try requireDevice()
            try await withThread(id, as: principal) { actor throws(ChatError) in try await actor.join(device) }
            return .done
        case .leave(let id):
            let device = try requireDevice()
            try await withThread(id, as: principal) { actor throws(ChatError) in try await actor.leave(device) }
            return .done
        case .delivered(let id, let ids):
            try await withThread(id, as: principal) { actor throws(ChatError) in try await actor.delivered(ids, by: principal) }
            return .done
        case .markRead(let id, let upTo):
            try await withThread(id, as: principal) { actor throws(ChatError) in try await actor.markRead(upToSeq: upTo, by: principal) }
            return .done
        case .typingStart(let id):
            let device = try requireDevice()
            try await withThread(id, as: principal) { actor throws(ChatError) in try await actor.typingStart(from: device) }
            return .done
        case .typingStop(let id):
            let device = try requireDevice()
            try await withThread(id, as: principal) { actor throws(ChatError) in try await actor.typingStop(from: device) }
            return .done
        case .edit(let id, let messageId, let content):
            let (_, message) = try await withThread(id, as: principal) { actor throws(ChatError) in
                try await actor.edit(messageId, content: content, by: principal)
            }
            return .message(message)
        case .delete(let id, let messageId):
            let (seq, message) = try await withThread(id, as: principal) { actor throws(ChatError) in try await actor.delete(messageId, by: principal) }
            return .deleted(seq: seq, message)
        // Within this command's meter: what the edit or delete costs is charged once, by `perform`.
        case .editMessage(let messageId, let content):
            return try await performMetered(.edit(try await thread(ofMessage: messageId, as: principal), messageId, content: content), as: principal, device: device)
        case .deleteMessage(let messageId):
            return try await performMetered(.delete(try await thread(ofMessage: messageId, as: principal), messageId), as: principal, device: device)
        case .history(let id, let beforeSeq, let limit):
            let page = try await withThread(id, as: principal) { actor throws(ChatError) in
                try await actor.history(beforeSeq: beforeSeq, limit: limit, by: principal)
            }
            return .page(messages: page.messages, hasMore: page.hasMore)
        case .sync(let cursors):
            // One answer holds about `maxPageBytes` in all: once they are spent, the threads after answer no events
            // (`hasMore` if they have some), so that 1000 threads cannot make one answer of 1000 pages.
            var results: [JSONValue] = []
            var budget = configuration.maxPageBytes
            var answered = 0
            // A thread not loaded here is looked up in the store (found, or not: an unknown id costs a read too):
            // one more read each, so that 1000 made-up ids cost what 1000 reads do, not a hundred.
            var lookedUp = 0
            defer {
                chargeHistory(principal, bytes: answered)
                if lookedUp > 0 { userLimits.charge(principal.sessionKey, .read, Double(lookedUp)) }
            }
            for cursor in cursors {
                do throws(ChatError) {
                    let loaded = isActive(cursor.threadId, of: principal.companyId)
                    if !loaded { lookedUp += 1 }
                    if budget == 0, !loaded {
                        // The answer is full: a thread that is not active answers from its row, not loaded (1000
                        // names of passive threads would otherwise load 1000 threads, each kept for `idleSeconds`).
                        results.append(try await syncEntryPastBudget(cursor, principal))
                        continue
                    }
                    let result = try await withThread(cursor.threadId, as: principal) { [budget] actor throws(ChatError) in
                        try await actor.events(after: cursor.afterSeq, by: principal, maxBytes: budget, for: device)
                    }
                    for event in result.events {
                        let size = ThreadHistory.estimatedSize(event.message)
                        budget -= size
                        answered += size
                    }
                    // A page cut short by the budget (not by `syncLimit`) spent it: the next event did not fit.
                    if result.hasMore && result.events.count < configuration.syncLimit { budget = 0 }
                    budget = max(budget, 0)
                    results.append(.object([
                        "threadId": .string(cursor.threadId), "events": .array(result.events.map(\.syncEntry)),
                        "hasMore": .bool(result.hasMore),
                    ]))
                } catch {
                    results.append(.object(["threadId": .string(cursor.threadId), "code": .string(error.code.rawValue), "error": .string(error.message)]))
                }
            }
            return .sync(results)
        case .createThread(let name, let kind, let memberIds):
            let (summary, created) = try await createThread(name: name, kind: kind, memberIds: memberIds, by: principal)
            return .thread(summary, created: created)
        case .listThreads(let after):
            let page = try await threadsPage(as: principal, after: after)
            return .threads(page.threads, hasMore: page.hasMore)
        case .addMembers(let id, let users):
            let summary = try await membershipChange(id, by: principal) { actor throws(ChatError) in try await actor.addMembers(users, by: principal) }
            noteAdded([(id, users, [])])
            return .thread(summary, created: false)
        case .removeMember(let id, let user):
            let summary = try await membershipChange(id, by: principal) { actor throws(ChatError) in try await actor.removeMember(user, by: principal) }
            noteAdded([(id, [], [user])])
            return .thread(summary, created: false)
        }
    }

    // MARK: - Threads (REST)

    /// Creates a thread in the caller's company with the caller as a member. A direct thread that already
    /// exists between the same two users is returned instead (`created == false`).
    public func createThread(name: String?, kind: ThreadKind, memberIds: [UserID], by principal: Principal) async throws(ChatError) -> (summary: ThreadSummary, created: Bool) {
        try requireNFC(principal)
        guard memberIds.allSatisfy(ClientCommand.isNFC) else { throw ChatError.invalid("member ids must be in Unicode normalization form C (NFC)") }
        var members = [principal.userId]
        var seen: Set<UserID> = [principal.userId]
        for id in memberIds where seen.insert(id).inserted { members.append(id) }
        guard members.count <= configuration.maxMembers else {
            throw ChatError(.payloadTooLarge, "a thread has at most \(configuration.maxMembers) members")
        }
        try configuration.checkMemberIdBytes(members)
        if kind == .direct {
            guard members.count == 2 else { throw ChatError.invalid("a direct thread has exactly 2 members") }
            let pair = members
            let key = principal.companyId + "\u{0}" + members.sorted().joined(separator: "\u{0}")
            // Concurrent requests for one pair share one look-up-or-create; only the request that started it can have
            // created the thread (201), the others found it (200), and each is answered the thread as its own user
            // sees it.
            let (task, started): (Task<(ThreadID, Bool), any Error>, Bool) = directCreations.withLock { map in
                if let existing = map[key] { return (existing, false) }
                let task = Task { [self] () async throws -> (ThreadID, Bool) in
                    let existing = { [self] () async throws -> ThreadID? in
                        try await store.directThread(company: principal.companyId, between: pair[0], and: pair[1])
                    }
                    if let found = try await existing() { return (found, false) }
                    do { return (try await create(name: name, kind: kind, members: pair, by: principal), true) } catch {
                        // Another node made the pair's thread at the same instant, and the store's unique key on the
                        // pair refused this one: that thread is the answer.
                        if let found = try? await existing() { return (found, false) }
                        throw error
                    }
                }
                map[key] = task
                return (task, true)
            }
            defer { directCreations.withLock { map in if map[key] == task { map[key] = nil } } }
            let (id, created): (ThreadID, Bool)
            do { (id, created) = try await task.value } catch { throw ChatError.wrap(error) }
            return (try await summary(of: id, for: principal), created && started)
        }
        let id = try await create(name: name, kind: kind, members: members, by: principal)
        return (try await summary(of: id, for: principal), true)
    }

    /// Thread `id` as `principal`'s user sees it.
    private func summary(of id: ThreadID, for principal: Principal) async throws(ChatError) -> ThreadSummary {
        try await withThread(id, as: principal) { actor throws(ChatError) in try await actor.summary(for: principal.userId) }
    }

    /// Stores a new thread and announces it to its members' live devices; returns its id.
    private func create(name: String?, kind: ThreadKind, members: [UserID], by principal: Principal) async throws(ChatError) -> ThreadID {
        let info = ThreadInfo(id: Identifier.uuid(), companyId: principal.companyId, name: name, kind: kind, createdBy: principal.userId, createdAt: .now())
        do { try await store.commit([.createThread(info, members: members)]) } catch {
            stats.add(stats.storeFailures)
            throw ChatError.storeFailure
        }
        noteAdded([(info.id, members, [])])
        try await withThread(info.id, as: principal) { actor throws(ChatError) in try await actor.announceCreated() }
        return info.id
    }

    /// All the caller's threads (in its company), oldest first, with no page bound (for embedders; the REST API
    /// answers `threadsPage`).
    public func listThreads(as principal: Principal) async throws(ChatError) -> [ThreadSummary] {
        try requireNFC(principal)
        return try await summaries(of: principal, from: threadIDs(of: principal)[...], maxCount: .max, maxBytes: .max).threads
    }

    /// One page of the caller's threads (in its company), oldest first: those after `after` (a thread of the
    /// caller's, the last of the previous page; from the first without it), at most `maxThreadsPerPage` of them and
    /// about `maxPageBytes` of their JSON (one at least), and whether more follow. The caller's thread ids are read,
    /// and only the page's threads are loaded, so a user in many threads, or in threads of many members, costs one
    /// bounded answer per request.
    public func threadsPage(as principal: Principal, after: ThreadID? = nil) async throws(ChatError) -> (threads: [ThreadSummary], hasMore: Bool) {
        try requireNFC(principal)
        let ids = try await threadIDs(of: principal)
        HistoryMeter.current?.addListed(ids.count)
        var start = ids.startIndex
        if let after {
            guard let i = ids.firstIndex(of: after) else {
                throw ChatError.invalid("after must be the id of one of your threads (the last of the previous page)")
            }
            start = i + 1
        }
        return try await summaries(of: principal, from: ids[start...], maxCount: configuration.maxThreadsPerPage, maxBytes: configuration.maxPageBytes)
    }

    private func threadIDs(of principal: Principal) async throws(ChatError) -> [ThreadID] {
        do { return try await store.threadIDs(of: principal.sessionKey) } catch { throw ChatError.wrap(error) }
    }

    /// The summaries of the threads of `ids` the caller is a member of, in order, until `maxCount` of them or about
    /// `maxBytes` of their JSON (one at least); whether some of `ids` were left.
    private func summaries(
        of principal: Principal, from ids: ArraySlice<ThreadID>, maxCount: Int, maxBytes: Int
    ) async throws(ChatError) -> (threads: [ThreadSummary], hasMore: Bool) {
        var out: [ThreadSummary] = []
        var bytes = 0
        var next = ids.startIndex
        // Threads that fail to load count toward `maxCount` too: a store outage costs one page of attempts.
        while next < ids.endIndex, next - ids.startIndex < maxCount {
            if let summary = try? await withThread(ids[next], as: principal, { actor throws(ChatError) in
                guard await actor.isMember(principal.userId) else { throw ChatError.notAMember }
                return try await actor.summary(for: principal.userId)
            }) {
                if maxBytes < .max {
                    let size = JSONWriter.encode(summary.json).count
                    if !out.isEmpty, bytes + size > maxBytes { break }
                    bytes += size
                }
                out.append(summary)
            }
            next += 1
        }
        return (out, next < ids.endIndex)
    }

    /// Finds the thread of a message, within the caller's company.
    public func thread(ofMessage id: MessageID, as principal: Principal) async throws(ChatError) -> ThreadID {
        try requireNFC(principal)
        let threadId: ThreadID?
        do { threadId = try await store.threadID(ofMessage: id, company: principal.companyId) } catch { throw ChatError.wrap(error) }
        guard let threadId else { throw ChatError.messageNotFound }
        // The thread is not loaded here for a non-member (the command that follows refuses them).
        try await requireAccess(to: threadId, principal, else: .messageNotFound)
        guard let actor = try await actor(for: threadId), actor.info.companyId == principal.companyId else {
            throw ChatError.messageNotFound
        }
        return threadId
    }

    // MARK: - Emit (service API)

    /// Where `emit` delivers (the same on every node).
    public typealias EmitTarget = ClusterEmitTarget

    /// Delivers an application event to live devices of the caller's company; returns how many were reached.
    /// On a shared store the event also reaches the devices connected to the other nodes; the count is this node's.
    public func emit(event: String, data: JSONValue, to target: EmitTarget, as principal: Principal) async throws(ChatError) -> Int {
        try requireNFC(principal)
        if case .users(let users) = target, !users.allSatisfy(ClientCommand.isNFC) {
            throw ChatError.invalid("user ids must be in Unicode normalization form C (NFC)")
        }
        let frame = encoder.encode(event, data)
        let reached: Int
        if case .thread(let id) = target {
            // Through the thread's actor: the company check comes first, so an unknown thread (or another company's)
            // is refused here and never relayed.
            reached = try await withThread(id, as: principal) { actor throws(ChatError) in try await actor.broadcast(frame) }
        } else {
            reached = deliverToUsers(company: principal.companyId, target: target, frame: frame)
        }
        (store as? any SharedStore)?.publish([.emit(principal.companyId, target, event: event, data: data)])
        return reached
    }

    /// Delivers `frame` to this node's live devices of a `.users` or `.company` target; returns how many it reached.
    func deliverToUsers(company: CompanyID, target: EmitTarget, frame: OutboundFrame) -> Int {
        switch target {
        case .users(let users):
            return Set(users).reduce(0) { $0 + (registry.existing(SessionKey(companyId: company, userId: $1))?.deliverToAll(frame) ?? 0) }
        case .company:
            return registry.sessions(in: company).reduce(0) { $0 + $1.deliverToAll(frame) }
        case .thread:
            return 0
        }
    }

    /// Flushes the store and closes it.
    public func shutdown() async {
        await store.shutdown()
    }
}

extension ChatError {
    /// Maps any error to a `ChatError` (unknown ones become `internal`).
    public static func wrap(_ error: any Error) -> ChatError {
        if let chat = error as? ChatError { return chat }
        return ChatError(.internal, "internal error")
    }
}
