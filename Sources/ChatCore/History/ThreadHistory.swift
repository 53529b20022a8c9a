import ChatJSON
/// One message's place in its thread, kept for every message of an active thread (small, no content).
public struct MessageIndexEntry: Sendable, Equatable {
    public var seq: Int
    public var id: MessageID
    public var senderId: UserID
    public var deleted: Bool
    public var tempId: String?

    public init(seq: Int, id: MessageID, senderId: UserID, deleted: Bool, tempId: String?) {
        self.seq = seq
        self.id = id
        self.senderId = senderId
        self.deleted = deleted
        self.tempId = tempId
    }
}

/// What the index knows of one message, without reading it.
struct IndexedMessage: Equatable {
    var seq: Int
    var senderId: UserID
    var deleted: Bool
}

/// Why a history read could not be answered from memory.
enum HistoryReadError: Error, CustomStringConvertible {
    /// A sealed chunk failed its checks.
    case corrupt(HistoryChunkError)
    /// The read needs the event at `seq`, in a chunk this history released (`ThreadHistory.releasedThrough`): the
    /// caller reads the chunks around it back from the store (`load`) and reads again.
    case released(seq: Int)
    /// The read needs message `id`, which the index does not hold: if it is a message of the thread, its chunk was
    /// released. The caller asks the store where it is (`rememberReleased`) and reads again.
    case unindexed(MessageID)
    /// The sender's tempId may name a message of a released chunk (`TempIdFilter`): the caller asks the store
    /// (`rememberTempId`) and tries again.
    case unresolvedTempId(String, sender: UserID)

    var description: String {
        switch self {
        case .corrupt(let error): error.description
        case .released(let seq): "the history chunk holding seq \(seq) is not in memory"
        case .unindexed(let id): "message \(id) is not in the thread's index in memory"
        case .unresolvedTempId(let tempId, let sender): "tempId \(tempId) of \(sender) may name a message released from memory"
        }
    }
}

/// A thread's ordered log, owned by its `ThreadActor`: a hot tail of decoded events, older events sealed in
/// LZ4 `HistoryChunk`s, and a compact index of the messages in memory (seq, id, sender, deleted, tempId hash) for
/// receipts, unread counts, edits and tempId dedupe. Every event shows its message as it is now: an edit or
/// delete rewrites the events (and reseals the chunks) that carry that message.
///
/// Only the newest `residentChunks` chunks stay in memory: older ones, once the store confirmed it holds them, are
/// released and read back on demand (`HistoryReadError.released`, then `load`). A few decoded chunks are cached.
///
/// The index covers the resident chunks and the tail only, so an active thread's memory is bounded whatever its
/// length. For a released message the store is asked (`HistoryReadError.unindexed`, `rememberReleased`); its tempId
/// goes into a Bloom filter (`TempIdFilter`, 2.5 bytes each) whose hits are checked in the store
/// (`HistoryReadError.unresolvedTempId`); unread counts from the first message on come from per-sender counters of
/// the released messages, other counts and receipts over released messages from the store.
/// An index entry costs about 50 bytes plus its two hash tables (no string per message: ids are kept as 16-byte
/// keys, senders interned per thread, tempIds as 64-bit hashes checked against the message on a hit).
struct ThreadHistory {
    /// One message in the index.
    struct Entry {
        var seq: Int
        var key: MessageKey
        var sender: UInt32
        var deleted: Bool
        /// The hash of its tempId, if it has one.
        var tempHash: Int?
    }

    /// A tempId as the index keeps it: the sender and a hash of the text.
    struct TempKey: Hashable {
        var sender: UInt32
        var hash: Int
    }

    /// A decoded chunk: of a resident chunk, read back from the store, or resealed while released (`pinned` until
    /// the store confirms it holds the new version).
    struct Decoded {
        var first: Int
        var last: Int
        var events: [ThreadEvent]
        var pinned = false
    }

