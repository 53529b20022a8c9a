#!/usr/bin/env python3
"""What compressed frames sent before a token cost the broker: with `--ws-compression on`, N websockets each
negotiate permessage-deflate and send one text frame of about 1 KB that inflates to 1,000,000 bytes (a CONNECT to
/chat), 50 sockets at a time, and wait for the broker to close them. Prints the broker's CPU time (user + system,
from /proc/PID/stat) per socket, and its RSS before, at the end, and its peak.

    python3 Benchmarks/deflate_bombs.py BROKER_BINARY [N [INFLATED]]

(INFLATED, 1,000,000 by default: 100 shows what the sockets cost without the inflation.)

Run each binary in turn, alternating, in one sitting (the machine's speed drifts). The interop suite checks the
bounds themselves (`test_with_compression_on_frames_the_inflater_refuses_close_with_the_codes_a_client_expects` and
the tests around it in Tests/Interop/test_preauth_holding.py).
"""
import base64
import os
import socket
import sys
import zlib

from brokerprocess import rss_kib, running_broker

BATCH = 50


def bomb(inflated):
    deflater = zlib.compressobj(wbits=-15)
    data = deflater.compress(b"40/chat," + b"A" * (inflated - 8)) + deflater.flush(zlib.Z_SYNC_FLUSH)
    payload = data[:-4]  # RFC 7692: the message's trailing 00 00 ff ff is left off
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    n = len(payload)
    head = bytes([0xC1]) + (bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + n.to_bytes(2, "big"))
    return head + mask + masked


def open_deflate_websocket(port, offer_deflate=True):
    """A raw Engine.IO websocket, upgraded (offering permessage-deflate unless `offer_deflate` is false); the upgrade's
    answer is read, nothing after it."""
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    key = base64.b64encode(os.urandom(16)).decode()
    offer = "Sec-WebSocket-Extensions: permessage-deflate\r\n" if offer_deflate else ""
    s.sendall((f"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
               f"{offer}\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(4096)
        if not chunk:
            raise RuntimeError("closed during the upgrade")
        head += chunk
    if b" 101 " not in head.split(b"\r\n")[0]:
        raise RuntimeError(head[:200])
    return s


def drain_until_closed(s):
    try:
        while s.recv(65536):
            pass
    except OSError:
        pass
    s.close()


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(next(line for line in f if line.startswith("VmHWM")).split()[1])


def main():
    binary = sys.argv[1]
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    inflated = int(sys.argv[3]) if len(sys.argv) > 3 else 1_000_000
    frame = bomb(inflated)
    with running_broker(binary, "--ws-compression", "on") as (proc, port):
        before_rss, before_cpu = rss_kib(proc.pid), cpu_seconds(proc.pid)
        for start in range(0, count, BATCH):
            sockets = [open_deflate_websocket(port) for _ in range(min(BATCH, count - start))]
            for s in sockets:
                s.sendall(frame)
            for s in sockets:
                drain_until_closed(s)
        cpu = cpu_seconds(proc.pid) - before_cpu
        print(f"{os.path.basename(binary)}: {count} sockets, {len(frame)}-byte frame inflating to {inflated}: "
              f"broker CPU {cpu:.2f} s ({1000 * cpu / count:.2f} ms per socket), "
              f"RSS {before_rss // 1024} -> {rss_kib(proc.pid) // 1024} MB (peak {peak_rss_kib(proc.pid) // 1024} MB)")


if __name__ == "__main__":
    main()
