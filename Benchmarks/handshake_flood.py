#!/usr/bin/env python3
"""What a flood of Engine.IO handshakes leaves in the broker: RSS before and right after N polling handshakes
(pipelined, 64 in flight, on 4 keep-alive connections) against a broker started with --max-pending-sessions 100, so
that almost every session is evicted at once by the next handshakes. What is left is what the evicted sessions leave
behind (timers, queue entries) until it would have fired.

    python3 Benchmarks/handshake_flood.py BROKER_BINARY [N ...]

Run each binary in turn, alternating, in one sitting (the machine's speed drifts). The interop suite uses
`pipelined_handshakes` for its bound (Tests/Interop/test_preauth_holding.py).
"""
import os
import socket
import sys
import threading
import time

from brokerprocess import rss_kib, running_broker

HANDSHAKE = b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\n\r\n"


def pipelined_handshakes(port, count, connections=4, in_flight=64):
    """Sends `count` polling handshakes over `connections` keep-alive connections, `in_flight` at a time on each, and
    reads their answers (200s); returns how many were answered."""
    answered = [0] * connections

    def one(index, quota):
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
        sent = got = 0
        carry = b""
        while got < quota:
            if sent < quota and sent - got < in_flight:
                k = min(in_flight, quota - sent)
                s.sendall(HANDSHAKE * k)
                sent += k
            data = s.recv(1 << 20)
            if not data:
                break
            window = carry + data
            got += window.count(b"HTTP/1.1 200")
            carry = window[-11:]     # shorter than the marker: no answer is counted twice
        s.close()
        answered[index] = got

    threads = [threading.Thread(target=one, args=(i, count // connections)) for i in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(answered)


def measure(binary, count):
    with running_broker(binary, "--max-pending-sessions", "100") as (proc, port):
        pipelined_handshakes(port, 400)       # warm up
        time.sleep(1)
        before = rss_kib(proc.pid)
        start = time.monotonic()
        answered = pipelined_handshakes(port, count)
        took = time.monotonic() - start
        grew = rss_kib(proc.pid) - before
        print(f"{os.path.basename(binary)}: {answered} handshakes in {took:.1f} s ({answered / took:,.0f}/s); "
              f"RSS +{grew:,} KiB ({1024 * grew / answered:.0f} B per handshake)")


if __name__ == "__main__":
    for n in sys.argv[2:] or ["40000"]:
        measure(sys.argv[1], int(n))
