import ChatJSON
/// Every bound of the broker's core, with the defaults of docs/PROTOCOL.md §5.
public struct BrokerConfiguration: Sendable {
    /// Largest `content` in UTF-8 bytes (exactly this many is accepted).
    public var maxContent: Int = 16384
    /// Most `messageIds` in one receipt.
    public var maxReceiptIds: Int = 1000
    /// Sustained `chat:send`/`chat:edit`/`chat:delete` per second per connection.
    public var ratePerSecond: Double = 50
    /// Burst of the same.
    public var rateBurst: Double = 100
    /// Receipts and typing per second per connection (bounded separately from sends).
    public var signalRatePerSecond: Double = 200
    /// The burst of receipts and typing: twice the rate.
    public var signalBurst: Double { signalRatePerSecond * 2 }
    /// Sustained reads per second per connection (`chat:history`, `chat:join`, `chat:leave`, and `chat:sync`, which
    /// counts one per 10 threads it names); bursts of twice as many. Also REST reads per user.
    public var readRatePerSecond: Double = 200
    /// The burst of reads: twice the rate, and at least one read (a rate under 0.5/s still lets one read through at a
    /// time, at that rate).
    public var readBurst: Double { max(1, readRatePerSecond * 2) }
    /// What one user's connections may do together, in connections' worth of each per-connection rate and burst
    /// (writes, signals, reads): a user with many sockets, or who reconnects to get fresh buckets, gets no more.
    public var userRateConnections: Double = 4
    /// Several nodes: how long a send held behind a catch-up and refused after a read of the member log (the user is no
    /// member) answers the same user's next held sends without another read. Without it, a user of the company who is
    /// no member of a busy thread could have it read its member log, and hold every member's sends meanwhile, once per
    /// send.
    public var memberRereadInterval: Double = 1
    /// History a command makes the broker decode (chunks read back for a page, a sync, a look-up of a released
    /// message: raw bytes, `HistoryMeter`) or answer (a history page or a sync answer: bytes as written) costs one
    /// more read token per this many bytes of each, charged once the command is done: a request costs a token
    /// whatever its size, so without this one token bought up to a 512 KiB answer and three chunks decoded. A user
    /// who reads a lot of history waits for it at the read rate.
    public var historyBytesPerReadToken = 65_536
    /// An edit or a delete of a message in a sealed chunk reseals every chunk holding an event of it (decoded,
    /// re-encoded, compressed and stored whole: up to about 4 MB of raw JSON for 256 messages of 16 KB, and up to
    /// `maxResealedChunksPerEdit` chunks). Each costs one more write token per this many raw bytes, charged once the
    /// command is done, so that editing one old message after another costs what sending those bytes did, not one
    /// write each. Edits within the hot tail reseal nothing. The thread descriptions (`chat:thread:created`) a new
    /// thread or an addition writes to the members' live devices cost the same per byte (`HistoryMeter.greeted`).
    public var rewrittenBytesPerWriteToken = 65_536
    /// A send to a thread whose members have no live socket here queues one offline notice per such member (with
    /// the offline webhook on): each this many cost its sender one more write token, so that a thread of thousands of
    /// members (made-up ids need not belong to anyone) costs its sends what those rows and requests cost, not one
    /// write each.
    public var offlineNoticesPerWriteToken = 10
    /// Offline notices one company may queue per second on a node (bursts of `offlineNoticeBurstPerCompany`) before
    /// its next ones are made due later (`OfflineNoticePacer`), so that one company's flood does not hold back the
    /// others' in the webhook's queue.
    public var offlineNoticesPerSecondPerCompany: Double = 200
    public var offlineNoticeBurstPerCompany: Double = 2_000
    /// A page of `GET /chat/threads` reads every thread id of the caller (they are ordered by creation, and the page
    /// starts after one of them): each this many ids read cost one more read token, charged once the page is known,
    /// so that a user in 20,000 threads asking for empty pages (53 ms of the broker's CPU each) pays for the ids,
    /// not one read each.
    public var threadIdsPerReadToken = 100
    /// A listed thread whose caller's read mark is older than the messages memory holds has its older unread messages
    /// counted by the store, which looks at each message of that range (37 ms for 100,000 in SQLite): each this many
    /// cost one more read token, so that a member who never read a busy thread (or set their mark back to 1) pays
    /// for the count in the read rate, instead of one read for any length (an outside probe queued other
    /// companies' listings behind such counts: p50 4 ms to 523 ms).
    public var unreadCountedPerReadToken = 1_000
    /// A mark that covers many messages lists them by sender for the receipt (`chat:delivered`, `chat:read`), from
    /// memory and from the store (at most 10 × `maxReceiptIds` of the store's): each this many messages looked at
    /// cost the reader one more token of the mark's class (a signal; over REST, a write), as a `chat:delivered` of
    /// many ids costs one per 10. About 1.6 µs each: a member removed and added again who read a 12,000-message
    /// thread each time paid one signal token for 20–30 ms of CPU, and a colluding pair took a third of a core (an
    /// outside probe).
    public var receiptListedPerSignalToken = 100
    /// Bytes a connection's outbound queue may hold before typing is dropped and then the connection is closed.
    public var outboundLimit: Int = 1_048_576
    /// Bytes one user's connections on a node may hold together (`UserOutboundBudget`): what their outbound queues
    /// hold, and what their task-free websocket writers took and are still writing. Twice `outboundLimit` (a full queue and a full batch
    /// being written) for each of `userRateConnections` connections: 8 MiB by default. Past it, a connection of the
    /// user that stays behind by more than `outboundLimit / 16` bytes for `slowConsumerGrace` is closed as a slow
    /// consumer (at once past twice this), so that all of a user's connections hold at most this plus that much
    /// each once the grace is over.
    public var userOutboundLimit: Int { userBound(twice: outboundLimit) }

