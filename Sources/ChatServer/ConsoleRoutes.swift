import ChatCore
import ChatJSON
import Crypto
import Foundation
import HTTPTypes
import Hummingbird
import NIOCore
import Synchronization

/// `GET /console`, a live page of the running broker, and `GET /console/stats`, the numbers it draws.
///
/// The page is a static shell served by the binary (no CDN, no network): it holds no data, and everything it shows
/// comes from `/console/stats` and the broker's own Socket.IO endpoint, both of which need a token. The stats need a
/// service token (`role: "service"`); they are broker-wide counts, never any company's messages or ids. The demo chat
/// in the page acts as the token's user, with that user's rights only.
struct ConsoleRoutes: Sendable {
    let rest: RESTRoutes
    let stats: BrokerStats
    let metrics: BrokerMetrics
    let engine: EngineServer
    let offlineWebhook: Bool
    let started = monotonicNanos()

    func register(on router: Router<ChatRequestContext>) {
        router.get("console") { _, _ in
            Response(
                status: .ok,
                headers: [
                    .contentType: "text/html; charset=utf-8",
                    // Everything is inline and served from here; the page talks to this broker only ('self' covers
                    // its websocket too). Only the page's own script runs (by its hash): markup that got into the
                    // page could not run a script of its own. No other site may frame it (clickjacking).
                    .contentSecurityPolicy: Self.contentSecurityPolicy,
                    .cacheControl: "no-store",
                    HTTPField.Name("X-Frame-Options")!: "DENY",
                ],
                body: ResponseBody(byteBuffer: ByteBuffer(bytes: PackageResources.console_html)))
        }
        router.get("console/stats") { request, context in
            await rest.respond(request, context) { principal, _ throws(ChatError) in
                guard principal.isService else { throw ChatError(.forbidden, "the console needs a service token (role \"service\")") }
                return (.ok, snapshot())
            }
        }
    }

    /// The page's policy, with its one inline script allowed by its SHA-256 (`script-src 'sha256-…'`).
    static let contentSecurityPolicy: String = {
        let page = PackageResources.console_html
        let open = Array("<script>".utf8), close = Array("</script>".utf8)
        guard let start = page.firstRange(of: open)?.upperBound, let end = page[start...].firstRange(of: close)?.lowerBound else {
            preconditionFailure("console.html has no inline script")
        }
        let hash = Data(SHA256.hash(data: page[start..<end])).base64EncodedString()
        return "default-src 'none'; script-src 'sha256-\(hash)'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:; "
            + "frame-ancestors 'none'"
    }()

    /// Counters since start (the page turns them into rates) and the last whole second's latencies.
    func snapshot() -> JSONValue {
        func count(_ counter: borrowing Atomic<Int>) -> JSONValue { .int(counter.load(ordering: .relaxed)) }
        func latency(_ window: LatencyWindow) -> JSONValue {
            let s = window.lastSecond()
            return .object(["p50": .number(s.p50), "p99": .number(s.p99), "max": .number(s.max), "count": .int(s.count)])
        }
        return .object([
            "uptimeSeconds": .number(Double(monotonicNanos() - started) / 1e9),
            "sockets": .int(engine.sessionCount),
            "devices": count(stats.connectedDevices),
            "activeThreads": count(stats.activeThreads),
            "passivations": count(stats.passivations),
            "eventsIn": .int(metrics.eventsInTotal.load(ordering: .relaxed)),
            "framesOut": count(stats.framesEnqueued),
            "messagesSent": count(stats.messagesSent),
            "slowConsumerCloses": count(stats.slowConsumerCloses),
            "storeFailures": count(stats.storeFailures),
            "typingDropped": count(stats.typingDropped),
            "rateLimited": count(stats.rateLimited),
            "socketsRefused": count(stats.devicesRefused),
            "remoteEvents": count(stats.remoteEvents),
            "storeConflicts": count(stats.storeConflicts),
            "reloads": count(stats.reloads),
            "deliveryMs": latency(metrics.recentDelivery),
            "commitMs": latency(metrics.recentCommit),
            "offline": .object([
                "enabled": .bool(offlineWebhook),
                "queued": count(stats.offlineQueued), "sent": count(stats.offlineSent), "retried": count(stats.offlineRetried),
                "dropped": count(stats.offlineDropped), "coalesced": count(stats.offlineCoalesced),
            ]),
        ])
    }
}
