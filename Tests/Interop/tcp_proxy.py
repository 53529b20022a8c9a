"""A TCP proxy in front of PostgreSQL for the tests of what a node does when its database connections misbehave:
each accepted connection is paired with one to the target, and each direction is pumped on a thread of its own by
`pump`, which hands each read to `forward(data, dst, pair, from_server)` (a subclass decides what passes); `pair` is
a dict the two directions of one connection share.
Stopped with `close()`."""
import socket
import threading
import urllib.parse


class TCPProxy:
    def __init__(self, target_host, target_port):
        self.target = (target_host, target_port)
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.pairs = []          # [(client socket, server socket, shared state)]
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, timeout=5)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            pair = {}
            with self.lock:
                self.pairs.append((client, server, pair))
            threading.Thread(target=self.pump, args=(client, server, pair, False), daemon=True).start()
            threading.Thread(target=self.pump, args=(server, client, pair, True), daemon=True).start()

    @classmethod
    def in_front_of(cls, database_url):
        """A proxy to the server of `database_url`; `database_url` of the proxy is the same URL through it."""
        parts = urllib.parse.urlsplit(database_url)
        proxy = cls(parts.hostname, parts.port)
        proxy.database_url = urllib.parse.urlunsplit(
            parts._replace(netloc=f"{parts.username}:{parts.password}@127.0.0.1:{proxy.port}"))
        return proxy

    def pump(self, src, dst, pair, from_server):
        try:
            while True:
                data = src.recv(65536)
                if not data or not self.forward(data, dst, pair, from_server):
                    break
        except OSError:
            pass
        self.ended(src, dst, pair)

    def forward(self, data, dst, pair, from_server):
        """Passes `data` on (or not); `False` ends this direction."""
        dst.sendall(data)
        return True

    def ended(self, src, dst, pair):
        """One direction ended: both sockets are shut down."""
        self.shut(src, dst)

    @staticmethod
    def shut(*sockets):
        for s in sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self):
        self.closed = True
        self.listener.close()
        with self.lock:
            for client, server, _ in self.pairs:
                for s in (client, server):
                    try:
                        s.close()
                    except OSError:
                        pass
