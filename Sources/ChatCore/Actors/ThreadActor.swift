import ChatJSON
import DequeModule
import Logging
import Synchronization

/// Writer epochs (`StoreWrite.fence`) of this process: every actor incarnation and every catch-up takes a new one.
private let writerEpochs = Atomic<Int>(0)
/// Thread actors made by this process so far (`ThreadActor.incarnation`).
private let incarnations = Atomic<Int>(0)

/// The single writer of one thread: its members and their receipt watermarks, seq ordering, typing state and
/// history (hot tail plus LZ4 chunks).
///
/// Guarantees: every message, edit and delete takes the next `seq` (gap-free, shared); an event is acknowledged
/// and fanned out only after the store holds it, in seq order, so a `seq` any device has seen is never reused;
/// fan-out enqueues into bounded outboxes and never waits on a device. If the store refuses a write, the actor
/// stops taking commands, waits for its in-flight writes to settle and retires; the supervisor then reloads the
/// thread from the store, so memory never runs ahead of disk.
///
/// On a store shared by several nodes (`SharedStore`) the actor is this node's cache of the thread's log: events
/// other nodes commit are read from the store and applied in seq order (`applyRemote`), and a send that loses the
/// race for a seq to another node (a conflict) is not an error: the actor holds new commands, catches up from the
/// store and writes the refused sends again, in their order, at new seqs; they are acknowledged once stored.
public actor ThreadActor {
    public nonisolated let info: ThreadInfo
    /// Tells this actor from every other of the process, of any thread, before and after it.
    nonisolated let incarnation = incarnations.wrappingAdd(1, ordering: .relaxed).newValue
    private let store: any MessageStore
    /// The same store when several nodes share it.
    private let shared: (any SharedStore)?
    private let configuration: BrokerConfiguration
    private let encoder: FrameEncoder
    private let stats: BrokerStats
    private let registry: SessionRegistry
    /// Told when the actor retires after a store failure, with the last seq it fanned out on this node, and whether it
    /// knew of events (or member changes) it had not fanned out yet: this node's devices are owed them.
    private let onRetire: @Sendable (ThreadActor, Int, [UserID: MemberMarks], Bool) -> Void

    private var members: [UserID: MemberMarks] = [:]
    private var memberOrder: [UserID] = []
    private var memberSessions: [UserID: UserSession] = [:]
    /// The devices (by id) of each member that left this thread's room with `chat:leave` while the member was one here:
    /// a greeting for that membership (another node's announcement arriving after the leave, or a fresh actor's) tells
    /// them about the thread without putting them back in the room. A leave lasts until the user is removed and added
    /// again: the removal forgets them.
    private var leftWhileMember: [UserID: Set<UInt64>] = [:]
    private var history: ThreadHistory
    private var lastSeq: Int
    private var durableSeq: Int
    /// The highest seq whose event this actor fanned out on this node (events up to it are never fanned out again).
    private var fannedOutSeq: Int
    /// Events taken but not yet durable, in seq order, with the send's reply if there is one.
    private var pending = Deque<Pending>()
    private var durableWaiters: [DurableWaiter] = []
    private nonisolated let commits = CommitInbox()
    /// Who is typing, on which device, until when (`monotonicNanos`); each typist has at most one timer task
    /// (`typingTimers`), which sleeps again while the typist keeps restarting, so a flood of starts makes no tasks.
    private var typing: [UserID: (device: Device, until: UInt64, announced: UInt64)] = [:]
    /// Who another node announced as typing, until when: a stop is fanned out here when that node says so, when the
    /// member is removed (on any node), or at the latest 1.5 typing timeouts after the last start announced (as long
    /// as a typist can go on without a start being announced again), if that node never says (it died).
    private var remoteTyping: [UserID: UInt64] = [:]
    /// The typists with a timer task running (`startTypingTimer`): for their typing here (`expireTyping`), or for
    /// their typing another node announced (`expireRemoteTyping`); one task per typist and kind, however many starts.
    private var typingTimers = Set<TypingTimer>()
    /// The typing starts each member may have announced (`typingStartsPerSecond`, burst `typingStartBurst`): a start
    /// over it is kept (the member types, and their stop is not announced either) but not fanned out, so that a start
    /// and a stop alternated, each of which is fanned out to every member's device, cannot be sent at the signal rate.
    private var typingStarts: [UserID: TokenBucket] = [:]
    /// Typists whose start was over that rate and who went on typing unheard: each has one task that announces the
    /// start once the rate allows (`announceDeferredStart`), so the room does not show them stopped (the last it heard
    /// of them may be a stop) until their next start comes past the rate.
    private var deferredStarts = Set<UserID>()
    static let typingStartsPerSecond = 1.0
    static let typingStartBurst = 4.0

    private struct TypingTimer: Hashable {
        var user: UserID
        var remote: Bool
    }
    private var inFlight = 0
    private var failed = false
    private var retired = false
    private var lastActivity = monotonicNanos()
    /// The fence epoch of this actor's seq writes (shared store only).
    private var epoch = writerEpochs.wrappingAdd(1, ordering: .relaxed).newValue
    /// Catching up with the store: sends are held (`held`) and seq-taking commands wait until it is done.
    private var syncing = false
    private var syncRunning = false
    /// A write was refused as a conflict: memory is ahead of the store's log and must be reloaded.
    private var conflicted = false
    /// Sends were stored at later seqs than this actor gave them: memory must be read back from the store.
    private var rebased = false
    /// The highest seq other nodes are known to have committed.
    private var remoteSeq = 0
    /// On a shared store, the lowest seq of this actor's pending events whose write failed: another node may take
    /// that seq, so a write of this actor stored past it (which the store should not allow: a failed write stops its
    /// writer's epoch) is neither answered nor fanned out here; the successor reads what the store holds.
    private var failedWriteSeq: Int?
    /// The highest seq announced (or found by a tempId look-up) since the running catch-up began: a catch-up that
    /// lowers a position the store does not hold keeps that news (a forged maximum would otherwise swallow the real
    /// announcements of its read, and their events reach the devices only with a later one).
    private var newsDuringSync = 0
    /// Members whose receipts reach past what their senders were told (another node's beyond `durableSeq`, or one being
    /// written here): the marks the senders were told of so far.
    private var receiptsOwed: [UserID: MemberMarks] = [:]
    /// Members whose marks this actor is writing (`advanceMarks`): what is stored of them (the marks before the first
    /// write in flight, raised by each write stored and by other nodes' receipts), and how many writes are in flight.
    /// Memory (`members`) holds the marks being written already; senders are told only what is stored, so that a
    /// write that fails never was told (found by an outside probe: a send stored meanwhile told the sender a
    /// `chat:delivered` that the store then refused), and a receipt of another node below the marks being written is
    /// told, not taken for one told already (it was lost when the write then failed).
    /// `membership` tells the writes of one membership of the user from those of a later one (removed and added again
    /// while a write was in flight: its end must not touch the new membership's entry; a review).
    private var marksWriting: [UserID: (stored: MemberMarks, writes: Int, membership: Int)] = [:]
    private var marksWritingMade = 0
    /// The member whose own mark is being told (`advanceMarks`): the messages its receipts list are charged to the
    /// command (`HistoryMeter.receiptListed`), not those told for another member on the way (owed receipts told
    /// when a send is stored, a thread's activation).
    private var receiptCharged: UserID?
    /// What was told at activation (`tellReceipts(past:)`): from `floor` up to `marks`. An announcement of those
    /// receipts applied as a fresh one (with the batch that activated the actor) tells what lies below `floor` (a
    /// receipt reaching back before the activation's position), and nothing of that range again.
    private var toldAtActivation: [UserID: (floor: MemberMarks, marks: MemberMarks)] = [:]
    /// The node may have missed announcements: read the store once whatever `remoteSeq` says.
    private var resyncRequested = false
    /// The node may have missed member changes too (`resynchronize`): the next catch-up reads the member log first.
    /// Read there, not by the caller, because catch-ups run one at a time: a log read beside a reload already running
    /// (a send refused by a change not heard of) would race it, and one of them took the store's list first.
    private var memberLogWanted = false
    /// Users whose held send a member-log read refused, and when (`releaseHeld`): their next held sends within
    /// `BrokerConfiguration.memberRereadInterval` are refused without another read.
    private var refusedAfterMemberRead: [UserID: UInt64] = [:]
    private var held: [HeldSend] = []
    private var syncWaiters: [CheckedContinuation<Void, Never>] = []
    /// An edit or delete is being written: sends are held until it is stored, and the next edit waits
    /// (`editWaiters`, woken when this one ends: an edit does not wait for a quiet moment a stream of sends may never give).
    private var editing = false
    private var editWaiters: [CheckedContinuation<Void, Never>] = []
    /// An edit or delete is applied in memory and its commit has not answered: reads wait for the outcome, since they
    /// show only what is stored (`unstoredWaiters`).
    private var updateUnstored = false
    private var unstoredWaiters: [CheckedContinuation<Void, Never>] = []
    /// The message of that update, when it is a delete: receipts listed meanwhile still count it (a receipt that
    /// left it out, its delete then refused by the store, never told its sender of that message; an outside probe).
    private var deleteUnstored: MessageID?
    /// A send's tempId names a message in a released chunk: that send is first of the held ones, and every send is
    /// held while the chunk is read back to tell a retry from a new message.
    private var resolving = false
    /// Chunks whose write failed (by first seq): written again with the next seal while still resident.
    private var chunkRetries = Set<Int>()
    private var quietWaiters: [CheckedContinuation<Void, Never>] = []
    /// Commands waiting until this actor holds the store's events up to a seq (`waitUntilHeld`), by waiter number.
    private var heldWaiters: [Int: (seq: Int, continuation: CheckedContinuation<Void, Never>, timer: Task<Void, Never>?)] = [:]
    private var heldWaitersMade = 0
    /// Moves when each membership change of this node's begins and when it is written, and when another node's is
    /// applied, so that a read of the members that overlapped one is not taken for the truth.
    private var membershipGeneration = 0
    /// Membership changes of this node's being written, and who waits for there to be none (`rereadMembers`).
    private var membershipWrites = 0
    private var membershipWaiters: [CheckedContinuation<Void, Never>] = []
    /// A fresh actor was given a membership change its snapshot disagrees with: the next catch-up reads the members
    /// again before it fans anything out.
    private var membersUnconfirmed = false
    /// Other nodes' membership changes that arrived before the events ahead of them (`ClusterChange.membership`'s
    /// `asOf`) were fanned out here (put off while this actor's own writes are in flight, or still on their way), in
    /// arrival order (their commit order): each is applied just before the first later event is fanned out, so a
    /// member removed elsewhere gets what was sent before the removal, and one added nothing sent before. Until
    /// then `membersVersion` is the one before them, so the store refuses this actor's writes (a member removed there
    /// cannot send here meanwhile). A members list read from the store holds them all, and replaces them.
    ///
    /// This node's own changes wait here too (`local`), for delivery only: the members (who may send, read, be listed)
    /// change when the change is asked for, but a removed member goes on receiving, and an added one starts, at the
    /// change's place in the order, after the events before it (this node's sends still being written among them),
    /// as on every other node.
    private var waitingMemberships = Deque<WaitingMembership>()
    /// Receipt watermarks another node announced for a member whose addition still waits here: taken (and told to the
    /// senders) when the addition is applied, with where the writing node said they stood before.
    private var marksOfWaitingMembers: [UserID: (marks: MemberMarks, from: MemberMarks?)] = [:]
    /// The members the activation's replay (`rewindMembers`) added, greeted at their places: the catch-up's summary
    /// of the members added while the node was not listening greets only the others.
    private var greetedByReplay = Set<UserID>()
    /// The versions of the member changes read from the log and applied at their places (by the activation, or by a
    /// reload): their announcements, when they come, are not applied (or greeted) again. Cleared past 256.
    private var replayedVersions = Set<Int64>()

    private struct WaitingMembership {
        var asOf: Int
        var added: [UserID]
        var removed: [UserID]
        var version: Int64?
        /// A change of this actor's own: its members changed already; only its devices' delivery waits.
        var local = false
        /// Which of this actor's own changes (`ownChanges`), so that the store's position can move it.
        var token = 0
        /// Whether `asOf` is final. An own change still being written has the position this actor knows, which the
        /// store may move later (past other nodes' events this node has not heard of): it is applied then, or when an
        /// event of this actor's after it is fanned out first (stored at the seq this actor gave it, which says that
        /// nothing came in between).
        var placed = true
        /// For an own change: the removed members as they were (marks, place in `memberOrder`), put back if the store
        /// refuses the change.
        var removedMembers: [(user: UserID, marks: MemberMarks, index: Int)] = []
        /// For an own change being written: the members version before it, and the one it sets if stored.
        var versions: (before: Int64, after: Int64)?
    }

    /// This actor's own membership changes so far (`WaitingMembership.token`).
    private var ownChanges = 0

    /// Membership commands (`addMembers`, `removeMember`) taken so far, and those not answered yet, in the order they
    /// were taken: one that the store refused (another node changed the members first) is tried again only once every
    /// command taken before it is answered, so that an addition and a removal sent right after it are written again
    /// in that order. (Tried again in whichever order their tasks resumed, the removal of a user could run before
    /// that user's addition and be answered `not_found`, leaving the user added.)
    private var membershipCommands = 0
    private var unansweredMembershipCommands: [Int] = []
    private var membershipTurnWaiters: [CheckedContinuation<Void, Never>] = []

    /// How many membership changes of other nodes wait for the events before them (`waitingMemberships`).
    var waitingMembershipChanges: Int { waitingMemberships.count { !$0.local } }
    /// The members version `members` reflect (`StoreWrite.fence`): the last change this actor made or applied, or
    /// what it read with the members. Every seq write carries it, so a shared store refuses a send of a member whom
    /// another node removed before this one heard of it. -1 when unknown (never a store's): the next write is then
    /// refused and the actor reloads.
    private var membersVersion: Int64
    /// When this thread's offline notices come due (`OfflineNoticePacer`, shared by the node's threads).
    private let noticePacer: OfflineNoticePacer

    init(
        snapshot: ThreadSnapshot, store: any MessageStore, configuration: BrokerConfiguration, encoder: FrameEncoder,
        stats: BrokerStats, registry: SessionRegistry, noticePacer: OfflineNoticePacer,
        onRetire: @escaping @Sendable (ThreadActor, Int, [UserID: MemberMarks], Bool) -> Void
    ) {
        self.noticePacer = noticePacer
        info = snapshot.info
        self.store = store
        shared = store as? any SharedStore
        self.configuration = configuration
        self.encoder = encoder
        self.stats = stats
        self.registry = registry
        self.onRetire = onRetire
        history = ThreadHistory(
            chunks: snapshot.chunks, tail: snapshot.tail, index: snapshot.index, editEvents: snapshot.editEvents,
            omittedThrough: snapshot.omittedThrough, newestOmittedMessage: snapshot.newestOmittedMessage)
        history.residentChunks = configuration.residentChunks
        history.releaseIfNeeded()
        lastSeq = history.lastSeq
        durableSeq = lastSeq
        fannedOutSeq = durableSeq
        membersVersion = snapshot.membersVersion
        for member in snapshot.members {
            members[member.userId] = member.marks
            memberOrder.append(member.userId)
            memberSessions[member.userId] = registry.session(for: SessionKey(companyId: info.companyId, userId: member.userId))
        }
        // A thread whose last seals were lost in a crash catches up here.
        var sealed: [HistoryChunk] = []
        while let chunk = history.sealIfNeeded(durableSeq: durableSeq, hotTail: configuration.hotTail, chunkSize: configuration.chunkSize) {
            sealed.append(chunk)
        }
        let asOf = durableSeq
        for chunk in sealed { write(chunk, asOf: asOf) }
    }

    /// Seals what is ready. The messages are already durable; a chunk is a snapshot that speeds reads and
    /// reactivation, and once the store confirms it holds it, the chunk may be released from memory.
    private func sealReady() {
        while let chunk = history.sealIfNeeded(durableSeq: durableSeq, hotTail: configuration.hotTail, chunkSize: configuration.chunkSize) {
            write(chunk, asOf: durableSeq)
        }
        // A chunk whose write failed stays resident (never released) and is written again now.
        for first in chunkRetries {
            chunkRetries.remove(first)
            if let chunk = history.residentChunk(first) { write(chunk, asOf: durableSeq) }
        }
        countReleases()
    }

    /// Writes a sealed chunk; the outcome comes back to `chunkWritten`.
    private nonisolated func write(_ chunk: HistoryChunk, asOf: Int) {
        store.submit([.putChunk(info.id, chunk, asOf: asOf)]) { [weak self] result in
            guard let self else { return }
            let saved = (try? result.get()) != nil
            Task { await self.chunkWritten(chunk.firstSeq, saved: saved) }
        }
    }

    private func chunkWritten(_ firstSeq: Int, saved: Bool) {
        guard saved else {
            chunkRetries.insert(firstSeq)
            return
        }
        history.chunkSaved(firstSeq)
        countReleases()
    }

    private var releasesCounted = 0

    private func countReleases() {
        stats.add(stats.historyChunksReleased, history.releasedChunks - releasesCounted)
        releasesCounted = history.releasedChunks
    }

    /// Resumes and forgets every continuation in `waiters` (each waiter checks its condition again).
    private static func resumeAll(_ waiters: inout [CheckedContinuation<Void, Never>]) {
        let woken = waiters
        waiters.removeAll()
        for waiter in woken { waiter.resume() }
    }

    /// Runs a history read, reading back from the store the released chunks it needs (`HistoryReadError.released`).
    /// Nothing else of the actor runs between the last read-back and `read`, so `read` sees one state.
    private func readHistory<T>(_ body: (inout ThreadHistory) throws(HistoryReadError) -> T) async throws(ChatError) -> T {
        let read = history.beginRead()
        defer { history.endRead(read) }
        // A chunk per read-back: 192 reach as far back as three chunks a read-back did before (a page walks back past
        // edit events until it finds a message).
        for _ in 0..<192 {
            do {
                return try body(&history)
            } catch {
                switch error {
                case .corrupt: throw historyUnreadable(error)
                case .released(let seq): try await loadReleased(around: seq, for: read)
                case .unindexed(let id): try await lookUpReleased([id])
                case .unresolvedTempId: throw historyUnreadable(error)
                }
            }
        }
        throw historyUnreadable("still released after 192 read-backs")
    }

    /// Asks the store where messages missing from the index are (released messages, or no messages of this thread).
    private func lookUpReleased(_ ids: [MessageID]) async throws(ChatError) {
        history.beginLookUp(ids)
        defer { history.endLookUp(ids) }
        let found: [MessageID: [Int]]
        do { found = try await store.eventSeqs(of: info.id, messages: ids) } catch { throw ChatError.storeFailure }
        history.rememberReleased(ids, found: found)
        stats.add(stats.releasedLookups)
    }

    /// Reads the released chunk holding `seq` back from the store for `read` (a chunk resealed meanwhile is not taken:
    /// the read meets it again and asks again). One chunk, not its neighbours too: a page that goes on into the next
    /// asks again, and a read decodes only the chunks it walks through.
    private func loadReleased(around seq: Int, for read: Int) async throws(ChatError) {
        let generation = history.generation
        let seqs = seq...seq
        let chunks: [HistoryChunk]
        do { chunks = try await store.chunks(of: info.id, overlapping: seqs) } catch { throw ChatError.storeFailure }
        do throws(HistoryReadError) {
            try history.load(chunks, covering: seqs, for: read, fetchedAt: generation)
        } catch {
            throw historyUnreadable(error)
        }
        stats.add(stats.historyChunksReadBack, chunks.count)
    }

    // MARK: - Guards

    private func enter() throws(ChatError) {
        if retired { throw ChatError.retired }
        if failed { throw ChatError.storeFailure }
        lastActivity = monotonicNanos()
    }

    private func requireMember(_ user: UserID) throws(ChatError) {
        guard members[user] != nil else { throw ChatError.notAMember }
    }

    /// A user the store lists as a member and this actor does not (another node added them, and its announcement is on
    /// its way): catches up with the store's member log and the events before its changes, as after a missed
    /// announcement, and says whether the user is a member now. Seq-taking commands wait meanwhile, as in any
    /// catch-up.
    func catchUpMembers(for user: UserID) async -> Bool {
        guard members[user] == nil else { return true }
        guard shared != nil, !retired, !failed else { return false }
        requestMemberLogCatchUp()
        await waitForSync()
        return members[user] != nil
    }

    /// The session of a user of this thread's company (created if none is alive).
    private nonisolated func session(of user: UserID) -> UserSession {
        registry.session(for: SessionKey(companyId: info.companyId, userId: user))
    }

    /// Whether `user` is a member.
    public func isMember(_ user: UserID) -> Bool { members[user] != nil }

    // MARK: - Durability

    /// Writes `writes` as one unit; `recorded` sees the outcome before the actor settles (fans out what waited, or
    /// starts a catch-up).
    private func commit(_ writes: [StoreWrite], recorded: ((WriteOutcome) -> Void)? = nil) async -> WriteOutcome {
        inFlight += 1
        let result: Result<Void, any Error> = await withCheckedContinuation { cont in
            store.submit(writes) { cont.resume(returning: $0) }
        }
        inFlight -= 1
        let outcome = WriteOutcome(result)
        record(outcome)
        recorded?(outcome)
        settle()
        return outcome
    }

    /// Notes a refused write: a conflict starts a catch-up, anything else fails the actor.
    private func record(_ outcome: WriteOutcome) {
        switch outcome {
        case .stored: break
        case .rebased:
            rebased = true
            syncing = true
        case .conflict:
            if !conflicted { stats.add(stats.storeConflicts) }
            conflicted = true
            syncing = true
        case .failed:
            if !failed { stats.add(stats.storeFailures) }
            failed = true
        }
    }

    /// Once no write is in flight: retires after a failure, or catches up after a conflict or news from other nodes.
    private func settle() {
        resumeQuietWaiters()
        resumeHeldWaiters()
        if failed { return retireAfterFailureIfSettled() }
        applyWaitingMemberships(through: fannedOutSeq)
        guard inFlight == 0, !retired, !syncRunning, conflicted || rebased || resyncRequested || membersUnconfirmed || remoteSeq > durableSeq else { return }
        syncing = true
        syncRunning = true
        // Not charged to the command that happened to start it (a task inherits its creator's task-locals).
        Task { await HistoryMeter.$current.withValue(nil) { await self.synchronize() } }
    }

    /// The seq writes of a unit, fenced by this actor's epoch on a shared store; new messages may be `rebasable`
    /// (stored after another node's events rather than refused).
    private func sequenced(_ writes: [StoreWrite], rebasable: Bool = false) -> [StoreWrite] {
        guard shared != nil else { return writes }
        let fence = StoreWrite.fence(info.id, epoch: epoch, membersVersion: membersVersion)
        return rebasable ? [fence, .rebasable(info.id)] + writes : [fence] + writes
    }

    private func retireAfterFailureIfSettled() {
        guard failed, inFlight == 0, !retired else { return }
        retired = true
        stopAllTypists()
        for entry in pending { entry.send?.reply(.failure(.storeFailure)) }
        pending.removeAll()
        for waiter in durableWaiters { waiter.resume(false) }
        durableWaiters.removeAll()
        for send in held { send.reply(.failure(.storeFailure)) }
        held.removeAll()
        resumeSyncWaiters()
        resumeQuietWaiters()
        resumeHeldWaiters()
        releaseReaders()
        // What this node's senders were told of each member's receipts: the successor tells what lies beyond (a receipt
        // committed elsewhere while this node did not hear, or one its snapshot holds already).
        var told: [UserID: MemberMarks] = [:]
        for (user, marks) in members { told[user] = receiptsOwed[user] ?? marks }
        onRetire(self, fannedOutSeq, told, max(remoteSeq, durableSeq) > fannedOutSeq || !waitingMemberships.isEmpty)
    }

    private func markDurable(_ seq: Int) {
        guard seq > durableSeq else { return }
        durableSeq = seq
        while let first = pending.first?.seq, first <= durableSeq {
            let entry = pending.removeFirst()
            fanOut(seq: entry.seq, entry.frame)
            if let reply = entry.send?.reply, let message = entry.message { reply(.success(message)) }
        }
        tellOwedReceipts()
        resumeHeldWaiters()
        if !durableWaiters.isEmpty {
            durableWaiters.removeAll { waiter in
                guard waiter.seq <= durableSeq else { return false }
                waiter.resume(true)
                return true
            }
        }
        sealReady()
    }

    /// Applies the store's outcomes for queued sends, in order (scheduled by `CommitInbox.post`).
    private func drainCommits() {
        while let outcomes = commits.take() { apply(outcomes) }
    }

    private func apply(_ outcomes: [(seq: Int, outcome: WriteOutcome)]) {
        guard !outcomes.isEmpty else { return }
        for (seq, outcome) in outcomes {
            inFlight -= 1
            if case .stored = outcome, shared != nil, let failedSeq = failedWriteSeq, seq > failedSeq {
                // Stored past an event of this actor whose write failed: its seq may be another node's now, so
                // nothing from it on is answered or fanned out as this actor numbered it (answered as stored, the
                // failed send went out at a seq the store gave another node's message: an outside probe). What the
                // store holds past `fannedOutSeq` reaches the devices here through the successor.
                remoteSeq = max(remoteSeq, seq)
                continue
            }
            if case .failed = outcome, shared != nil, pending.contains(where: { $0.seq == seq }) {
                failedWriteSeq = min(failedWriteSeq ?? seq, seq)
            }
            switch outcome {
            case .stored where !(conflicted || rebased):
                // Stored after a write that failed (a receipt, a membership change) too: the store takes a seq only
                // after the one before it, so memory and store agree up to it; it is answered and fanned out before
                // the actor retires. (Answered `internal` with the rest, it was stored all the same and never fanned
                // out on one node, where the next actor starts from what is stored: found by a review.)
                markDurable(seq)
                stats.add(stats.messagesSent)
            case .stored, .rebased:
                // Rebased, or stored after an earlier write of this actor that was refused as a conflict or rebased:
                // the seqs before it are not what memory says, so it is read back from the store (and answered) once
                // no write is in flight.
                if let i = pending.firstIndex(where: { $0.seq == seq }) { pending[i].rebased = true }
                record(.rebased)
            case .conflict, .failed:
                record(outcome)
            }
        }
        settle()
    }

    private func nextSeq() -> Int {
        lastSeq += 1
        return lastSeq
    }

    // MARK: - Fan-out

    /// Delivers `frame` to every device in the room (except `excluded`); returns how many it reached. `membersOnly`
    /// (a typing start, an emitted event: not a thread event) leaves out a user whose removal has not reached its
    /// place yet (they still get the thread's events before it, nothing else).
    @discardableResult
    private func fanOut(_ frame: OutboundFrame, seq: Int? = nil, except excluded: Device? = nil, membersOnly: Bool = false) -> Int {
        var reached = 0
        if membersOnly && memberSessions.count != members.count {
            for (user, session) in memberSessions where members[user] != nil { reached += session.deliver(frame, thread: info.id, seq: seq, except: excluded) }
        } else {
            for session in memberSessions.values { reached += session.deliver(frame, thread: info.id, seq: seq, except: excluded) }
        }
        stats.add(stats.eventsFannedOut)
        return reached
    }


    /// Fans out the thread event at `seq`: events leave this actor in strictly increasing seq order, whatever path
    /// they come from (own commits, catch-up, activation); one that would not is counted and not sent.
    private func fanOut(seq: Int, _ frame: OutboundFrame) {
        guard seq > fannedOutSeq else {
            stats.add(stats.fanOutOrderRefusals)
            return
        }
        applyWaitingMemberships(through: seq - 1, byEvent: true)
        fanOut(frame, seq: seq)
        fannedOutSeq = seq
    }

    /// Sends `frame` to every device in this thread's room.
    func broadcast(_ frame: OutboundFrame) throws(ChatError) -> Int {
        try enter()
        return fanOut(frame, membersOnly: true)
    }

    // MARK: - Messages

    /// How a queued send is answered: once with the durable message (or the first message with the same
    /// `tempId` from this user), or with the error that stopped it.
    public typealias SendReply = @Sendable (Result<Message, ChatError>) -> Void

    /// Appends a message. Returns it once durable (or the first message with the same `tempId` from this user).
    public nonisolated func send(_ request: SendRequest, from principal: Principal) async throws(ChatError) -> Message {
        let outcome = OneShot<Result<Message, ChatError>>()
        try await beginSend(request, from: principal) { outcome.complete($0) }
        return try await outcome.value().get()
    }

    /// Validates, assigns the next seq and queues the write, without waiting; `reply` is called on this actor
    /// once the message is durable and fanned out (or has failed). A connection can begin its next send at once,
    /// so sends from one socket are pipelined yet keep their order, and no task waits per send.
    /// Validation errors are thrown and `reply` is then never called.
    public func beginSend(_ request: SendRequest, from principal: Principal, reply: @escaping SendReply) throws(ChatError) {
        try enter()
        if syncing || editing || resolving {
            // Written once the actor has caught up (or the edit is stored, or a tempId is resolved), in arrival order
            // (after the sends a conflict refused).
            held.append(HeldSend(request: request, principal: principal, reply: reply))
            return
        }
        try startSend(request, from: principal, reply: reply)
    }

    /// Writes the held sends once neither a catch-up nor an edit holds them.
    ///
    /// On a shared store, a held send refused as from no member may be from a member another node added after the
    /// catch-up read the members (the client had its answer there, then sent here): instead of refusing it, the actor
    /// reads the member log once more, holding it and every send after it, and tries it again then. The sends held at
    /// that moment are all marked as asked for: the read comes after each of them was sent, so each is judged by it
    /// for good, and one read serves them all. (Found by an outside probe: 6 of 40 additions followed at once by a
    /// send on another node were refused while the thread there caught up.) A user refused so is refused without
    /// another read for `BrokerConfiguration.memberRereadInterval`: one who is no member and sends on costs the thread
    /// a read a second, not one per send.
    private func releaseHeld() {
        guard !syncing, !editing, !resolving, !held.isEmpty else { return }
        var queue = held[...]
        held.removeAll()
        while let send = queue.popFirst() {
            if syncing || editing || resolving {
                held.append(send)
                continue
            }
            guard let refused = startHeld(send) else { continue }
            if refused.code == .notAMember, shared != nil {
                let user = send.principal.userId
                if send.membersAsked {
                    noteRefusedAfterMemberRead(user)
                } else if !recentlyRefusedAfterMemberRead(user) {
                    held.append(send)
                    held.append(contentsOf: queue)
                    for i in held.indices { held[i].membersAsked = true }
                    requestMemberLogCatchUp()
                    return
                }
            }
            send.reply(.failure(refused))
        }
    }

    private var memberRereadNanos: UInt64 { UInt64(max(0, min(configuration.memberRereadInterval, 3600)) * 1e9) }

    private func recentlyRefusedAfterMemberRead(_ user: UserID) -> Bool {
        guard let at = refusedAfterMemberRead[user] else { return false }
        return monotonicNanos() &- at < memberRereadNanos
    }

    private func noteRefusedAfterMemberRead(_ user: UserID) {
        let now = monotonicNanos(), interval = memberRereadNanos
        if refusedAfterMemberRead.count >= 256 { refusedAfterMemberRead = refusedAfterMemberRead.filter { now &- $0.value < interval } }
        refusedAfterMemberRead[user] = now
    }

    /// Starts a held send, counted by the meter of the command that sent it (its offline notices are charged to its
    /// user); why it was refused, if it was.
    private func startHeld(_ send: HeldSend) -> ChatError? {
        HistoryMeter.$current.withValue(send.meter) { () -> ChatError? in
            do throws(ChatError) {
                try startSend(send.request, from: send.principal, reply: send.reply)
                return nil
            } catch {
                return error
            }
        }
    }

    /// Waits until no write of this actor is in flight (an edit starts alone: its outcome and the sends' come back on
    /// different paths, so a send stored after a refused edit could otherwise be taken for proof that the edit's
    /// seq was stored too).
    private func waitForQuiet() async {
        while (inFlight > 0 || !pending.isEmpty || syncing) && !retired && !failed {
            await withCheckedContinuation { quietWaiters.append($0) }
        }
    }

    private func resumeQuietWaiters() {
        guard (inFlight == 0 && pending.isEmpty && !syncing) || failed || retired, !quietWaiters.isEmpty else { return }
        Self.resumeAll(&quietWaiters)
    }

    private func startSend(_ request: SendRequest, from principal: Principal, reply: @escaping SendReply) throws(ChatError) {
        if retired { throw ChatError.retired }
        if failed { throw ChatError.storeFailure }
        try requireMember(principal.userId)
        if request.type == .system && !principal.isService {
            throw ChatError(.forbidden, "System messages can only be sent with a service token")
        }
        if let tempId = request.tempId, let original = try originalMessage(forTempId: tempId, request: request, from: principal, reply: reply) {
            guard let original else { return }  // held while a released chunk is read back
            // A tempId duplicate: answered once the original is durable.
            if original.seq <= durableSeq {
                reply(.success(original))
            } else {
                durableWaiters.append(
                    DurableWaiter(seq: original.seq, send: HeldSend(request: request, principal: principal, reply: reply)) { ok in
                        reply(ok ? .success(original) : .failure(.storeFailure))
                    })
            }
            return
        }
        let seq = nextSeq()
        let now = Timestamp.now()
        let message = Message(
            id: Identifier.timeOrderedUUID(millis: now.millis), threadId: info.id, seq: seq, senderId: principal.userId,
            type: request.type, content: request.content, attachmentUrl: request.attachmentUrl,
            attachmentType: request.attachmentType, createdAt: now, tempId: request.tempId)
        history.appendMessage(message)
        let event = ThreadEvent(seq: seq, kind: .message, message: message)
        let frame = encoder.encode(EventKind.message.eventName) { event.writePayload(to: &$0) }
        pending.append(Pending(seq: seq, frame: frame, message: message, send: HeldSend(request: request, principal: principal, reply: reply)))
        inFlight += 1
        let inbox = commits
        inbox.beginInline()
        var writes: [StoreWrite] = [.insertMessage(message)]
        var noticed = 0
        if let delay = configuration.offlineNoticeDelay {
            // Members with no live socket here are noted with the message, in its transaction; whether each is
            // still to be told is decided when the notice is due (on any node).
            let offline = memberOrder.filter { $0 != principal.userId && !(memberSessions[$0]?.hasDevices ?? false) }
            if !offline.isEmpty {
                let delay = noticePacer.delay(of: offline.count, for: info.companyId, base: delay)
                writes.append(.offlineNotice(info.id, message.id, users: offline, delay: delay))
            }
            noticed = offline.count
            HistoryMeter.current?.addNotices(noticed)
        }
        let stats = stats
        store.submit(sequenced(writes, rebasable: true)) { [noticed] result in
            let outcome = WriteOutcome(result)
            if noticed > 0, outcome == .stored || outcome == .rebased { stats.add(stats.offlineQueued, noticed) }
            if inbox.post(seq: seq, outcome: outcome) { Task { await self.drainCommits() } }
        }
        apply(inbox.endInline())
    }

    /// The message this user sent earlier with `tempId`: `nil` if there is none, `.some(nil)` if it is in a released
    /// chunk: then the send goes first of the held ones, every send is held (`resolving`) while the chunk is read
    /// back, and the send starts again then, in its place.
    private func originalMessage(
        forTempId tempId: String, request: SendRequest, from principal: Principal, reply: @escaping SendReply
    ) throws(ChatError) -> Message?? {
        do throws(HistoryReadError) {
            guard let original = try history.message(forTempId: tempId, sender: principal.userId) else { return nil }
            return .some(original)
        } catch {
            switch error {
            case .released, .unresolvedTempId: break
            case .corrupt, .unindexed: throw historyUnreadable(error)
            }
            // Only sends after this one can be held already (`releaseHeld` re-holds the rest of its queue behind it).
            held.insert(HeldSend(request: request, principal: principal, reply: reply), at: 0)
            resolving = true
            Task { await self.resolveTempId(error) }
            return .some(nil)
        }
    }

    /// Asks the store about a tempId the index could not rule out, or reads back the chunk a held send's tempId points
    /// into, then lets the held sends go (that one first). A store that cannot answer fails the actor, like a refused
    /// write: every held send is answered `internal` and the thread is reloaded by the next command.
    private func resolveTempId(_ miss: HistoryReadError) async {
        let read = history.beginRead()
        do throws(ChatError) {
            switch miss {
            case .released(let seq):
                try await loadReleased(around: seq, for: read)
            case .unresolvedTempId(let tempId, let sender):
                let seq: Int?
                do { seq = try await store.messageSeq(of: info.id, sender: sender, tempId: tempId) } catch { throw ChatError.storeFailure }
                history.rememberTempId(tempId, sender: sender, seq: seq)
                stats.add(stats.tempIdLookups)
                if let seq, seq > durableSeq {
                    // Another node stored the original and this node has not applied it yet: catch up first, so that
                    // the retry is answered with it instead of becoming a second message.
                    noteRemote(seq)
                    await waitForQuiet()
                    settle()
                    await waitForSync()
                    if failed || retired { throw ChatError.storeFailure }
                }
                if let seq, seq <= history.releasedThrough { try await loadReleased(around: seq, for: read) }
            case .corrupt, .unindexed:
                break
            }
        } catch {
            logStoreFailure()
            failed = true
        }
        resolving = false
        if failed {
            retireAfterFailureIfSettled()
        } else {
            releaseHeld()
        }
        history.endRead(read)
    }

    /// Edits a message (sender only). Returns the edit's seq and the message as it now is.
    public func edit(_ messageId: MessageID, content: String, by principal: Principal) async throws(ChatError) -> (seq: Int, message: Message) {
        try await update(messageId, kind: .edited, by: principal) { message in
            message.content = content
            message.editedAt = .now()
        }
    }

    /// Deletes a message (sender only): it keeps its seq, its content becomes "" and its attachments are cleared.
    public func delete(_ messageId: MessageID, by principal: Principal) async throws(ChatError) -> (seq: Int, message: Message) {
        try await update(messageId, kind: .deleted, by: principal) { message in
            message.content = ""
            message.attachmentUrl = nil
            message.attachmentType = nil
            message.deletedAt = .now()
        }
    }

    private func update(
        _ messageId: MessageID, kind: EventKind, by principal: Principal, change: (inout Message) -> Void
    ) async throws(ChatError) -> (seq: Int, message: Message) {
        // The checks that need no edit slot come first: a request for a message that is not the sender's (or no
        // message at all) does not hold the thread's sends while the edits before it are written.
        try enter()
        do {
            _ = try await updatableEntry(messageId, kind: kind, by: principal)
        } catch {
            // On several nodes a message not found may have been committed elsewhere a moment ago (its notice on its
            // way, or in and not read yet). The store is asked how far the thread goes, whatever this node has heard,
            // and the message looked up again once the node holds that far; still missing, the slot path waits for
            // what is on its way, and with nothing on its way the message does not exist. (Found by outside probes:
            // an edit sent to another node right after the ack was `not_found`, 3–8 in 60 when only a node that had
            // heard of nothing asked the store, then 1 in 60 while a node that had heard of it looked once more
            // without waiting, or took the miss as final when it took the message in while the store answered.)
            guard error == .messageNotFound else { throw error }
            _ = await catchUpWithStore()
            try enter()
            do {
                _ = try await updatableEntry(messageId, kind: kind, by: principal)
            } catch {
                guard error == .messageNotFound, syncing || remoteSeq > durableSeq else { throw error }
            }
        }
        while true {
            try enter()
            await waitForSync()
            try enter()
            guard !editing else {
                // One edit at a time: the next waits for this one to end.
                await withCheckedContinuation { editWaiters.append($0) }
                continue
            }
            editing = true
            await waitForQuiet()
            let outcome: Result<(seq: Int, message: Message)?, ChatError>
            do { outcome = .success(try await tryUpdate(messageId, kind: kind, by: principal, change: change)) } catch { outcome = .failure(error) }
            editing = false
            releaseHeld()
            resumeQuietWaiters()
            Self.resumeAll(&editWaiters)
            if let done = try outcome.get() { return done }
            // Another node took the seq first: caught up (by `synchronize`), the edit is checked and written again.
        }
    }

    /// The index entry of a message `principal` may edit or delete (a durable message of theirs, not deleted), or why
    /// not.
    private func updatableEntry(_ messageId: MessageID, kind: EventKind, by principal: Principal) async throws(ChatError) -> IndexedMessage {
        try requireMember(principal.userId)
        let found = try await readHistory { history throws(HistoryReadError) in try history.lookUp(messageId) }
        if retired { throw ChatError.retired }
        if failed { throw ChatError.storeFailure }
        // The read may have waited for the store, and the user may have been removed meanwhile.
        try requireMember(principal.userId)
        guard let entry = found, entry.seq <= durableSeq else { throw ChatError.messageNotFound }
        guard entry.senderId == principal.userId else {
            throw ChatError(.forbidden, "only the sender may \(kind == .edited ? "edit" : "delete") this message")
        }
        guard !entry.deleted else { throw ChatError(.notFound, "message was deleted") }
        return entry
    }

    /// One attempt of `update`; `nil` when the store refused it as a conflict.
    private func tryUpdate(
        _ messageId: MessageID, kind: EventKind, by principal: Principal, change: (inout Message) -> Void
    ) async throws(ChatError) -> (seq: Int, message: Message)? {
        let entry = try await updatableEntry(messageId, kind: kind, by: principal)
        // The message and the chunks to reseal, read back from the store if they were released; if another node's
        // event changed the message meanwhile, this attempt ends and the checks run again.
        let maxEdits = configuration.maxEditsPerMessage
        let maxResealed = configuration.maxResealedChunksPerEdit, chunkSize = configuration.chunkSize
        let prepared = try await readHistory { history throws(HistoryReadError) -> PreparedUpdate in
            guard try history.lookUp(messageId) == entry else { return .changed }
            guard var message = try history.message(messageId) else { return .missing }
            // Each edit reseals every chunk holding an event of the message: bounded, before any of that work.
            if kind == .edited, try history.updateCount(of: message) >= maxEdits { return .tooManyEdits }
            if kind == .edited, history.sealedChunkCount(carrying: message, chunkSize: chunkSize) > maxResealed { return .spreadTooFar }
            change(&message)
            return .ready(message, resealed: try history.reseal(for: message))
        }
        // The read may have waited for the store: a catch-up may have begun, the actor failed, or the user been
        // removed meanwhile (an edit stored after the removal broke it: found by a review).
        if retired { throw ChatError.retired }
        if failed { throw ChatError.storeFailure }
        try requireMember(principal.userId)
        let message: Message, resealed: [HistoryChunk]
        switch prepared {
        case .changed: return nil
        case _ where syncing: return nil  // checked and written again once caught up
        case .missing: throw ChatError.messageNotFound
        case .tooManyEdits: throw ChatError(.forbidden, "this message was edited \(maxEdits) times, the most allowed")
        case .spreadTooFar:
            throw ChatError(
                .forbidden,
                "this message can no longer be edited: its events are spread over more than \(maxResealed) history chunks, the most one edit may rewrite (it can still be deleted)")
        case .ready(let m, let r): (message, resealed) = (m, r)
        }
        // Charged to the user once the command is done (`BrokerConfiguration.rewrittenBytesPerWriteToken`).
        HistoryMeter.current?.addRewritten(resealed.reduce(0) { $0 + $1.rawSize })
        let seq = nextSeq()
        // Memory shows the change from here (the message is rewritten in place): reads wait until the store answers.
        updateUnstored = true
        deleteUnstored = kind == .deleted ? message.id : nil
        history.appendUpdate(seq: seq, kind: kind, message: message, resealed: resealed)
        let event = ThreadEvent(seq: seq, kind: kind, message: message)
        pending.append(Pending(seq: seq, frame: encoder.encode(kind.eventName) { event.writePayload(to: &$0) }))
        let writes: [StoreWrite] = [.updateMessage(message, seq: seq, kind: kind)] + resealed.map { .putChunk(info.id, $0, asOf: seq) }
        let outcome = await commit(sequenced(writes))
        // Stored (or failed, and readers refuse): the readers run after this turn, so after `markDurable` below. Refused
        // or stored behind a write that was not: memory is reloaded from the store first (`synchronize` lets them go).
        if outcome == .failed || (outcome == .stored && !(conflicted || rebased)) { releaseReaders() }
        if outcome == .stored {
            history.resealsSaved()
            countReleases()
        }
        switch outcome {
        case .stored where !(conflicted || rebased):
            markDurable(seq)
            return (seq, message)
        case .stored:
            // Stored, after a write of this actor that was not: memory is read back before the edit is answered.
            record(.rebased)
            settle()
            await waitForSync()
            guard !failed else { throw ChatError.storeFailure }
            guard let current = try await readHistory({ history throws(HistoryReadError) in try history.message(messageId) }) else {
                throw ChatError.messageNotFound
            }
            return (seq, current)
        case .conflict, .rebased: return nil
        case .failed: throw ChatError.storeFailure
        }
    }

    // MARK: - Receipts

    /// Advances `principal`'s delivered mark to the highest seq among `messageIds` of this thread.
    public func delivered(_ messageIds: [MessageID], by principal: Principal) async throws(ChatError) {
        try enter()
        try requireMember(principal.userId)
        // A resync under way (after a conflict) rebuilds what this node holds: the receipt is judged on what it holds
        // after.
        if shared != nil, syncing {
            await waitForSync()
            try enter()
            try requireMember(principal.userId)
        }
        var (target, unknown, pending) = receiptTarget(messageIds)
        // Several nodes: the client may have got its newest message (listed last) from another node before this one
        // heard of it, or before this one holds it: the store says how far the thread goes, the receipt waits until
        // this node holds that far, and its ids are looked up again (also when the node took them in while the store
        // answered). Found by an outside probe: such a receipt answered success and moved no mark, 9 in 360.
        if shared != nil, let newest = messageIds.max(), history.indexEntry(newest) == nil || pending > target {
            _ = await catchUpWithStore()
            try enter()
            try requireMember(principal.userId)
            (target, unknown, pending) = receiptTarget(messageIds)
        }
        // Released messages are older than every indexed one: the store is asked only if none was found here, and
        // in one query, for the 128 newest ids of the list (message ids are time-ordered UUIDs, whose text sorts by
        // time; the end of the list was taken before, which a client listing them newest first did not get: an
        // outside probe), so that a receipt of 1000 ids that are no messages costs one query, not eight.
        if target == 0, !unknown.isEmpty, history.releasedThrough > 0 {
            let part = Array(unknown.sorted(by: >).prefix(128))
            try await lookUpReleased(part)
            // The actor may have been unloaded meanwhile (the memory budget does not wait for reads): a mark written
            // by it would be missing from the next actor's memory, which would tell the same receipt again.
            try enter()
            try requireMember(principal.userId)
            for id in part { if let seq = history.knownSeq(of: id), seq <= durableSeq { target = max(target, seq) } }
        }
        try await advanceMarks(of: principal.userId, delivered: target, read: 0)
    }

    /// Of a receipt's ids: the highest seq this node holds (`target`), the ids it has not indexed, and the highest seq
    /// it has indexed but does not hold yet (`pending`: an event being applied).
    private func receiptTarget(_ messageIds: [MessageID]) -> (target: Int, unknown: [MessageID], pending: Int) {
        var target = 0, pending = 0
        var unknown: [MessageID] = []
        for id in messageIds {
            guard let entry = history.indexEntry(id) else {
                unknown.append(id)
                continue
            }
            if entry.seq <= durableSeq { target = max(target, entry.seq) } else { pending = max(pending, entry.seq) }
        }
        return (target, unknown, pending)
    }

    /// Advances `principal`'s read mark (and delivered mark) to `upToSeq`, clamped to the last seq (by default the last
    /// seq this node holds). On a store several nodes share, an `upToSeq` past it may name an event the client was told
    /// of by another node first: the store is asked, and what it holds beyond is read before the mark is clamped.
    public func markRead(upToSeq: Int?, by principal: Principal) async throws(ChatError) {
        try enter()
        try requireMember(principal.userId)
        if shared != nil, let upToSeq, upToSeq > durableSeq {
            // Checked again after the store's answer, whether or not a catch-up followed (the actor may have been
            // unloaded meanwhile, as in `delivered`).
            _ = await catchUpWithStore()
            try enter()
            try requireMember(principal.userId)
        }
        let target = min(upToSeq ?? durableSeq, durableSeq)
        try await advanceMarks(of: principal.userId, delivered: target, read: target)
    }

    /// Several nodes: a client may hear of an event from another node before this one does, and name it (a read mark
    /// up to it, a receipt of its id). Asks the store how far the thread goes; if further than this actor holds, reads
    /// the rest, with the member changes this node has not heard of applied at their places (the log is read first:
    /// a member removed elsewhere gets nothing committed after the removal), and waits until it is held (at most 2 s:
    /// the read waits for this actor's own writes in flight, which a conflict ends). Returns whether it waited: the
    /// actor may have changed meanwhile (callers check `enter()` and membership again); a store that cannot answer
    /// leaves everything as it was.
    ///
    /// The query is charged to the command's user as a read (`HistoryMeter.storeLookups`): a client naming made-up seqs
    /// in a `chat:sync` of 1,000 cursors costs what 1,000 reads do (found by a review). A head no further than the seqs
    /// this actor gave its own writes asks for no catch-up: those writes land (or conflict, and then the catch-up
    /// comes anyway), so a busy thread's sends are not held for a client's claim.
    private func catchUpWithStore() async -> Bool {
        guard let head = await storeHead() else { return false }
        return await catchUp(toStoreHead: head)
    }

    /// The thread's last seq as the store says (`nil` on one store, or if it does not answer), charged to the
    /// command's user as a read (`catchUpWithStore`).
    private func storeHead() async -> Int? {
        guard shared != nil else { return nil }
        HistoryMeter.current?.addStoreLookups(1)
        return (try? await store.threadHead(of: info.id, reader: "", company: nil))?.lastSeq
    }

    /// `catchUpWithStore` once the store said how far the thread goes (`head`).
    private func catchUp(toStoreHead head: Int) async -> Bool {
        guard head > durableSeq, !failed, !retired else { return false }
        guard head > lastSeq else {
            await waitUntilHeld(head, within: .seconds(2))
            return true
        }
        noteRemote(head)
        // A catch-up running now may have looked before the request: the next one starts once it ends (it would hold
        // sends waiting for the log otherwise, `syncing`).
        memberLogWanted = true
        resyncRequested = true
        settle()
        await waitUntilHeld(head, within: .seconds(2))
        return true
    }

    /// Waits until `durableSeq` reaches `seq`, the actor fails or retires, or `wait` passes.
    private func waitUntilHeld(_ seq: Int, within wait: Duration) async {
        guard durableSeq < seq, !failed, !retired else { return }
        let number = heldWaitersMade
        heldWaitersMade += 1
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            heldWaiters[number] = (seq, continuation, nil)
            heldWaiters[number]?.timer = Task {
                guard (try? await Task.sleep(for: wait)) != nil else { return }
                self.resumeHeldWaiter(number)
            }
        }
    }

    private func resumeHeldWaiter(_ number: Int) {
        heldWaiters.removeValue(forKey: number)?.continuation.resume()
    }

    /// Lets the commands waiting for a seq now held go on (all of them once the actor failed or retired).
    private func resumeHeldWaiters() {
        guard !heldWaiters.isEmpty else { return }
        for (number, waiter) in heldWaiters where waiter.seq <= durableSeq || failed || retired {
            heldWaiters.removeValue(forKey: number)
            waiter.timer?.cancel()
            waiter.continuation.resume()
        }
    }

    private func advanceMarks(of user: UserID, delivered: Int, read: Int) async throws(ChatError) {
        guard let old = members[user] else { throw ChatError.notAMember }
        let marks = old.raised(by: MemberMarks(deliveredSeq: delivered, readSeq: read))
        guard marks != old else { return }
        members[user] = marks
        // What the senders were told so far (less than `old` while another node's receipt of this member is owed) is
        // noted as owed while the marks are written, so that a receipt from another node arriving meanwhile tells
        // from there, and this one tells only what is left after it.
        receiptsOwed[user] = receiptsOwed[user] ?? old
        var writing = marksWriting[user] ?? {
            marksWritingMade += 1
            return (stored: old, writes: 0, membership: marksWritingMade)
        }()
        writing.writes += 1
        marksWriting[user] = writing
        let membership = writing.membership
        // Told as soon as it is stored, before the actor settles: a write of another command that failed meanwhile may
        // retire the actor then, and what it hands on as told must hold this receipt (told after, it was told again by
        // the successor; found by a review).
        let outcome = await commit([.marks(info.id, user, marks, from: old)]) { outcome in
            guard var writing = self.marksWriting[user], writing.membership == membership else { return }
            writing.writes -= 1
            if case .stored = outcome { writing.stored = writing.stored.raised(by: marks) }
            self.marksWriting[user] = writing.writes > 0 ? writing : nil
            guard self.members[user] != nil else { return }
            if writing.writes == 0 {
                // Nothing of this member's is being written now: memory holds what is stored (a write that failed
                // raised nothing the store took; another node's receipts that came meanwhile are in `stored`).
                self.members[user] = writing.stored
            }
            guard let told = self.receiptsOwed[user] else { return }
            self.receiptCharged = user
            self.tellStoredReceipts(of: user, told: told, stored: writing.stored)
            self.receiptCharged = nil
        }
        guard case .stored = outcome else { throw ChatError.storeFailure }
    }

    /// Tells the senders `user`'s receipts from `told` up to `stored` (`tellReceipts`); while marks of the member are
    /// being written, what was told stays noted (`receiptsOwed`) for the writes' own telling.
    private func tellStoredReceipts(of user: UserID, told: MemberMarks, stored: MemberMarks) {
        tellReceipts(of: user, told: told, marks: stored)
        if marksWriting[user] != nil, receiptsOwed[user] == nil { receiptsOwed[user] = stored.raised(by: told) }
    }

    /// Tells the senders of the messages in `range` that `reader` got or read them. The messages of released chunks
    /// are listed by the store: such a receipt is sent once it answers, and the receipts after it wait for it, so
    /// each sender still sees them in order. The store is asked about the newest `receiptWindow` seqs of the range
    /// only (memory's index, bounded, is looked at whole): a member added to a long thread, or removed and added
    /// again, who reads it all costs a bounded query and bounded notices, not the whole history.
    private func notifySenders(_ event: String, range: ClosedRange<Int>, reader: UserID, time: String) {
        let floor = history.releasedThrough
        let indexed = range.upperBound > floor ? history.messagesBySender(in: max(range.lowerBound, floor + 1)...range.upperBound, excluding: reader, deletingUnstored: deleteUnstored) : []
        let oldest = max(range.lowerBound, range.upperBound - receiptWindow + 1)
        let released = oldest <= floor ? oldest...min(range.upperBound, floor) : nil
        // The reader pays for the messages looked at to list the receipt (`receiptListedPerSignalToken`).
        if reader == receiptCharged {
            let looked = (released?.count ?? 0) + (range.upperBound > floor ? range.upperBound - max(range.lowerBound, floor + 1) + 1 : 0)
            HistoryMeter.current?.addReceiptListed(looked)
        }
        guard released != nil || receiptsWaiting > 0 else {
            sendReceipts(event, indexed, range: range, reader: reader, time: time)
            return
        }
        receiptsWaiting += 1
        let previous = lastReceipt, store = store, thread = info.id
        lastReceipt = Task {
            var older: [(sender: UserID, ids: [MessageID])] = []
            if let released {
                // Asked again after a failure (the mark itself is stored); if the store still cannot answer, the
                // receipt goes out with the ids memory holds and its `upToSeq`, and the failure is logged.
                for attempt in 0..<3 {
                    do {
                        older = try await store.messagesBySender(of: thread, in: released, excluding: reader)
                        break
                    } catch {
                        if attempt == 2 {
                            self.receiptFailed(event, range: released, error: error)
                        } else {
                            try? await Task.sleep(for: .milliseconds(100 << (2 * attempt)))
                        }
                    }
                }
            }
            await previous?.value
            self.finishReceipt(event, older + indexed, range: range, reader: reader, time: time)
        }
    }

    private static let logger = Logger(label: "chat.core.thread")

    /// The error a client gets when the thread's history cannot be read (a corrupt chunk, say): a sentence with no
    /// thread id or store detail in it; what went wrong is logged.
    private func historyUnreadable(_ cause: Any) -> ChatError {
        Self.logger.error("thread history could not be read", metadata: ["thread": "\(info.id)", "error": "\(cause)"])
        return ChatError(.internal, "the thread's history could not be read")
    }

    /// How many of a receipt's newest seqs, at most, the store is asked about: ten receipts' worth (`maxReceiptIds`).
    private var receiptWindow: Int { 10 * configuration.maxReceiptIds }

    private func receiptFailed(_ event: String, range: ClosedRange<Int>, error: any Error) {
        stats.add(stats.storeFailures)
        Self.logger.error(
            "receipt sent without the ids of released messages: the store did not list them",
            metadata: ["thread": "\(info.id)", "event": "\(event)", "seqs": "\(range)", "error": "\(error)"])
    }

    /// Receipts waiting for the store (and the newest one's task): later ones queue behind them.
    private var receiptsWaiting = 0
    private var lastReceipt: Task<Void, Never>?

    private func finishReceipt(_ event: String, _ groups: [(sender: UserID, ids: [MessageID])], range: ClosedRange<Int>, reader: UserID, time: String) {
        receiptsWaiting -= 1
        if receiptsWaiting == 0 { lastReceipt = nil }
        let merged = groupedBySender(groups.lazy.flatMap { group in group.ids.lazy.map { (sender: group.sender, id: $0) } })
        sendReceipts(event, merged, range: range, reader: reader, time: time)
    }

    /// Each sender's notice lists at most `maxReceiptIds` ids, the newest (`upToSeq` covers the older ones): a member
    /// removed and added again, who reads the whole thread after each addition, made every sender's devices get up to
    /// 10,000 ids (390 KB) per notice, about 38 MB/s for two colluding members (outside probe).
    private func sendReceipts(_ event: String, _ groups: [(sender: UserID, ids: [MessageID])], range: ClosedRange<Int>, reader: UserID, time: String) {
        for (sender, ids) in groups {
            // Only members are told who read how far: a removed sender learns nothing more of the thread.
            guard let session = memberSessions[sender] else { continue }
            let listed = ids.suffix(configuration.maxReceiptIds)
            let data: JSONValue = .object([
                "threadId": .string(info.id), "messageIds": .array(listed.map { .string($0) }), "userId": .string(reader),
                "upToSeq": .int(range.upperBound), "timestamp": .string(time),
            ])
            session.deliverToAll(encoder.encode(event, data))
        }
    }

    // MARK: - Typing

    /// Announces `device`'s user as typing to the room (except `device`); auto-stops after the typing timeout.
    public func typingStart(from device: Device) throws(ChatError) {
        try enter()
        let user = device.principal.userId
        guard members[user] != nil, device.receives(info.id) else { throw ChatError.notAMember }
        let timeout = UInt64(configuration.typingTimeout * 1e9)
        let now = monotonicNanos()
        // A start repeated on the same device within half the timeout of the last one announced only keeps the user
        // typing: the room (and the other nodes) heard it already, so a flood of starts fans nothing out.
        if let state = typing[user], state.device === device, now &- state.announced < timeout / 2 {
            typing[user] = (device, now &+ timeout, state.announced)
            return
        }
        let wait = takeTypingStart(of: user, now: now)
        // `announced` 0: the room was not told (over the rate), so it is not told of the stop either; a typist the room
        // heard already (on another device) stays heard.
        let heard = typing[user].map(\.announced) ?? 0
        typing[user] = (device, now &+ timeout, wait == nil ? now : heard)
        device.markTyping(info.id, true)
        if let wait {
            if heard == 0 { deferStart(of: user, wait: wait) }
        } else {
            announceTypingStarted(user, except: device)
        }
        startTypingTimer(TypingTimer(user: user, remote: false), wait: timeout)
    }

    /// Takes one of `user`'s typing starts (`typingStartsPerSecond`): `nil` if there was one, else how long until
    /// there is.
    private func takeTypingStart(of user: UserID, now: UInt64) -> UInt64? {
        var starts = typingStarts[user] ?? TokenBucket(rate: Self.typingStartsPerSecond, burst: Self.typingStartBurst, now: now)
        defer { typingStarts[user] = starts }
        return starts.take(now: now) ? nil : starts.wait(now: now)
    }

    /// The room (but `excluded`) and the other nodes hear that `user` started typing.
    private func announceTypingStarted(_ user: UserID, except excluded: Device) {
        fanOut(typingFrame(start: true, user: user), except: excluded, membersOnly: true)
        shared?.publish([.typing(info.id, user, started: true)])
    }

    /// Announces `user`'s start after `wait`, if they still type unheard then (one task per typist).
    private func deferStart(of user: UserID, wait: UInt64) {
        guard deferredStarts.insert(user).inserted else { return }
        Task { [weak self] in
            try? await Task.sleep(nanoseconds: wait)
            await self?.announceDeferredStart(of: user)
        }
    }

    /// A typist whose start was over the rate: the room hears it now if they still type and were not heard since (a
    /// start of theirs within the rate, or their stop, settled it), within the same rate.
    private func announceDeferredStart(of user: UserID) {
        deferredStarts.remove(user)
        let now = monotonicNanos()
        guard !retired, !failed, members[user] != nil, let state = typing[user], state.announced == 0, state.until > now else { return }
        if let wait = takeTypingStart(of: user, now: now) { return deferStart(of: user, wait: wait) }
        typing[user] = (state.device, state.until, now)
        announceTypingStarted(user, except: state.device)
    }

    /// Runs `timer` unless it runs already: it sleeps `first`, then as long as its expiry says, until the typist's
    /// time is up.
    private func startTypingTimer(_ timer: TypingTimer, wait first: UInt64) {
        guard typingTimers.insert(timer).inserted else { return }
        Task { [weak self] in
            var wait = first
            while true {
                try? await Task.sleep(nanoseconds: wait)
                guard let self else { return }
                let more = timer.remote ? await self.expireRemoteTyping(user: timer.user) : await self.expireTyping(user: timer.user)
                guard let more else { return }
                wait = more
            }
        }
    }

    /// Another node announced `user` as typing (`started`) or stopped. A start is fanned out to a member's room and
    /// noted (`remoteTyping`); a stop is fanned out for a member, and for a former member whose start was (removed
    /// on another node: their stop comes after the removal).
    private func applyRemoteTyping(_ user: UserID, started: Bool) {
        guard started else {
            if remoteTyping.removeValue(forKey: user) != nil || members[user] != nil { fanOut(typingFrame(start: false, user: user)) }
            return
        }
        guard members[user] != nil else { return }
        let timeout = UInt64(configuration.typingTimeout * 1e9)
        remoteTyping[user] = monotonicNanos() &+ timeout &+ timeout / 2
        fanOut(typingFrame(start: true, user: user), membersOnly: true)
        startTypingTimer(TypingTimer(user: user, remote: true), wait: timeout + timeout / 2)
    }

    /// `user` is no longer a member: if they were typing, here or on another node, the room hears them stop (and the
    /// other nodes, for a typist of this node's).
    private func typistRemoved(_ user: UserID) {
        let remote = remoteTyping.removeValue(forKey: user) != nil
        typingStarts.removeValue(forKey: user)
        if let state = typing.removeValue(forKey: user) {
            announceTypingStopped(user, state, except: state.device)
        } else if remote {
            fanOut(typingFrame(start: false, user: user))
        }
    }

    /// Takes `user` out of the members (removed here or on another node), with what this actor keeps for them: their
    /// session, receipts owed, typing. Nothing if they were not a member.
    private func dropMember(_ user: UserID) {
        guard removeFromMembers(user) else { return }
        // A leave lasts until the user is removed: their devices here are back in the room for when they are added
        // again (a fresh actor greeting the catch-up's members keeps a device that left out of the room).
        memberSessions.removeValue(forKey: user)?.joinAll(info.id)
    }

    /// `dropMember` but for delivery: `user`'s devices stay in the room (until `applyOwnMembership`). Returns whether
    /// they were a member.
    @discardableResult
    private func removeFromMembers(_ user: UserID) -> Bool {
        leftWhileMember.removeValue(forKey: user)
        marksOfWaitingMembers.removeValue(forKey: user)
        // A write of their marks still in flight tells nothing once it ends (a member added again starts over).
        marksWriting.removeValue(forKey: user)
        guard members.removeValue(forKey: user) != nil else { return false }
        memberOrder.removeAll { $0 == user }
        receiptsOwed.removeValue(forKey: user)
        typistRemoved(user)
        return true
    }

    /// The actor retires after a store failure: every typist it fanned out is announced stopped (a stop alone does not
    /// activate a successor on this node, so nothing else would).
    private func stopAllTypists() {
        for (user, state) in typing { announceTypingStopped(user, state, except: state.device) }
        for user in remoteTyping.keys where typing[user] == nil { fanOut(typingFrame(start: false, user: user)) }
        typing.removeAll()
        remoteTyping.removeAll()
    }

    /// Announces a stop, only if the user was typing.
    public func typingStop(from device: Device) throws(ChatError) {
        try enter()
        let user = device.principal.userId
        guard members[user] != nil, device.receives(info.id) else { throw ChatError.notAMember }
        guard let state = typing.removeValue(forKey: user) else { return }
        announceTypingStopped(user, state, except: device)
    }

    /// The typist's timer woke: announces the stop if the typist's time is up (and ends the timer), or returns how
    /// long to sleep again if they restarted meanwhile.
    private func expireTyping(user: UserID) -> UInt64? {
        let now = monotonicNanos()
        if let state = typing[user], state.until > now { return state.until - now }
        typingTimers.remove(TypingTimer(user: user, remote: false))
        guard let state = typing.removeValue(forKey: user) else { return nil }
        announceTypingStopped(user, state, except: state.device)
        if typingStarts[user]?.isFull(now: now) == true { typingStarts.removeValue(forKey: user) }
        return nil
    }

    /// The timer of a typist another node announced woke: the room hears them stop if their time is up here (and the
    /// timer ends), or it sleeps again until their time is up.
    private func expireRemoteTyping(user: UserID) -> UInt64? {
        let now = monotonicNanos()
        if let until = remoteTyping[user], until > now { return until - now }
        typingTimers.remove(TypingTimer(user: user, remote: true))
        guard remoteTyping.removeValue(forKey: user) != nil else { return nil }
        fanOut(typingFrame(start: false, user: user))
        return nil
    }

    /// Called when `device` disconnects: a typist that goes away is announced as stopped.
    func deviceGone(_ device: Device) {
        let user = device.principal.userId
        guard let state = typing[user], state.device === device else { return }
        typing[user] = nil
        announceTypingStopped(user, state, except: device)
    }

    /// `user`, just taken out of `typing` (as `state` says), stopped typing on its device: the device no longer counts the
    /// thread, and the room (but `excluded`) and the other nodes are told, if they heard the start (`announced` not 0).
    private func announceTypingStopped(_ user: UserID, _ state: (device: Device, until: UInt64, announced: UInt64), except excluded: Device) {
        state.device.markTyping(info.id, false)
        guard state.announced != 0 else { return }
        fanOut(typingFrame(start: false, user: user), except: excluded)
        shared?.publish([.typing(info.id, user, started: false)])
    }

    private func typingFrame(start: Bool, user: UserID) -> OutboundFrame {
        encoder.encode(
            start ? "chat:typing:start" : "chat:typing:stop",
            .object(["threadId": .string(info.id), "userId": .string(user)]), droppable: true)
    }

    // MARK: - Rooms

    /// Puts `device` back in this thread's room (members only).
    public func join(_ device: Device) throws(ChatError) {
        try enter()
        try requireMember(device.principal.userId)
        leftWhileMember[device.principal.userId]?.remove(device.id)
        device.join(info.id)
    }

    /// Stops delivery of this thread to `device`; membership is unchanged.
    public func leave(_ device: Device) throws(ChatError) {
        try enter()
        try requireMember(device.principal.userId)
        leftWhileMember[device.principal.userId, default: []].insert(device.id)
        device.leave(info.id)
    }

    // MARK: - Reads

    /// A history page, ascending; `hasMore` is false on the page that reaches the first message.
    ///
    /// Several nodes: a page before a seq past what this node holds (a client that saw it on another node a moment
    /// ago) is read once the rest is held (`catchUpWithStore`): without it the page ended at this node's last seq, and
    /// the client, paging back from there, never got the events in between.
    public func history(beforeSeq: Int?, limit: Int, by principal: Principal) async throws(ChatError) -> (messages: [Message], hasMore: Bool) {
        // 2^53 − 1 (what a `Long.MAX_VALUE` is read as) asks for the newest page, as no `beforeSeq` does: no query.
        if shared != nil, let beforeSeq, beforeSeq > durableSeq + 1, beforeSeq < JSONValue.maxExactInteger {
            try enter()
            try requireMember(principal.userId)
            _ = await catchUpWithStore()
        }
        let maxBytes = configuration.maxPageBytes
        return try await readStored(by: principal) { history, upTo throws(HistoryReadError) in
            try history.page(beforeSeq: beforeSeq, limit: limit, upTo: upTo, maxBytes: maxBytes)
        }
    }

    /// Events after `afterSeq`, at most the sync limit; `hasMore` says whether to ask again from the last seq.
    /// `maxBytes` bounds the page's estimated wire size (at least one event, unless it is 0: then only whether there
    /// are events after `afterSeq`).
    ///
    /// Several nodes: a client that names a seq past what this node has fanned out has seen those events on another
    /// node a moment ago (their notice is on its way here). Its `device` is not given them live again (`skipLive`),
    /// and past what this node holds, the store is asked how far the thread goes and the rest read first
    /// (`catchUpWithStore`), so that the answer goes as far as what the client saw elsewhere. (Found by an outside
    /// probe: such a sync answered nothing more, then the node delivered the client's last 35 events live again.)
    public func events(
        after afterSeq: Int, by principal: Principal, maxBytes: Int? = nil, for device: Device? = nil
    ) async throws(ChatError) -> (events: [ThreadEvent], hasMore: Bool) {
        if shared != nil, afterSeq > fannedOutSeq {
            try enter()
            try requireMember(principal.userId)
            if afterSeq <= durableSeq {
                // Held here, not fanned out yet: nothing to wait for.
                device?.skipLive(info.id, through: afterSeq)
            } else if let head = await storeHead() {
                // Only what the thread holds is skipped, as the store said before anything was: an event committed
                // after the query (its seq past `head`) is one the client cannot have had, whatever it named (a
                // `Long.MAX_VALUE` cursor for "the newest"; found by an outside probe: skipped up to the cursor during
                // the wait, such events were lost to the socket). One fanned out during the query is delivered, maybe
                // again.
                let through = min(afterSeq, head)
                if through > fannedOutSeq { device?.skipLive(info.id, through: through) }
                _ = await catchUp(toStoreHead: head)
                // Past what this node could read (a catch-up that did not end in time), the skip would keep the device
                // from events it never had; at or below what was fanned out it has nothing left to skip.
                device?.limitSkip(info.id, to: durableSeq, fannedOut: fannedOutSeq)
            }
        }
        let limit = configuration.syncLimit, maxBytes = min(maxBytes ?? .max, configuration.maxPageBytes)
        return try await readStored(by: principal) { history, upTo throws(HistoryReadError) in
            guard maxBytes > 0 else { return ([], upTo > afterSeq) }
            return try history.events(after: afterSeq, limit: limit, upTo: upTo, maxBytes: maxBytes)
        }
    }

    /// A member's read of the history up to `durableSeq`, showing only stored state: it waits while an edit or delete
    /// is in memory and not stored, and reads again if one was applied while released chunks were read back for it.
    private func readStored<T>(
        by principal: Principal, _ body: (inout ThreadHistory, _ upTo: Int) throws(HistoryReadError) -> T
    ) async throws(ChatError) -> T {
        while true {
            try await enterStored()
            try requireMember(principal.userId)
            let upTo = durableSeq
            let result = try await readHistory { history throws(HistoryReadError) in try body(&history, upTo) }
            if !updateUnstored { return result }
        }
    }

    /// An edit or delete in memory is settled (stored, or memory reloaded, or the actor failed): waiting reads go on.
    private func releaseReaders() {
        updateUnstored = false
        deleteUnstored = nil
        Self.resumeAll(&unstoredWaiters)
    }

    /// `enter()`, once no edit or delete is in memory without being stored: a read shows only durable state.
    private func enterStored() async throws(ChatError) {
        try enter()
        while updateUnstored {
            await withCheckedContinuation { unstoredWaiters.append($0) }
            try enter()
        }
    }

    /// The thread as `user` sees it in a listing.
    public func summary(for user: UserID) async throws(ChatError) -> ThreadSummary {
        try await summary(for: user, upTo: nil)
    }

    /// The thread as `user` sees it through `seq` (`nil`: every stored event).
    private func summary(for user: UserID, upTo seq: Int?) async throws(ChatError) -> ThreadSummary {
        try await enterStored()
        if let summary = try summaryFromMemory(for: user, upTo: seq) { return summary }
        // The user's read mark is among released messages: the store counts those.
        let readSeq = members[user]?.readSeq ?? 0, upTo = min(seq ?? durableSeq, durableSeq), floor = history.releasedThrough
        let last = try lastMessage(upTo: upTo)
        let newer = history.unreadCount(for: user, readSeq: floor, upTo: upTo) ?? 0
        let older: Int
        // The store looks at every message of the range: the caller pays for them (`unreadCountedPerReadToken`).
        HistoryMeter.current?.addCounted(max(0, floor - readSeq))
        do { older = try await store.unreadCount(of: info.id, reader: user, in: (readSeq + 1)...floor) } catch { throw ChatError.storeFailure }
        return ThreadSummary(info: info, members: memberOrder, lastSeq: upTo, lastMessage: last, readSeq: readSeq, unreadCount: older + newer)
    }

    /// The summary through `seq` (`nil`: every stored event) from memory alone; `nil` when the unread count needs the
    /// store.
    private func summaryFromMemory(for user: UserID, upTo seq: Int? = nil) throws(ChatError) -> ThreadSummary? {
        try enter()
        let readSeq = members[user]?.readSeq ?? 0, upTo = min(seq ?? durableSeq, durableSeq)
        guard let unread = history.unreadCount(for: user, readSeq: readSeq, upTo: upTo) else { return nil }
        return ThreadSummary(info: info, members: memberOrder, lastSeq: upTo, lastMessage: try lastMessage(upTo: upTo), readSeq: readSeq, unreadCount: unread)
    }

    private func lastMessage(upTo seq: Int) throws(ChatError) -> Message? {
        do { return try history.lastMessage(upTo: seq) } catch { throw historyUnreadable(error) }
    }

    // MARK: - Membership

    /// Adds members (any member may add; a direct thread keeps exactly two). New members' live devices join the room
    /// and receive `chat:thread:created` at the change's place: before this returns, unless events before it are
    /// still to be fanned out here (then right after them).
    public func addMembers(_ userIds: [UserID], by principal: Principal) async throws(ChatError) -> ThreadSummary {
        let command = takeMembershipCommand()
        defer { answerMembershipCommand(command) }
        var askStore = true
        while true {
            if let summary = try await tryAddMembers(userIds, by: principal, askingStore: askStore) { return summary }
            // The members changed on another node since this node read them: caught up, checked and written again,
            // after the commands taken before this one.
            askStore = false
            await waitForMembershipTurn(command)
        }
    }

    /// Numbers a membership command in the order this actor took it (`membershipCommands`).
    private func takeMembershipCommand() -> Int {
        membershipCommands += 1
        unansweredMembershipCommands.append(membershipCommands)
        return membershipCommands
    }

    /// The membership command `command` is answered (done or failed): the commands taken after it may go on.
    private func answerMembershipCommand(_ command: Int) {
        guard let index = unansweredMembershipCommands.firstIndex(of: command) else { return }
        unansweredMembershipCommands.remove(at: index)
        Self.resumeAll(&membershipTurnWaiters)
    }

    /// Waits until every membership command taken before `command` is answered.
    private func waitForMembershipTurn(_ command: Int) async {
        while let first = unansweredMembershipCommands.first, first < command {
            await withCheckedContinuation { membershipTurnWaiters.append($0) }
        }
    }

    /// One attempt of `addMembers`; `nil` when the store refused it as a conflict, or (`askingStore`) when it would
    /// change nothing by what this node knows but the store's members moved (`membersMovedInStore`).
    private func tryAddMembers(_ userIds: [UserID], by principal: Principal, askingStore: Bool) async throws(ChatError) -> ThreadSummary? {
        try enter()
        await waitForSync()
        try await settleWaitingMemberships()
        try requireMember(principal.userId)
        var added: [UserID] = []
        var seen = Set<UserID>()
        for user in userIds where members[user] == nil && seen.insert(user).inserted { added.append(user) }
        guard !added.isEmpty else {
            if askingStore, try await membersMovedInStore() { return nil }
            return try await summary(for: principal.userId)
        }
        guard info.kind == .group else { throw ChatError(.forbidden, "a direct thread has exactly 2 members") }
        guard members.count + added.count <= configuration.maxMembers else {
            throw ChatError(.payloadTooLarge, "a thread has at most \(configuration.maxMembers) members")
        }
        try configuration.checkMemberIdBytes(memberOrder + added)
        // The users are members now; their devices join the room and are greeted at the change's place (`queueOwnChange`):
        // at once if nothing before it is left to fan out here, else as soon as it is.
        let token = queueOwnChange(added: added, removed: [])
        for user in added {
            members[user] = MemberMarks()
            memberOrder.append(user)
        }
        // The write ends with its commit, before anything below waits (a summary waits for an unstored edit, whose
        // catch-up may re-read the members, which waits for this write to end).
        let users = added
        guard try await commitMembership(token, { .addMembers(info.id, users, membersVersion: $0) }, placed: { self.placeOwnChange(token, stored: $0, at: $1) })
        else { return nil }
        chargeGreetings(of: users)
        return try await summaryOfStoredChange(for: principal.userId)
    }

    /// Charges the command that added `users` (`HistoryMeter.greeted`) for the thread descriptions their devices get,
    /// wherever those are and whenever they are greeted (at the change's place, maybe on other nodes, from their feeds):
    /// the size of the first one's greeting (members and last message included) for each of their devices here, or one
    /// device for a user with none here.
    private func chargeGreetings(of users: [UserID]) {
        guard let meter = HistoryMeter.current, let first = users.first, let summary = try? summaryFromMemory(for: first) else { return }
        let size = encoder.encode("chat:thread:created", .object(["thread": summary.json])).bytes.readableBytes
        let devices = users.reduce(0) { $0 + max(1, registry.existing(SessionKey(companyId: info.companyId, userId: $1))?.liveDevices ?? 0) }
        meter.addGreeted(size * devices)
    }

    /// Removes a member (the member itself, or the thread's creator): they stop being a member at once, and their
    /// devices get the events before the removal's place and nothing after.
    public func removeMember(_ user: UserID, by principal: Principal) async throws(ChatError) -> ThreadSummary {
        let command = takeMembershipCommand()
        defer { answerMembershipCommand(command) }
        var askStore = true
        while true {
            if let summary = try await tryRemoveMember(user, by: principal, askingStore: askStore) { return summary }
            // The members changed on another node since this node read them: caught up, checked and written again,
            // after the commands taken before this one.
            askStore = false
            await waitForMembershipTurn(command)
        }
    }

    /// One attempt of `removeMember`; `nil` when the store refused it as a conflict, or (`askingStore`) when the user
    /// is no member by what this node knows but the store's members moved (`membersMovedInStore`).
    private func tryRemoveMember(_ user: UserID, by principal: Principal, askingStore: Bool) async throws(ChatError) -> ThreadSummary? {
        try enter()
        await waitForSync()
        try await settleWaitingMemberships()
        try requireMember(principal.userId)
        guard principal.userId == user || principal.userId == info.createdBy else {
            throw ChatError(.forbidden, "only the member or the thread's creator may remove a member")
        }
        guard members[user] != nil else {
            if askingStore, try await membersMovedInStore() { return nil }
            throw ChatError(.notFound, "user is not a member of this thread")
        }
        // A direct thread is the pair it was made for: removing one would leave a thread that the next
        // "create direct thread" between the same two users returns to someone who is no longer in it.
        guard info.kind == .group else { throw ChatError(.forbidden, "a direct thread has exactly 2 members") }
        // The user stops being a member now, and stops receiving at the removal's place (`queueOwnChange`): they get
        // the events before it that are still being written or fanned out here, as the other nodes give them.
        let token = queueOwnChange(added: [], removed: [user])
        removeFromMembers(user)
        guard try await commitMembership(token, { .removeMember(info.id, user, membersVersion: $0) }, placed: { self.placeOwnChange(token, stored: $0, at: $1) })
        else { return nil }
        return try await summaryOfStoredChange(for: principal.userId)
    }

    /// The thread as `user` sees it, once this actor stored a membership change of theirs. A write of another command
    /// that failed meanwhile retires this actor, and the change stands all the same: once the actor has retired,
    /// `storedThenRetired` has the supervisor ask the thread's next actor. (Retried whole on that actor, as a retired
    /// actor's commands are, a stored removal was answered `not_found`, the member being gone: found by a review.)
    private func summaryOfStoredChange(for user: UserID) async throws(ChatError) -> ThreadSummary {
        do {
            return try await summary(for: user)
        } catch {
            guard failed || retired else { throw error }
            while !retired { await withCheckedContinuation { quietWaiters.append($0) } }
            throw ChatError.storedThenRetired
        }
    }

    /// A membership change that would write nothing (every user named is a member) or is refused (the user is no
    /// member), by the members this node holds: on a store several nodes share, another node may have changed them a
    /// moment ago, and its announcement not have arrived. The store's members version says: if it is not the one
    /// this actor's members reflect, the actor catches up with the store's member log (the changes it has not heard
    /// of wait at their places, as if announced) and the command is judged again. (Judged on what the node held, the
    /// creator's removal of a user added on another node a moment before was answered `not_found`, and an addition
    /// right after a removal on another node answered 200 and added no one: found by an outside probe, 17 of 100
    /// back-to-back pairs on an idle cluster.)
    private func membersMovedInStore() async throws(ChatError) -> Bool {
        guard let shared else { return false }
        let known = membersVersion
        let stored: ThreadMembers
        do { stored = try await shared.members(of: info.id) } catch { throw ChatError.storeFailure }
        try enter()
        // The store's version is the one this actor's members reflect, then or now (an announcement applied while
        // the store was read): nothing moved that this node does not know of.
        guard stored.version != known, stored.version != membersVersion else { return false }
        requestMemberLogCatchUp()
        return true
    }

    /// Where a membership change of this actor's, asked for now, falls in the thread's order: after every event this
    /// actor numbered (its sends still being written too) or heard announced, and after the changes waiting here.
    private func ownChangePosition() -> Int {
        max(lastSeq, remoteSeq, waitingMemberships.last?.asOf ?? 0)
    }

    /// Queues a membership change of this actor's, asked for now, for delivery (`WaitingMembership.local`) at the
    /// position this actor knows (`ownChangePosition`); returns its token. Where it really falls is known once the
    /// store has it (other nodes' events may come before it that this node has not heard of): it waits until then
    /// (`placeOwnChange`), unless an event of this actor's after it is fanned out first (stored at the seq it was
    /// given, which says that nothing came in between, and that the change was stored: the event's unit carries the
    /// members version the change set).
    private func queueOwnChange(added: [UserID], removed: [UserID]) -> Int {
        ownChanges += 1
        var change = WaitingMembership(asOf: ownChangePosition(), added: added, removed: removed, local: true, token: ownChanges, placed: false)
        for user in removed {
            if let marks = members[user], let index = memberOrder.firstIndex(of: user) { change.removedMembers.append((user, marks, index)) }
        }
        waitingMemberships.append(change)
        return ownChanges
    }

    /// This actor's own change `token` was written (`stored`, or refused or failed: then it is dropped, and undone in
    /// the members, which match the store again); `position` is where the store said it was committed (`nil` from a
    /// single-writer store, where this actor's count is exact). Its position is final now: moved to the store's, past
    /// events of other nodes this node had not heard of yet (which are read).
    private func placeOwnChange(_ token: Int, stored: Bool, at position: Int?) {
        guard let i = waitingMemberships.firstIndex(where: { $0.local && $0.token == token }) else { return }
        guard stored else {
            undoOwnChanges(from: i)
            return
        }
        waitingMemberships[i].placed = true
        guard let position, position != waitingMemberships[i].asOf else { return }
        waitingMemberships[i].asOf = position
        noteRemote(position)
        orderWaitingMemberships(as: [])
    }

    /// This actor's own change at `index` of the waiting changes was not stored: it is undone in the members, and so are
    /// the own changes asked for after it and still being written (each was fenced on the members version the one
    /// before it was to set, which the store never had, so each is refused too), the last first, and the members
    /// version goes back to the one before them (unless another change set it since). Their devices never moved (that
    /// waited for their places). Left in the members, a refused change made them disagree with the store's log in the
    /// catch-up that follows the refusal, and the store's newest list was taken before the events were fanned out: a
    /// member removed a moment later on another node missed them, one added got them (found by an outside probe of
    /// three nodes changing members at once).
    private func undoOwnChanges(from index: Int) {
        let token = waitingMemberships[index].token
        let refused = waitingMemberships.indices.filter { waitingMemberships[$0].local && !waitingMemberships[$0].placed && waitingMemberships[$0].token >= token }
        for i in refused.reversed() {
            let change = waitingMemberships[i]
            for user in change.added { removeFromMembers(user) }
            for removed in change.removedMembers where members[removed.user] == nil {
                members[removed.user] = removed.marks
                memberOrder.insert(removed.user, at: min(removed.index, memberOrder.count))
            }
        }
        if let first = waitingMemberships[index].versions, let last = refused.last.flatMap({ waitingMemberships[$0].versions }), membersVersion == last.after {
            membersVersion = first.before
        }
        for i in refused.reversed() { waitingMemberships.remove(at: i) }
    }

    /// A membership change of this node's is checked against the members as they are once another node's changes
    /// that wait here are applied (carol's removal waiting, an addition of carol would find her a member and write
    /// nothing): waits until this actor's writes settle and it caught up, a few times at most (the fence refuses a
    /// change made on a stale list anyway).
    private func settleWaitingMemberships() async throws(ChatError) {
        try enter()
        for _ in 0..<4 where waitingMemberships.contains(where: { !$0.local }) {
            await waitForQuiet()
            try enter()
        }
    }

    /// Writes a membership change that sets a new members version, as a membership write (`beginMembershipWrite`):
    /// whether it was stored, `false` if the store refused it as a conflict (the caller catches up and tries again).
    /// On a shared store it is fenced with the version this actor knew before it (`sequenced`), so a change made on top
    /// of members another node changed meanwhile is refused as a conflict rather than given a version that would vouch
    /// for a stale list (a node that had not heard of carol's removal, adding dave, would otherwise hold carol with the
    /// database's version).
    /// Once written, and before anything else of the actor runs, `placed` gets whether it was stored and where the
    /// store says it was committed (`StoreWrite.notePosition`; `nil` from a single-writer store).
    private func commitMembership(
        _ token: Int, _ write: (Int64) -> StoreWrite, placed: @escaping (Bool, Int?) -> Void
    ) async throws(ChatError) -> Bool {
        beginMembershipWrite()
        let next = StoreWrite.newMembersVersion()
        let position = CommitPosition()
        let writes = shared == nil ? [write(next)] : sequenced([write(next), .notePosition(info.id, position)])
        if let i = waitingMemberships.firstIndex(where: { $0.local && $0.token == token }) { waitingMemberships[i].versions = (membersVersion, next) }
        membersVersion = next
        let outcome = await commit(writes) { outcome in
            if case .stored = outcome { placed(true, position.value) } else { placed(false, nil) }
        }
        endMembershipWrite()
        switch outcome {
        case .stored: return true
        case .conflict: return false
        case .rebased, .failed: throw ChatError.storeFailure
        }
    }

    /// A membership change of this node's is being written: a members list read from the store meanwhile may not
    /// hold it yet.
    private func beginMembershipWrite() {
        membershipGeneration += 1
        membershipWrites += 1
    }

    private func endMembershipWrite() {
        membershipGeneration += 1
        membershipWrites -= 1
        guard membershipWrites == 0 else { return }
        Self.resumeAll(&membershipWaiters)
    }

    /// Tells each current member's live devices about this thread and joins them to the room.
    func announceCreated() throws(ChatError) {
        var greetings = Greetings()
        var written = 0
        for user in memberOrder {
            guard let session = memberSessions[user] else { continue }
            written += try welcome(user, session, &greetings)
        }
        // Charged to the command that created the thread (`HistoryMeter.greeted`).
        HistoryMeter.current?.addGreeted(written)
    }

    /// The `chat:thread:created` frames of one announcement, one per distinct read mark and unread count: members
    /// who see the thread alike share a frame, so greeting many members encodes the members list a few times, not
    /// once per member (which made a thread of n members cost n² to announce). Valid while the members do not change.
    private struct Greetings {
        struct Key: Hashable {
            let readSeq: Int
            let unreadCount: Int
        }
        var frames: [Key: OutboundFrame] = [:]
    }

    /// Puts a (new) member's live devices in the room and tells them about the thread. A member with no live device
    /// here is not told (nothing would carry it): the thread is in its listing and `chat:sync`. Without `rejoin` the
    /// devices are only told: a member this actor already held (another node's announcement of an addition arriving
    /// after the thread was loaded here with it) keeps the rooms its devices left meanwhile, since a `chat:leave` lasts
    /// until the user is removed and added again; with it, every device joins but those that left while the user was
    /// a member here (`leftWhileMember`: the leave came first, on an actor that already held the user).
    ///
    /// The greeting describes the thread through the last event fanned out here: the devices get the later ones live
    /// (through `durableSeq`, a greeting at a membership change's place counted the stored events after it, which the
    /// devices then got live as well: found by a contract probe).
    /// Returns the bytes it wrote to the devices (0 if the greeting is written later, read from the store).
    @discardableResult
    private func welcome(_ user: UserID, _ session: UserSession, _ greetings: inout Greetings, rejoin: Bool = true) throws(ChatError) -> Int {
        if rejoin { session.joinAll(info.id, except: leftWhileMember[user] ?? []) }
        guard session.hasDevices else { return 0 }
        // Not below the released history (after an activation the fan-out may start under it): memory counts from there.
        let seq = max(fannedOutSeq, history.releasedThrough)
        if let summary = try summaryFromMemory(for: user, upTo: seq) {
            let key = Greetings.Key(readSeq: summary.readSeq, unreadCount: summary.unreadCount)
            let frame = greetings.frames[key] ?? encoder.encode("chat:thread:created", .object(["thread": summary.json]))
            greetings.frames[key] = frame
            return frame.bytes.readableBytes * session.deliverToAll(frame)
        }
        // A member greeted again with a read mark among released messages (a resynchronization): counted by the store.
        let encoder = encoder
        // Not charged to the command that happened to greet them (a task inherits its creator's task-locals).
        Task { await HistoryMeter.$current.withValue(nil) {
            guard let summary = try? await self.summary(for: user, upTo: seq) else { return }
            session.deliverToAll(encoder.encode("chat:thread:created", .object(["thread": summary.json])))
        } }
        return 0
    }

    // MARK: - Several nodes

    /// Waits while the actor catches up (commands that take a seq must not race the catch-up).
    private func waitForSync() async {
        while syncing && !retired {
            await withCheckedContinuation { syncWaiters.append($0) }
        }
    }

    private func resumeSyncWaiters() {
        Self.resumeAll(&syncWaiters)
    }

    /// Brings memory up to the store's log: reads what other nodes committed after `durableSeq` and fans it out
    /// here in seq order (or, after a conflict, reloads the thread, since memory holds refused events), then writes
    /// the refused and held sends again, in order, under a new epoch. Runs with no write in flight.
    private func synchronize() async {
        let announced = remoteSeq
        newsDuringSync = 0
        var replay: [HeldSend] = []
        var stored: [(id: MessageID, reply: SendReply)] = []
        for entry in pending {
            if entry.rebased, let message = entry.message, let reply = entry.send?.reply {
                stored.append((message.id, reply))
            } else if let send = entry.send {
                replay.append(send)
            }
        }
        pending.removeAll()
        for waiter in durableWaiters { replay.append(waiter.send) }
        durableWaiters.removeAll()
        // Memory holds events at seqs the store did not give them: refused ones (a conflict), or sends it stored
        // later (rebased). Plain messages are dropped and read back; anything else needs a reload.
        var reload = conflicted
        if !reload && lastSeq > durableSeq {
            reload = !history.truncate(after: durableSeq)
            lastSeq = durableSeq
        }
        conflicted = false
        rebased = false
        resyncRequested = false
        do throws(ChatError) {
            if membersUnconfirmed {
                membersUnconfirmed = false
                // Members that cannot be confirmed are not trusted with what comes next: the actor fails, and its
                // successor loads them from the store.
                guard await rereadMembers() else { throw ChatError.storeFailure }
            }
            // Cleared before the read: a request made while it runs is served by the next catch-up. A reload reads
            // the member log itself.
            let readMemberLog = memberLogWanted
            memberLogWanted = false
            if readMemberLog && !reload { try await applyUnheardMemberChanges() }
            var caughtUp = false
            if !reload { caughtUp = try await catchUp() }
            if failed || retired { throw ChatError.storeFailure }
            if !caughtUp { try await reloadFromStore() }
            // Another command's write may have failed while this one waited for the store: the actor retired, and its
            // successor takes over from the store.
            if failed || retired { throw ChatError.storeFailure }
            // Receipts a members list read above raised (`replaceMembers`), now that the events are fanned out.
            tellOwedReceipts()
        } catch {
            logStoreFailure()
            failed = true
            for send in replay { send.reply(.failure(.storeFailure)) }
            for send in stored { send.reply(.failure(.storeFailure)) }
            syncRunning = false
            releaseReaders()
            retireAfterFailureIfSettled()
            return
        }
        // The store, read after the news that other nodes had committed up to `announced`, holds less (a forged notice,
        // or a commit PostgreSQL lost in a crash): believing the news would read the store again and again. News that
        // came during the read stands (even below the forged position): the next catch-up reads it.
        if remoteSeq == announced, remoteSeq > durableSeq { remoteSeq = max(durableSeq, newsDuringSync) }
        // Nothing more is announced: membership changes still waiting name a position the store does not hold (their
        // events were lost with a database crash), and wait for nothing.
        if remoteSeq <= durableSeq { applyWaitingMemberships(through: .max) }
        // Sends stored at later seqs are answered with the message as stored (fanned out above, in seq order).
        for send in stored {
            if let message = try? history.message(send.id) {
                stats.add(stats.messagesSent)
                send.reply(.success(message))
            } else {
                send.reply(.failure(.storeFailure))
            }
        }
        epoch = writerEpochs.wrappingAdd(1, ordering: .relaxed).newValue
        // A member-log read asked for while this one ran keeps sends held: the next catch-up starts at once.
        syncing = memberLogWanted
        syncRunning = false
        releaseReaders()
        // Member changes read above that fall after the last event fanned out (the thread's newest change) are applied
        // before the held sends are tried, not when the next event comes: news of a later event during the catch-up
        // would otherwise keep a member just added waiting, and their held send refused.
        applyWaitingMemberships(through: fannedOutSeq)
        held = replay + held
        releaseHeld()
        resumeSyncWaiters()
        settle()
    }

    /// Another node committed up to `seq` (an announcement, or the store's answer to a tempId look-up).
    private func noteRemote(_ seq: Int) {
        remoteSeq = max(remoteSeq, seq)
        newsDuringSync = max(newsDuringSync, seq)
    }

    private func logStoreFailure() {
        if !failed { stats.add(stats.storeFailures) }
    }

    /// Reads and applies the events after `durableSeq`; `false` if they do not follow on (then the caller reloads).
    private func catchUp() async throws(ChatError) -> Bool {
        guard let shared else { return true }
        let events: [ThreadEvent]
        do { events = try await shared.events(of: info.id, after: durableSeq) } catch { throw ChatError.storeFailure }
        // Edits of messages in released chunks reseal them: those chunks are read back first, and stay cached until
        // the events are applied (a miss after all only costs a reload).
        let floor = history.releasedThrough
        let released = Array(Set(events.filter { $0.kind != .message && $0.message.seq <= floor }.map(\.message.id)).prefix(128))
        if !released.isEmpty { try await lookUpReleased(released) }
        let read = history.beginRead()
        defer { history.endRead(read) }
        for event in events where event.kind != .message {
            for _ in 0..<8 {
                guard let seq = history.releasedSeqToReseal(event.message), (try? await loadReleased(around: seq, for: read)) != nil else { break }
            }
        }
        return applyEvents(events)
    }

    /// Appends events another node committed (read from the store) and fans them out, in seq order. `false`, with
    /// nothing changed, if they do not follow `durableSeq` without a gap; `false` after a corrupt chunk too (the
    /// caller reloads).
    private func applyEvents(_ events: [ThreadEvent]) -> Bool {
        var expected = durableSeq + 1
        for event in events {
            guard event.seq == expected else { return false }
            expected += 1
        }
        for event in events {
            switch event.kind {
            case .message:
                history.appendMessage(event.message)
            case .edited, .deleted:
                do {
                    let resealed = try history.reseal(for: event.message)
                    // The writing node stored its reseal with the event: the store is current.
                    history.appendUpdate(seq: event.seq, kind: event.kind, message: event.message, resealed: resealed, pinned: false)
                } catch {
                    return false
                }
            }
            lastSeq = event.seq
            durableSeq = event.seq
            fanOutStored(event)
        }
        sealReady()
        tellOwedReceipts()
        resumeHeldWaiters()
        return true
    }

    /// Replaces memory with the store's state of the thread and fans out the events this node had not seen.
    private func reloadFromStore() async throws(ChatError) {
        let generation = membershipGeneration, writingMembers = membershipWrites > 0
        let snapshot: ThreadSnapshot?
        do { snapshot = try await store.loadThread(info.id, recentChunks: configuration.residentChunks) } catch { throw ChatError.storeFailure }
        guard let snapshot else { throw ChatError.storeFailure }
        let seen = durableSeq
        history = ThreadHistory(
            chunks: snapshot.chunks, tail: snapshot.tail, index: snapshot.index, editEvents: snapshot.editEvents,
            omittedThrough: snapshot.omittedThrough, newestOmittedMessage: snapshot.newestOmittedMessage, replacing: history)
        history.residentChunks = configuration.residentChunks
        history.releaseIfNeeded()
        releasesCounted = history.releasedChunks
        chunkRetries.removeAll()
        lastSeq = history.lastSeq
        durableSeq = lastSeq
        stats.add(stats.reloads)
        defer {
            tellOwedReceipts()
            countReleases()
        }
        // The member changes this node did not hear of, where the store's log says they were made (a send of this
        // node's refused by a change it had not heard of, while its LISTEN connection was down, brings it here): each
        // waits at its place, as if announced, and the events this node had not fanned out go to the members as they
        // were, each change applied at its place. The members are then read again (the log agreed with that list),
        // unless changes still wait for events the store had not when the thread was read: they are applied at their
        // places as those come (a list read now would hold them, and drop them unapplied and ungreeted).
        if let (unheard, logged, list) = await unheardLoggedMemberChanges() {
            for case .membership(_, _, let asOf, _, let added, let removed, let version) in unheard {
                waitingMemberships.append(WaitingMembership(asOf: asOf, added: added, removed: removed, version: version))
                remoteSeq = max(remoteSeq, asOf)
            }
            orderWaitingMemberships(as: logged)
            noteReplayed(unheard.compactMap(\.membersVersion))
            // A change announced while the log was read and committed after it waits here as well, and the list does
            // not hold it: applied below at its place, it must not be undone by taking the list. (Taken, the list
            // dropped a user added a moment before, who was then added and greeted a second time by the next
            // catch-up; found by an outside probe, one client removing and re-adding on another node.)
            let loggedVersions = Set(logged.compactMap(\.membersVersion))
            let listHoldsWaiting = waitingMemberships.allSatisfy { $0.version.map(loggedVersions.contains) ?? false }
            let generation = membershipGeneration
            await deliverReadingBack(after: seen)
            // Every change of the log applied, and none since: the members are the list read with the log, whose marks
            // and version are taken. (A list read again here could hold a change committed since, whose events before
            // it were not fanned out yet: a removed member lost them, an added one got them without a greeting; found
            // by an outside probe of several nodes with members removed and added back in a loop.)
            if listHoldsWaiting, waitingMemberships.isEmpty, generation == membershipGeneration {
                replaceMembers(list.list)
                membersVersion = list.version
            }
            return
        }
        // Without the log (it disagrees with the list, or the store cannot answer):
        guard membershipGeneration == generation && !writingMembers else {
            // A change came while the thread was read: the store's newest list first, then the events. Members that
            // cannot be read are not trusted with what comes next (the actor fails; its successor loads them).
            guard await rereadMembers(greet: false) else { throw ChatError.storeFailure }
            await deliverReadingBack(after: seen)
            return
        }
        // the events this node had not fanned out go to the members as they were, each membership change heard of
        // here applied at its place (`waitingMemberships`), before the store's list is taken. A member the list no
        // longer holds whose removal was not heard of here is dropped first (where the removal happened is not known:
        // nothing more reaches them); one it adds that was not heard of joins first (history shows them the earlier
        // events anyway).
        let listed = Set(snapshot.members.map(\.userId))
        let removing = Set(waitingMemberships.flatMap(\.removed)), adding = Set(waitingMemberships.flatMap(\.added))
        for user in memberOrder.filter({ !listed.contains($0) && !removing.contains($0) }) { dropMember(user) }
        for member in snapshot.members where members[member.userId] == nil && !adding.contains(member.userId) {
            members[member.userId] = member.marks
            memberOrder.append(member.userId)
            memberSessions[member.userId] = memberSessions[member.userId] ?? session(of: member.userId)
        }
        await deliverReadingBack(after: seen)
        if membershipGeneration == generation && membershipWrites == 0 {
            replaceMembers(snapshot.members)
            membersVersion = snapshot.membersVersion
        } else if !(await rereadMembers(greet: false)) {
            throw ChatError.storeFailure
        }
    }

    /// `deliver(after:)`, reading released chunks back from the store (after a reload or an activation, the node may
    /// have missed more events than memory holds). Nothing else of the actor can fan out meanwhile: a reload runs
    /// with sends held and remote events left for it, an activation before anything reaches the actor. A store that
    /// cannot answer stops the delivery there (the devices catch up with `chat:sync`).
    private func deliverReadingBack(after seq: Int) async {
        var from = max(seq, fannedOutSeq)
        while from < durableSeq {
            let upTo = durableSeq
            guard let page = try? await readHistory({ history throws(HistoryReadError) in try history.events(after: from, limit: 1_000, upTo: upTo) }),
                let last = page.events.last
            else { break }
            for event in page.events { fanOutStored(event) }
            from = last.seq
        }
        fannedOutSeq = max(fannedOutSeq, durableSeq)
        applyWaitingMemberships(through: fannedOutSeq)
    }

    /// Fans out an event this actor did not write (another node's, or one read from the store), in seq order.
    private func fanOutStored(_ event: ThreadEvent) {
        fanOut(seq: event.seq, encoder.encode(event.kind.eventName) { event.writePayload(to: &$0) })
        stats.add(stats.remoteEvents)
    }

    /// Fans out the events after `seq` (up to `durableSeq`) that this actor has not fanned out yet, from memory.
    private func deliver(after seq: Int) {
        var from = max(seq, fannedOutSeq)
        while from < durableSeq {
            guard let page = try? history.events(after: from, limit: 1_000, upTo: durableSeq), let last = page.events.last else { break }
            for event in page.events { fanOutStored(event) }
            from = last.seq
        }
        fannedOutSeq = max(fannedOutSeq, durableSeq)
        applyWaitingMemberships(through: fannedOutSeq)
    }

    /// Called once when the actor is activated on a shared store: events of the snapshot that this node's feed has
    /// not announced yet (committed by another node moments ago; their announcement is still on its way) are fanned
    /// out now, before anything newer, so live devices see no gap. `announced` is the thread's last seq the feed
    /// processed, if it processed any lately.
    ///
    /// `told`: the receipt marks the actor before this one had told this node's senders, when it retired after a store
    /// failure. The receipts beyond them are told now, whatever the position: one committed by another node while this
    /// node did not hear (a PostgreSQL restart cut its feed), or one the snapshot holds, was otherwise taken as told
    /// already when it was at or below the position, and never told. (Found by an outside probe: after a PostgreSQL
    /// restart, one node's sender sockets missed `chat:read` notices the other nodes delivered, 3 runs in 8.)
    func activated(announced: Int?, told: [UserID: MemberMarks]? = nil) async {
        guard let announced, announced < durableSeq else {
            if let told { tellReceipts(past: durableSeq, told: told) }
            return
        }
        fannedOutSeq = announced
        await rewindMembers(to: announced)
        await deliverReadingBack(after: announced)
        tellReceipts(past: announced, told: told)
    }

    /// An announced receipt of `user` (raising their marks from `from` to `new`) that reaches below what the
    /// activation told (its floor: the activation's position): the part below is told now, once. The activation took
    /// the receipts up to its position as told already (their announcements came before its events'), but one that
    /// raised the marks across the position was committed after those events, and its announcement comes after the
    /// activation, whether in the batch that activated the actor or in a later one (found by a review).
    private func tellBelowActivation(of user: UserID, from: MemberMarks, new: MemberMarks) {
        guard let activation = toldAtActivation[user] else { return }
        var floor = activation.floor
        let now = Timestamp.now().iso8601
        let delivered = min(new.deliveredSeq, floor.deliveredSeq), read = min(new.readSeq, floor.readSeq)
        if delivered > from.deliveredSeq { notifySenders("chat:delivered", range: (from.deliveredSeq + 1)...delivered, reader: user, time: now) }
        if read > from.readSeq { notifySenders("chat:read", range: (from.readSeq + 1)...read, reader: user, time: now) }
        // Told now without a gap up to the floor: the floor moves down to where this receipt began.
        if new.deliveredSeq >= floor.deliveredSeq { floor.deliveredSeq = min(floor.deliveredSeq, from.deliveredSeq) }
        if new.readSeq >= floor.readSeq { floor.readSeq = min(floor.readSeq, from.readSeq) }
        toldAtActivation[user] = (floor, activation.marks)
    }

    /// At activation, once the events after `position` are fanned out: the snapshot's receipts of those events are
    /// told to the senders here now. They were committed after the events, so their announcements are still on their
    /// way, and would raise nothing here once they come (the snapshot holds their marks already): before, a sender's
    /// device on a node that loaded the thread for a message was never told of a read of it made moments later (found
    /// by an outside probe, 4 rounds in 160). What is told here is remembered (`toldAtActivation`) for the announcements
    /// of the same receipts (`tellBelowActivation`).
    /// With `told` (what a predecessor told, `activated`), a member it lists is told from there instead of from the
    /// position, and everything up to their marks counts as told on this node: an announcement of those receipts
    /// coming later (from where its writer saw the marks, which may be below what the predecessor told) tells nothing
    /// of it again.
    private func tellReceipts(past position: Int, told: [UserID: MemberMarks]? = nil) {
        for (user, marks) in members {
            if receiptsOwed[user] == nil, let before = told?[user] {
                let floor = MemberMarks(deliveredSeq: min(before.deliveredSeq, marks.deliveredSeq), readSeq: min(before.readSeq, marks.readSeq))
                if marks.deliveredSeq > floor.deliveredSeq || marks.readSeq > floor.readSeq { tellReceipts(of: user, told: floor, marks: marks) }
                toldAtActivation[user] = (MemberMarks(deliveredSeq: 0, readSeq: 0), marks)
                continue
            }
            guard marks.deliveredSeq > position || marks.readSeq > position else { continue }
            let floor = receiptsOwed[user] ?? MemberMarks(deliveredSeq: min(marks.deliveredSeq, position), readSeq: min(marks.readSeq, position))
            tellReceipts(of: user, told: floor, marks: marks)
            toldAtActivation[user] = (floor, marks)
        }
    }

    /// Before an activation fans out the events after `position` (those this node's devices were not given: committed
    /// moments ago elsewhere, or while the node was not listening): the members put back as they were at `position`,
    /// and the member changes made since then (`SharedStore.memberChanges`) waiting at their places, so that a member
    /// removed meanwhile gets the events before the removal and one added none of them, as the nodes that heard them
    /// live delivered. The log is read with the members list, and is used only if it holds the list's own change (its
    /// members version) and, undone from the list, it is consistent (each added member in it, each removed one not):
    /// otherwise the members stay as loaded, as before the log existed (a change of a node of an older binary, or
    /// older than the log keeps, is not listed). Runs before the actor is reachable, so nothing changes meanwhile.
    private func rewindMembers(to position: Int) async {
        // Changes after `position` only: one at `position` itself (made after the events up to it) takes effect before
        // the next event either way, and this node may have applied (and greeted) it before its actor went idle.
        guard let shared, let log = try? await shared.memberLog(of: info.id, company: info.companyId, from: position + 1), !log.changes.isEmpty
        else { return }
        let logged = log.changes, current = log.members
        // Changes listed after the list's own committed after the list was read: announced, and applied, as usual.
        guard let own = logged.lastIndex(where: { $0.membersVersion == current.version })
        else { return }
        var members = Set(current.list.map(\.userId))
        var readded: [UserID] = []
        var waiting: [WaitingMembership] = []
        for change in logged[...own].reversed() {
            guard case .membership(_, _, let asOf, _, let added, let removed, let version) = change,
                added.allSatisfy(members.contains), !removed.contains(where: members.contains)
            else { return }
            members.subtract(added)
            members.formUnion(removed)
            readded.append(contentsOf: removed)
            waiting.append(WaitingMembership(asOf: asOf, added: added, removed: removed, version: version))
        }
        // The list's members still in, in its order, then those put back (each once).
        var placed = Set<UserID>()
        let order = (current.list.map(\.userId) + readded).filter { members.contains($0) && placed.insert($0).inserted }
        let marks = Dictionary(current.list.map { ($0.userId, $0.marks) }, uniquingKeysWith: { first, _ in first })
        let loaded = self.members
        self.members = [:]
        memberOrder = []
        var sessions: [UserID: UserSession] = [:]
        for user in order {
            self.members[user] = loaded[user] ?? marks[user] ?? MemberMarks()
            memberOrder.append(user)
            sessions[user] = memberSessions[user] ?? session(of: user)
        }
        memberSessions = sessions
        // Each replayed change sets the version it brings; the last one the list's.
        membersVersion = -1
        waitingMemberships = Deque(waiting.reversed())
        if let last = waitingMemberships.last { remoteSeq = max(remoteSeq, last.asOf) }
        greetedByReplay = Set(waiting.flatMap(\.added))
        noteReplayed(waiting.compactMap(\.version))
    }

    private func noteReplayed(_ versions: [Int64]) {
        if replayedVersions.count + versions.count > 256 { replayedVersions.removeAll() }
        replayedVersions.formUnion(versions)
    }

    /// Whether a membership change with `version` was applied from the log already.
    private func replayed(version: Int64?) -> Bool {
        version.map { replayedVersions.contains($0) } ?? false
    }

    /// Orders the waiting membership changes by their positions, and those at one position as the log lists them
    /// (`logged`, in commit order): changes read from the log are appended after those already waiting, which may
    /// come later in it.
    private func orderWaitingMemberships(as logged: [ClusterChange]) {
        var rank: [Int64: Int] = [:]
        for (i, change) in logged.enumerated() {
            if let version = change.membersVersion { rank[version] = i }
        }
        let sorted = waitingMemberships.enumerated().sorted { l, r in
            if l.element.asOf != r.element.asOf { return l.element.asOf < r.element.asOf }
            let lr = l.element.version.flatMap { rank[$0] } ?? Int.max, rr = r.element.version.flatMap { rank[$0] } ?? Int.max
            return lr != rr ? lr < rr : l.offset < r.offset
        }
        waitingMemberships = Deque(sorted.map(\.element))
    }

    /// The members as `list` says (read from the store). Receipt watermarks only rise: one raised here, by a receipt
    /// or by another node's announcement, while `list` was being read is newer than the list, so a member who stays
    /// keeps the higher of the two (the store keeps the greater too). A watermark the list raises is another node's
    /// receipt whose announcement has not been applied here yet: what it covers is owed to the senders
    /// (`receiptsOwed`, told by `tellOwedReceipts` once the events are fanned out), since the announcement, when it
    /// comes, raises nothing. A member the list drops stops typing.
    private func replaceMembers(_ list: [(userId: UserID, marks: MemberMarks)]) {
        // The list was read after every waiting change arrived (`membershipGeneration`): it holds them, and the
        // watermarks of their members. This actor's own changes reach delivery now (an added member is greeted; the
        // list then settles who stays).
        for change in waitingMemberships where change.local { applyOwnMembership(change, againstCurrentMembers: true) }
        waitingMemberships.removeAll()
        marksOfWaitingMembers.removeAll()
        var sessions: [UserID: UserSession] = [:]
        let before = members
        members = [:]
        memberOrder = []
        for member in list {
            let old = before[member.userId]
            let marks = old.map { $0.raised(by: member.marks) } ?? member.marks
            if let old, marks != old { receiptsOwed[member.userId] = receiptsOwed[member.userId] ?? old }
            // The store's marks are stored, whatever of this member's is being written.
            if var writing = marksWriting[member.userId] {
                writing.stored = writing.stored.raised(by: member.marks)
                marksWriting[member.userId] = writing
            }
            members[member.userId] = marks
            memberOrder.append(member.userId)
            sessions[member.userId] = memberSessions[member.userId] ?? session(of: member.userId)
        }
        receiptsOwed = receiptsOwed.filter { members[$0.key] != nil }
        marksWriting = marksWriting.filter { members[$0.key] != nil }
        leftWhileMember = leftWhileMember.filter { members[$0.key] != nil }
        memberSessions = sessions
        for user in before.keys where members[user] == nil { typistRemoved(user) }
    }

    /// Tells the senders of `user`'s newly covered messages that `user` got or read them: from what they were `told`
    /// up to `marks`, as far as this actor holds events. A receipt of another node can reach past that (its events are
    /// still on their way, or put off while this actor's own writes are in flight): what it could not tell yet is
    /// owed (`receiptsOwed`) and told once the events are applied (`tellOwedReceipts`).
    private func tellReceipts(of user: UserID, told: MemberMarks, marks: MemberMarks) {
        let now = Timestamp.now().iso8601
        let delivered = min(marks.deliveredSeq, durableSeq), read = min(marks.readSeq, durableSeq)
        if delivered > told.deliveredSeq { notifySenders("chat:delivered", range: (told.deliveredSeq + 1)...delivered, reader: user, time: now) }
        if read > told.readSeq { notifySenders("chat:read", range: (told.readSeq + 1)...read, reader: user, time: now) }
        if marks.deliveredSeq > durableSeq || marks.readSeq > durableSeq {
            receiptsOwed[user] = MemberMarks(deliveredSeq: max(told.deliveredSeq, delivered), readSeq: max(told.readSeq, read))
        } else {
            receiptsOwed[user] = nil
        }
    }

    /// After events were applied: the receipts owed for them (`tellReceipts`).
    private func tellOwedReceipts() {
        guard !receiptsOwed.isEmpty else { return }
        for (user, told) in receiptsOwed {
            if let writing = marksWriting[user] {
                if members[user] != nil { tellStoredReceipts(of: user, told: told, stored: writing.stored) }
            } else if let marks = members[user] {
                tellReceipts(of: user, told: told, marks: marks)
            } else {
                receiptsOwed[user] = nil
            }
        }
    }

    /// Applies changes other nodes committed to this thread (in their commit order). `fresh` says the actor was just
    /// loaded to deliver them: it already holds what the store had, so what it announces from `first` on is delivered
    /// from memory.
    ///
    /// `events` (carried by the notices, or read by the supervisor for this batch) are applied at once if nothing of
    /// this actor's is in flight and they follow what it holds; otherwise the actor reads the store itself
    /// (`synchronize`).
    @discardableResult
    func applyRemote(_ changes: [ClusterChange], fresh: Bool, events: [ThreadEvent]? = nil) -> Bool {
        guard !retired, !failed else { return false }
        // Remote traffic is activity: a thread busy on other nodes is not passivated here.
        lastActivity = monotonicNanos()
        // What a fresh actor told of each member's receipts so far in these changes (several commits' receipts of
        // one member can come in one batch, each told from where its own writer says it began).
        var toldFresh: [UserID: MemberMarks] = [:]
        for change in changes {
            switch change {
            case .advanced(_, let first, let last, _):
                if fresh { deliver(after: first - 1) }
                noteRemote(last)
                if let events, !fresh, !syncing, !syncRunning, inFlight == 0, pending.isEmpty, !conflicted, !rebased {
                    _ = applyEvents(events.filter { $0.seq > durableSeq && $0.seq <= last })
                }
            case .marks(_, let user, let new, let from):
                guard let old = members[user] else {
                    if !fresh, waitingMemberships.contains(where: { $0.added.contains(user) }) {
                        let earlier = marksOfWaitingMembers[user]
                        marksOfWaitingMembers[user] = (earlier.map { $0.marks.raised(by: new) } ?? new, earlier.map(\.from) ?? from)
                    }
                    continue
                }
                let marks = old.raised(by: new)
                if fresh {
                    // The snapshot was read for this change and usually holds it already: the senders here are told
                    // from where the writing node says the watermarks stood (nothing if it did not say), past what an
                    // earlier change of these told; of what is stored only, if this member's marks are being written.
                    members[user] = marks
                    var stored = marks
                    if var writing = marksWriting[user] {
                        writing.stored = writing.stored.raised(by: new)
                        marksWriting[user] = writing
                        stored = writing.stored
                    }
                    guard let from else { continue }
                    tellBelowActivation(of: user, from: from, new: new)
                    var told = receiptsOwed[user] ?? from
                    for earlier in [toldFresh[user], toldAtActivation[user]?.marks] { if let earlier { told = told.raised(by: earlier) } }
                    tellStoredReceipts(of: user, told: told, stored: stored)
                    toldFresh[user] = receiptsOwed[user] ?? marks
                    continue
                }
                if let from { tellBelowActivation(of: user, from: from, new: new) }
                if var writing = marksWriting[user] {
                    // This member's marks are being written here: what the other node stored is told now (memory's
                    // marks, higher maybe, are not stored yet, and may never be).
                    members[user] = marks
                    let stored = writing.stored.raised(by: new)
                    guard stored != writing.stored else { continue }
                    let told = receiptsOwed[user] ?? writing.stored
                    writing.stored = stored
                    marksWriting[user] = writing
                    tellStoredReceipts(of: user, told: told, stored: stored)
                    continue
                }
                guard marks != old else { continue }
                members[user] = marks
                tellReceipts(of: user, told: receiptsOwed[user] ?? old, marks: marks)
            case .membership(_, _, let asOf, _, let added, let removed, let version):
                // Replayed at its place from the log (`rewindMembers`, a reload): applied and greeted already.
                if replayed(version: version) { continue }
                if fresh {
                    // The snapshot was read after this change, and is the truth, unless the load raced the change:
                    // then it may disagree, and the store, read after the change committed, settles it
                    // (the catch-up reads the members first). Greet the added members it holds.
                    if added.contains(where: { members[$0] == nil }) || removed.contains(where: { members[$0] != nil }) {
                        membersUnconfirmed = true
                        membersVersion = -1
                    }
                    // A change without a members version is the catch-up's after an outage (`catchUpMissed`), which
                    // names every member added since a margin before it, maybe before one of their devices left the
                    // room: those stay out (found by an outside probe: a device that left got the thread again).
                    var greetings = Greetings()
                    for user in added where members[user] != nil && !greetedByReplay.contains(user) {
                        if let session = memberSessions[user] { _ = try? welcome(user, session, &greetings, rejoin: version != nil) }
                    }
                    continue
                }
                // A members list being read from the store meanwhile (a reload, a re-read) may predate this change:
                // moving the generation makes it read again instead of undoing it (a removed member put back).
                if !added.isEmpty || !removed.isEmpty { membershipGeneration += 1 }
                let change = WaitingMembership(asOf: asOf, added: added, removed: removed, version: version)
                if asOf <= fannedOutSeq && waitingMemberships.isEmpty {
                    applyMembership(change)
                } else {
                    // The events before it are on their way (or put off): it waits for them, and they are read if
                    // nothing else announced them.
                    waitingMemberships.append(change)
                    noteRemote(asOf)
                }
            case .typing(_, let user, let started):
                applyRemoteTyping(user, started: started)
            case .emit(_, _, _, _), .resync(_):
                continue
            }
        }
        settle()
        return true
    }

    /// Applies another node's membership change: the removed leave the room, the added join it and are greeted.
    private func applyMembership(_ change: WaitingMembership) {
        // A list known to disagree with the store keeps an unknown version until it is read again.
        membersVersion = membersUnconfirmed ? -1 : change.version ?? -1
        for user in change.removed { dropMember(user) }
        var held = Set<UserID>()
        var announcedMarks: [(UserID, MemberMarks, MemberMarks?)] = []
        for user in change.added {
            if members[user] != nil {
                held.insert(user)
            } else {
                let stashed = marksOfWaitingMembers.removeValue(forKey: user)
                members[user] = stashed?.marks ?? MemberMarks()
                memberOrder.append(user)
                if let stashed { announcedMarks.append((user, stashed.marks, stashed.from)) }
            }
        }
        defer {
            // Receipts another node announced while the addition waited: told now that the member is one here.
            for (user, marks, from) in announcedMarks { tellReceipts(of: user, told: from ?? MemberMarks(), marks: marks) }
        }
        // Greeted once all are in: each greeting lists the members as they now are.
        var greetings = Greetings()
        for user in change.added {
            let session = memberSessions[user] ?? session(of: user)
            memberSessions[user] = session
            _ = try? welcome(user, session, &greetings, rejoin: !held.contains(user))
        }
    }

    /// This actor's own membership change reaches delivery at its place (its members changed when it was asked for):
    /// the removed stop receiving, the added join the room and are greeted, whatever later changes, asked for since
    /// and still waiting for their own places, made of `members`. (Judged against `members`, a removal followed at
    /// once by an addition back left the user receiving the events between them, and an addition followed by a
    /// removal gave the user neither the events between nor a greeting: found by an outside probe, 3 of 3 runs.)
    /// `againstCurrentMembers`: for a list read from the store, which settles who stays (only those still members
    /// are greeted; a removed user who is a member again keeps receiving).
    private func applyOwnMembership(_ change: WaitingMembership, againstCurrentMembers: Bool = false) {
        for user in change.removed where !againstCurrentMembers || members[user] == nil {
            memberSessions.removeValue(forKey: user)?.joinAll(info.id)
        }
        var greetings = Greetings()
        for user in change.added where !againstCurrentMembers || members[user] != nil {
            let session = memberSessions[user] ?? session(of: user)
            memberSessions[user] = session
            _ = try? welcome(user, session, &greetings)
        }
    }

    /// Applies the waiting membership changes whose events before them are fanned out (through `seq`), in order.
    /// `byEvent`: the event after `seq` is being fanned out, which places an own change still being written (only
    /// this actor's own events are fanned out while it is: see `WaitingMembership.placed`).
    private func applyWaitingMemberships(through seq: Int, byEvent: Bool = false) {
        while let first = waitingMemberships.first, first.asOf <= seq, first.placed || byEvent {
            let change = waitingMemberships.removeFirst()
            if change.local { applyOwnMembership(change) } else { applyMembership(change) }
        }
    }

    /// Asks for a catch-up that reads the member log (`synchronize`). As after a conflict, seq-taking commands are held
    /// from now on, whether it starts at once or once the writes in flight land: a busy thread's pipelined sends would
    /// otherwise keep it from starting.
    private func requestMemberLogCatchUp() {
        memberLogWanted = true
        resyncRequested = true
        syncing = true
        settle()
    }

    /// After the node may have missed changes: catches up with the log, the member changes it did not hear of applied
    /// at their places (`SharedStore.memberChanges`, queued as if announced: a member removed meanwhile gets the
    /// events before the removal, one added none of them), then confirms the members against the store's list. The
    /// log is read by the catch-up (`memberLogWanted`); this waits until a catch-up has read it.
    func resynchronize() async {
        guard !retired, !failed else { return }
        requestMemberLogCatchUp()
        while memberLogWanted && !retired && !failed {
            await withCheckedContinuation { syncWaiters.append($0) }
        }
        await waitForSync()
        guard !retired, !failed else { return }
        // The log holds an hour of changes: a list that disagrees after all is the store's. Receipt marks it raised
        // (receipts whose notices were missed too) are told now, the events being fanned out.
        await rereadMembers()
        tellOwedReceipts()
    }

    /// In a catch-up (`synchronize`): queues the member changes the log holds that this actor did not hear of, at
    /// their places. Without the log (it disagrees with the store's list, or the store cannot answer), the store's
    /// list is taken (asked twice, half a second apart); members that cannot be read at all are not trusted with what
    /// comes next (the actor fails, and its successor loads them from the store).
    private func applyUnheardMemberChanges() async throws(ChatError) {
        if let (unheard, logged, _) = await unheardLoggedMemberChanges() {
            guard !unheard.isEmpty else { return }
            _ = applyRemote(unheard, fresh: false)
            orderWaitingMemberships(as: logged)
            // Their announcements may still come (read ahead of them: `membersMovedInStore`): not applied twice.
            noteReplayed(unheard.compactMap(\.membersVersion))
            return
        }
        // Once more half a second later (after a reconnection the pool may come back a moment after the listener).
        for attempt in 0..<2 {
            if await rereadMembers() { return }
            if attempt == 0 { try? await Task.sleep(for: .milliseconds(500)) }
        }
        throw ChatError.storeFailure
    }

    /// The member changes committed from this actor's position on that it has not heard of (`unheardMemberChanges`),
    /// read from the store's log with its list, in one snapshot (`SharedStore.memberLog`), once no membership change of
    /// this actor's is being written, and trusted only if, applied to the members it holds, they give that list (a
    /// change the log does not hold, written by a node of an older binary or older than the log keeps, would
    /// otherwise go unnoticed until the catch-up had fanned out to a removed member). Asked three times half a second
    /// apart (after a reconnection the pool may come back a moment after the listener); `nil` if the store cannot say
    /// or the log disagrees (the caller then takes the store's list first, as before the log existed). With them, the
    /// log as read (`orderWaitingMemberships`) and the list it agreed with.
    private func unheardLoggedMemberChanges() async -> (unheard: [ClusterChange], logged: [ClusterChange], list: ThreadMembers)? {
        guard let shared else { return nil }
        for attempt in 0..<3 {
            while membershipWrites > 0 { await withCheckedContinuation { membershipWaiters.append($0) } }
            let order = memberOrder, version = membersVersion
            if let log = try? await shared.memberLog(of: info.id, company: info.companyId, from: fannedOutSeq) {
                // The members this actor holds changed while the store was read (a change of its own, or one announced
                // and applied at once): read again. Changes announced meanwhile that wait for their places do not
                // matter: one the log holds waits here already (not unheard), one it does not is not in the list either.
                // (Any announced change counted before, and under churn on several nodes three reads in a row could
                // overlap one: the store's newest list was then taken before the events were fanned out.)
                guard order == memberOrder, version == membersVersion else { continue }
                let logged = log.changes, list = log.members
                let (pending, unheard) = unheardMemberChanges(logged)
                var expected = Set(memberOrder)
                for case .membership(_, _, _, _, let added, let removed, _) in pending {
                    expected.subtract(removed)
                    expected.formUnion(added)
                }
                return expected == Set(list.list.map(\.userId)) ? (unheard, logged, list) : nil
            }
            if attempt < 2 { try? await Task.sleep(for: .milliseconds(500)) }
        }
        return nil
    }

    /// Of `logged` (member changes in commit order from this actor's position on), those this actor has not applied
    /// (`pending`: the ones after the change whose members version it holds, all of them if it holds none of theirs),
    /// and of those the ones not already waiting here (`unheard`).
    private func unheardMemberChanges(_ logged: [ClusterChange]) -> (pending: ArraySlice<ClusterChange>, unheard: [ClusterChange]) {
        let known = logged.lastIndex { $0.membersVersion == membersVersion }.map { $0 + 1 } ?? 0
        let waiting = Set(waitingMemberships.compactMap(\.version))
        return (logged[known...], logged[known...].filter { $0.membersVersion.map { !waiting.contains($0) } ?? true })
    }

    /// The members as the store has them now, read once no membership change of this node's is being written (a
    /// list read while one is could undo it: a removed member put back); with `greet`, members the list adds are
    /// greeted. Returns whether a list was applied: `false` if the store could not answer (or every read overlapped
    /// a change of this node's), and the members are left as they are.
    @discardableResult
    private func rereadMembers(greet: Bool = true) async -> Bool {
        guard let shared else { return true }
        for _ in 0..<8 {
            while membershipWrites > 0 { await withCheckedContinuation { membershipWaiters.append($0) } }
            let generation = membershipGeneration
            guard let read = try? await shared.members(of: info.id) else { return false }
            // A change of this node's began while the list was read: read again once it is written.
            guard generation == membershipGeneration else { continue }
            let before = Set(members.keys)
            replaceMembers(read.list)
            membersVersion = read.version
            guard greet else { return true }
            var greetings = Greetings()
            for user in memberOrder where !before.contains(user) {
                if let session = memberSessions[user] { _ = try? welcome(user, session, &greetings) }
            }
            return true
        }
        return false
    }

    // MARK: - Passivation

    /// About how many bytes this actor's history holds, and when it was last active (for the memory budget).
    func footprint() -> (bytes: Int, lastActivity: UInt64) {
        (retired ? 0 : history.approximateBytes, lastActivity)
    }

    /// Retires the actor if nothing is in flight and it has been idle for `idleNanos`. A retired actor refuses
    /// every command with `retired`, which the supervisor turns into a reload.
    /// `note` gets the last seq fanned out on this node as it retires, before any command can find it retired (and
    /// activate its successor). Returns whether it retired. Nothing of its own may be in flight: no write, edit, read
    /// back, catch-up or receipt waiting for the store; and with `savedChunks` (the memory budget, which retires actors
    /// that were active a moment ago) no chunk the store has not confirmed or must be written again. An idle actor
    /// whose chunk write failed retires all the same: the chunk is a snapshot of messages the store holds.
    func retireIfIdle(idleNanos: UInt64, savedChunks: Bool = false, note: (Int) -> Void) -> Bool {
        guard !retired, !syncing, !editing, !resolving, !updateUnstored, inFlight == 0, pending.isEmpty, heldWaiters.isEmpty, typing.isEmpty,
            remoteTyping.isEmpty, waitingMemberships.isEmpty, receiptsWaiting == 0,
            !savedChunks || (chunkRetries.isEmpty && !history.hasUnsavedChunks), monotonicNanos() &- lastActivity >= idleNanos
        else {
            return false
        }
        note(fannedOutSeq)
        retired = true
        return true
    }
}

