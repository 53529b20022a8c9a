import AsyncHTTPClient
import ChatCore
import ChatJSON
import Foundation
import Logging
import NIOCore
import ServiceLifecycle

/// Sends the offline notices of the store's outbox to the webhook: the one owner of the HTTP client and of every
/// request to the receiver.
///
/// Each round claims due notices (leased, so another node's dispatcher skips them), drops the ones that became moot
/// (the user read the message, got it on a device, came online on any node, left the thread, or the message was
/// deleted) and POSTs the rest, signed, up to `batchSize` per request and `concurrency` requests at once. A notice
/// leaves the outbox only once a request that carried it was answered 2xx (sent), or it became moot (coalesced), or
/// its next attempt, the first included, would start past `maxAge` (dropped); a failed request puts its notices back
/// with exponential backoff and jitter. So every notice is delivered at least once (each carries an idempotency key, the same on every attempt):
/// a crash or a lost answer means it is sent again, never lost.
public final class OfflineWebhookDispatcher: Service, Sendable {
    /// Which of `users` of a company have a live socket on any node (`online`), and which are online only on another
    /// node that has not been heard from since `since` (`unsure`: it may have died before then).
    public typealias OnlineLookup = @Sendable (_ company: CompanyID, _ users: [UserID], _ since: Timestamp) async throws -> (
        online: Set<UserID>, unsure: Set<UserID>
    )

    private let configuration: OfflineWebhookConfiguration
    private let store: any OfflineNoticeStore
    private let online: OnlineLookup
    private let stats: BrokerStats
    private let logger: Logger
    private let client: HTTPClient
    /// How long requests under way at a graceful shutdown may still take (`--shutdown-grace`).
    private let shutdownGrace: Double

    public init(
        configuration: OfflineWebhookConfiguration, store: any OfflineNoticeStore, online: @escaping OnlineLookup, stats: BrokerStats,
        logger: Logger, shutdownGrace: Double = 5
    ) {
        self.shutdownGrace = shutdownGrace
        self.configuration = configuration
        self.store = store
        self.online = online
        self.stats = stats
        self.logger = logger
        var http = HTTPClient.Configuration(
            redirectConfiguration: .disallow, timeout: .init(connect: .milliseconds(Int64(configuration.timeout * 1000)), read: nil))
        http.connectionPool.concurrentHTTP1ConnectionsPerHostSoftLimit = configuration.concurrency
        client = HTTPClient(eventLoopGroupProvider: .singleton, configuration: http)
    }

    public func run() async throws {
        await loop()
        try await client.shutdown()
    }

    /// Shuts the HTTP client down, for a dispatcher driven by calls to `round` instead of `run` (tests).
    func shutdownClient() async throws {
        try await client.shutdown()
    }

    /// Rounds until a graceful shutdown begins; then no round starts, and the one under way ends as any round does, its
    /// outcome stored (the store stops after this service), if its requests are answered within `shutdownGrace`.
    /// Requests still unanswered then are cut off, and their notices put back for a retry, the attempt counted. (Found
    /// by an outside probe: a SIGTERM cut the requests under way at once and stored nothing, so after a restart their
    /// notices, which the receiver had, were sent again once their lease ended, still as attempt 1.)
    private func loop() async {
        while !Task.isCancelled && !Task.isShuttingDownGracefully {
            do {
                if try await roundWithinGrace() == 0 { try await cancelWhenGracefulShutdown { try await Task.sleep(for: .seconds(self.configuration.pollInterval)) } }
            } catch is CancellationError where Task.isCancelled || Task.isShuttingDownGracefully {
                continue
            } catch {
                // The outbox is unreachable (PostgreSQL down): claimed notices stay leased and are claimed again later.
                logger.warning("offline webhook: outbox unavailable", metadata: ["error": "\(error)"])
                try? await cancelWhenGracefulShutdown { try await Task.sleep(for: .seconds(1)) }
            }
        }
    }

