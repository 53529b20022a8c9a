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

/// A thread's ordered log, owned by its `ThreadActor`: a hot tail of decoded events, older events sealed in
/// LZ4 `HistoryChunk`s, and a compact index of every message (seq, sender, deleted) for receipts and unread
/// counts. Every event shows its message as it is now: an edit or delete rewrites the events (and reseals the
/// chunks) that carry that message.
struct ThreadHistory {
    private(set) var chunks: [HistoryChunk] = []
    private(set) var tail: [ThreadEvent] = []
    private(set) var order: [MessageIndexEntry] = []
    private var positionById: [MessageID: Int] = [:]
    private var tempIds: [String: MessageID] = [:]
    private var eventSeqs: [MessageID: [Int]] = [:]
    private var cache: [(index: Int, events: [ThreadEvent])] = []
    private static let cacheSize = 4

    init() {}

    init(chunks: [HistoryChunk], tail: [ThreadEvent], index: [MessageIndexEntry], editEvents: [(seq: Int, messageId: MessageID)]) {
        self.chunks = chunks.sorted { $0.firstSeq < $1.firstSeq }
        self.tail = tail.sorted { $0.seq < $1.seq }
        order = index.sorted { $0.seq < $1.seq }
        for (i, entry) in order.enumerated() {
            positionById[entry.id] = i
            if let tempId = entry.tempId { tempIds[Self.tempKey(entry.senderId, tempId)] = entry.id }
        }
        for edit in editEvents { eventSeqs[edit.messageId, default: []].append(edit.seq) }
    }

    /// The last seq in the log (0 for an empty thread).
    var lastSeq: Int { tail.last?.seq ?? chunks.last?.lastSeq ?? 0 }

    static func tempKey(_ sender: UserID, _ tempId: String) -> String { sender + "\u{0}" + tempId }

    func messageId(forTempId tempId: String, sender: UserID) -> MessageID? { tempIds[Self.tempKey(sender, tempId)] }

    func indexEntry(_ id: MessageID) -> MessageIndexEntry? { positionById[id].map { order[$0] } }

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
    mutating func event(at seq: Int) throws(HistoryChunkError) -> ThreadEvent? {
        if let first = tail.first?.seq, seq >= first {
            let i = seq - first
            return i < tail.count ? tail[i] : nil
        }
        guard let ci = chunkIndex(containing: seq) else { return nil }
        let events = try decoded(ci)
        return events[seq - chunks[ci].firstSeq]
    }

    /// The current state of message `id`.
    mutating func message(_ id: MessageID) throws(HistoryChunkError) -> Message? {
        guard let entry = indexEntry(id) else { return nil }
        return try event(at: entry.seq)?.message
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

    private mutating func decoded(_ ci: Int) throws(HistoryChunkError) -> [ThreadEvent] {
        if let hit = cache.firstIndex(where: { $0.index == ci }) { return cache[hit].events }
        let events = try chunks[ci].events()
        cache.append((ci, events))
        if cache.count > Self.cacheSize { cache.removeFirst() }
        return events
    }

    /// Appends a new message event.
    mutating func appendMessage(_ message: Message) {
        tail.append(ThreadEvent(seq: message.seq, kind: .message, message: message))
        positionById[message.id] = order.count
        order.append(MessageIndexEntry(seq: message.seq, id: message.id, senderId: message.senderId, deleted: false, tempId: message.tempId))
        if let tempId = message.tempId { tempIds[Self.tempKey(message.senderId, tempId)] = message.id }
    }

    /// The chunks that must be resealed so that every event carrying `updated` shows it as it is now.
    /// Computed before the change is committed so a corrupt chunk refuses the change instead of half-applying it.
    mutating func reseal(for updated: Message) throws(HistoryChunkError) -> [HistoryChunk] {
        var seqs = [updated.seq] + (eventSeqs[updated.id] ?? [])
        seqs.removeAll { seq in tail.first.map { seq >= $0.seq } ?? false }
        var indices: [Int] = []
        for seq in seqs {
            if let ci = chunkIndex(containing: seq), !indices.contains(ci) { indices.append(ci) }
        }
        var out: [HistoryChunk] = []
        for ci in indices {
            var events = try decoded(ci)
            for i in events.indices where events[i].message.id == updated.id { events[i].message = updated }
            out.append(HistoryChunk.seal(events))
        }
        return out
    }

    /// Appends an edit or delete event at `seq`, with the resealed chunks from `reseal(for:)`.
    mutating func appendUpdate(seq: Int, kind: EventKind, message updated: Message, resealed: [HistoryChunk]) {
        for i in tail.indices where tail[i].message.id == updated.id { tail[i].message = updated }
        tail.append(ThreadEvent(seq: seq, kind: kind, message: updated))
        eventSeqs[updated.id, default: []].append(seq)
        if updated.isDeleted, let pos = positionById[updated.id] { order[pos].deleted = true }
        for chunk in resealed {
            if let ci = chunks.firstIndex(where: { $0.firstSeq == chunk.firstSeq }) {
                chunks[ci] = chunk
                cache.removeAll { $0.index == ci }
            }
        }
    }

    /// Seals the oldest `chunkSize` events once the tail holds more than `hotTail + chunkSize` and they are durable.
    mutating func sealIfNeeded(durableSeq: Int, hotTail: Int, chunkSize: Int) -> HistoryChunk? {
        guard chunkSize > 0, tail.count >= hotTail + chunkSize, tail[chunkSize - 1].seq <= durableSeq else { return nil }
        let chunk = HistoryChunk.seal(tail[0..<chunkSize])
        tail.removeFirst(chunkSize)
        chunks.append(chunk)
        return chunk
    }

    /// A history page: up to `limit` messages before `beforeSeq` (and at most `upTo`), ascending;
    /// `hasMore` is false on the page that reaches the first message.
    mutating func page(beforeSeq: Int?, limit: Int, upTo: Int, maxBytes: Int = .max) throws(HistoryChunkError) -> (messages: [Message], hasMore: Bool) {
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
    mutating func events(after afterSeq: Int, limit: Int, upTo: Int, maxBytes: Int = .max) throws(HistoryChunkError) -> (events: [ThreadEvent], hasMore: Bool) {
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
        var groups: [UserID: [MessageID]] = [:]
        var senders: [UserID] = []
        var i = orderPosition(ofFirstSeqAtLeast: range.lowerBound)
        while i < order.count, order[i].seq <= range.upperBound {
            let entry = order[i]
            if !entry.deleted && entry.senderId != reader {
                if groups[entry.senderId] == nil { senders.append(entry.senderId) }
                groups[entry.senderId, default: []].append(entry.id)
            }
            i += 1
        }
        return senders.map { ($0, groups[$0]!) }
    }

    /// Messages after `readSeq` (up to `upTo`) that `reader` did not send and that are not deleted.
    func unreadCount(for reader: UserID, readSeq: Int, upTo: Int) -> Int {
        var n = 0
        var i = orderPosition(ofFirstSeqAtLeast: readSeq + 1)
        while i < order.count, order[i].seq <= upTo {
            if !order[i].deleted && order[i].senderId != reader { n += 1 }
            i += 1
        }
        return n
    }

    /// The newest message at or before `upTo`.
    mutating func lastMessage(upTo: Int) throws(HistoryChunkError) -> Message? {
        let end = orderPosition(ofFirstSeqAtLeast: upTo + 1)
        guard end > 0 else { return nil }
        return try event(at: order[end - 1].seq)?.message
    }
}