    /// The resident chunks, in seq order: the newest ones (all older ones are released).
    private(set) var chunks: [HistoryChunk] = []
    private(set) var tail: [ThreadEvent] = []
    /// The indexed messages (those after `releasedThrough`), in seq order.
    private(set) var order: [Entry] = []
    /// How many messages left the front of `order`: positions in `positionById` and `tempIds` count from the first
    /// message ever indexed.
    private var orderBase = 0
    private var positionById: [MessageKey: Int] = [:]
    private var tempIds: [TempKey: Int] = [:]
    /// The tempIds of the messages that left the index.
    private var releasedTempIds = TempIdFilter()
    /// Released messages the store was asked about (`rememberReleased`): their seq, 0 for an id that is no message of
    /// this thread. A few only; their edit seqs are kept in `eventSeqs` while they are here.
    private var lookedUp: [MessageKey: Int] = [:]
    /// The store's answers for tempIds the filter could not rule out (`rememberTempId`): the seq, 0 for none.
    private var resolvedTempIds: [TempKey: Int] = [:]
    /// Messages the store is being asked about (`beginLookUp`), with how many lookups of each are in progress.
    private var lookingUp: [MessageKey: Int] = [:]
    private static let lookedUpLimit = 256
    /// Per sender, the messages released from the index that are not deleted (an unread count from the first
    /// message on needs no store).
    private var releasedLive: [UInt32: Int] = [:]
    private var senders: [UserID] = []
    private var senderIndex: [UserID: UInt32] = [:]
    private var eventSeqs: [MessageID: [Int]] = [:]
    private var cache: [Decoded] = []
    /// Chunks read back for a read still in progress (first seq → the read): they stay cached until it ends, whatever
    /// else it, or another read interleaved with it, decodes.
    private var loadedFor: [Int: Int] = [:]
    private var lastRead = 0
    private var activeReads = Set<Int>()
    /// The generation at which each chunk was last resealed here or its reseal confirmed (by first seq), kept while
    /// reads are in progress: a chunk read from the store before that may be the older version.
    private var resealedAt: [Int: Int] = [:]
    private static let cacheSize = 4
    /// How many sealed chunks stay in memory (`.max`: all). A history built from a snapshot keeps every chunk it was
    /// given until the next seal or `releaseIfNeeded`.
    var residentChunks = Int.max
    /// The last seq of the released chunks (0 while none is): events up to it are in the store only.
    private(set) var releasedThrough = 0
    /// Resident chunks the store has not confirmed yet (by first seq): never released.
    private var unsaved = Set<Int>()
    /// Resident chunks resealed by a write of this node not yet confirmed: never released either (the store still
    /// holds their older version).
    private var resealing = Set<Int>()
    /// The newest message of the released chunks, as it is now (for a thread whose newest events are all edits).
    private var newestReleasedMessage: Message?
    /// The newest message of each chunk sealed here and not yet released (by its first seq), kept current through
    /// edits, so that a release knows it without decoding the chunk (decompressing and parsing all its events was
    /// most of a seal round's time with large messages). Chunks read back from the store have no entry.
    private var sealedNewest: [Int: Message] = [:]
    /// The next chunk, encoded a block at a time as its events leave the hot tail and are durable:
    /// `tail[0..<pending.count]`. A seal then compresses at most one block's worth instead of all the chunk's events
    /// in one actor turn (several milliseconds with large messages, in every thread of a round at once). Dropped, and
    /// encoded again, if one of those events changes.
    private var pending: HistoryChunkEncoder?
    /// How far `encodeCold` has measured the events after `pending` (for the tail starting at `firstSeq`).
    private var coldScan: (firstSeq: Int, from: Int, ready: Int, bytes: Int)?
    /// How many chunks this history released so far.
    private(set) var releasedChunks = 0
    /// Moves whenever a chunk is resealed here or a reseal is confirmed (`resealedAt`). A history built to replace
    /// another starts above the old one's.
    private(set) var generation = 0

    init() {}

    /// A history from a snapshot. `omittedThrough` (with `newestOmittedMessage`): the snapshot left out the chunks up
    /// to that seq, which start released; their messages go straight to the tempId filter and the counters.
    init(
        chunks: [HistoryChunk], tail: [ThreadEvent], index: [MessageIndexEntry], editEvents: [(seq: Int, messageId: MessageID)],
        omittedThrough: Int = 0, newestOmittedMessage: Message? = nil, replacing old: ThreadHistory? = nil
    ) {
        generation = (old?.generation ?? 0) + 1
        lastRead = old?.lastRead ?? 0
        self.chunks = chunks.sorted { $0.firstSeq < $1.firstSeq }
        self.tail = tail.sorted { $0.seq < $1.seq }
        releasedThrough = omittedThrough
        newestReleasedMessage = newestOmittedMessage
        for entry in index.sorted(by: { $0.seq < $1.seq }) {
            if entry.seq <= omittedThrough {
                countReleased(sender: intern(entry.senderId), tempHash: entry.tempId.map(Self.hash), deleted: entry.deleted)
            } else {
                append(seq: entry.seq, id: entry.id, senderId: entry.senderId, deleted: entry.deleted, tempId: entry.tempId)
            }
        }
        for edit in editEvents { eventSeqs[edit.messageId, default: []].append(edit.seq) }
        if omittedThrough > 0 { pruneEventSeqs() }
    }

    /// The last seq in the log (0 for an empty thread).
    var lastSeq: Int { tail.last?.seq ?? chunks.last?.lastSeq ?? 0 }

    private mutating func intern(_ sender: UserID) -> UInt32 {
        if let index = senderIndex[sender] { return index }
        let index = UInt32(senders.count)
        senders.append(sender)
        senderIndex[sender] = index
        return index
    }

    /// A tempId's hash, of its UTF-8 bytes: tempIds are the same only byte for byte, as the store compares them.
    /// (Hashed and compared as Swift strings, `"café"` and `"cafe\u{301}"` were one tempId while the chunk was
    /// resident, and a send's message was taken for another's: an outside probe.)
    private static func hash(_ tempId: String) -> Int {
        var hasher = Hasher()
        for byte in tempId.utf8 { hasher.combine(byte) }
        return hasher.finalize()
    }

    private mutating func append(seq: Int, id: MessageID, senderId: UserID, deleted: Bool, tempId: String?) {
        let sender = intern(senderId)
        let key = MessageKey(id)
        let position = orderBase + order.count
        positionById[key] = position
        let tempHash = tempId.map(Self.hash)
        if let tempHash { tempIds[TempKey(sender: sender, hash: tempHash)] = position }
        order.append(Entry(seq: seq, key: key, sender: sender, deleted: deleted, tempHash: tempHash))
    }

