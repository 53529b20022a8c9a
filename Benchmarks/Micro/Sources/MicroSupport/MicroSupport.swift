// Helpers shared by the micro benchmarks and the send-load profiling driver.
import ChatCore
import ChatJSON
import Foundation
import Synchronization

/// Realistic chat lines (mixed length, repeated vocabulary) for compression and payload sizes.
public let chatLines = [
    "ok", "sounds good 👍", "Can you take a look at the PR before standup?", "lunch?",
    "I pushed the fix for the login redirect, it should be on staging in 10 min",
    "The customer from Acme asked again about the invoice export, can someone from billing reply today?",
    "haha yes", "meeting moved to 3pm", "Thanks! Merging now.",
    "Heads-up: the deploy pipeline is red because of the flaky integration test in payments, I'm on it.",
]

public func message(_ i: Int, thread: String = "t") -> Message {
    Message(
        id: Identifier.uuid(), threadId: thread, seq: i, senderId: i % 3 == 0 ? "alice" : "bob", type: .text,
        content: chatLines[i % chatLines.count], createdAt: Timestamp(millis: 1_795_000_000_000 + Int64(i) * 1500))
}

/// A supervisor with `threads` threads of two members, and a device of the sender.
public func makeBroker(store: any MessageStore, threads: Int) async throws -> (Supervisor, [ThreadID], Principal) {
    var configuration = BrokerConfiguration()
    configuration.ratePerSecond = 1e9
    configuration.rateBurst = 1e9
    let supervisor = Supervisor(store: store, configuration: configuration)
    let alice = Principal(userId: "alice", companyId: "acme")
    var ids: [ThreadID] = []
    for _ in 0..<threads {
        ids.append(try await supervisor.createThread(name: nil, kind: .group, memberIds: ["bob"], by: alice).summary.info.id)
    }
    return (supervisor, ids, alice)
}

/// Sends `perThread` messages into each thread, one sequential sender per thread, all threads at once.
public func sendAcross(_ supervisor: Supervisor, _ threads: [ThreadID], _ alice: Principal, perThread: Int) async {
    await withTaskGroup(of: Void.self) { group in
        for thread in threads {
            group.addTask {
                for i in 0..<perThread {
                    do {
                        _ = try await supervisor.withThread(thread, as: alice) { actor throws(ChatError) in
                            try await actor.send(SendRequest(threadId: thread, content: chatLines[i % chatLines.count]), from: alice)
                        }
                    } catch {
                        // A refused send is not throughput: stop loudly instead of counting it.
                        fatalError("a send was refused: \(error)")
                    }
                }
            }
        }
    }
}

/// Begins every send of every thread at once (as a socket pipelines its sends) and returns when all are
/// acknowledged durable: the broker's throughput rather than one round trip per send. With `tempIds`, every send
/// carries a new tempId, as the clients of the chat app do.
/// `tempIds`, when given, holds each thread's `perThread` tempIds (made before the round, as clients make them on
/// their own machines).
public func sendPipelined(_ supervisor: Supervisor, _ threads: [ThreadID], _ alice: Principal, perThread: Int, tempIds: [[String]]? = nil) async {
    let countdown = Countdown(threads.count * perThread)
    await withTaskGroup(of: Void.self) { group in
        for (t, thread) in threads.enumerated() {
            let ids = tempIds?[t]
            group.addTask {
                do {
                    try await supervisor.withThread(thread, as: alice) { actor throws(ChatError) in
                        for i in 0..<perThread {
                            let request = SendRequest(threadId: thread, content: chatLines[i % chatLines.count], tempId: ids?[i])
                            try await actor.beginSend(request, from: alice) { result in
                                if case .failure(let error) = result { fatalError("a pipelined send failed: \(error)") }
                                countdown.tick()
                            }
                        }
                    }
                } catch {
                    // A benchmark whose sends fail measures nothing: stop loudly instead of waiting for acks forever.
                    fatalError("a pipelined send was refused: \(error)")
                }
            }
        }
    }
    await countdown.done.value()
}

/// Completes `done` when `tick` was called `count` times.
public final class Countdown: Sendable {
    let left: Mutex<Int>
    public let done = OneShot<Void>()
    public init(_ count: Int) { left = Mutex(count) }
    public func tick() { if left.withLock({ n in n -= 1; return n }) == 0 { done.complete(()) } }
}

public func temporaryDatabase() -> String {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("chat-bench-\(UUID().uuidString)")
    try? FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    return dir.appendingPathComponent("chat.sqlite").path
}

/// Deletes the folder `temporaryDatabase()` made for `path` (the database, its WAL and shared-memory files).
public func removeTemporaryDatabase(_ path: String) {
    try? FileManager.default.removeItem(at: URL(fileURLWithPath: path).deletingLastPathComponent())
}

/// A JSON text of about `bytes` bytes that is one string.
public func jsonString(bytes: Int) -> [UInt8] {
    Array("\"".utf8) + [UInt8](repeating: UInt8(ascii: "a"), count: bytes - 2) + Array("\"".utf8)
}

/// A JSON object of `keys` members `{"k0":0,"k1":0,…}` (distinct keys), or the same key `keys` times.
public func jsonObject(keys: Int, distinct: Bool) -> [UInt8] {
    var out = Array("{".utf8)
    for i in 0..<keys {
        if i > 0 { out.append(UInt8(ascii: ",")) }
        out.append(contentsOf: Array((distinct ? "\"k\(i)\":0" : "\"k\":0").utf8))
    }
    out.append(UInt8(ascii: "}"))
    return out
}
