import ChatWebhook
import Testing

/// The webhook signature as a receiver checks it: right secret and body within the tolerance pass; another secret,
/// a changed body, a stale timestamp or a malformed header do not.
struct WebhookSignatureTests {
    let secret = Array("a webhook secret of at least 32 bytes!".utf8)
    let body = Array(#"{"notifications":[]}"#.utf8)

    @Test func aSignatureVerifiesOnlyForItsSecretBodyAndTime() {
        let header = WebhookSignature.header(secret: secret, timestamp: 1_800_000_000, body: body)
        #expect(header.hasPrefix("t=1800000000,v1="))
        #expect(header.count == "t=1800000000,v1=".count + 64)
        #expect(WebhookSignature.verify(header: header, secret: secret, body: body, now: 1_800_000_100))
        #expect(!WebhookSignature.verify(header: header, secret: Array("another secret, also 32 bytes long".utf8), body: body, now: 1_800_000_100))
        #expect(!WebhookSignature.verify(header: header, secret: secret, body: body + [0x20], now: 1_800_000_100))
        #expect(!WebhookSignature.verify(header: header, secret: secret, body: body, now: 1_800_000_000 + 301), "too old: a replay")
        #expect(!WebhookSignature.verify(header: "v1=deadbeef", secret: secret, body: body, now: 1_800_000_000))
        #expect(!WebhookSignature.verify(header: "t=1800000000,v1=", secret: secret, body: body, now: 1_800_000_000))
    }

    /// A timestamp from the far ends of Int (the header is the sender's; checked before the signature) is refused
    /// without trapping on overflow.
    @Test func anExtremeTimestampIsRefusedNotATrap() {
        for t in [Int.min, Int.min + 1, -9_223_372_036_854_775_000, Int.max] {
            #expect(!WebhookSignature.verify(header: "t=\(t),v1=00", secret: secret, body: body, now: 1_800_000_000))
        }
        #expect(!WebhookSignature.verify(header: "t=0,v1=00", secret: secret, body: body, now: Int.max))
        #expect(!WebhookSignature.verify(header: "t=-5,v1=00", secret: secret, body: body, now: Int.min))
    }
}
