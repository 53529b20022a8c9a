#!/usr/bin/env python3
"""What tiny websocket frames from sockets without a token cost the broker: N websockets (plain upgrades, no token)
write one kind of tiny frame as fast as they can for SECONDS, without reading what the broker sends. Prints how many
frames the clients wrote, the broker's CPU (of one core) over the flood, and its RSS before, after and once the
sockets closed.

    python3 Benchmarks/preauth_tiny_frames.py BROKER_BINARY KIND [N [SECONDS [compression]]]

KIND: `noop` (a 1-byte Engine.IO noop, "6"), `noop110` (a 110-byte noop), `ping` (an empty websocket ping), `pong`.
`compression`: `on` runs the broker with `--ws-compression on` (the sockets do not negotiate it; hummingbird-websocket
reads them all the same). Run each binary in turn, alternating, in one sitting. The interop suite checks the bounds
(`test_tiny_frames_cost_what_a_small_message_does` and
`test_with_compression_on_small_messages_are_read_at_the_budgets_pace_too` in Tests/Interop/test_preauth_holding.py).
"""
import os
import socket
import sys
import threading
import time

from brokerprocess import rss_kib, running_broker
from deflate_bombs import open_deflate_websocket


def masked(opcode, payload=b""):
    key = os.urandom(4)
    return bytes([0x80 | opcode, 0x80 | len(payload)]) + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


FRAMES = {"noop": masked(0x1, b"6"), "noop110": masked(0x1, b"6" + b"x" * 109), "ping": masked(0x9), "pong": masked(0xA)}


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main():
    binary, kind = sys.argv[1], sys.argv[2]
    count = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    seconds = float(sys.argv[4]) if len(sys.argv) > 4 else 6
    flags = ["--ws-compression", "on"] if len(sys.argv) > 5 and sys.argv[5] == "on" else []
    frame = FRAMES[kind]
    blob = frame * max(1, 200_000 // len(frame))
    with running_broker(binary, *flags) as (proc, port):
        before = rss_kib(proc.pid)
        sockets = [open_deflate_websocket(port, offer_deflate=False) for _ in range(count)]
        written = [0] * count

        def flood(i, s):
            s.settimeout(0.5)
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                try:
                    s.sendall(blob)
                    written[i] += len(blob)
                except socket.timeout:
                    pass
                except OSError:
                    return

        cpu, started = cpu_seconds(proc.pid), time.monotonic()
        threads = [threading.Thread(target=flood, args=(i, s)) for i, s in enumerate(sockets)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        busy = (cpu_seconds(proc.pid) - cpu) / (time.monotonic() - started)
        after = rss_kib(proc.pid)
        for s in sockets:
            s.close()
        time.sleep(2)
        print(f"{kind} x {count} sockets for {seconds:.0f} s{' (compression on)' if flags else ''}: "
              f"{sum(written) / len(frame):,.0f} frames written ({sum(written) / 1e6:.1f} MB), broker CPU {busy:.0%} of a core, "
              f"RSS {before / 1024:.0f} -> {after / 1024:.0f} MB, {rss_kib(proc.pid) / 1024:.0f} MB once closed")


if __name__ == "__main__":
    main()
