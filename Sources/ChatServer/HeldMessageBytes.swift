import ChatCore
import Synchronization

/// The bytes of WebSocket messages begun and not yet whole, which NIO's frame decoder and aggregator (or, with
/// permessage-deflate, the message reader) hold until their last byte comes: one user's sockets together, and all
/// sockets without a `/chat` connection together, each bounded. A message's first `free` bytes are not counted, so
/// a small message cut over two reads (a CONNECT with its token) never meets a bound held by others.
///
/// No budget charged these bytes, since a message is charged when it is whole: one user's 256 sockets each sending
/// all but the last bytes of a 1 MB frame held 250 MB until their ping timeout, and sockets without a token each
/// holding their 128 KiB allowance held 1.2 GB at the connection bound (found by an outside probe). Split into shards
/// by user (`KeyShards`); a user's entry leaves once it holds nothing.
final class HeldMessageBytes: Sendable {
    /// Bytes one user's unfinished messages may hold.
    let perUser: Int
    /// Bytes the unfinished messages of all sockets without a connection may hold.
    let beforeConnect: Int
    /// The bytes of each message that are not counted.
    let free: Int
    private let users = KeyShards<SessionKey, [SessionKey: Int]>(count: 16) { [:] }
    private let tokenless = Mutex(0)

    init(perUser: Int, beforeConnect: Int, free: Int = 4_096) {
        self.perUser = perUser
        self.beforeConnect = beforeConnect
        self.free = free
    }

    /// Adds `bytes` to what `user` holds (`nil`: a socket without a connection); `false`, adding nothing, when that
    /// would go past its bound.
    func hold(_ bytes: Int, for user: SessionKey?) -> Bool {
        guard bytes > 0 else { return true }
        guard let user else {
            return tokenless.withLock { held in
                guard held + bytes <= beforeConnect else { return false }
                held += bytes
                return true
            }
        }
        let bound = perUser
        return users.withLock(user) { held in
            let now = held[user, default: 0]
            guard now + bytes <= bound else { return false }
            held[user] = now + bytes
            return true
        }
    }

    /// Gives back `bytes` that `hold` added for `user`.
    func release(_ bytes: Int, for user: SessionKey?) {
        guard bytes > 0 else { return }
        guard let user else { return tokenless.withLock { $0 = max(0, $0 - bytes) } }
        users.withLock(user) { held in
            let left = (held[user] ?? 0) - bytes
            held[user] = left > 0 ? left : nil
        }
    }

    /// What one socket's unfinished message holds in the account, and for whom.
    struct Hold {
        private(set) var bytes = 0
        private(set) var user: SessionKey?

        /// The socket's unfinished message is `messageBytes` long now (0: none), and `user`'s (`nil`: no connection):
        /// holds what it holds past `free`, moved to `user` if it was held for someone else; `false`, changing nothing,
        /// when that would go past the bound.
        mutating func update(_ messageBytes: Int, for user: SessionKey?, in account: HeldMessageBytes) -> Bool {
            let wanted = max(0, messageBytes - account.free)
            if user != self.user {
                account.release(bytes, for: self.user)
                bytes = 0
                self.user = user
            }
            if wanted < bytes {
                account.release(bytes - wanted, for: user)
            } else if wanted > bytes {
                guard account.hold(wanted - bytes, for: user) else { return false }
            }
            bytes = wanted
            return true
        }

        /// Gives everything back (the socket closed).
        mutating func release(in account: HeldMessageBytes) {
            account.release(bytes, for: user)
            bytes = 0
        }
    }

    /// What `user` holds now (`nil`: the sockets without a connection).
    func held(by user: SessionKey?) -> Int {
        guard let user else { return tokenless.withLock { $0 } }
        return users.withLock(user) { $0[user] ?? 0 }
    }
}