    /// The message `sender` sent earlier with `tempId`, as it is now (the hash hit is checked against the message).
    /// Throws `unresolvedTempId` when only the store can tell.
    mutating func message(forTempId tempId: String, sender: UserID) throws(HistoryReadError) -> Message? {
        guard let senderIndex = senderIndex[sender] else { return nil }
        let key = TempKey(sender: senderIndex, hash: Self.hash(tempId))
        let seq: Int
        if let position = tempIds[key] {
            seq = order[position - orderBase].seq
        } else if let answer = resolvedTempIds[key] {
            guard answer > 0 else { return nil }
            seq = answer
        } else if releasedTempIds.mayContain(key.hashValue) {
            throw .unresolvedTempId(tempId, sender: sender)
        } else {
            return nil
        }
        guard let message = try event(at: seq)?.message, let found = message.tempId, found.utf8.elementsEqual(tempId.utf8), message.senderId == sender
        else { return nil }
        return message
    }

    /// Takes the store's answer for a tempId `message(forTempId:sender:)` could not resolve: the seq of the message,
    /// `nil` if there is none.
    mutating func rememberTempId(_ tempId: String, sender: UserID, seq: Int?) {
        guard let senderIndex = senderIndex[sender] else { return }
        if resolvedTempIds.count >= Self.lookedUpLimit { resolvedTempIds.removeAll() }
        resolvedTempIds[TempKey(sender: senderIndex, hash: Self.hash(tempId))] = seq ?? 0
    }

    /// What the index knows of message `id` (messages of released chunks are not in it).
    func indexEntry(_ id: MessageID) -> IndexedMessage? {
        guard let position = positionById[MessageKey(id)] else { return nil }
        let entry = order[position - orderBase]
        return IndexedMessage(seq: entry.seq, senderId: senders[Int(entry.sender)], deleted: entry.deleted)
    }

    /// The seq of message `id` if memory knows it (indexed, or a released message the store was asked about).
    func knownSeq(of id: MessageID) -> Int? {
        let key = MessageKey(id)
        if let position = positionById[key] { return order[position - orderBase].seq }
        if let seq = lookedUp[key], seq > 0 { return seq }
        return nil
    }

    /// What is known of message `id`, in the index or, for a released message, from its event; throws `unindexed`
    /// when only the store can tell.
    mutating func lookUp(_ id: MessageID) throws(HistoryReadError) -> IndexedMessage? {
        if let entry = indexEntry(id) { return entry }
        guard let seq = try releasedSeq(of: id), let message = try event(at: seq)?.message, message.id == id else { return nil }
        return IndexedMessage(seq: seq, senderId: message.senderId, deleted: message.isDeleted)
    }

    /// The seq of a message that is not in the index: known if the store was asked, `nil` if it is no message of the
    /// thread.
    private func releasedSeq(of id: MessageID) throws(HistoryReadError) -> Int? {
        if let seq = lookedUp[MessageKey(id)] { return seq > 0 ? seq : nil }
        guard releasedThrough > 0 else { return nil }
        throw .unindexed(id)
    }

    /// Keeps the edit seqs of `ids` in memory while the store is asked about them (`rememberReleased`): a release
    /// meanwhile must not let go of edits committed after the store read them. Ends with `endLookUp`.
    mutating func beginLookUp(_ ids: [MessageID]) {
        for id in ids { lookingUp[MessageKey(id), default: 0] += 1 }
    }

    mutating func endLookUp(_ ids: [MessageID]) {
        for id in ids {
            let key = MessageKey(id)
            if let n = lookingUp[key], n > 1 { lookingUp[key] = n - 1 } else { lookingUp[key] = nil }
        }
    }

    /// Takes the store's answer for messages not in the index: for each one of the thread, its seq then its edit and
    /// delete events' seqs (`MessageStore.eventSeqs`); an id absent from `found` is no message of the thread.
    mutating func rememberReleased(_ ids: [MessageID], found: [MessageID: [Int]]) {
        if lookedUp.count + ids.count > Self.lookedUpLimit {
            // The edit seqs kept for them go with them, unless some are not released yet.
            lookedUp.removeAll()
            pruneEventSeqs()
        }
        for id in ids where positionById[MessageKey(id)] == nil {
            // Not a message of the thread, or one this node has not applied yet (another node's, newer than
            // `durableSeq`): unknown here, as before it is applied (then the index holds it).
            guard let seqs = found[id], let seq = seqs.first, seq <= releasedThrough else {
                lookedUp[MessageKey(id)] = 0
                continue
            }
            lookedUp[MessageKey(id)] = seq
            // Edits the store holds that memory may have let go; newer ones are all in `eventSeqs` already.
            let known = Set(eventSeqs[id] ?? [])
            let older = seqs.dropFirst().filter { $0 <= releasedThrough && !known.contains($0) }
            if !older.isEmpty { eventSeqs[id] = (older + known).sorted() }
        }
    }

