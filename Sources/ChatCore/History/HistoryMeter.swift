import Synchronization

/// Counts the history work one command makes the broker do, so that the command's user can be charged for it:
/// - `decoded`: raw bytes of history chunks decoded (`HistoryChunk.events()` adds to the meter of the task it runs
///   in). A read that pages through big messages decodes up to a whole chunk (256 events of up to ~126 KB of JSON
///   each) to answer a page of at most `maxPageBytes`; charged to read tokens (`historyBytesPerReadToken`).
/// - `rewritten`: raw bytes of the sealed chunks an edit or a delete reseals (each is decoded, re-encoded,
///   compressed and stored whole), so that editing many old messages costs as many write tokens as sending their
///   bytes did (`rewrittenBytesPerWriteToken`), not one each.
/// - `notices`: offline notices a send queued (one per member without a live socket), charged to write tokens
///   (`offlineNoticesPerWriteToken`).
/// - `greeted`: bytes of `chat:thread:created` frames a membership change or a new thread wrote to the members' live
///   devices (the thread's description, with its member list, once per device), charged to write tokens
///   (`rewrittenBytesPerWriteToken`): the frame of a thread of 10,000 members with long ids is about 5 MB, and one
///   request of a few hundred bytes adding 40 users pushed 200 MB to their devices for 100 write tokens (found by an
///   outside probe).
/// - `listed`: thread ids read to find a page of the caller's threads (`threadIdsPerReadToken`).
/// - `counted`: messages the store looked at to count a listed thread's unread messages older than memory holds
///   (`unreadCountedPerReadToken`).
/// - `receiptListed`: messages looked at to list a receipt's newly covered messages by sender, in memory or in the
///   store (`receiptListedPerSignalToken`).
/// - `storeLookups`: queries of a thread's head a command made on several nodes (a client naming a seq the node has
///   not heard of), one read token each.
public final class HistoryMeter: Sendable {
    /// The meter of the command this task works for, if any.
    @TaskLocal public static var current: HistoryMeter?

    private let decodedBytes = Atomic<Int>(0)
    private let rewrittenBytes = Atomic<Int>(0)
    private let queuedNotices = Atomic<Int>(0)
    private let greetedBytes = Atomic<Int>(0)
    private let listedIds = Atomic<Int>(0)
    private let countedMessages = Atomic<Int>(0)
    private let lookups = Atomic<Int>(0)
    private let receiptMessages = Atomic<Int>(0)
    /// Told of offline notices as they are queued (`init(onNotices:)`).
    private let onNotices: (@Sendable (Int) -> Void)?

    public init() { onNotices = nil }

    /// A meter that passes each count of offline notices queued to `onNotices` as well: a pipelined send is answered
    /// before it is written if it is held (behind a catch-up or an edit), and its user is charged when it is.
    public init(onNotices: @escaping @Sendable (Int) -> Void) { self.onNotices = onNotices }

    /// Raw bytes decoded so far.
    public var decoded: Int { decodedBytes.load(ordering: .relaxed) }

    /// Raw bytes of resealed chunks so far.
    public var rewritten: Int { rewrittenBytes.load(ordering: .relaxed) }

    /// Offline notices queued so far.
    public var notices: Int { queuedNotices.load(ordering: .relaxed) }

    func addDecoded(_ count: Int) {
        decodedBytes.add(count, ordering: .relaxed)
    }

    func addRewritten(_ count: Int) {
        rewrittenBytes.add(count, ordering: .relaxed)
    }

    func addNotices(_ count: Int) {
        queuedNotices.add(count, ordering: .relaxed)
        if count > 0 { onNotices?(count) }
    }

    /// Bytes of thread descriptions written to devices so far.
    public var greeted: Int { greetedBytes.load(ordering: .relaxed) }

    func addGreeted(_ count: Int) {
        greetedBytes.add(count, ordering: .relaxed)
    }

    /// Thread ids read to find a page of the caller's threads so far.
    public var listed: Int { listedIds.load(ordering: .relaxed) }

    func addListed(_ count: Int) {
        listedIds.add(count, ordering: .relaxed)
    }

    /// Messages the store looked at to count unread ones so far.
    public var counted: Int { countedMessages.load(ordering: .relaxed) }

    func addCounted(_ count: Int) {
        countedMessages.add(count, ordering: .relaxed)
    }

    /// Messages looked at to list receipts' newly covered messages by sender so far.
    public var receiptListed: Int { receiptMessages.load(ordering: .relaxed) }

    func addReceiptListed(_ count: Int) {
        receiptMessages.add(count, ordering: .relaxed)
    }

    /// Thread heads asked of the store so far.
    public var storeLookups: Int { lookups.load(ordering: .relaxed) }

    func addStoreLookups(_ count: Int) {
        lookups.add(count, ordering: .relaxed)
    }
}
