"""An unmodified python-socketio client on long-polling receives bursts larger than its 16-packet payload limit."""
import importlib
import threading

import engineio.payload
import pytest
import socketio

from conftest import AGAINST_PEER, token, uid


@pytest.mark.skipif(AGAINST_PEER, reason="checks ChatBroker's long-poll batching")
def test_burst_over_polling_with_default_client_limits(h):
    co = uid("co")
    alice, bob = uid("alice"), uid("bob")
    ta, tb = token(alice, co), token(bob, co)
    tid = h.make_thread(ta, [bob])["id"]
    saved = engineio.payload.Payload.max_decode_packets
    engineio.payload.Payload.max_decode_packets = 16          # python-engineio's own default
    got, done = [], threading.Event()
    client = socketio.Client(reconnection=False)
    try:
        def on_message(data):
            got.append(data["message"]["seq"])
            if len(got) == 60:
                done.set()
        client.on("chat:message", on_message, namespace="/chat")
        client.connect(h.server.url, namespaces=["/chat"], auth={"token": tb}, transports=["polling"], wait_timeout=5)
        sender = h.connect(ta)
        acks = sender.send_many(tid, [f"m{i}" for i in range(60)])
        assert all(a["success"] for a in acks)
        assert done.wait(15), f"polling client got {len(got)} of 60"
        assert got == list(range(1, 61))
        assert client.connected
    finally:
        engineio.payload.Payload.max_decode_packets = saved
        client.disconnect()
