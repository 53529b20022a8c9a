import Testing

@testable import ChatCore

/// `TokenBuckets` keeps a bucket only while it matters: a refilled bucket is dropped (it is the same as a new one),
/// and a caller that spent its tokens stays limited through every clean-up.
@Suite struct TokenBucketsTests {
    @Test func refilledBucketsAreDroppedAndSpentOnesStayLimited() {
        var table = TokenBuckets<String>(rate: 1, burst: 2, minimumPruneSize: 4)
        let start: UInt64 = 1_000_000_000
        let first = table.take("hot", now: start)
        let second = table.take("hot", now: start)
        #expect(first && second)
        let third = table.take("hot", now: start)
        #expect(!third, "the burst is spent")
        var largest = 0
        // 1,000 other callers, one request each, 10 ms apart (10 s in all): each bucket refills 1 s after its request.
        for i in 0..<1_000 {
            let now = start + UInt64(i) * 10_000_000
            _ = table.take("caller-\(i)", now: now)
            largest = max(largest, table.count)
            if i == 50 {
                let limited = table.take("hot", now: now)
                #expect(!limited, "half a token after half a second: still limited, clean-ups or not")
            }
        }
        #expect(largest <= 256, "only the callers of about the last second are kept (\(largest))")
        let later = table.take("hot", now: start + 20_000_000_000)
        #expect(later, "refilled")
    }

    @Test func aChargeSaysHowLongUntilTheBucketIsOutOfDebt() {
        var bucket = TokenBucket(rate: 1_000, burst: 4_000, now: 0)
        let within = bucket.charge(3_000, now: 0)
        #expect(within == 0, "within the burst: no wait")
        let over = bucket.charge(1_500, now: 0)
        #expect(over == 500_000_000, "500 tokens of debt at 1,000 a second: half a second")
        let later = bucket.charge(0, now: 250_000_000)
        #expect(later == 250_000_000, "a quarter of a second later, a quarter is left")
        let paid = bucket.charge(0, now: 500_000_000)
        #expect(paid == 0, "paid")
    }

    @Test func aBurstOfCallersDoesNotKeepTheTableLargeAfterwards() {
        var table = TokenBuckets<String>(rate: 1, burst: 2, minimumPruneSize: 4)
        for i in 0..<1_000 { _ = table.take("burst-\(i)", now: 0) }
        #expect(table.count == 1_000, "every caller of the burst is still refilling")
        // Then one new caller every 2 s, long after: each bucket is full again before the next call.
        for i in 0..<3_000 { _ = table.take("later-\(i)", now: 10_000_000_000 + UInt64(i) * 2_000_000_000) }
        #expect(table.count <= 8, "the clean-up threshold came down with the table (\(table.count) kept)")
    }

    @Test func aFullBucketIsTheSameAsANewOne() {
        var bucket = TokenBucket(rate: 2, burst: 3, now: 0)
        #expect(bucket.isFull(now: 0))
        let took = bucket.take(now: 0)
        #expect(took)
        #expect(!bucket.isFull(now: 0))
        #expect(!bucket.isFull(now: 400_000_000), "0.8 of a token back")
        #expect(bucket.isFull(now: 500_000_000))
    }

    /// A charge spends tokens the bucket does not have (a debt for work already done), and later takes wait for it
    /// to be paid at the bucket's rate.
    @Test func aChargeIsADebtPaidAtTheRate() {
        let start: UInt64 = 1_000_000_000
        var buckets = TokenBuckets<String>(rate: 10, burst: 20)
        let first = buckets.take("u", now: start)
        buckets.charge("u", 50, now: start)
        // 19 - 50 = -31: 32 tokens (3.2 s) before one is there again.
        let inDebt = buckets.take("u", now: start + 3_100_000_000)
        let paid = buckets.take("u", now: start + 3_250_000_000)
        let other = buckets.take("v", now: start)
        #expect(first && !inDebt && paid)
        #expect(other, "another key is not affected")
    }

    /// `KeyShards` keeps one key's state in one shard: what a key spent in one call is there in the next, whichever
    /// shard count, and one key's spending leaves every other key's bucket alone.
    @Test(arguments: [1, 3, 16]) func shardsKeepEachKeysBucket(count: Int) {
        let shards = KeyShards<String, TokenBuckets<String>>(count: count) { TokenBuckets(rate: 0.000_001, burst: 2) }
        let keys = (0..<50).map { "user-\($0)" }
        for key in keys {
            #expect(shards.withLock(key) { $0.take(key) && $0.take(key) })
        }
        for key in keys {
            #expect(!shards.withLock(key) { $0.take(key) }, "\(key)'s burst was spent in its shard")
        }
        #expect(shards.withLock("fresh") { $0.take("fresh") })
    }
}
