import ChatJSON

/// Several nodes: how the supervisor applies what other nodes committed (`SharedStore.nextChanges`).
///
/// Each batch (one commit of another node) is split by thread. A thread with an active actor here gets its changes
/// applied by that actor, which fans the new events out in seq order: the events the notices carry, and for the
/// rest one read of the store per batch. A thread not active
/// here is activated only if one of its members has a live device on this node (one query per batch for those
/// threads; a batch of typing stops alone activates nothing); the fresh actor holds everything committed so far and
/// delivers what the batch announced. Everything else is ignored: no device here needs it, and the store has it when
/// one does.
extension Supervisor {
    func followCluster(_ shared: any SharedStore) async {
        while let batch = await shared.nextChanges() {
            await applyCluster(batch, shared: shared)
        }
    }

    /// The last seq the feed announced for `id` lately.
    func announcedSeq(of id: ThreadID) -> Int? {
        announced.withLock { $0[id]?.seq }
    }

    /// Notes the positions a batch announces, once it was handled. The threads `except` were not (their members could
    /// not be read, their actor not activated): their devices here may not have been given the batch's events, so the
    /// position noted for them stays where it was, and an activation later fans out from there. `handed`: the active
    /// actors (by incarnation) the batch was handed to; one that has retired since after a store failure may have put
    /// the batch off and fanned out none of it, so the position it left stands: returns those threads. The members a
    /// handled membership change added are noted too (`addedLately`).
    private func noteAnnounced(_ batch: [ClusterChange], except unsure: Set<ThreadID>, handed: [ThreadID: Int]) -> Set<ThreadID> {
        let now = monotonicNanos()
        lastFeedBatch.store(now, ordering: .relaxed)
        var memberships: [(ThreadID, added: [UserID], removed: [UserID])] = []
        let left = announced.withLock { map in
            var left = Set<ThreadID>()
            for change in batch {
                guard let id = change.threadId, !unsure.contains(id) else { continue }
                if let incarnation = handed[id], let leftBy = map[id]?.leftBy, leftBy == incarnation {
                    left.insert(id)
                    continue
                }
                switch change {
                case .advanced(_, _, let last, _): map[id] = (max(map[id]?.seq ?? 0, last), now, nil)
                case .membership(_, _, let asOf, _, let added, let removed, _):
                    map[id] = (max(map[id]?.seq ?? 0, asOf), now, nil)
                    memberships.append((id, added, removed))
                default: break
                }
            }
            return left
        }
        noteAdded(memberships)
        return left
    }

    /// Several nodes: notes the members `changes` added (and removed) here, greeted then (`addedLately`).
    func noteAdded(_ changes: [(ThreadID, added: [UserID], removed: [UserID])]) {
        guard !changes.isEmpty, store is any SharedStore else { return }
        let now = monotonicNanos()
        addedLately.withLock { map in
            for (id, added, removed) in changes {
                var users = map[id]?.users ?? []
                users.subtract(removed)
                users.formUnion(added)
                map[id] = (users, now)
            }
        }
    }

