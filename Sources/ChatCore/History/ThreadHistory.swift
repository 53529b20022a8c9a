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

    var description: String {
        switch self {
        case .corrupt(let error): error.description
        case .released(let seq): "the history chunk holding seq \(seq) is not in memory"
        }
    }
}

/// A thread's ordered log, owned by its `ThreadActor`: a hot tail of decoded events, older events sealed in
/// LZ4 `HistoryChunk`s, and a compact index of every message (seq, id, sender, deleted, tempId hash) for
/// receipts, unread counts, edits and tempId dedupe. Every event shows its message as it is now: an edit or
/// delete rewrites the events (and reseals the chunks) that carry that message.
///
/// Only the newest `residentChunks` chunks stay in memory: older ones, once the store confirmed it holds them, are
/// released and read back on demand (`HistoryReadError.released`, then `load`). A few decoded chunks are cached.
///
/// The index costs about 50 bytes per message plus its two hash tables (no string per message: ids are kept
/// as 16-byte keys, senders interned per thread, tempIds as 64-bit hashes checked against the message on a hit).
struct ThreadHistory {
    /// One message in the index.
    struct Entry {
        var seq: Int
        var key: MessageKey
        var sender: UInt32
        var deleted: Bool
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
    private(set) var order: [Entry] = []
    private var positionById: [MessageKey: Int32] = [:]
    private var tempIds: [TempKey: Int32] = [:]
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
    /// How many sealed chunks stay in memory (`.max`: all).
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
    /// How many chunks this history released so far.
    private(set) var releasedChunks = 0
    /// Moves whenever a chunk is resealed here or a reseal is confirmed (`resealedAt`). A history built to replace
    /// another starts above the old one's.
    private(set) var generation = 0

    init() {}