    /// What one user's connections on a node may hold together of something each may hold `perConnection` bytes of:
    /// twice that for each of `userRateConnections` connections (at least one), `Int.max` past what an `Int` holds.
    public func userBound(twice perConnection: Int) -> Int {
        let connections = max(1, Int(min(userRateConnections.rounded(.up), 1_000_000)))
        let (product, overflow) = perConnection.multipliedReportingOverflow(by: 2 * connections)
        return overflow ? Int.max : product
    }
    /// Seconds an outbound queue may stay over `outboundLimit` before the connection is closed as a slow consumer.
    public var slowConsumerGrace: Double = 1.0
    /// Seconds after which a typist with no new start is announced as stopped.
    public var typingTimeout: Double = 6
    /// Most events per thread in one `chat:sync` page.
    public var syncLimit: Int = 1000
    /// Events kept decoded in memory per thread before older ones are sealed into LZ4 chunks.
    public var hotTail: Int = 512
    /// Events per sealed history chunk.
    public var chunkSize: Int = 256
    /// Sealed chunks an active thread keeps in memory; older ones are released once stored and read back from the
    /// store when a read, an edit or a tempId retry needs them, so a thread that never goes idle stays bounded.
    public var residentChunks: Int = 4
    /// Seconds without activity after which a thread actor is passivated (its memory freed).
    public var idleSeconds: Double = 300
    /// About how many bytes of history all active thread actors may hold together (`nil`: no bound but each thread's
    /// own). Checked every `memoryCheckSeconds`: past it, the threads active least recently are passivated before
    /// their idle time, until they hold three quarters of it. Without it, one user within every rate limit could keep
    /// many threads loaded, each holding up to `hotTail + chunkSize` messages and `residentChunks` chunks (tens of
    /// megabytes of 16 KiB messages), and grow the broker's memory at about their inbound rate.
    public var threadMemoryBudget: Int? = 1 << 30
    /// How often the memory budget is checked, in seconds.
    public var memoryCheckSeconds: Double = 2
    /// Bytes prepended to every encoded event frame (`42/chat,` for the Socket.IO server; empty when embedded).
    public var framePrefix: [UInt8] = []
    /// Encode every event frame as a WebSocket text frame too, once for all its recipients (the Socket.IO server
    /// sets it; embedded use does not need it).
    public var webSocketFrames = false
    /// Approximate bytes one history or sync page may hold; a page stops early (with `hasMore`) rather than
    /// become one frame larger than a socket's queue or the transport's payload limit.
    public var maxPageBytes: Int = 512 * 1024
    /// Most threads one page of `GET /chat/threads` lists (it also stops at about `maxPageBytes`).
    public var maxThreadsPerPage: Int = 1000
    /// Largest `limit` of a history page.
    public var maxHistoryLimit: Int = 100
    /// Default `limit` of a history page.
    public var defaultHistoryLimit: Int = 50
    /// Most live devices (sockets) one user may hold at once.
    public var maxDevicesPerUser: Int = 256
    /// Most edits of one message (a delete is always allowed): each edit reseals every history chunk holding an
    /// event of the message, so an unbounded number would make each next edit dearer.
    public var maxEditsPerMessage: Int = 100
    /// Most sealed history chunks one edit may rewrite. An edit rewrites every sealed chunk that holds an event of its
    /// message (so that history shows the message as it is now); an edit that would rewrite more is refused
    /// (`forbidden`), so one write token never costs more than this many chunks' decode, encode and store write. A
    /// delete is always allowed: it rewrites these chunks and those sealed since the last edit (the hot tail, at
    /// most `hotTail / chunkSize + 1` more).
    public var maxResealedChunksPerEdit: Int = 4
    /// Most members a thread may have.
    public var maxMembers: Int = 10_000
    /// Most bytes a thread's member ids may take together, written as JSON (quotes, commas and escapes counted): every
    /// `chat:thread:created` and thread of the REST API lists them all. 10,000 ids of 256 bytes, mostly `\`, made a
    /// description of 5 MB, which one add-members request wrote to each device of 40 users and which closed the
    /// extra devices of a user as slow consumers (found by an outside probe); 10,000 UUIDs take 390 KB.
    public var maxMemberIdBytes: Int = 1_048_576

