#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Milliseconds since the Unix epoch, rendered as ISO-8601 UTC with milliseconds (`2026-11-27T15:04:05.123Z`).
public struct Timestamp: Sendable, Hashable, Comparable {
    public var millis: Int64

    public init(millis: Int64) { self.millis = millis }

    /// The current wall-clock time.
    public static func now() -> Timestamp {
        var ts = timespec()
        clock_gettime(CLOCK_REALTIME, &ts)
        return Timestamp(millis: Int64(ts.tv_sec) * 1000 + Int64(ts.tv_nsec) / 1_000_000)
    }

    public static func < (lhs: Timestamp, rhs: Timestamp) -> Bool { lhs.millis < rhs.millis }

    /// ISO-8601 UTC with milliseconds.
    public var iso8601: String {
        var out: [UInt8] = []
        out.reserveCapacity(24)
        writeISO8601(to: &out)
        return String(decoding: out, as: UTF8.self)
    }

    /// Appends `YYYY-MM-DDTHH:MM:SS.mmmZ` to `out` (24 bytes, no allocation beyond `out`'s growth).
    public func writeISO8601(to out: inout [UInt8]) {
        let ms = Int(((millis % 1000) + 1000) % 1000)
        let secs = (millis - Int64(ms)) / 1000
        var days = Int(secs / 86400)
        var rem = Int(secs % 86400)
        if rem < 0 {
            rem += 86400
            days -= 1
        }
        // Civil-from-days (Howard Hinnant's algorithm).
        let z = days + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let doe = z - era * 146_097
        let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365
        var y = yoe + era * 400
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100)
        let mp = (5 * doy + 2) / 153
        let d = doy - (153 * mp + 2) / 5 + 1
        let m = mp < 10 ? mp + 3 : mp - 9
        if m <= 2 { y += 1 }
        // The 24 bytes are filled in place and appended at once.
        withUnsafeTemporaryAllocation(of: UInt8.self, capacity: 24) { b in
            func put(_ value: Int, at offset: Int, width: Int) {
                var v = value.magnitude
                for i in stride(from: offset + width - 1, through: offset, by: -1) {
                    b[i] = UInt8(truncatingIfNeeded: v % 10) &+ 0x30
                    v /= 10
                }
            }
            put(y, at: 0, width: 4)
            b[4] = UInt8(ascii: "-")
            put(m, at: 5, width: 2)
            b[7] = UInt8(ascii: "-")
            put(d, at: 8, width: 2)
            b[10] = UInt8(ascii: "T")
            put(rem / 3600, at: 11, width: 2)
            b[13] = UInt8(ascii: ":")
            put(rem / 60 % 60, at: 14, width: 2)
            b[16] = UInt8(ascii: ":")
            put(rem % 60, at: 17, width: 2)
            b[19] = UInt8(ascii: ".")
            put(ms, at: 20, width: 3)
            b[23] = UInt8(ascii: "Z")
            out.append(contentsOf: UnsafeBufferPointer(b))
        }
    }
}

/// A monotonic clock reading in nanoseconds, for latency measurements.
public func monotonicNanos() -> UInt64 {
    var ts = timespec()
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return UInt64(ts.tv_sec) * 1_000_000_000 + UInt64(ts.tv_nsec)
}
