#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif
import NIOCore
import NIOWebSocket

/// The harness's one clock: monotonic nanoseconds, the same clock NIO schedules on. Every latency is the difference
/// of two readings taken in this process (the send time travels inside the message's `tempId`).
@inline(__always)
func monotonicNanos() -> UInt64 { NIODeadline.now().uptimeNanoseconds }

/// Byte patterns and small scanners for the hot receive path. A delivery is read without building a JSON tree:
/// the harness only needs the thread id, the seq and its own `tempId`, and all three sit at known keys. A JSON string
/// value cannot contain an unescaped `"`, so `"seq":` (quote, key, quote, colon) only ever matches a real key.
/// Anything the fast path does not recognise goes through `SocketCodec`/`JSONParser` instead.
enum Scan {
    static let chatNamespace: [UInt8] = Array("/chat,".utf8)
    static let chatMessageEvent: [UInt8] = Array(#"["chat:message","#.utf8)
    static let threadIdKey: [UInt8] = Array(#""threadId":""#.utf8)
    static let seqKey: [UInt8] = Array(#""seq":"#.utf8)
    static let tempIdKey: [UInt8] = Array(#""tempId":""#.utf8)
    static let successTrue: [UInt8] = Array(#""success":true"#.utf8)

    /// Whether `hay[at...]` starts with `prefix`.
    @inline(__always)
    static func hasPrefix(_ prefix: [UInt8], in hay: UnsafeRawBufferPointer, at: Int) -> Bool {
        guard at >= 0, at + prefix.count <= hay.count else { return false }
        for i in 0..<prefix.count where hay[at + i] != prefix[i] { return false }
        return true
    }

    /// The index just past the first occurrence of `needle` in `hay[from...]`.
    @inline(__always)
    static func after(_ needle: [UInt8], in hay: UnsafeRawBufferPointer, from: Int) -> Int? {
        let n = needle.count
        guard n > 0, from >= 0, from + n <= hay.count, let base = hay.baseAddress else { return nil }
        return needle.withUnsafeBytes { nb -> Int? in
            let first = Int32(nb[0])
            var i = from
            while i + n <= hay.count {
                guard let p = memchr(base + i, first, hay.count - n + 1 - i) else { return nil }
                let j = base.distance(to: UnsafeRawPointer(p))
                if memcmp(base + j, nb.baseAddress!, n) == 0 { return j + n }
                i = j + 1
            }
            return nil
        }
    }

    /// The index of the next `"` at or after `from` (identifiers written by servers carry no escapes).
    @inline(__always)
    static func quote(in hay: UnsafeRawBufferPointer, from: Int) -> Int? {
        guard from < hay.count, let base = hay.baseAddress else { return nil }
        guard let p = memchr(base + from, 0x22, hay.count - from) else { return nil }
        return base.distance(to: UnsafeRawPointer(p))
    }

    /// A non-negative decimal integer starting at `at`, and the index after it.
    @inline(__always)
    static func integer(in hay: UnsafeRawBufferPointer, at: Int) -> (value: Int, end: Int)? {
        var i = at
        var v = 0
        while i < hay.count, hay[i] >= 0x30, hay[i] <= 0x39, i - at < 19 {
            v = v &* 10 &+ Int(hay[i] &- 0x30)
            i += 1
        }
        return i > at ? (v, i) : nil
    }

    /// FNV-1a over a byte range: the key of the thread directory.
    @inline(__always)
    static func fnv1a(_ bytes: UnsafeRawBufferPointer) -> UInt64 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for b in bytes {
            h ^= UInt64(b)
            h = h &* 0x100_0000_01b3
        }
        return h
    }
}

extension ByteBuffer {
    /// Appends the decimal digits of a non-negative integer without going through `String`.
    @inline(__always)
    mutating func writeDecimal(_ value: UInt64) {
        if value == 0 {
            writeInteger(UInt8(ascii: "0"))
            return
        }
        var digits: (UInt64, UInt64, UInt64) = (0, 0, 0)  // 24 bytes of scratch, enough for 20 digits
        var v = value
        var n = 0
        withUnsafeMutableBytes(of: &digits) { scratch in
            while v > 0 {
                scratch[23 - n] = UInt8(v % 10) + 0x30
                v /= 10
                n += 1
            }
            writeBytes(UnsafeRawBufferPointer(rebasing: scratch[(24 - n)...]))
        }
    }
}

/// A tiny xorshift generator for WebSocket masking keys (clients must mask; the key needs no cryptographic quality,
/// and `SystemRandomNumberGenerator` costs a system call per key).
struct MaskKeyGenerator {
    private var state: UInt64

    init(seed: UInt64) { state = seed | 1 }

    mutating func nextUInt32() -> UInt32 {
        state ^= state << 13
        state ^= state >> 7
        state ^= state << 17
        return UInt32(truncatingIfNeeded: state >> 16)
    }

    mutating func next() -> WebSocketMaskingKey {
        let v = nextUInt32()
        return WebSocketMaskingKey([UInt8(v & 0xFF), UInt8((v >> 8) & 0xFF), UInt8((v >> 16) & 0xFF), UInt8(v >> 24)])!
    }
}

