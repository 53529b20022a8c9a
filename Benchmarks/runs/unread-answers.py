#!/usr/bin/env python3
"""What clients without a token can make the broker hold with answers they never read: each of 40 polling sessions
POSTs 60 KB of tiny packets that each earn an answer (`40`: a CONNECT to namespace "/", answered "Invalid namespace";
`40/chat,`: a CONNECT without a token) and never polls. Prints the broker's RSS before and after.

usage: unread-answers.py BINARY [SESSIONS]"""
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

import requests

binary, sessions = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 40
s = socket.socket()
s.bind(("127.0.0.1", 0))
port = s.getsockname()[1]
s.close()
data = tempfile.mkdtemp(prefix="unread-answers.")
proc = subprocess.Popen([binary, "serve", "--host", "127.0.0.1", "--port", str(port), "--data-dir", data],
                        env=dict(os.environ, CHAT_JWT_SECRET="s" * 40), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
try:
    for _ in range(100):
        try:
            requests.get(f"http://127.0.0.1:{port}/health", timeout=1)
            break
        except requests.RequestException:
            time.sleep(0.1)

    def rss_kib():
        with open(f"/proc/{proc.pid}/status") as f:
            return int(next(line for line in f if line.startswith("VmRSS")).split()[1])

    url = f"http://127.0.0.1:{port}/socket.io/?EIO=4&transport=polling"
    payload = "\x1e".join(["40", "40/chat,"] * 10_000).encode()[:60_000].rsplit(b"\x1e", 1)[0]
    before = rss_kib()
    for _ in range(sessions):
        sid = json.loads(requests.get(url, timeout=5).text[1:])["sid"]
        requests.post(url + "&sid=" + sid, data=payload, timeout=30)
    time.sleep(1)
    after = rss_kib()
    print(f"{binary}: {sessions} sessions x {len(payload)} bytes never read: RSS {before} -> {after} KiB "
          f"(+{(after - before) / 1024:.1f} MiB)")
finally:
    proc.terminate()
    proc.wait()
    subprocess.run(["rm", "-rf", data])
