import Benchmark
import ChatCore
import ChatJSON
import ChatStoreSQLite
import Foundation
import MicroSupport
import SocketIOCodec

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(metrics: [.wallClock, .throughput, .mallocCountTotal], maxDuration: .seconds(5), maxIterations: 1000)

    // One thread actor, one sequential sender, in-memory store: the actor's own cost per message.
    Benchmark("send: 1 thread, in-memory (1,000 sends/iteration)", configuration: .init(scalingFactor: .kilo)) { benchmark in
        let (supervisor, threads, alice) = try await makeBroker(store: InMemoryStore(), threads: 1)
        benchmark.startMeasurement()
        await sendAcross(supervisor, threads, alice, perThread: benchmark.scaledIterations.count)
    }

    // 1,000 threads sending at once, in-memory store.
    Benchmark("send: 1,000 threads, in-memory (10 sends each/iteration)", configuration: .init(maxIterations: 20)) { benchmark in
        let (supervisor, threads, alice) = try await makeBroker(store: InMemoryStore(), threads: 1000)
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations { await sendAcross(supervisor, threads, alice, perThread: 10) }
    }

    // 1,000 threads sending at once into SQLite with fsync per group commit (--durability full).
    for durability in [Durability.full, .process] {
        Benchmark("send: 1,000 threads, SQLite \(durability.rawValue) (10 sends each/iteration)", configuration: .init(maxIterations: 10)) { benchmark in
            let path = temporaryDatabase()
            let store = try SQLiteMessageStore(path: path, durability: durability)
            let (supervisor, threads, alice) = try await makeBroker(store: store, threads: 1000)
            benchmark.startMeasurement()
            for _ in benchmark.scaledIterations { await sendAcross(supervisor, threads, alice, perThread: 10) }
            benchmark.stopMeasurement()
            await store.shutdown()
            removeTemporaryDatabase(path)
        }
    }

    // The same with each thread's 10 sends pipelined (all begun at once, then every ack awaited).
    // Sustained: 100 pipelined sends per thread (100,000 per iteration).
    for durability in [Durability.full, .process] {
        for perThread in [10, 100] {
            Benchmark(
                "send pipelined: 1,000 threads, SQLite \(durability.rawValue) (\(perThread) sends each/iteration)",
                configuration: .init(maxIterations: perThread == 10 ? 10 : 5)
            ) { benchmark in
                let path = temporaryDatabase()
                let store = try SQLiteMessageStore(path: path, durability: durability)
                let (supervisor, threads, alice) = try await makeBroker(store: store, threads: 1000)
                benchmark.startMeasurement()
                for _ in benchmark.scaledIterations { await sendPipelined(supervisor, threads, alice, perThread: perThread) }
                benchmark.stopMeasurement()
                await store.shutdown()
                removeTemporaryDatabase(path)
            }
        }
    }

    // LZ4: seal a 256-event chunk of realistic chat text, and read it back.
    let events = (1...256).map { ThreadEvent(seq: $0, kind: .message, message: message($0)) }
    Benchmark("history: LZ4 seal of a 256-event chunk") { benchmark in
        for _ in benchmark.scaledIterations { blackHole(HistoryChunk.seal(events)) }
    }
    let sealed = HistoryChunk.seal(events)
    let rawSize = (20..<24).reduce(0) { $0 | Int(sealed.data[$1]) << (8 * ($1 - 20)) }
    FileHandle.standardError.write(Data(
        "LZ4 chunk of 256 realistic chat events: \(rawSize) bytes raw -> \(sealed.data.count) bytes sealed (ratio \(String(format: "%.2f", Double(rawSize) / Double(sealed.data.count))))\n".utf8))
    Benchmark("history: LZ4 read of a 256-event chunk") { benchmark in
        for _ in benchmark.scaledIterations { blackHole(try sealed.events()) }
    }

    // JSON: what an unauthenticated sender can make the parser do with one ~1 MB packet. A 100,000-key object
    // (distinct or one key repeated) must cost a small multiple of a 1 MB string, never its square.
    let megabyteString = jsonString(bytes: 1_000_000)
    let distinctKeys = jsonObject(keys: 100_000, distinct: true)
    let repeatedKey = jsonObject(keys: 100_000, distinct: false)
    FileHandle.standardError.write(Data(
        "JSON inputs: string \(megabyteString.count) bytes, 100,000 distinct keys \(distinctKeys.count) bytes, 100,000 repeated keys \(repeatedKey.count) bytes\n".utf8))
    // Parsed, or refused (an object with more than JSONParser.defaultMaxObjectMembers keys, repeated ones included,
    // is an error): either way the time until the parser answers.
    let largestAccepted = jsonObject(keys: JSONParser.defaultMaxObjectMembers, distinct: true)
    for (name, input) in [
        ("1 MB string", megabyteString), ("1 MB object, 100,000 distinct keys", distinctKeys), ("object, 100,000 repeated keys", repeatedKey),
        ("object, 10,000 distinct keys (the most accepted)", largestAccepted),
    ] {
        Benchmark("json: parse \(name)", configuration: .init(maxDuration: .seconds(20), maxIterations: 50)) { benchmark in
            for _ in benchmark.scaledIterations { blackHole(try? JSONParser.parse(input)) }
        }
    }
    // What the broker does with such a packet before CONNECT: decode it as a Socket.IO packet with the bound it
    // applies to unauthenticated sessions (16 members per object).
    let connectPacket = Array("0/chat,".utf8) + distinctKeys
    Benchmark("json: unauthenticated CONNECT of 100,000 keys, as the broker decodes it") { benchmark in
        for _ in benchmark.scaledIterations { blackHole(try? SocketCodec.decode(connectPacket, maxObjectMembers: 16)) }
    }

    // Connect: a user who is a member of 5,000 threads, none of them active (a fresh broker over the same
    // SQLite database each iteration), connects one device. Measures what a reconnect storm costs per user.
    Benchmark("connect: first device of a user in 5,000 threads, SQLite", configuration: .init(maxDuration: .seconds(60), maxIterations: 10)) { benchmark in
        let path = temporaryDatabase()
        let alice = Principal(userId: "alice", companyId: "acme")
        do {
            let store = try SQLiteMessageStore(path: path, durability: .process)
            let (supervisor, _, _) = try await makeBroker(store: store, threads: 5000)
            await supervisor.shutdown()
        }
        for _ in benchmark.scaledIterations {
            let store = try SQLiteMessageStore(path: path, durability: .process)
            let supervisor = Supervisor(store: store)
            benchmark.startMeasurement()
            let device = try await supervisor.connect(alice)
            benchmark.stopMeasurement()
            blackHole(device)
            await supervisor.disconnect(device)
            await supervisor.shutdown()
        }
        removeTemporaryDatabase(path)
    }

    // Fan-out: one event into 1,000 devices' outboxes (encode once, enqueue 1,000 times), and each device's
    // writer taking it out again: the frame is in every outbox and every outbox is empty after each iteration.
    Benchmark("fan-out: 1 event to 1,000 devices", configuration: .init(maxIterations: 2000)) { benchmark in
        var configuration = BrokerConfiguration()
        configuration.outboundLimit = 1 << 30
        let supervisor = Supervisor(store: InMemoryStore(), configuration: configuration)
        let alice = Principal(userId: "alice", companyId: "acme")
        let thread = try await supervisor.createThread(name: nil, kind: .group, memberIds: (0..<999).map { "u\($0)" }, by: alice).summary.info.id
        var devices: [Device] = []
        devices.append(try await supervisor.connect(alice))
        for i in 0..<999 { devices.append(try await supervisor.connect(Principal(userId: "u\(i)", companyId: "acme"))) }
        let data: JSONValue = .object(["threadId": .string(thread), "text": .string(chatLines[4])])
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            let reached = try await supervisor.emit(event: "app:ping", data: data, to: .thread(thread), as: alice)
            guard reached == devices.count else { fatalError("the event reached \(reached) of \(devices.count) devices") }
            for device in devices {
                let frames = device.outbox.takeAvailable()
                guard frames.count == 1 else { fatalError("a device had \(frames.count) frames instead of 1") }
                blackHole(frames)
            }
        }
        benchmark.stopMeasurement()
    }
}