    func applyCluster(_ batch: [ClusterChange], shared: any SharedStore) async {
        // A resync reads the store again, which holds what came before it: the changes before one are applied first,
        // never after it (an old "added" applied after a re-read would put back a member removed meanwhile).
        if let cut = batch.dropFirst().firstIndex(where: { if case .resync = $0 { true } else { false } }) {
            await applyCluster(Array(batch[..<cut]), shared: shared)
            await applyCluster(Array(batch[cut...]), shared: shared)
            return
        }
        var byThread: [ThreadID: [ClusterChange]] = [:]
        var unsure = Set<ThreadID>()
        var handed: [ThreadID: Int] = [:]
        defer {
            let left = noteAnnounced(batch, except: unsure, handed: handed)
            owe(unsure, changes: byThread)
            // The retired actor's successor fans out from where it left (its own retirement owes them too, if it knew of
            // the batch; the batch may have come after it looked).
            owe(left, changes: [:])
        }
        var order: [ThreadID] = []
        for change in batch {
            switch change {
            case .resync(let since):
                let resynchronized = await resynchronizeAll()
                if let since {
                    await catchUpMissed(since: since, shared: shared, resynchronized: resynchronized)
                } else {
                    logger.warning("the store cannot tell since when this node missed changes: inactive threads are not caught up; devices catch up with chat:sync")
                }
            case .emit(let company, let target, let event, let data):
                deliverEmit(company: company, target: target, frame: encoder.encode(event, data))
            default:
                guard let id = change.threadId else { continue }
                if byThread[id] == nil { order.append(id) }
                byThread[id, default: []].append(change)
            }
        }
        var inactive: [ThreadID] = []
        var active: [(ThreadID, ThreadActor)] = []
        for id in order {
            if let actor = activeActor(for: id) { active.append((id, actor)) } else { inactive.append(id) }
        }
        // The new events of every active thread of the batch: those the notices carry, the others in one read; an
        // actor that cannot use them (a gap, writes of its own in flight) reads the store itself.
        var ranges: [ThreadRange] = []
        var events: [ThreadID: [ThreadEvent]] = [:]
        for (id, _) in active {
            for case .advanced(_, let first, let last, let carried) in byThread[id]! {
                if let carried {
                    events[id, default: []] += carried
                } else {
                    ranges.append(ThreadRange(thread: id, after: first - 1, upTo: last))
                }
            }
        }
        if !ranges.isEmpty, let read = try? await shared.events(in: ranges) {
            for (id, list) in read { events[id] = ((events[id] ?? []) + list).sorted { $0.seq < $1.seq } }
        }
        for (id, actor) in active {
            if await actor.applyRemote(byThread[id]!, fresh: false, events: events[id] ?? []) {
                handed[id] = actor.incarnation
            } else {
                // Retired meanwhile (passivated, or after a store failure): the batch goes the way of an inactive thread.
                inactive.append(id)
            }
        }
        guard !inactive.isEmpty else { return }
        let local = await threadsWithLocalMembers(inactive, changes: byThread, shared: shared)
        var wanted = local.wanted
        unsure.formUnion(local.unknown)
        // A thread that was loading here (or has become active since) may have read its snapshot before these changes
        // committed: it gets them as a fresh actor would, and reads the members again if the snapshot disagrees with
        // a change. Left out, a member removed meanwhile would stay in its list (and keep receiving) for as long as
        // the thread stays busy.
        for id in inactive where !wanted.contains(id) && isLoadingOrActive(id) { wanted.insert(id) }
        // A thread activated for this batch fans out what its snapshot holds after the batch's first position.
        let now = monotonicNanos()
        announced.withLock { map in
            for id in wanted {
                let floor = Self.floor(of: byThread[id]!)
                // Never above what a retired actor of this node left (its devices must not miss what it had not sent).
                if let floor { map[id] = (min(map[id]?.seq ?? floor, floor), now, nil) }
            }
        }
        let failed = await withTaskGroup(of: ThreadID?.self) { group in
            for id in inactive where wanted.contains(id) {
                let changes = byThread[id]!
                group.addTask {
                    do throws(ChatError) {
                        guard let actor = try await self.actor(for: id) else { return nil }
                        await actor.applyRemote(changes, fresh: true)
                        return nil
                    } catch {
                        // Logged by `actor(for:)`; the next activation fans out from the position noted before.
                        return id
                    }
                }
            }
            var failed: [ThreadID] = []
            for await id in group { if let id { failed.append(id) } }
            return failed
        }
        unsure.formUnion(failed)
    }

    /// `threads` (an announcement this node could not act on: the store did not say whose they are, or a thread could
    /// not be loaded) may owe their live devices here the batch's events: the position noted for each is lowered to
    /// where the batch starts (as for an activation), so that whichever activation comes next (a later batch's, a
    /// command's, or `retryOwedActivations`') fans them out; and the threads are tried again.
    func owe(_ threads: Set<ThreadID>, changes: [ThreadID: [ClusterChange]]) {
        guard !threads.isEmpty else { return }
        let now = monotonicNanos()
        announced.withLock { map in
            for id in threads {
                if let floor = Self.floor(of: changes[id] ?? []) { map[id] = (min(map[id]?.seq ?? floor, floor), now, nil) }
            }
        }
        // Half the time positions are remembered: the position noted above outlives the tries.
        let until = now + UInt64(configuration.positionMemory * 0.5e9)
        owed.withLock { map in
            for id in threads where map[id] != nil || map.count < OwedActivation.limit {
                let generation = (map[id]?.generation ?? 0) &+ 1
                map[id] = OwedActivation(until: until, next: now, wait: OwedActivation.firstWait, generation: generation)
            }
        }
    }

    /// The position before the first event or member change of `changes`: what a thread's devices here were given
    /// when they are the first news of it an activation fans out.
    static func floor(of changes: [ClusterChange]) -> Int? {
        changes.compactMap { change -> Int? in
            switch change {
            case .advanced(_, let first, _, _): first - 1
            case .membership(_, _, let asOf, _, _, _, _): asOf
            default: nil
            }
        }.min()
    }