    /// `round`, cancelled if it is still under way `shutdownGrace` after a graceful shutdown began.
    private func roundWithinGrace() async throws -> Int {
        let grace = shutdownGrace
        return try await withThrowingTaskGroup(of: Int?.self) { group in
            group.addTask { try await self.round() }
            group.addTask {
                try await gracefulShutdown()
                try await Task.sleep(for: .seconds(grace))
                return nil
            }
            while let result = try await group.next() {
                if let claimed = result {
                    group.cancelAll()
                    return claimed
                }
                // The grace is over: the round's requests are cut off; it stores what became of its notices.
                group.cancelAll()
            }
            return 0
        }
    }

    /// One claim, decision and send; returns how many notices it claimed.
    func round() async throws -> Int {
        // The lease outlasts the longest send: the response's head within the timeout, its body within the timeout
        // again, and a margin for the lookups before them; so no other node claims these notices while this one may
        // still send them.
        // Timed from before the claim: the lease runs from the database's answer, which may take a while to come.
        let claimedAt = ContinuousClock.now
        let claimed = try await store.claimOfflineNotices(
            limit: configuration.batchSize * configuration.concurrency, lease: 2 * configuration.timeout + configuration.leaseMargin)
        guard !claimed.isEmpty else { return 0 }
        var asked: [CompanyID: (users: Set<UserID>, newest: Timestamp)] = [:]
        for notice in claimed where !notice.isMoot {
            asked[notice.companyId, default: ([], notice.queuedAt)].users.insert(notice.key.userId)
            if notice.queuedAt.millis > asked[notice.companyId]!.newest.millis { asked[notice.companyId]!.newest = notice.queuedAt }
        }
        // One lookup per company, within half the margin: the notices of the companies not looked up by then are left
        // as they are (leased, then claimed again by a later round here or on another node), so that the requests
        // still end within the lease. The first company is always looked up, so every round makes progress.
        var onlineNow: [CompanyID: (online: Set<UserID>, unsure: Set<UserID>)] = [:]
        for (company, entry) in asked {
            if !onlineNow.isEmpty, ContinuousClock.now - claimedAt > .seconds(configuration.leaseMargin / 2) { break }
            onlineNow[company] = try await online(company, Array(entry.users), entry.newest)
        }

        var done: [OfflineNoticeKey] = []
        var due: [OfflineNotice] = []
        let claimedNow = Timestamp.now()
        for notice in claimed {
            // A notice claimed only past its max age is dropped unsent: no attempt starts past it, the first included
            // (every node down meanwhile, or a company's notices paced past it). (Found by an outside probe: only a
            // retry was checked, so a flood's first attempts went out 15 to 37 s after their messages with a 10-s max
            // age.)
            if !notice.isMoot, Self.age(of: notice, at: claimedNow) >= configuration.maxAge {
                done.append(drop(notice, attempts: notice.attempts))
                continue
            }
            if !notice.isMoot && onlineNow[notice.companyId] == nil { continue }
            // Online only on a node not heard from since the message was stored (killed, say): neither sent nor
            // coalesced now. Left leased, it is looked at again once the lease ends, when that node's presence has
            // either been renewed (the user is online there: coalesced) or expired (sent). Coalesced at once, it was
            // lost to a user whose only socket died with that node (found by an outside probe, 3 of 3 runs).
            if !notice.isMoot, onlineNow[notice.companyId]?.unsure.contains(notice.key.userId) == true { continue }
            if notice.isMoot || onlineNow[notice.companyId]?.online.contains(notice.key.userId) == true {
                done.append(notice.key)
                stats.add(stats.offlineCoalesced)
            } else {
                due.append(notice)
            }
        }
        // Each user's notices of a thread in seq order, and together, so that a request carries them in order. (The
        // requests of a round go at once: they may arrive in any order, and a receiver orders by `seq`.)
        due.sort { l, r in
            (l.companyId, l.key.userId, l.key.thread, l.message?.seq ?? 0) < (r.companyId, r.key.userId, r.key.thread, r.message?.seq ?? 0)
        }
        let batches = stride(from: 0, to: due.count, by: configuration.batchSize).map { Array(due[$0..<min($0 + configuration.batchSize, due.count)]) }
        let results = await withTaskGroup(of: [([OfflineNotice], Bool)].self) { group in
            for batch in batches { group.addTask { await self.deliver(batch) } }
            var results: [([OfflineNotice], Bool)] = []
            for await result in group { results += result }
            return results
        }
        var retry: [(key: OfflineNoticeKey, after: Double)] = []
        let now = Timestamp.now()
        for (batch, ok) in results {
            // One jitter for the batch: its notices at the same attempt (a user's, say) stay together, in order, when
            // they are tried again (drawn for each, the jitter split them over several requests, out of order).
            let jitter = Double.random(in: 0.5...1)
            for notice in batch {
                if ok {
                    done.append(notice.key)
                    stats.add(stats.offlineSent)
                } else if let delay = Self.retryDelay(age: Self.age(of: notice, at: now), attempts: notice.attempts, configuration, jitter: jitter) {
                    retry.append((notice.key, delay))
                    stats.add(stats.offlineRetried)
                } else {
                    done.append(drop(notice, attempts: notice.attempts + 1))
                }
            }
        }
        // Stored even when the round was cancelled (the requests cut off at the end of a shutdown's grace): left
        // leased, the notices would wait for their lease, then go again as the same attempt.
        let store = self.store
        try await Task { try await store.settleOfflineNotices(done: done, retry: retry) }.value
        return claimed.count
    }

