import HummingbirdCore
import HummingbirdWebSocket
import Logging
import NIOCore

/// Hummingbird's HTTP/1 + WebSocket child channel (used when permessage-deflate is on; `EngineChildChannel`
/// otherwise), with a smaller first receive buffer. NIO keeps each
/// connection's receive buffer for the connection's life, and Socket.IO frames are small, so the adaptive
/// allocator starts at 512 bytes instead of 2,048 and grows only on connections that read more at once.
struct LeanSocketChannel: ServerChildChannel {
    typealias Value = HTTP1WebSocketUpgradeChannel.Value
    /// How long a new connection has to send its first request head (`FirstRequestDeadline`, which finds the head's
    /// end itself here: hummingbird-websocket's pipeline gives no hook for it).
    let firstRequestTimeout: TimeAmount
    /// `--max-connections`: a connection past it is closed before anything is read.
    let connections: ConnectionLimit
    let base: HTTP1WebSocketUpgradeChannel

    /// Every connection's receive buffer allocator (this channel's and `EngineChildChannel`'s).
    static let receiveAllocator = AdaptiveRecvByteBufferAllocator(minimum: 64, initial: 512, maximum: 16384)

    /// Every connection's receive options: the allocator above, and one read per event-loop turn. A connection
    /// that floods (50,000 pongs before authenticating) is then decoded 16 KiB at a time between the other
    /// connections of its event loop, instead of four 64 KiB reads (some 37,000 small frames) at once, which held the
    /// loop, and every other user on it, for over a second in a debug build.
    static func setReceiveOptions(_ channel: any Channel) -> EventLoopFuture<Void> {
        channel.setOption(ChannelOptions.recvAllocator, value: receiveAllocator)
            .flatMap { channel.setOption(ChannelOptions.maxMessagesPerRead, value: 1) }
    }

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        connections.setUp(channel) {
            Self.setReceiveOptions(channel)
                .flatMapThrowing {
                    try channel.pipeline.syncOperations.addHandler(
                        FirstRequestDeadline(timeout: firstRequestTimeout, watchesHeadEnd: true, limit: connections), position: .first)
                }
                .flatMap { base.setup(channel: channel, logger: logger) }
                .flatMapThrowing { value in
                    try RequestHeadGuard.FirstHead.install(in: channel.pipeline.syncOperations)
                    try UnparsedInputLimit.install(in: channel.pipeline.syncOperations)
                    return value
                }
        }
    }

    func handle(value: Value, logger: Logger) async {
        await base.handle(value: value, logger: logger)
    }
}
