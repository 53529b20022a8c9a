import Crypto

/// The `X-Chat-Signature` header, as GitHub and Stripe sign their webhooks: `t=<unix seconds>,v1=<hex>` where the hex
/// is HMAC-SHA256 with the shared secret over `<t>.<raw body>`. A receiver recomputes it over the bytes it received,
/// compares in constant time and refuses timestamps too far from its clock (replays).
public enum WebhookSignature {
    public static let headerName = "X-Chat-Signature"

    /// The header value for `body` sent at `timestamp` (seconds since 1970).
    public static func header(secret: [UInt8], timestamp: Int, body: [UInt8]) -> String {
        "t=\(timestamp),v1=\(hex(mac(secret: secret, timestamp: timestamp, body: body)))"
    }

    /// Whether `header` is a valid signature of `body` by `secret`, made within `tolerance` seconds of `now`.
    public static func verify(header: String, secret: [UInt8], body: [UInt8], now: Int, tolerance: Int = 300) -> Bool {
        var timestamp: Int?
        var signatures: [String] = []
        for part in header.split(separator: ",") {
            let pair = part.split(separator: "=", maxSplits: 1).map(String.init)
            guard pair.count == 2 else { continue }
            if pair[0] == "t" { timestamp = Int(pair[1]) } else if pair[0] == "v1" { signatures.append(pair[1]) }
        }
        // Compared without overflow: the header is the sender's, and a timestamp near Int.min must be refused, not trap.
        guard let timestamp else { return false }
        let (skew, overflow) = now.subtractingReportingOverflow(timestamp)
        guard !overflow, skew.magnitude <= tolerance.magnitude else { return false }
        let expected = Array(hex(mac(secret: secret, timestamp: timestamp, body: body)).utf8)
        return signatures.contains { constantTimeEqual(Array($0.utf8), expected) }
    }

    private static func mac(secret: [UInt8], timestamp: Int, body: [UInt8]) -> [UInt8] {
        var hmac = HMAC<SHA256>(key: SymmetricKey(data: secret))
        hmac.update(data: Array("\(timestamp).".utf8))
        hmac.update(data: body)
        return Array(hmac.finalize())
    }

    private static func hex(_ bytes: [UInt8]) -> String {
        let digits = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        out.reserveCapacity(bytes.count * 2)
        for b in bytes {
            out.append(digits[Int(b >> 4)])
            out.append(digits[Int(b & 0xF)])
        }
        return String(decoding: out, as: UTF8.self)
    }

    private static func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        guard a.count == b.count else { return false }
        var difference: UInt8 = 0
        for i in a.indices { difference |= a[i] ^ b[i] }
        return difference == 0
    }
}
