"""An unmodified python-socketio client on long-polling: it receives bursts larger than its 16-packet payload limit,
and comes back after a POST over the payload bound."""
import importlib
import threading
import time

import engineio.payload
import pytest
import socketio

from conftest import AGAINST_PEER, running_server, token, uid, wait_until


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


@pytest.mark.skipif(AGAINST_PEER, reason="a flag of the chat-broker executable")
def test_a_default_polling_client_reconnects_after_a_post_over_the_payload_bound():
    """A POST over `--max-payload` is answered 413 and ends the session; its long poll then answers an error, not a
    `close` packet, so that python-socketio (default reconnection) connects again and can send. It took the `close`
    for a deliberate disconnect and stayed disconnected (an outside contract probe)."""
    with running_server(["--max-payload", "100000"]) as srv:
        co, alice, bob = uid("co"), uid("alice"), uid("bob")
        r = srv.rest("POST", "/chat/threads", token(alice, co), json={"memberIds": [bob], "type": "group"})
        tid = r.json()["thread"]["id"]
        sio = socketio.Client(reconnection_delay=0.2, reconnection_delay_max=1)
        connects = []
        sio.on("connect", lambda: connects.append(time.monotonic()), namespace="/chat")
        sio.connect(srv.url, auth={"token": token(alice, co)}, namespaces=["/chat"], transports=["polling"], wait_timeout=10)
        try:
            wait_until(lambda: connects, timeout=10, what="the first connect")
            time.sleep(0.5)  # a long poll is waiting
            sio.emit("chat:send", {"threadId": tid, "content": "x" * 200_000}, namespace="/chat")
            wait_until(lambda: len(connects) >= 2, timeout=15, what="the reconnect after the 413")
            ack = sio.call("chat:send", {"threadId": tid, "content": "after"}, namespace="/chat", timeout=10)
            assert ack["success"] and ack["message"]["content"] == "after", ack
        finally:
            sio.disconnect()