    init(
        chunks: [HistoryChunk], tail: [ThreadEvent], index: [MessageIndexEntry], editEvents: [(seq: Int, messageId: MessageID)],
        replacing old: ThreadHistory? = nil
    ) {
        generation = (old?.generation ?? 0) + 1
        lastRead = old?.lastRead ?? 0
        self.chunks = chunks.sorted { $0.firstSeq < $1.firstSeq }
        self.tail = tail.sorted { $0.seq < $1.seq }
        order.reserveCapacity(index.count)
        for entry in index.sorted(by: { $0.seq < $1.seq }) {
            append(seq: entry.seq, id: entry.id, senderId: entry.senderId, deleted: entry.deleted, tempId: entry.tempId)
        }
        for edit in editEvents { eventSeqs[edit.messageId, default: []].append(edit.seq) }
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

    private static func hash(_ tempId: String) -> Int {
        var hasher = Hasher()
        hasher.combine(tempId)
        return hasher.finalize()
    }

    private mutating func append(seq: Int, id: MessageID, senderId: UserID, deleted: Bool, tempId: String?) {
        let sender = intern(senderId)
        let key = MessageKey(id)
        positionById[key] = Int32(order.count)
        if let tempId { tempIds[TempKey(sender: sender, hash: Self.hash(tempId))] = Int32(order.count) }
        order.append(Entry(seq: seq, key: key, sender: sender, deleted: deleted))
    }

    /// The message `sender` sent earlier with `tempId`, as it is now (the hash hit is checked against the message).
    mutating func message(forTempId tempId: String, sender: UserID) throws(HistoryReadError) -> Message? {
        guard let senderIndex = senderIndex[sender], let position = tempIds[TempKey(sender: senderIndex, hash: Self.hash(tempId))],
            let message = try event(at: order[Int(position)].seq)?.message, message.tempId == tempId, message.senderId == sender
        else { return nil }
        return message
    }

    /// What the index knows of message `id`.
    func indexEntry(_ id: MessageID) -> IndexedMessage? {
        guard let position = positionById[MessageKey(id)] else { return nil }
        let entry = order[Int(position)]
        return IndexedMessage(seq: entry.seq, senderId: senders[Int(entry.sender)], deleted: entry.deleted)
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
        guard let position = positionById[MessageKey(id)] else { return nil }
        return try event(at: order[Int(position)].seq)?.message
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

    /// Ends a read: the chunks read back for it may leave the cache.
    mutating func endRead(_ read: Int) {
        activeReads.remove(read)
        loadedFor = loadedFor.filter { $0.value != read }
        if activeReads.isEmpty { resealedAt = [:] }
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
    private mutating func releaseIfNeeded() {
        var released: [HistoryChunk] = []
        while chunks.count > residentChunks, let oldest = chunks.first, !unsaved.contains(oldest.firstSeq), !resealing.contains(oldest.firstSeq) {
            released.append(oldest)
            chunks.removeFirst()
            releasedThrough = oldest.lastSeq
            releasedChunks += 1
        }
        // The newest message released: looked for from the newest chunk back (usually one decode).
        for chunk in released.reversed() {
            let events = cache.first(where: { $0.first == chunk.firstSeq })?.events ?? (try? chunk.events())
            if let newest = events?.last(where: { $0.kind == .message }) {
                newestReleasedMessage = newest.message
                break
            }
        }
        for chunk in released { cache.removeAll { $0.first == chunk.firstSeq && !$0.pinned } }
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
                if tempIds[tempKey] == Int32(base + offset) { tempIds[tempKey] = nil }
            }
        }
        order.removeLast(dropped.count)
        tail.removeSubrange(cut...)
        return true
    }

    /// Appends a new message event.
    mutating func appendMessage(_ message: Message) {
        tail.append(ThreadEvent(seq: message.seq, kind: .message, message: message))
        append(seq: message.seq, id: message.id, senderId: message.senderId, deleted: false, tempId: message.tempId)
    }

    /// The chunks that must be resealed so that every event carrying `updated` shows it as it is now.
    /// Computed before the change is committed so a corrupt chunk refuses the change instead of half-applying it.
    mutating func reseal(for updated: Message) throws(HistoryReadError) -> [HistoryChunk] {
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

    /// The seqs of the sealed events that carry `message` (its own event and its edits before the tail).
    private func sealedSeqs(carrying message: Message) -> [Int] {
        var seqs = [message.seq] + (eventSeqs[message.id] ?? [])
        seqs.removeAll { seq in tail.first.map { seq >= $0.seq } ?? false }
        return seqs
    }

    /// The first seq `reseal(for:)` would need read back for `message` (released and not cached), if any; nothing is
    /// sealed to find out.
    func releasedSeqToReseal(_ message: Message) -> Int? {
        sealedSeqs(carrying: message).first { seq in seq <= releasedThrough && !cache.contains { $0.first <= seq && seq <= $0.last } }
    }

    /// Appends an edit or delete event at `seq`, with the resealed chunks from `reseal(for:)`. A resealed chunk that
    /// is released stays decoded here: `pinned` (until `resealsSaved`) when this node writes it, so a read until then
    /// does not take the store's older version for the truth.
    mutating func appendUpdate(seq: Int, kind: EventKind, message updated: Message, resealed: [HistoryChunk], pinned: Bool = true) {
        for i in tail.indices where tail[i].message.id == updated.id { tail[i].message = updated }
        tail.append(ThreadEvent(seq: seq, kind: kind, message: updated))
        eventSeqs[updated.id, default: []].append(seq)
        if updated.isDeleted, let pos = positionById[MessageKey(updated.id)] { order[Int(pos)].deleted = true }
        if newestReleasedMessage?.id == updated.id { newestReleasedMessage = updated }
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
    mutating func sealIfNeeded(durableSeq: Int, hotTail: Int, chunkSize: Int) -> HistoryChunk? {
        guard chunkSize > 0, tail.count >= hotTail + chunkSize, tail[chunkSize - 1].seq <= durableSeq else { return nil }
        let chunk = HistoryChunk.seal(tail[0..<chunkSize])
        tail.removeFirst(chunkSize)
        chunks.append(chunk)
        unsaved.insert(chunk.firstSeq)
        releaseIfNeeded()
        return chunk
    }

    /// A history page: up to `limit` messages before `beforeSeq` (and at most `upTo`), ascending;
    /// `hasMore` is false on the page that reaches the first message.
    mutating func page(beforeSeq: Int?, limit: Int, upTo: Int, maxBytes: Int = .max) throws(HistoryReadError) -> (messages: [Message], hasMore: Bool) {
        let bound = min(beforeSeq ?? Int.max, upTo + 1)
        let end = orderPosition(ofFirstSeqAtLeast: bound)
        var start = max(0, end - limit)
        var newestFirst: [Message] = []
        newestFirst.reserveCapacity(end - start)
        var bytes = 0
        var i = end - 1
        while i >= start {
            guard let event = try event(at: order[i].seq) else {
                i -= 1
                continue
            }
            bytes += Self.estimatedSize(event.message)
            if bytes > maxBytes && !newestFirst.isEmpty {
                start = i + 1
                break
            }
            newestFirst.append(event.message)
            i -= 1
        }
        return (newestFirst.reversed(), start > 0)
    }

    /// A rough wire size of a message, for byte-bounded pages.
    static func estimatedSize(_ message: Message) -> Int {
        message.content.utf8.count + (message.attachmentUrl?.utf8.count ?? 0) + 400
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

    /// Non-deleted messages with seq in `range` not sent by `excluding`, grouped by sender, in seq order.
    func messagesBySender(in range: ClosedRange<Int>, excluding reader: UserID) -> [(sender: UserID, ids: [MessageID])] {
        let excluded = senderIndex[reader]
        var groups: [UInt32: [MessageID]] = [:]
        var found: [UInt32] = []
        var i = orderPosition(ofFirstSeqAtLeast: range.lowerBound)
        while i < order.count, order[i].seq <= range.upperBound {
            let entry = order[i]
            if !entry.deleted && entry.sender != excluded {
                if groups[entry.sender] == nil { found.append(entry.sender) }
                groups[entry.sender, default: []].append(entry.key.id)
            }
            i += 1
        }
        return found.map { (senders[Int($0)], groups[$0]!) }
    }

    /// Messages after `readSeq` (up to `upTo`) that `reader` did not send and that are not deleted.
    func unreadCount(for reader: UserID, readSeq: Int, upTo: Int) -> Int {
        let excluded = senderIndex[reader]
        var n = 0
        var i = orderPosition(ofFirstSeqAtLeast: readSeq + 1)
        while i < order.count, order[i].seq <= upTo {
            if !order[i].deleted && order[i].sender != excluded { n += 1 }
            i += 1
        }
        return n
    }

    /// The newest message at or before `upTo`.
    mutating func lastMessage(upTo: Int) throws(HistoryReadError) -> Message? {
        let end = orderPosition(ofFirstSeqAtLeast: upTo + 1)
        guard end > 0 else { return nil }
        let seq = order[end - 1].seq
        if seq <= releasedThrough, let newest = newestReleasedMessage, newest.seq == seq { return newest }
        return try event(at: seq)?.message
    }
}