    /// Seconds from when `notice` was queued to `now`.
    static func age(of notice: OfflineNotice, at now: Timestamp) -> Double {
        Double(now.millis - notice.queuedAt.millis) / 1000
    }

    /// Counts and logs a notice given up after `attempts` failed attempts; returns its key.
    private func drop(_ notice: OfflineNotice, attempts: Int) -> OfflineNoticeKey {
        stats.add(stats.offlineDropped)
        logger.warning(
            "offline webhook: notice dropped, its next attempt past --offline-webhook-max-age",
            metadata: ["thread": "\(notice.key.thread)", "message": "\(notice.key.messageId)", "attempts": "\(attempts)"])
        return notice.key
    }

    /// Seconds before the next attempt of a notice `age` seconds old that failed `attempts + 1` times (`backoff`), or
    /// `nil` when that attempt would start `maxAge` or more after the notice was queued: it is dropped now, so that no
    /// attempt starts past `--offline-webhook-max-age`. (Before, the backoff alone decided, and an outside probe saw a
    /// fifth attempt 6.7 s after the message with a 4-s max age.)
    static func retryDelay(age: Double, attempts: Int, _ configuration: OfflineWebhookConfiguration, jitter: Double = Double.random(in: 0.5...1)) -> Double? {
        let delay = backoff(attempts: attempts, configuration, jitter: jitter)
        return age + delay < configuration.maxAge ? delay : nil
    }

    /// Seconds before the next attempt of a notice that failed `attempts + 1` times: exponential, capped, with jitter
    /// (between half and all of the step), so receivers that come back are not hit by every sender at once. The cap
    /// is `maxRetryDelay`, or the first delay when that is longer (a first delay of 600 s was cut to 300).
    static func backoff(attempts: Int, _ configuration: OfflineWebhookConfiguration, jitter: Double = Double.random(in: 0.5...1)) -> Double {
        let cap = max(configuration.maxRetryDelay, configuration.retryDelay)
        let step = min(cap, configuration.retryDelay * pow(2, Double(min(attempts, 30))))
        return step * jitter
    }

    /// Posts `batch`; a request of several notices the receiver refuses (a 4xx other than 408 or 429: something in
    /// it, not the receiver's state) is posted again in halves, and a refused half of a half that was taken in halves
    /// again, so that one notice the receiver refuses does not hold back the others of its request on every retry
    /// (found by an outside probe: a receiver that answered 422 for one user made 23 notices of five other users,
    /// claimed and batched with that user's on each retry, be dropped at their max age unsent). Splitting stops when
    /// both halves are refused (the receiver refuses everything: 3 requests per batch, not one per notice); one
    /// refused notice among `n` costs about 2·log₂(n) requests. The notices, and whether each was taken.
    func deliver(_ batch: [OfflineNotice]) async -> [([OfflineNotice], Bool)] {
        let outcome = await post(batch)
        return outcome == .refused ? await halves(of: batch) : [(batch, outcome == .sent)]
    }