    /// The first index in `order` whose seq is >= `seq`.
    func orderPosition(ofFirstSeqAtLeast seq: Int) -> Int {
        var lo = 0
        var hi = order.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if order[mid].seq < seq { lo = mid + 1 } else { hi = mid }
        }
        return lo
    }

    /// The event at `seq`, decoding its chunk if it is sealed.
    mutating func event(at seq: Int) throws(HistoryReadError) -> ThreadEvent? {
        if let first = tail.first?.seq, seq >= first {
            let i = seq - first
            return i < tail.count ? tail[i] : nil
        }
        if seq <= releasedThrough {
            guard let hit = cache.firstIndex(where: { $0.first <= seq && seq <= $0.last }) else { throw .released(seq: seq) }
            return cache[hit].events[seq - cache[hit].first]
        }
        guard let ci = chunkIndex(containing: seq) else { return nil }
        let events = try decoded(ci)
        return events[seq - chunks[ci].firstSeq]
    }

    /// The current state of message `id`.
    mutating func message(_ id: MessageID) throws(HistoryReadError) -> Message? {
        let seq: Int
        if let position = positionById[MessageKey(id)] {
            seq = order[position - orderBase].seq
        } else if let released = try releasedSeq(of: id) {
            seq = released
        } else {
            return nil
        }
        guard let message = try event(at: seq)?.message, message.id == id else { return nil }
        return message
    }

    private func chunkIndex(containing seq: Int) -> Int? {
        var lo = 0
        var hi = chunks.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if chunks[mid].lastSeq < seq { lo = mid + 1 } else { hi = mid }
        }
        guard lo < chunks.count, chunks[lo].firstSeq <= seq else { return nil }
        return lo
    }

    private mutating func decoded(_ ci: Int) throws(HistoryReadError) -> [ThreadEvent] {
        let chunk = chunks[ci]
        if let hit = cache.firstIndex(where: { $0.first == chunk.firstSeq }) { return cache[hit].events }
        let events: [ThreadEvent]
        do { events = try chunk.events() } catch { throw .corrupt(error) }
        remember(Decoded(first: chunk.firstSeq, last: chunk.lastSeq, events: events))
        return events
    }

    /// Caches a decoded chunk; past `cacheSize`, the oldest entries go, except pinned ones and those read back for a
    /// read still in progress.
    private mutating func remember(_ entry: Decoded) {
        cache.removeAll { $0.first == entry.first }
        cache.append(entry)
        trimCache()
    }

    /// Past `cacheSize`, drops the oldest cached chunks, except pinned ones and those read back for a read still in
    /// progress.
    private mutating func trimCache() {
        while cache.count > Self.cacheSize, let old = cache.firstIndex(where: { !$0.pinned && loadedFor[$0.first] == nil }) {
            cache.remove(at: old)
        }
    }

    /// Starts a read that may need chunks read back (`load`); `endRead` when it is done.
    mutating func beginRead() -> Int {
        lastRead += 1
        activeReads.insert(lastRead)
        return lastRead
    }

    /// Ends a read: the chunks read back for it leave the cache if it holds more than `cacheSize` (reads in parallel
    /// each kept theirs meanwhile).
    mutating func endRead(_ read: Int) {
        activeReads.remove(read)
        loadedFor = loadedFor.filter { $0.value != read }
        if activeReads.isEmpty { resealedAt = [:] }
        trimCache()
    }

    /// Takes chunks read back from the store for `read`, which met `HistoryReadError.released`, asked for when the
    /// generation was `fetchedAt`; they must hold the released events of `seqs` without a gap. Not taken: chunks no
    /// longer released, chunks this node resealed and the store has not confirmed yet (memory is newer), and chunks
    /// resealed or confirmed since `fetchedAt` (the store's answer may predate that; the read asks again).
    mutating func load(
        _ loaded: [HistoryChunk], covering seqs: ClosedRange<Int>, for read: Int, fetchedAt: Int
    ) throws(HistoryReadError) {
        let upTo = min(seqs.upperBound, releasedThrough)
        var next = seqs.lowerBound
        for chunk in loaded.sorted(by: { $0.firstSeq < $1.firstSeq }) where next <= upTo && chunk.lastSeq >= next && chunk.firstSeq <= next {
            if let pinned = cache.first(where: { $0.pinned && $0.first == chunk.firstSeq }) {
                next = pinned.last + 1  // resealed here, not yet confirmed: memory is newer than the store
                continue
            }
            guard chunk.lastSeq <= releasedThrough else { break }
            if let changed = resealedAt[chunk.firstSeq], changed > fetchedAt {
                next = chunk.lastSeq + 1
                continue
            }
            let events: [ThreadEvent]
            do { events = try chunk.events() } catch { throw .corrupt(error) }
            loadedFor[chunk.firstSeq] = read
            remember(Decoded(first: chunk.firstSeq, last: chunk.lastSeq, events: events))
            next = chunk.lastSeq + 1
        }
        guard next > upTo else {
            throw .corrupt(HistoryChunkError(description: "the store holds no history chunk with seq \(next) of this thread"))
        }
    }

    /// The store confirmed it holds the chunk starting at `firstSeq` (sealed here): it may be released.
    mutating func chunkSaved(_ firstSeq: Int) {
        unsaved.remove(firstSeq)
        releaseIfNeeded()
    }

    /// The resident chunk starting at `firstSeq`, if it still is resident (to write it again after a failed write).
    func residentChunk(_ firstSeq: Int) -> HistoryChunk? {
        chunks.first { $0.firstSeq == firstSeq }
    }

    /// The store confirmed it holds this node's reseals: released ones are read from it again when needed, resident
    /// ones may be released.
    mutating func resealsSaved() {
        generation += 1
        if !activeReads.isEmpty {
            // Only a read in progress can be waiting for the store's answer.
            for entry in cache where entry.pinned { resealedAt[entry.first] = generation }
            for first in resealing { resealedAt[first] = generation }
        }
        cache.removeAll { $0.pinned }
        resealing.removeAll()
        releaseIfNeeded()
    }

    /// Releases the oldest resident chunks the store holds while more than `residentChunks` are resident.
    mutating func releaseIfNeeded() {
        var released: [HistoryChunk] = []
        while chunks.count > residentChunks, let oldest = chunks.first, !unsaved.contains(oldest.firstSeq), !resealing.contains(oldest.firstSeq) {
            released.append(oldest)
            chunks.removeFirst()
            releasedThrough = oldest.lastSeq
            releasedChunks += 1
        }
        // The newest message released: looked for from the newest chunk back (usually known from its seal, else one
        // decode).
        for chunk in released.reversed() {
            if let newest = sealedNewest[chunk.firstSeq] {
                newestReleasedMessage = newest
                break
            }
            let events = cache.first(where: { $0.first == chunk.firstSeq })?.events ?? (try? chunk.events())
            if let newest = events?.last(where: { $0.kind == .message }) {
                newestReleasedMessage = newest.message
                break
            }
        }
        for chunk in released {
            sealedNewest[chunk.firstSeq] = nil
            cache.removeAll { $0.first == chunk.firstSeq && !$0.pinned }
        }
        if !released.isEmpty { dropReleasedEntries() }
    }

    /// Takes the messages of released chunks out of the index: their tempIds go into the filter, their live
    /// messages into the per-sender counts, and their edit seqs leave `eventSeqs` once all released.
    private mutating func dropReleasedEntries() {
        let cut = orderPosition(ofFirstSeqAtLeast: releasedThrough + 1)
        guard cut > 0 else { return }
        for (offset, entry) in order[0..<cut].enumerated() {
            let position = orderBase + offset
            positionById[entry.key] = nil
            if !lookedUp.isEmpty { lookedUp[entry.key] = nil }
            if let hash = entry.tempHash {
                let key = TempKey(sender: entry.sender, hash: hash)
                if tempIds[key] == position { tempIds[key] = nil }
                if !resolvedTempIds.isEmpty { resolvedTempIds[key] = nil }
            }
            countReleased(sender: entry.sender, tempHash: entry.tempHash, deleted: entry.deleted)
        }
        order.removeFirst(cut)
        orderBase += cut
        // A history built from a long thread's snapshot indexed all of it at first: its tables keep that capacity
        // after the removals, so they are built again at the size of what is left.
        if order.capacity > 4 * max(order.count, 1_024) { compactIndex() }
        pruneEventSeqs()
    }

    /// A message that is not (or no longer) in the index: its tempId goes into the filter, and if it is not deleted it
    /// counts in its sender's released messages.
    private mutating func countReleased(sender: UInt32, tempHash: Int?, deleted: Bool) {
        if let tempHash { releasedTempIds.insert(TempKey(sender: sender, hash: tempHash).hashValue) }
        if !deleted { releasedLive[sender, default: 0] += 1 }
    }

    /// Lets go of the edit seqs of released messages once all of them are released too (the store holds them), unless
    /// the message was looked up or is being looked up.
    private mutating func pruneEventSeqs() {
        guard !eventSeqs.isEmpty else { return }
        let floor = releasedThrough
        eventSeqs = eventSeqs.filter { id, seqs in
            let key = MessageKey(id)
            return positionById[key] != nil || lookedUp[key] != nil || lookingUp[key] != nil || seqs.contains { $0 > floor }
        }
    }

    /// Rebuilds the index's tables at the size of the messages still in it.
    private mutating func compactIndex() {
        var kept: [Entry] = []
        kept.reserveCapacity(order.count)
        kept.append(contentsOf: order)
        order = kept
        positionById = Dictionary(minimumCapacity: order.count)
        tempIds = [:]
        for (offset, entry) in order.enumerated() {
            positionById[entry.key] = orderBase + offset
            if let hash = entry.tempHash { tempIds[TempKey(sender: entry.sender, hash: hash)] = orderBase + offset }
        }
    }

    /// Drops the messages after `seq` (written provisionally, then stored at other seqs by a shared store). Only a
    /// tail of plain messages can be dropped; `false` (and nothing changed) otherwise: the caller reloads instead.
    mutating func truncate(after seq: Int) -> Bool {
        guard let cut = tail.firstIndex(where: { $0.seq > seq }) else { return true }
        let dropped = tail[cut...]
        guard dropped.allSatisfy({ $0.kind == .message }), order.count >= dropped.count else { return false }
        // The dropped messages are the newest entries of the index, in the same order.
        let base = order.count - dropped.count
        for (offset, event) in dropped.enumerated() where order[base + offset].key != MessageKey(event.message.id) { return false }
        for (offset, event) in dropped.enumerated() {
            positionById[MessageKey(event.message.id)] = nil
            if let tempId = event.message.tempId, let sender = senderIndex[event.message.senderId] {
                let tempKey = TempKey(sender: sender, hash: Self.hash(tempId))
                if tempIds[tempKey] == orderBase + base + offset { tempIds[tempKey] = nil }
            }
        }
        order.removeLast(dropped.count)
        tail.removeSubrange(cut...)
        if cut < pending?.count ?? 0 { pending = nil }
        return true
    }

    /// Appends a new message event.
    mutating func appendMessage(_ message: Message) {
        tail.append(ThreadEvent(seq: message.seq, kind: .message, message: message))
        append(seq: message.seq, id: message.id, senderId: message.senderId, deleted: false, tempId: message.tempId)
    }

    /// How many edit and delete events `message` has (its older ones are known once the store was asked about a
    /// released message).
    func updateCount(of message: Message) throws(HistoryReadError) -> Int {
        if message.seq <= releasedThrough, lookedUp[MessageKey(message.id)] == nil { throw .unindexed(message.id) }
        return eventSeqs[message.id]?.count ?? 0
    }

    /// The chunks that must be resealed so that every event carrying `updated` shows it as it is now.
    /// Computed before the change is committed so a corrupt chunk refuses the change instead of half-applying it.
    mutating func reseal(for updated: Message) throws(HistoryReadError) -> [HistoryChunk] {
        // A released message's older edits are known once the store was asked.
        if updated.seq <= releasedThrough, lookedUp[MessageKey(updated.id)] == nil { throw .unindexed(updated.id) }
        var decodedChunks: [[ThreadEvent]] = []
        var firsts = Set<Int>()
        for seq in sealedSeqs(carrying: updated) {
            if seq <= releasedThrough {
                guard let hit = cache.first(where: { $0.first <= seq && seq <= $0.last }) else { throw .released(seq: seq) }
                if firsts.insert(hit.first).inserted { decodedChunks.append(hit.events) }
            } else if let ci = chunkIndex(containing: seq), firsts.insert(chunks[ci].firstSeq).inserted {
                decodedChunks.append(try decoded(ci))
            }
        }
        var out: [HistoryChunk] = []
        for var events in decodedChunks {
            for i in events.indices where events[i].message.id == updated.id { events[i].message = updated }
            out.append(HistoryChunk.seal(events))
        }
        return out
    }

    /// How many sealed chunks hold an event of `message`: those `reseal(for:)` rewrites. Exact for the chunks in
    /// memory; a released seq that is not cached counts once per `chunkSize` seqs (a chunk holds consecutive seqs, and
    /// chunks start at multiples of `chunkSize` plus one while the configured size stays the same; chunks sealed under
    /// another size make the count an estimate). Nothing is decoded.
    func sealedChunkCount(carrying message: Message, chunkSize: Int) -> Int {
        var known = Set<Int>(), released = Set<Int>()
        for seq in sealedSeqs(carrying: message) {
            if let ci = chunkIndex(containing: seq) {
                known.insert(chunks[ci].firstSeq)
            } else if let hit = cache.first(where: { $0.first <= seq && seq <= $0.last }) {
                known.insert(hit.first)
            } else {
                released.insert((seq - 1) / max(1, chunkSize))
            }
        }
        return known.count + released.count
    }

    /// The seqs of the sealed events that carry `message` (its own event and its edits before the tail).
    private func sealedSeqs(carrying message: Message) -> [Int] {
        var seqs = [message.seq] + (eventSeqs[message.id] ?? [])
        seqs.removeAll { seq in tail.first.map { seq >= $0.seq } ?? false }
        return seqs
    }

    /// The first seq `reseal(for:)` would need read back for `message` (released and not cached), if any; nothing is
    /// sealed to find out.
    func releasedSeqToReseal(_ message: Message) -> Int? {
        guard message.seq > releasedThrough || lookedUp[MessageKey(message.id)] != nil else { return nil }
        return sealedSeqs(carrying: message).first { seq in seq <= releasedThrough && !cache.contains { $0.first <= seq && seq <= $0.last } }
    }

    /// Appends an edit or delete event at `seq`, with the resealed chunks from `reseal(for:)`. A resealed chunk that
    /// is released stays decoded here: `pinned` (until `resealsSaved`) when this node writes it, so a read until then
    /// does not take the store's older version for the truth.
    mutating func appendUpdate(seq: Int, kind: EventKind, message updated: Message, resealed: [HistoryChunk], pinned: Bool = true) {
        for i in tail.indices where tail[i].message.id == updated.id {
            tail[i].message = updated
            if i < pending?.count ?? 0 { pending = nil }
        }
        tail.append(ThreadEvent(seq: seq, kind: kind, message: updated))
        eventSeqs[updated.id, default: []].append(seq)
        if updated.isDeleted {
            if let position = positionById[MessageKey(updated.id)] {
                order[position - orderBase].deleted = true
            } else if updated.seq <= releasedThrough, kind == .deleted, let sender = senderIndex[updated.senderId] {
                releasedLive[sender, default: 0] -= 1
            }
        }
        if newestReleasedMessage?.id == updated.id { newestReleasedMessage = updated }
        for (first, newest) in sealedNewest where newest.id == updated.id { sealedNewest[first] = updated }
        if !resealed.isEmpty { generation += 1 }
        for chunk in resealed {
            if !activeReads.isEmpty { resealedAt[chunk.firstSeq] = generation }
            if let ci = chunks.firstIndex(where: { $0.firstSeq == chunk.firstSeq }) {
                chunks[ci] = chunk
                cache.removeAll { $0.first == chunk.firstSeq }
                if pinned { resealing.insert(chunk.firstSeq) }
            } else {
                // Released: the new version stays decoded (pinned until the store confirms it, when written here). The
                // cached copy `reseal` used gets the same change; only if it left the cache is the new chunk decoded.
                if let hit = cache.firstIndex(where: { $0.first == chunk.firstSeq }) {
                    for i in cache[hit].events.indices where cache[hit].events[i].message.id == updated.id { cache[hit].events[i].message = updated }
                    cache[hit].pinned = cache[hit].pinned || pinned
                } else if let events = try? chunk.events() {
                    cache.append(Decoded(first: chunk.firstSeq, last: chunk.lastSeq, events: events, pinned: pinned))
                }
            }
        }
    }

    /// Seals the oldest `chunkSize` events once the tail holds more than `hotTail + chunkSize` and they are durable.
    /// The events of the chunk are encoded as they become cold (`encodeCold`), so the seal itself finishes the last
    /// block.
    mutating func sealIfNeeded(durableSeq: Int, hotTail: Int, chunkSize: Int) -> HistoryChunk? {
        guard chunkSize > 0 else { return nil }
        encodeCold(durableSeq: durableSeq, hotTail: hotTail, chunkSize: chunkSize)
        guard tail.count >= hotTail + chunkSize, tail[chunkSize - 1].seq <= durableSeq else { return nil }
        let encoder = pending.take() ?? HistoryChunkEncoder(firstSeq: tail[0].seq)
        let chunk = encoder.finish(with: tail[encoder.count..<chunkSize])
        if let newest = tail[0..<chunkSize].last(where: { $0.kind == .message }) { sealedNewest[chunk.firstSeq] = newest.message }
        tail.removeFirst(chunkSize)
        chunks.append(chunk)
        unsaved.insert(chunk.firstSeq)
        releaseIfNeeded()
        return chunk
    }

    /// Encodes into `pending`, a block at a time, the events of the next chunk that left the hot tail (at least
    /// `hotTail` events follow them) and are durable, while they make a block's worth (only compressed blocks are
    /// kept between seals, not a block's raw bytes).
    private mutating func encodeCold(durableSeq: Int, hotTail: Int, chunkSize: Int) {
        if let encoder = pending, encoder.count > chunkSize || encoder.firstSeq != tail.first?.seq { pending = nil }
        let end = min(chunkSize, tail.count - hotTail)
        while true {
            let from = pending?.count ?? 0
            var ready = from
            var bytes = 0
            // Resumes the count where the last call stopped: each event is measured once, not once per commit.
            if let scan = coldScan, scan.firstSeq == tail.first?.seq, scan.from == from, scan.ready <= end {
                (ready, bytes) = (scan.ready, scan.bytes)
            }
            while ready < end, bytes < HistoryChunkEncoder.blockSize, tail[ready].seq <= durableSeq {
                bytes += Self.storedSize(tail[ready].message)
                ready += 1
            }
            guard bytes >= HistoryChunkEncoder.blockSize else {
                coldScan = (tail.first?.seq ?? 0, from, ready, bytes)
                return
            }
            coldScan = nil
            var encoder = pending.take() ?? HistoryChunkEncoder(firstSeq: tail[0].seq)
            encoder.append(tail[from..<ready])
            pending = encoder
        }
    }

    /// How many events of the next chunk are encoded already (for tests).
    var encodedAhead: Int { pending?.count ?? 0 }

    /// A history page: up to `limit` messages before `beforeSeq` (and at most `upTo`), ascending;
    /// `hasMore` is false on the page that reaches the first message.
    /// Walks the events back from the bound, taking the message events: the index is not needed, so released
    /// messages are read like the others. The first event of a thread is always a message (an edit follows its
    /// message), so there are older messages exactly when there are older events. The edit and delete events walked
    /// past count toward `maxBytes` as the messages do (each carries its whole message): a page behind a run of
    /// edits ends early, with one message at least, instead of walking them all.
    mutating func page(beforeSeq: Int?, limit: Int, upTo: Int, maxBytes: Int = .max) throws(HistoryReadError) -> (messages: [Message], hasMore: Bool) {
        var seq = min(beforeSeq ?? Int.max, upTo + 1, lastSeq + 1) - 1
        var newestFirst: [Message] = []
        newestFirst.reserveCapacity(max(0, min(limit, seq)))
        var bytes = 0
        while seq >= 1 && newestFirst.count < limit {
            if let event = try event(at: seq) {
                bytes += Self.estimatedSize(event.message)
                if bytes > maxBytes && !newestFirst.isEmpty { break }
                if event.kind == .message { newestFirst.append(event.message) }
            }
            seq -= 1
        }
        return (newestFirst.reversed(), seq >= 1)
    }

    /// Whether a resident chunk is not confirmed stored yet (the actor holding it must not retire).
    var hasUnsavedChunks: Bool { !unsaved.isEmpty }

    /// About how many bytes this history holds: the hot tail's and the decoded chunks' messages (`storedSize`), the
    /// resident chunks' compressed bytes, and a few dozen bytes per indexed message. Linear in what it holds (for the
    /// supervisor's memory budget, a few times a minute, not per event).
    var approximateBytes: Int {
        var bytes = tail.reduce(0) { $0 + Self.storedSize($1.message) }
        bytes += chunks.reduce(0) { $0 + $1.data.count + 64 }
        bytes += cache.reduce(0) { total, decoded in decoded.events.reduce(total) { $0 + Self.storedSize($1.message) } }
        return bytes + order.count * 48 + (positionById.count + tempIds.count) * 40
    }

    /// A message's raw size, for sizing blocks of a chunk (cheap: no scan of its text).
    static func storedSize(_ message: Message) -> Int {
        message.content.utf8.count + (message.attachmentUrl?.utf8.count ?? 0) + 400
    }

    /// A message's wire size, for byte-bounded pages: the text fields a client chose as JSON writes them (escapes
    /// included: content of control characters takes six times its length; the tempId twice, as a message event
    /// carries it twice), and 400 bytes for the rest.
    static func estimatedSize(_ message: Message) -> Int {
        JSONWriter.writtenLength(message.content) + (message.attachmentUrl.map(JSONWriter.writtenLength) ?? 0)
            + (message.attachmentType.map(JSONWriter.writtenLength) ?? 0) + JSONWriter.writtenLength(message.senderId)
            + 2 * (message.tempId.map(JSONWriter.writtenLength) ?? 0) + 400
    }

    /// Up to `limit` events after `afterSeq` (and at most `upTo`), in seq order.
    mutating func events(after afterSeq: Int, limit: Int, upTo: Int, maxBytes: Int = .max) throws(HistoryReadError) -> (events: [ThreadEvent], hasMore: Bool) {
        let from = max(afterSeq, 0) + 1
        let to = min(upTo, max(afterSeq, 0) + limit)
        guard from <= to else { return ([], false) }
        var out: [ThreadEvent] = []
        out.reserveCapacity(to - from + 1)
        var bytes = 0
        var last = from - 1
        for seq in from...to {
            guard let event = try event(at: seq) else { continue }
            bytes += Self.estimatedSize(event.message)
            if bytes > maxBytes && !out.isEmpty { break }
            out.append(event)
            last = seq
        }
        return (out, last < upTo)
    }

    /// Non-deleted messages with seq in `range` not sent by `excluding`, grouped by sender, in seq order: of the index
    /// only (the caller asks the store for the released part of the range, up to `releasedThrough`). Messages of
    /// `deletingUnstored` count as not deleted: their delete is in memory and not yet stored.
    func messagesBySender(
        in range: ClosedRange<Int>, excluding reader: UserID, deletingUnstored: MessageID? = nil
    ) -> [(sender: UserID, ids: [MessageID])] {
        let excluded = senderIndex[reader]
        var groups: [UInt32: [MessageID]] = [:]
        var found: [UInt32] = []
        var i = orderPosition(ofFirstSeqAtLeast: range.lowerBound)
        while i < order.count, order[i].seq <= range.upperBound {
            let entry = order[i]
            if (!entry.deleted || entry.key.id == deletingUnstored) && entry.sender != excluded {
                if groups[entry.sender] == nil { found.append(entry.sender) }
                groups[entry.sender, default: []].append(entry.key.id)
            }
            i += 1
        }
        return found.map { (senders[Int($0)], groups[$0]!) }
    }

    /// Messages after `readSeq` (up to `upTo`) that `reader` did not send and that are not deleted; `nil` when that
    /// needs the store (`readSeq` inside the released messages, after the first).
    func unreadCount(for reader: UserID, readSeq: Int, upTo: Int) -> Int? {
        let excluded = senderIndex[reader]
        var n = 0
        if readSeq < releasedThrough {
            guard readSeq == 0 else { return nil }
            for (sender, live) in releasedLive where sender != excluded { n += live }
        }
        var i = orderPosition(ofFirstSeqAtLeast: readSeq + 1)
        while i < order.count, order[i].seq <= upTo {
            if !order[i].deleted && order[i].sender != excluded { n += 1 }
            i += 1
        }
        return n
    }

    /// The newest message at or before `upTo` (which is at least `releasedThrough`).
    mutating func lastMessage(upTo: Int) throws(HistoryReadError) -> Message? {
        let end = orderPosition(ofFirstSeqAtLeast: upTo + 1)
        guard end > 0 else { return releasedThrough > 0 ? newestReleasedMessage : nil }
        let seq = order[end - 1].seq
        if seq <= releasedThrough, let newest = newestReleasedMessage, newest.seq == seq { return newest }
        return try event(at: seq)?.message
    }
}
