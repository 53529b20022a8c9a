import Synchronization

/// Counts the raw bytes of history chunks decoded on behalf of one command (`HistoryChunk.events()` adds to the
/// meter of the task it runs in), so that the command can be charged for them: a read that pages through big
/// messages decodes up to a whole chunk (256 events of up to ~126 KB of JSON each) to answer a page of at most
/// `maxPageBytes`, and one read token per request would let one user spend the broker's CPU on decoding.
public final class DecodeMeter: Sendable {
    /// The meter of the command this task works for, if any.
    @TaskLocal public static var current: DecodeMeter?

    private let bytes = Atomic<Int>(0)

    public init() {}

    /// Raw bytes decoded so far.
    public var decoded: Int { bytes.load(ordering: .relaxed) }

    func add(_ count: Int) {
        bytes.add(count, ordering: .relaxed)
    }
}