    /// The bytes `ids` take written as a JSON array's elements (quotes, escapes and commas counted).
    func memberIdBytes<S: Sequence<UserID>>(_ ids: S) -> Int {
        ids.reduce(0) { $0 + JSONWriter.writtenLength($1) + 1 }
    }

    /// Refuses `members` (a thread's members as they would be) whose ids take more than `maxMemberIdBytes`.
    func checkMemberIdBytes<S: Sequence<UserID>>(_ members: S) throws(ChatError) {
        guard memberIdBytes(members) <= maxMemberIdBytes else {
            throw ChatError(.payloadTooLarge, "a thread's member ids take at most \(maxMemberIdBytes) bytes together")
        }
    }
    /// Most ids one request may list (`memberIds` of a new thread, `userIds` of an add-members request).
    public var maxMembersPerRequest: Int = 1000
    /// Seconds after which a stored message is notified to members who had no live socket when it was sent
    /// (`StoreWrite.offlineNotice`); `nil`: no offline notices are written (no offline-delivery webhook).
    public var offlineNoticeDelay: Double?
    /// Several nodes: seconds this node remembers the last position the cluster feed announced for each thread. A
    /// thread activated here with no remembered position fans out, at activation, the events the store says were
    /// stored within the last `positionMemory` less a margin (5 s, or half of it when shorter): those cannot have
    /// been announced here yet, since an announced position is remembered for longer than that. A feed that lags
    /// by more than that age is the limit of the rule.
    public var positionMemory: Double = 60

    public init() {}
}