    /// A refused request's notices posted again in two halves; a refused half taken in halves again unless both were.
    private func halves(of refused: [OfflineNotice]) async -> [([OfflineNotice], Bool)] {
        guard refused.count > 1 else { return [(refused, false)] }
        let front = Array(refused[..<(refused.count / 2)]), back = Array(refused[(refused.count / 2)...])
        async let frontOutcome = post(front)
        let backOutcome = await post(back)
        switch (await frontOutcome, backOutcome) {
        case (.refused, .refused): return [(front, false), (back, false)]
        case (.refused, let other): return await halves(of: front) + [(back, other == .sent)]
        case (let other, .refused): return [(front, other == .sent)] + (await halves(of: back))
        case (let f, let b): return [(front, f == .sent), (back, b == .sent)]
        }
    }

    /// What became of one request.
    enum PostOutcome: Sendable {
        /// Answered 2xx.
        case sent
        /// Answered a 4xx other than 408 or 429: the receiver refused what the request carries.
        case refused
        /// Any other answer, an error or a timeout.
        case failed
    }

    /// POSTs one batch: `.sent` once the receiver answered 2xx. A URL the client cannot use (`problem(with:)`: the
    /// command line refuses it, an embedder may not) fails every request instead of reaching the HTTP client.
    private func post(_ batch: [OfflineNotice]) async -> PostOutcome {
        if let problem = OfflineWebhookConfiguration.problem(with: configuration.url) {
            logger.error("offline webhook: the receiver's URL \(problem)", metadata: ["notices": "\(batch.count)"])
            return .failed
        }
        let body = body(of: batch)
        var request = HTTPClientRequest(url: configuration.url)
        request.method = .POST
        request.headers.add(name: "Content-Type", value: "application/json")
        request.headers.add(name: "User-Agent", value: "chat-broker")
        request.headers.add(name: "X-Chat-Delivery", value: Identifier.uuid())
        request.headers.add(
            name: WebhookSignature.headerName,
            value: WebhookSignature.header(secret: configuration.secret, timestamp: Int(Date().timeIntervalSince1970), body: body))
        request.body = .bytes(ByteBuffer(bytes: body))
        do {
            let response = try await client.execute(request, timeout: .milliseconds(Int64(configuration.timeout * 1000)))
            // The status decides. The answer's body is read (to reuse the connection) but not kept, for at most the
            // timeout and 64 KiB: the request's timeout ends with the head, and a receiver that stalls after it must
            // not stall every later batch.
            let seconds = configuration.timeout
            await withTaskGroup(of: Void.self) { group in
                group.addTask { _ = try? await response.body.collect(upTo: 64 * 1024) }
                group.addTask { try? await Task.sleep(for: .seconds(seconds)) }
                await group.next()
                group.cancelAll()
            }
            let status = response.status.code
            if (200..<300).contains(status) { return .sent }
            logger.notice("offline webhook: receiver refused a batch", metadata: ["status": "\(status)", "notices": "\(batch.count)"])
            return (400..<500).contains(status) && status != 408 && status != 429 ? .refused : .failed
        } catch {
            logger.notice("offline webhook: request failed", metadata: ["error": "\(error)", "notices": "\(batch.count)"])
        }
        return .failed
    }

    /// `{"notifications":[…]}`: per notice the user to notify, the message's thread, id, seq, sender and type, when it
    /// was sent, a preview of its content (unless `previewLength` is 0), the attempt, and an idempotency key that is
    /// the same on every attempt (`<messageId>:<userId>`; message ids are UUIDs, so the first `:` splits it).
    func body(of batch: [OfflineNotice]) -> [UInt8] {
        var items: [JSONValue] = []
        items.reserveCapacity(batch.count)
        for notice in batch {
            guard let message = notice.message else { continue }
            var item: JSONObject = [
                "idempotencyKey": .string("\(message.id):\(notice.key.userId)"),
                "userId": .string(notice.key.userId),
                "companyId": .string(notice.companyId),
                "threadId": .string(notice.key.thread),
                "messageId": .string(message.id),
                "seq": .int(message.seq),
                "senderId": .string(message.senderId),
                "type": .string(message.type.rawValue),
                "createdAt": .string(message.createdAt.iso8601),
                "attempt": .int(notice.attempts + 1),
            ]
            if configuration.previewLength > 0 { item["preview"] = .string(String(message.content.prefix(configuration.previewLength))) }
            items.append(.object(item))
        }
        return JSONWriter.encode(.object(["notifications": .array(items)]))
    }
}
