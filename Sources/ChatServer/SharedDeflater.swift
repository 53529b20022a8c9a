import CompressNIO
import DequeModule
import NIOCore
import Synchronization

/// The sending side of permessage-deflate for every compressed websocket. The broker negotiates
/// `server_no_context_takeover` (RFC 7692 §7.1.1.1), so each message is compressed on its own, and:
/// - no socket holds a compressor: one is borrowed from a small pool for each message (zlib's deflate state is about
///   256 KiB, half of it touched at once: 125 KB per socket that negotiated compression, before any token);
/// - an event fanned out to many sockets is compressed once: the payload a writer hands over is the event's shared
///   buffer (`OutboundFrame.bytes`), so its storage identifies the event, and the deflated bytes are kept a short
///   while for the other recipients (a user's 256 sockets made the broker compress each 16-KB message 256 times,
///   which starved every other company of CPU; found by an outside probe).
///
/// The cache holds the payloads it keys (a payload's storage cannot be freed and its address reused while its entry
/// lives, and a buffer shared with the cache is copied on write, never changed in place), at most `maxEntries` of
/// them and `maxBytes` of payloads and deflated bytes together.
final class SharedDeflater: Sendable {
    static let shared = SharedDeflater()

    /// Payloads smaller than this are sent as they are (as hummingbird-websocket's extension does by default).
    static let minimumSize = 256

    private struct Key: Hashable {
        let address: UInt
        let count: Int
        let windowBits: Int
    }

    private struct Cache {
        var entries: [Key: (payload: ByteBuffer, deflated: ByteBuffer)] = [:]
        var order = Deque<Key>()
        var bytes = 0
    }

    /// A zlib deflate stream, used by one message at a time (taken from the pool, then put back).
    private final class Compressor: @unchecked Sendable {
        let zlib: ZlibCompressor
        init(windowBits: Int) throws {
            zlib = try ZlibCompressor(algorithm: .deflate, configuration: .init(windowSize: Int32(windowBits)))
        }
    }

    private let maxEntries: Int
    private let maxBytes: Int
    private let cache = Mutex(Cache())
    /// Idle compressors by window size, at most `maxIdle` of each.
    private let idle = Mutex<[Int: [Compressor]]>([:])
    private let maxIdle = 4

    init(maxEntries: Int = 256, maxBytes: Int = 16 << 20) {
        self.maxEntries = maxEntries
        self.maxBytes = maxBytes
    }

    /// `payload` as one compressed message for a peer whose window is `windowBits` (9 to 15), without the trailing
    /// `00 00 ff ff` (RFC 7692 §7.2.1); `nil` if it is not worth compressing or zlib failed (then it is sent as it is).
    func deflate(_ payload: ByteBuffer, windowBits: Int) -> ByteBuffer? {
        guard payload.readableBytes >= Self.minimumSize, (9...15).contains(windowBits) else { return nil }
        let key = payload.withUnsafeReadableBytes { Key(address: UInt(bitPattern: $0.baseAddress), count: $0.count, windowBits: windowBits) }
        if let hit = cache.withLock({ $0.entries[key]?.deflated }) { return hit }
        guard let deflated = compress(payload, windowBits: windowBits) else { return nil }
        remember(key, payload: payload, deflated: deflated)
        return deflated
    }

    /// How many payloads the cache holds now (tests).
    var cachedCount: Int { cache.withLock { $0.entries.count } }

    private func compress(_ payload: ByteBuffer, windowBits: Int) -> ByteBuffer? {
        guard let compressor = idle.withLock({ $0[windowBits]?.popLast() }) ?? (try? Compressor(windowBits: windowBits)) else { return nil }
        var input = payload
        var output = ByteBuffer()
        output.reserveCapacity(compressor.zlib.maxSize(from: input))
        do {
            try compressor.zlib.deflate(from: &input, to: &output, flush: .sync)
            try compressor.zlib.reset()
        } catch {
            // A stream in an unknown state is not put back.
            return nil
        }
        idle.withLock { pools in
            if pools[windowBits, default: []].count < maxIdle { pools[windowBits, default: []].append(compressor) }
        }
        // All of it taken, ending with the sync flush's empty block, which RFC 7692 §7.2.1 leaves off.
        guard input.readableBytes == 0, output.readableBytes >= 4,
            output.getBytes(at: output.writerIndex - 4, length: 4) == [0x00, 0x00, 0xFF, 0xFF]
        else { return nil }
        output.moveWriterIndex(to: output.writerIndex - 4)
        return output
    }

    private func remember(_ key: Key, payload: ByteBuffer, deflated: ByteBuffer) {
        let size = payload.readableBytes + deflated.readableBytes
        guard size <= maxBytes / 4 else { return }
        cache.withLock { cache in
            guard cache.entries[key] == nil else { return }
            cache.entries[key] = (payload, deflated)
            cache.order.append(key)
            cache.bytes += size
            while cache.order.count > maxEntries || cache.bytes > maxBytes, let oldest = cache.order.popFirst() {
                if let gone = cache.entries.removeValue(forKey: oldest) { cache.bytes -= gone.payload.readableBytes + gone.deflated.readableBytes }
            }
        }
    }
}