    /// Tries the owed threads again (every 250 ms at first, then less often, up to every 4 s, while the store does
    /// not answer): a thread with a member online here is activated (or its loading awaited), and its activation
    /// fans out from the position noted for it. Without this, a member waiting on a live socket got those events only
    /// with the thread's next event or command. A thread with no member online here owes nobody (a device that
    /// connects later catches up with `chat:sync`).
    func retryOwedActivations(_ shared: any SharedStore) async {
        while !Task.isCancelled {
            try? await Task.sleep(nanoseconds: OwedActivation.firstWait)
            if Task.isCancelled { break }
            let now = monotonicNanos()
            let due = owed.withLock { map -> [ThreadID: Int] in
                map = map.filter { $0.value.until > now }
                return map.filter { $0.value.next <= now }.mapValues(\.generation)
            }
            guard !due.isEmpty else { continue }
            var settled = Set<ThreadID>()
            // One look per thread: a thread could start loading between two looks and be in neither list.
            let (loadingOrActive, ask) = due.keys.reduce(into: ([ThreadID](), [ThreadID]())) { lists, id in
                if isLoadingOrActive(id) { lists.0.append(id) } else { lists.1.append(id) }
            }
            var activate = loadingOrActive
            // In slices: a slice the store refuses keeps only its own threads waiting.
            for start in stride(from: 0, to: ask.count, by: OwedActivation.slice) {
                let slice = Array(ask[start..<min(start + OwedActivation.slice, ask.count)])
                guard let found = try? await shared.memberships(of: slice) else { continue }
                settled.formUnion(slice)
                for entry in found where entry.users.contains(where: { registry.isOnline(SessionKey(companyId: entry.company, userId: $0)) }) {
                    settled.remove(entry.thread)
                    activate.append(entry.thread)
                }
            }
            for id in activate {
                do throws(ChatError) {
                    _ = try await actor(for: id)
                    settled.insert(id)
                } catch {
                    // Logged by `actor(for:)`; tried again later.
                }
            }
            owed.withLock { map in
                for (id, generation) in due where map[id]?.generation == generation {
                    if settled.contains(id) {
                        map[id] = nil
                    } else if var entry = map[id] {
                        entry.wait = min(entry.wait * 2, OwedActivation.longestWait)
                        entry.next = now + entry.wait
                        map[id] = entry
                    }
                }
            }
        }
    }

    /// Which of `threads` have a member with a live device on this node (`wanted`), and which cannot be told (`unknown`:
    /// the store did not answer). Membership changes carry their company and users; for the rest the store is asked,
    /// in one query.
    private func threadsWithLocalMembers(
        _ threads: [ThreadID], changes: [ThreadID: [ClusterChange]], shared: any SharedStore
    ) async -> (wanted: Set<ThreadID>, unknown: Set<ThreadID>) {
        var wanted = Set<ThreadID>()
        var ask: [ThreadID] = []
        for id in threads {
            var decided = false
            for change in changes[id]! {
                // A user removed here counts too: the batch's events before the removal (its own group commit may hold
                // some, `asOf`) are theirs.
                if case .membership(_, let company, _, _, let added, let removed, _) = change,
                    (added + removed).contains(where: { registry.isOnline(SessionKey(companyId: company, userId: $0)) })
                {
                    wanted.insert(id)
                    decided = true
                }
            }
            // A typing start is for the room as messages are (a member who opens the thread here sees who types
            // before anything is sent); a stop alone is not: no start of it was fanned out here, since an actor that
            // fanned one out stays active until it fans out the stop (`remoteTyping`).
            let onlyTypingStops = changes[id]!.allSatisfy { if case .typing(_, _, started: false) = $0 { true } else { false } }
            if !decided && !onlyTypingStops { ask.append(id) }
        }
        guard !ask.isEmpty else { return (wanted, []) }
        let found: [(thread: ThreadID, company: CompanyID, users: [UserID])]
        // With the users removed lately: a removal committed just after this batch's events (or in the same commit, after
        // them) leaves those events theirs, and the activation's replay of the member log gives them exactly those.
        do { found = try await shared.memberships(of: ask, alsoRemovedWithin: .seconds(30)) } catch {
            logger.warning("cannot read the members of threads other nodes wrote", metadata: ["error": "\(error)"])
            return (wanted, Set(ask))
        }
        for entry in found where entry.users.contains(where: { registry.isOnline(SessionKey(companyId: entry.company, userId: $0)) }) {
            wanted.insert(entry.thread)
        }
        return (wanted, [])
    }

