"""Every fuzz seed and reproducer (Fuzz/Corpus, Fuzz/Crashes) replayed against a live broker: Socket.IO packets
as websocket messages of a connected socket, Engine.IO payloads as polling bodies. The broker stays up, the
socket keeps answering, and a bystander keeps chatting. (The fuzz targets themselves replay these inputs in
process: scripts/reliability/fuzz.sh --replay.)"""
import glob
import json
import os
import time

import pytest
import requests
import websocket

from conftest import raw_ws, token, uid

HERE = os.path.dirname(os.path.abspath(__file__))
FUZZ = os.path.abspath(os.path.join(HERE, "..", "..", "Fuzz"))


def _inputs(target):
    files = sorted(glob.glob(os.path.join(FUZZ, "Corpus", target, "*")) +
                   glob.glob(os.path.join(FUZZ, "Crashes", target, "*")))
    return [open(f, "rb").read() for f in files if os.path.isfile(f)]


def _alive(ws, ack_id):
    ws.send(f'42/chat,{ack_id}' + json.dumps(["chat:history", {"threadId": "nope"}]))
    deadline = time.monotonic() + 5
    ws.settimeout(5)
    while time.monotonic() < deadline:
        f = ws.recv()
        if f == "2":
            ws.send("3")
        elif f.startswith(f"43/chat,{ack_id}["):
            return json.loads(f[len(f"43/chat,{ack_id}"):])[0]["code"] == "not_found"
    return False


@pytest.mark.skipif(not _inputs("FuzzSocketCodec"), reason="no fuzz inputs")
def test_socket_packets_from_the_fuzz_corpus(server):
    co = uid("co")
    ws = raw_ws(server, token(uid("fz"), co))
    try:
        for i, raw in enumerate(_inputs("FuzzSocketCodec") + _inputs("FuzzJSONParser")):
            text = raw.decode("utf-8", "replace")
            try:
                ws.send("4" + text)
            except (websocket.WebSocketConnectionClosedException, OSError):
                ws = raw_ws(server, token(uid("fz"), co))   # a packet may legitimately end the session
                continue
    finally:
        ws.close()
    # A malformed packet ends its session (as socket.io does); the broker itself serves the next client.
    ws = raw_ws(server, token(uid("fz"), co))
    try:
        assert _alive(ws, 7), "the broker stopped answering after the fuzz inputs"
    finally:
        ws.close()
    assert requests.get(server.url + "/health", timeout=5).status_code == 200


@pytest.mark.skipif(not _inputs("FuzzEngineCodec"), reason="no fuzz inputs")
def test_polling_payloads_from_the_fuzz_corpus(server):
    base = f"{server.url}/socket.io/?EIO=4&transport=polling"
    for raw in _inputs("FuzzEngineCodec"):
        sid = json.loads(requests.get(base, timeout=5).text[1:])["sid"]
        r = requests.post(base + f"&sid={sid}", data=raw, timeout=5)
        assert r.status_code in (200, 400), r.status_code
    assert requests.get(server.url + "/health", timeout=5).status_code == 200
    ws = raw_ws(server, token(uid("after"), uid("co")))
    try:
        assert _alive(ws, 3)
    finally:
        ws.close()
