import Hummingbird
import NIOCore

/// Reads a request body part by part, at most `limit` bytes, and hands each part to `charge` as it is read. The
/// charge may wait (to pace the client: TCP slows it meanwhile) or throw (to refuse the request), so what a client's
/// unfinished bodies hold is paid for while they are read, not once they are complete: one user's many parallel
/// bodies each find the others' bytes charged. REST writes refuse a body read in debt; Engine.IO polling POSTs wait
/// the debt out.
struct BoundedBodyReader {
    /// The body went past `limit`; `read` bytes had been taken before the part that went past.
    struct TooLarge: Error {
        let read: Int
    }

    let limit: Int

    /// The body length a request's head declares (`Content-Length`), if it declares one.
    static func declaredLength(_ request: Request) -> Int? {
        request.headers[.contentLength].flatMap { Int($0) }.map { max(0, $0) }
    }

    /// What a body part costs an inbound budget at least, in bytes: NIO and this reader spend about 1.3 µs on each part
    /// (a chunk of a chunked body, or a read), what some 120 bytes of a large part cost, so a body sent in 1-byte
    /// chunks is charged for that work, not for its bytes alone. (Found by an outside probe: one user's bodies of
    /// 1-byte chunks, within the budget, kept a core busy and moved another company's p99 from 11 to 52 ms.)
    static let minimumPartCost = 128

    /// The budget bytes a part of `size` bytes costs.
    static func cost(ofPart size: Int) -> Int { max(size, minimumPartCost) }

    /// The whole body, or `TooLarge`, or what `charge` or the body's stream threw. `charge` gets how many bytes were
    /// read before the part, and the part.
    func read(_ body: RequestBody, charging charge: (_ before: Int, _ part: ByteBuffer) async throws -> Void) async throws -> ByteBuffer {
        var buffer = ByteBuffer()
        for try await part in body {
            let before = buffer.readableBytes
            guard before + part.readableBytes <= limit else { throw TooLarge(read: before) }
            buffer.writeImmutableBuffer(part)
            try await charge(before, part)
        }
        return buffer
    }
}
