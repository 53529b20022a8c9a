import CompressNIO
import NIOCore
import Testing

@testable import ChatServer

/// The shared sending side of permessage-deflate: each message compressed on its own, for the peer's window, once per
/// payload buffer however many sockets send it, in a cache bounded by entries and bytes.
struct SharedDeflaterTests {
    /// `deflated` inflated as a peer with `windowBits` does (the trailing `00 00 ff ff` put back).
    static func inflate(_ deflated: ByteBuffer, windowBits: Int) throws -> [UInt8] {
        let zlib = try ZlibDecompressor(algorithm: .deflate, windowSize: Int32(windowBits))
        var input = deflated
        input.writeBytes([0x00, 0x00, 0xFF, 0xFF])
        var output = ByteBuffer()
        output.reserveCapacity(1 << 20)
        do { try zlib.inflate(from: &input, to: &output) } catch let error as CompressNIOError where error == .inputBufferOverflow {}
        return Array(buffer: output)
    }

    static func payload(_ size: Int, seed: UInt8 = 1) -> ByteBuffer {
        ByteBuffer(bytes: (0..<size).map { UInt8(truncatingIfNeeded: $0 * 7 / 5) &+ seed })
    }

    @Test(arguments: [9, 10, 15])
    func eachMessageInflatesOnItsOwnWithThePeersWindow(windowBits: Int) throws {
        let deflater = SharedDeflater()
        for (i, size) in [256, 5_000, 70_000].enumerated() {
            let payload = Self.payload(size, seed: UInt8(i))
            let deflated = try #require(deflater.deflate(payload, windowBits: windowBits))
            // A fresh inflater for each message: nothing refers to an earlier one (server_no_context_takeover).
            #expect(try Self.inflate(deflated, windowBits: windowBits) == Array(buffer: payload), "\(size) bytes, window \(windowBits)")
        }
    }

    @Test func smallPayloadsAndWindowsZlibCannotKeepAreSentAsTheyAre() {
        let deflater = SharedDeflater()
        #expect(deflater.deflate(Self.payload(255), windowBits: 15) == nil)
        #expect(deflater.deflate(Self.payload(5_000), windowBits: 8) == nil)
    }

    @Test func aPayloadBufferIsCompressedOnceForEveryRecipient() throws {
        let deflater = SharedDeflater()
        let shared = Self.payload(10_000)
        let first = try #require(deflater.deflate(shared, windowBits: 15))
        for _ in 0..<100 { #expect(deflater.deflate(shared, windowBits: 15) == first) }
        #expect(deflater.cachedCount == 1)
        // Another buffer with the same bytes, or another window, is another entry (and inflates the same).
        let copy = ByteBuffer(bytes: Array(buffer: shared))
        #expect(try Self.inflate(try #require(deflater.deflate(copy, windowBits: 15)), windowBits: 15) == Array(buffer: shared))
        _ = deflater.deflate(shared, windowBits: 12)
        #expect(deflater.cachedCount == 3)
    }

    @Test func theCacheIsBoundedByEntriesAndBytes() throws {
        let byCount = SharedDeflater(maxEntries: 4, maxBytes: 1 << 30)
        var kept: [ByteBuffer] = []
        for i in 0..<10 {
            kept.append(Self.payload(1_000, seed: UInt8(i)))
            _ = byCount.deflate(kept[i], windowBits: 15)
        }
        #expect(byCount.cachedCount == 4)
        let byBytes = SharedDeflater(maxEntries: 1_000, maxBytes: 400_000)
        for i in 0..<10 {
            kept.append(Self.payload(60_000, seed: UInt8(i)))
            _ = byBytes.deflate(kept.last!, windowBits: 15)
        }
        // Each entry holds its 60,000-byte payload and its deflated bytes: at most six fit in 400,000 bytes.
        #expect(byBytes.cachedCount <= 6 && byBytes.cachedCount >= 3)
    }
}