    private func deliverEmit(company: CompanyID, target: ClusterEmitTarget, frame: OutboundFrame) {
        switch target {
        case .users, .company:
            _ = deliverToUsers(company: company, target: target, frame: frame)
        case .thread(let id):
            if let actor = activeActor(for: id) {
                // The announcement names its company; a thread of another company is not reached (only a node, or a
                // role that may NOTIFY on the database, could announce one).
                guard actor.info.companyId == company else { return }
                Task { _ = try? await actor.broadcast(frame) }
            } else {
                Task { [self] in
                    guard let found = try? await (store as? any SharedStore)?.memberships(of: [id]), let entry = found.first,
                        entry.company == company,
                        entry.users.contains(where: { registry.isOnline(SessionKey(companyId: company, userId: $0)) }),
                        let actor = try? await actor(for: id)
                    else { return }
                    _ = try? await actor.broadcast(frame)
                }
            }
        }
    }

    /// After `.resync(since:)`: the inactive threads of this node's online users that other nodes wrote, or added one of
    /// them to, while this node was not listening, applied as if their announcements had arrived. A thread's
    /// devices here were given its events up to the position this node last noted for it (`announced`, kept from a
    /// minute before the last batch heard on); a thread with no noted position had no announcement in that minute,
    /// so the store's `before` (its last event stored before the node stopped hearing) is where they stand.
    /// A thread active now that `resynchronizeAll` did not re-read (`resynchronized`: it was still loading then, from a
    /// snapshot maybe older than what was missed) re-reads the store now. (Skipped as active, it held the snapshot's
    /// position until its next event showed the gap: found by a review.)
    private func catchUpMissed(since: Timestamp, shared: any SharedStore, resynchronized: [ThreadActor]) async {
        // Held (in `resynchronized`) until this returns, so that no actor loaded since can take one's address.
        let reread = Set(resynchronized.map(ObjectIdentifier.init))
        var missed: [MissedThread]? = nil
        // Three tries a second apart: after a PostgreSQL restart the pool may come back a moment after the listener.
        for attempt in 1...3 where missed == nil {
            do { missed = try await shared.missed(by: registry.onlineKeys(), since: since) } catch {
                logger.warning("cannot read what other nodes wrote while this node was not listening", metadata: ["error": "\(error)", "attempt": "\(attempt)"])
                if attempt < 3 { try? await Task.sleep(for: .seconds(1)) }
            }
        }
        guard let missed else {
            logger.error("inactive threads written while this node was not listening are not pushed; devices catch up with chat:sync")
            return
        }
        var batch: [ClusterChange] = []
        var loadedSince: [ThreadActor] = []
        for thread in missed {
            // Active threads re-read the store themselves (`resynchronizeAll`), or now if they were loading then.
            if let actor = activeActor(for: thread.thread) {
                if !reread.contains(ObjectIdentifier(actor)) { loadedSince.append(actor) }
                continue
            }
            let floor = announcedSeq(of: thread.thread) ?? thread.before
            if thread.last > floor { batch.append(.advanced(thread.thread, first: floor + 1, last: thread.last)) }
            // Those the feed announced before the outage were greeted then.
            let greeted = addedLately.withLock { $0[thread.thread]?.users } ?? []
            let added = thread.added.filter { !greeted.contains($0) }
            if !added.isEmpty {
                // No members version: the thread's actor greets these members without putting back in the room a
                // device that left it (the list may name a member added before the leave).
                batch.append(.membership(thread.thread, company: thread.company, asOf: floor, created: false, added: added, removed: []))
            }
        }
        await resynchronize(loadedSince)
        guard !batch.isEmpty else { return }
        logger.notice("delivering what other nodes wrote while this node was not listening", metadata: ["threads": "\(missed.count)"])
        await applyCluster(batch, shared: shared)
    }

    /// After the listener reconnected: every active thread re-reads its members and catches up. Returns those actors
    /// (not those of threads still loading).
    private func resynchronizeAll() async -> [ThreadActor] {
        let actors = activeActors()
        await resynchronize(actors)
        return actors
    }

    /// `actors` re-read their members and catch up, at once.
    private func resynchronize(_ actors: [ThreadActor]) async {
        await withTaskGroup(of: Void.self) { group in
            for actor in actors {
                group.addTask { await actor.resynchronize() }
            }
        }
    }
}

/// A thread whose announcement this node could not act on: tried again at `next` (then `wait` later, doubling), until
/// `until`. `generation` tells a later announcement's entry from the one a retry took.
struct OwedActivation {
    static let firstWait: UInt64 = 250_000_000
    static let longestWait: UInt64 = 4_000_000_000
    /// Threads owed at most (past it, a thread waits for its next activation, as before retries), and asked about in
    /// one query.
    static let limit = 10_000
    static let slice = 500
    var until: UInt64
    var next: UInt64
    var wait: UInt64
    var generation: Int
}
