#!/usr/bin/env python3
"""What clients without a token can make the broker hold with answers they never read: each of 40 polling sessions
POSTs 60 KB of tiny packets that each earn an answer (`40`: a CONNECT to namespace "/", answered "Invalid namespace";
`40/chat,`: a CONNECT without a token) and never polls. Prints the broker's RSS before and after.

usage: unread-answers.py BINARY [SESSIONS]"""
import json
import os
import sys
import time

import requests

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from brokerprocess import rss_kib, running_broker  # noqa: E402

binary, sessions = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 40
with running_broker(binary) as (proc, port):
    url = f"http://127.0.0.1:{port}/socket.io/?EIO=4&transport=polling"
    payload = "\x1e".join(["40", "40/chat,"] * 10_000).encode()[:60_000].rsplit(b"\x1e", 1)[0]
    before = rss_kib(proc.pid)
    for _ in range(sessions):
        sid = json.loads(requests.get(url, timeout=5).text[1:])["sid"]
        requests.post(url + "&sid=" + sid, data=payload, timeout=30)
    time.sleep(1)
    after = rss_kib(proc.pid)
    print(f"{binary}: {sessions} sessions x {len(payload)} bytes never read: RSS {before} -> {after} KiB "
          f"(+{(after - before) / 1024:.1f} MiB)")
