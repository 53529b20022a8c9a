import ChatCore
@testable import ChatStorePostgres
import Foundation
import Testing

/// What a lost LISTEN connection may have missed is counted from what the listener had handled, not from the
/// watchdog's last answer: a listener held up by slow reads is behind the watchdog, and the announcements queued
/// behind it die with the connection (found by a review).
struct ChangeFeedTests {
    @Test func theHearingMarginCountsFromWhatTheListenerHandled() async {
        let feed = ChangeFeed()
        feed.noteHandled(upTo: Timestamp(millis: 50_000))
        // The watchdog answered at 100 s while the handler was still working through announcements from before.
        feed.noteAlive(Date(timeIntervalSince1970: 100))
        let since = await Self.resyncAfterALostConnection(feed)
        #expect(since == Timestamp(millis: 50_000 - ChangeFeed.hearingMarginMillis))
        #expect(feed.heardFrom == Date(timeIntervalSince1970: 100), "the first answer still says from when announcements are heard")
    }

    /// A connection lost before the listener reached its first marker: the catch-up counts from the first answer
    /// (where hearing began), not from nothing (`since` nil left the inactive threads without a catch-up).
    @Test func beforeTheFirstMarkerTheMarginCountsFromTheFirstAnswer() async {
        let feed = ChangeFeed()
        feed.noteAlive(Date(timeIntervalSince1970: 100))
        let since = await Self.resyncAfterALostConnection(feed)
        #expect(since == Timestamp(millis: 100_000 - ChangeFeed.hearingMarginMillis))
    }

    /// The `since` of the `.resync` the feed hands over after its connection is lost and back.
    static func resyncAfterALostConnection(_ feed: ChangeFeed) async -> Timestamp? {
        feed.connectionLost()
        feed.yieldResync()
        let batch = await feed.next()
        guard case .resync(let since)? = batch?.first else {
            Issue.record("expected a resync, got \(String(describing: batch))")
            return nil
        }
        return since
    }

    @Test func aMarkerIsReadOnlyFromItsOwnNode() {
        let marker = ClusterNotice.marker(node: "node-a", at: Date(timeIntervalSince1970: 1_800_000_000.1234))
        #expect(ClusterNotice.markerTime(marker, node: "node-a") == Timestamp(millis: 1_800_000_000_123))
        #expect(ClusterNotice.markerTime(marker, node: "node-b") == nil)
        #expect(ClusterNotice.isFrom("node-a", marker))
        #expect(ClusterNotice.markerTime(#"{"n":"node-a","c":[]}"#, node: "node-a") == nil)
        if case .changes? = ClusterNotice.decode(marker) { Issue.record("a marker carries no changes") }
    }
}