/// An event of a thread actor whose write is queued but not yet durable.
private struct Pending {
    let seq: Int
    let frame: OutboundFrame
    var message: Message?
    /// The send (answered once durable, or written again if the store refuses it as a conflict); `nil` for an edit.
    var send: HeldSend?
    /// The store kept it, at a later seq (read back by the next catch-up).
    var rebased = false
}

/// An edit or delete, ready to take its seq (or why not).
private enum PreparedUpdate {
    case ready(Message, resealed: [HistoryChunk])
    /// Another node's event changed the message while its chunks were read back: check again.
    case changed
    case missing
    /// An edit of a message that has `BrokerConfiguration.maxEditsPerMessage` edits already.
    case tooManyEdits
    /// An edit that would rewrite more than `BrokerConfiguration.maxResealedChunksPerEdit` sealed chunks.
    case spreadTooFar
}

/// A send not (or no longer) holding a seq: held while the actor catches up, or refused as a conflict.
struct HeldSend: Sendable {
    let request: SendRequest
    let principal: Principal
    let reply: ThreadActor.SendReply
    /// The meter of the command that sent it, which counts the send's work when it is written later.
    var meter: HistoryMeter? = HistoryMeter.current
    /// Whether the member log was read after it was sent (`ThreadActor.releaseHeld`): refused as from no member then,
    /// it is refused for good.
    var membersAsked = false
}

/// A tempId duplicate waiting for its original to be durable.
private struct DurableWaiter {
    let seq: Int
    let send: HeldSend
    let resume: @Sendable (Bool) -> Void
}
