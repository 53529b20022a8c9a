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
    let base: HTTP1WebSocketUpgradeChannel

    /// Every connection's receive buffer allocator (this channel's and `EngineChildChannel`'s).
    static let receiveAllocator = AdaptiveRecvByteBufferAllocator(minimum: 64, initial: 512, maximum: 65536)

    func setup(channel: any Channel, logger: Logger) -> EventLoopFuture<Value> {
        channel.setOption(ChannelOptions.recvAllocator, value: Self.receiveAllocator)
            .flatMap { base.setup(channel: channel, logger: logger) }
    }

    func handle(value: Value, logger: Logger) async {
        await base.handle(value: value, logger: logger)
    }
}
