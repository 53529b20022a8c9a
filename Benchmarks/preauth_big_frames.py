#!/usr/bin/env python3
"""What a frame announced before a token holds in the broker: with `--ws-compression on`, N websockets each negotiate
permessage-deflate, send the header of a compressed text frame announcing 1,000,000 bytes (the default --max-payload)
and SENT bytes of its payload (900,000 by default), never the rest and never a token, and stay open. Prints the
broker's RSS before, once every socket has sent, and its peak, and how many sockets the broker closed.

    python3 Benchmarks/preauth_big_frames.py BROKER_BINARY [N [SENT]]

Run each binary in turn, alternating, in one sitting. The interop suite checks the bound itself
(`test_with_compression_on_before_connect_a_big_frame_is_refused_by_its_header_not_buffered` in
Tests/Interop/test_preauth_holding.py).
"""
import os
import socket
import sys
import time

from brokerprocess import rss_kib, running_broker
from deflate_bombs import open_deflate_websocket, peak_rss_kib

ANNOUNCED = 1_000_000


def main():
    binary = sys.argv[1]
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 200
    sent = int(sys.argv[3]) if len(sys.argv) > 3 else 900_000
    head = bytes([0xC1, 0x80 | 127]) + ANNOUNCED.to_bytes(8, "big") + os.urandom(4)
    payload = os.urandom(sent)
    with running_broker(binary, "--ws-compression", "on") as (proc, port):
        before = rss_kib(proc.pid)
        sockets = [open_deflate_websocket(port) for _ in range(count)]
        for s in sockets:
            s.setblocking(False)
        pending = {s: head + payload for s in sockets}
        closed = 0
        deadline = time.monotonic() + 60
        while pending and time.monotonic() < deadline:
            for s in list(pending):
                try:
                    n = s.send(pending[s][:262_144])
                    pending[s] = pending[s][n:]
                    if not pending[s]:
                        del pending[s]
                except BlockingIOError:
                    pass
                except OSError:
                    del pending[s]
                    closed += 1
            time.sleep(0.001)
        time.sleep(1)
        for s in sockets:
            try:
                if s.recv(65536) == b"":
                    closed += s not in pending
            except BlockingIOError:
                pass
            except OSError:
                pass
        after = rss_kib(proc.pid)
        print(f"{os.path.basename(binary)}: {count} sockets, each {sent} bytes of a {ANNOUNCED}-byte frame before a "
              f"token: broker RSS {before // 1024} -> {after // 1024} MB (peak {peak_rss_kib(proc.pid) // 1024} MB), "
              f"sockets the broker closed: about {closed}")
        for s in sockets:
            s.close()


if __name__ == "__main__":
    main()
