#!/usr/bin/env python3
"""Connections that never send a Socket.IO CONNECT: a websocket and a polling session that answer every ping
(so the heartbeat keeps them alive) but never CONNECT. Measures when the broker closes them (the handshake
timeout is 45 s and has no flag) and checks chat_handshake_timeouts_total. Bounded: gives up after --limit s.

    python3 scripts/reliability/handshake_timeout.py
"""
import argparse
import json
import os
import sys
import tempfile
import threading
import time

import requests
import websocket

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from chatload import Broker, default_broker  # noqa: E402


def ws_probe(url, limit, out):
    ws = websocket.create_connection(url.replace("http", "ws") + "/socket.io/?EIO=4&transport=websocket", timeout=5)
    t0 = time.monotonic()
    assert ws.recv().startswith("0")
    ws.settimeout(1)
    while time.monotonic() - t0 < limit:
        try:
            f = ws.recv()
        except websocket.WebSocketTimeoutException:
            continue
        except (websocket.WebSocketConnectionClosedException, ConnectionError, OSError):
            break
        if f == "2":
            ws.send("3")
        elif not f or f == "1":
            break
    out["websocket_closed_after_s"] = round(time.monotonic() - t0, 1)


def poll_probe(url, limit, out):
    base = url + "/socket.io/?EIO=4&transport=polling"
    t0 = time.monotonic()
    sid = json.loads(requests.get(base, timeout=5).text[1:])["sid"]
    while time.monotonic() - t0 < limit:
        r = requests.get(base + f"&sid={sid}", timeout=60)
        if r.status_code != 200 or r.text.startswith("1"):
            break
        if "2" in r.text.split("\x1e"):
            requests.post(base + f"&sid={sid}", data="3", timeout=5)
    out["polling_closed_after_s"] = round(time.monotonic() - t0, 1)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--broker", default=None)
    ap.add_argument("--limit", type=float, default=90)
    ap.add_argument("--json-out", default=None)
    cfg = ap.parse_args()
    root = tempfile.mkdtemp(prefix="chat-hs-")
    broker = Broker(cfg.broker or default_broker(), os.path.join(root, "data"), log_dir=os.path.join(root, "logs"),
                    extra=["--ping-interval", "5", "--ping-timeout", "5"])
    out = {}
    try:
        broker.start()
        ts = [threading.Thread(target=ws_probe, args=(broker.url, cfg.limit, out)),
              threading.Thread(target=poll_probe, args=(broker.url, cfg.limit, out))]
        for t in ts:
            t.start()
        for t in ts:
            t.join(cfg.limit + 30)
        out["chat_handshake_timeouts_total"] = broker.metrics().get("chat_handshake_timeouts_total")
    finally:
        broker.term()
    ok = (out.get("websocket_closed_after_s", 1e9) < 60 and out.get("polling_closed_after_s", 1e9) < 60
          and (out.get("chat_handshake_timeouts_total") or 0) >= 2)
    out["ok"] = ok
    print(json.dumps(out))
    if cfg.json_out:
        with open(cfg.json_out, "w") as f:
            json.dump(out, f)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
