// A plain driver of the pipelined-send benchmark, for profilers: it sets the broker up, prints "ready", pauses
// for `--pause` seconds (attach `perf record -p` then), and runs `--rounds` rounds of 1,000 threads × 100
// pipelined sends against SQLite (or PostgreSQL with `--database-url`), printing each round's sends per second.
//
//   swift build -c release --product send-load && .build/release/send-load --rounds 20 --durability full
//   .build/release/send-load --rounds 10 --database-url 'postgres://user:password@127.0.0.1:5432/db?sslmode=disable'
// `--temp-ids 1`: every send carries a new tempId (as the chat app's clients send them), made before the round.
import ChatCore
import ChatStorePostgres
import ChatStoreSQLite
import Foundation
import MicroSupport
import Synchronization

var rounds = 10
var durability = Durability.full
var pause = 0.0
var threadCount = 1000
var perThread = 100
var walRestartFrames = 8192
var checkpointInterval = 0.2
var databaseURL: String?
var committers = 2
var tempIds = false
let usage = """
    usage: send-load [--rounds N] [--durability full|process] [--database-url URL] [--temp-ids 0|1] [--threads N]
                     [--per-thread N] [--committers N] [--pause SECONDS] [--wal-restart-frames N] [--checkpoint-interval SECONDS]
    """
/// Stops with the usage and exit code 64 (a usage error).
func usageError(_ problem: String) -> Never {
    FileHandle.standardError.write(Data("send-load: \(problem)\n\(usage)\n".utf8))
    exit(64)
}

/// `value` as a `T`, or a usage error naming `option`.
func parse<T: LosslessStringConvertible>(_ value: String, for option: String) -> T {
    guard let parsed = T(value) else { usageError("\(option) takes a \(T.self), not \"\(value)\"") }
    return parsed
}

let options: Set = [
    "--rounds", "--durability", "--pause", "--threads", "--per-thread", "--wal-restart-frames", "--checkpoint-interval",
    "--database-url", "--committers", "--temp-ids",
]
var arguments = CommandLine.arguments.dropFirst().makeIterator()
while let argument = arguments.next() {
    if argument == "--help" || argument == "-h" {
        print(usage)
        exit(0)
    }
    guard options.contains(argument) else { usageError("unknown option \(argument)") }
    guard let value = arguments.next() else { usageError("\(argument) needs a value") }
    switch argument {
    case "--rounds": rounds = parse(value, for: argument)
    case "--durability":
        guard let parsed = Durability(rawValue: value) else { usageError("--durability is full or process, not \"\(value)\"") }
        durability = parsed
    case "--pause": pause = parse(value, for: argument)
    case "--threads": threadCount = parse(value, for: argument)
    case "--per-thread": perThread = parse(value, for: argument)
    case "--wal-restart-frames": walRestartFrames = parse(value, for: argument)
    case "--checkpoint-interval": checkpointInterval = parse(value, for: argument)
    case "--database-url": databaseURL = value
    case "--committers": committers = parse(value, for: argument)
    default: tempIds = value == "1"  // --temp-ids
    }
}

/// Group commits of the current round: how many, how many units, and how long the committer was busy.
let commits = Mutex((count: 0, units: 0, seconds: 0.0))
let path = temporaryDatabase()
let observe: @Sendable (Int, Double, Bool) -> Void = { units, seconds, _ in
    commits.withLock { c in
        c.count += 1
        c.units += units
        c.seconds += seconds
    }
}
let store: any MessageStore
if let databaseURL {
    store = try await PostgresMessageStore.open(url: try DatabaseURL(databaseURL), durability: durability, committers: committers, commitObserver: observe)
} else {
    store = try SQLiteMessageStore(
        path: path, durability: durability, walRestartFrames: walRestartFrames, checkpointInterval: checkpointInterval, commitObserver: observe)
}
let (supervisor, threads, alice) = try await makeBroker(store: store, threads: threadCount)
print("ready (pid \(ProcessInfo.processInfo.processIdentifier))")
if pause > 0 { try await Task.sleep(nanoseconds: UInt64(pause * 1e9)) }
var rates: [Double] = []
for round in 1...rounds {
    commits.withLock { $0 = (0, 0, 0) }
    // A client makes its tempIds: not the broker's work, so not inside the timed round.
    let ids = tempIds ? threads.map { _ in (0..<perThread).map { _ in Identifier.uuid() } } : nil
    let started = Date()
    await sendPipelined(supervisor, threads, alice, perThread: perThread, tempIds: ids)
    let elapsed = Date().timeIntervalSince(started)
    let rate = Double(threadCount * perThread) / elapsed
    rates.append(rate)
    let c = commits.withLock { $0 }
    print(
        "round \(round): \(Int(rate)) sends/s; \(c.count) commits of \(c.units / max(c.count, 1)) units on average, committer busy \(Int(100 * c.seconds / elapsed)) %"
    )
}
rates.sort()
print("median \(Int(rates[rates.count / 2])) sends/s, best \(Int(rates.last!))")
await store.shutdown()
removeTemporaryDatabase(path)
