"""Connecting to /chat: transports, token in the auth payload or the Authorization header, rejections."""
import json
import time

import pytest
import websocket

from conftest import (AGAINST_PEER, SECRET, assert_ok, harness_for, peer_deviation, running_server, token, uid, wait_until)

TRANSPORTS = {"websocket": ["websocket"], "polling": ["polling"], "upgrade": None}


def _chat_works(h, tok_sender, tid, receiver):
    """A message from another client reaches `receiver`, and `receiver` can call with an ack."""
    sender = h.connect(tok_sender)
    m = sender.send(tid, "ping " + uid("m"))
    ev = receiver.wait_for("chat:message", lambda d: d["message"]["id"] == m["id"])
    assert ev["threadId"] == tid
    ack = receiver.call("chat:history", {"threadId": tid})
    assert_ok(ack)
    assert ack["messages"][-1]["id"] == m["id"]
    own = receiver.send(tid, "pong")
    sender.wait_for("chat:message", lambda d: d["message"]["id"] == own["id"])


@pytest.mark.parametrize("mode", list(TRANSPORTS))
def test_good_token_on_each_transport(h, co, mode):
    a, b = uid("alice"), uid("bob")
    t = h.make_thread(token(a, co), [b])
    c = h.connect(token(b, co), transports=TRANSPORTS[mode])
    assert c.connected
    if mode == "upgrade":
        # a default client starts with long-polling and upgrades to websocket
        wait_until(lambda: c.transport() == "websocket", timeout=5, what="upgrade to websocket")
    else:
        assert c.transport() == mode
    _chat_works(h, token(a, co), t["id"], c)
    if mode != "upgrade":
        assert c.transport() == mode


@pytest.mark.parametrize("mode", ["websocket", "polling"])
def test_authorization_bearer_header_on_handshake(h, co, mode):
    a, b = uid("alice"), uid("bob")
    t = h.make_thread(token(a, co), [b])
    c = h.connect(None, transports=TRANSPORTS[mode], auth=None,
                  headers={"Authorization": "Bearer " + token(b, co)})
    assert c.connected
    _chat_works(h, token(a, co), t["id"], c)


@pytest.mark.parametrize("mode", ["websocket", "polling"])
def test_an_empty_auth_token_falls_back_to_the_bearer_header(h, co, mode):
    """`auth: {token: ""}` with an `Authorization: Bearer` header connects with the header's token, as a gateway's
    `auth.token || header` does (it was refused `missing token`: an outside contract probe)."""
    a, b = uid("alice"), uid("bob")
    t = h.make_thread(token(a, co), [b])
    c = h.connect(None, transports=TRANSPORTS[mode], auth={"token": ""},
                  headers={"Authorization": "Bearer " + token(b, co)})
    assert c.connected
    _chat_works(h, token(a, co), t["id"], c)


@pytest.mark.skipif(AGAINST_PEER, reason="a flag of the chat-broker executable")
def test_a_websocket_message_before_connect_is_bounded_with_its_type_byte():
    """`--max-payload-before-connect` bounds a websocket message before CONNECT as it bounds a polling POST's body,
    the Engine.IO type byte counted: at the bound a CONNECT to `/chat` is decoded (its token checked), one byte past
    it is refused as `invalid token` without being decoded (65,537 bytes were decoded: an outside contract probe)."""
    with running_server(extra_args=("--max-payload-before-connect", "1000")) as srv:
        for size, decoded in ((1000, True), (1001, False)):
            ws, _ = _raw_ws(srv)
            # A CONNECT without a token: decoded, it is refused as `missing token`; not decoded, as `invalid token`.
            message = '40/chat,{"x":"' + "a" * (size - len('40/chat,{"x":"') - 2) + '"}'
            assert len(message) == size
            ws.send(message)
            error, seen = _recv_until(ws, lambda f: f.startswith("44/chat"))
            ws.close()
            assert error, seen
            expected = "missing token" if decoded else "invalid token"
            assert expected in error, (size, error)


def _bad_tokens():
    now = int(time.time())
    import jwt as pyjwt
    return {
        "garbage": ("not-a-jwt", "invalid token"),
        "wrong_secret": (token("u", "c", secret="x" * 48), "invalid token"),
        "alg_none": (token("u", "c", algorithm="none"), "invalid token"),
        "alg_hs512": (token("u", "c", algorithm="HS512"), "invalid token"),
        "tampered": (token("u", "c")[:-3] + ("AAA" if not token("u", "c").endswith("AAA") else "BBB"),
                     "invalid token"),
        "no_sub": (token("u", "c", drop=("sub",)), "invalid token"),
        "no_company": (token("u", "c", drop=("companyId",)), "invalid token"),
        "no_exp": (pyjwt.encode({"sub": "u", "companyId": "c"}, SECRET, algorithm="HS256"), "invalid token"),
        "expired": (pyjwt.encode({"sub": "u", "companyId": "c", "exp": now - 60}, SECRET, algorithm="HS256"),
                    "token expired"),
    }


@pytest.mark.parametrize("mode", ["websocket", "polling"])
@pytest.mark.parametrize("case", ["missing_auth", "empty_auth", "empty_token"] + list(_bad_tokens()))
def test_bad_token_is_a_connect_error(h, mode, case):
    if case == "missing_auth":
        err = h.connect_error(None, transports=TRANSPORTS[mode], auth=None)
        expected = "missing token"
    elif case == "empty_auth":
        err = h.connect_error(None, transports=TRANSPORTS[mode], auth={})
        expected = "missing token"
    elif case == "empty_token":
        err = h.connect_error(None, transports=TRANSPORTS[mode], auth={"token": ""})
        expected = ("missing token", "invalid token")   # an empty token: either reading is fair
    else:
        tok, expected = _bad_tokens()[case]
        err = h.connect_error(tok, transports=TRANSPORTS[mode])
    assert isinstance(err.data, dict), f"CONNECT_ERROR data must be an object with `message`: {err.data!r}"
    expected = (expected,) if isinstance(expected, str) else expected
    assert any(e in err.message for e in expected), f"expected {expected!r} in {err.message!r}"


@pytest.mark.parametrize("case", ["garbage", "expired", "wrong_secret"])
def test_bad_bearer_header_is_a_connect_error(h, case):
    tok, expected = _bad_tokens()[case]
    err = h.connect_error(None, auth=None, headers={"Authorization": "Bearer " + tok})
    assert expected in err.message


# ------------------------------------------------------------------ raw Engine.IO / Socket.IO frames

def _raw_ws(server):
    ws = websocket.create_connection(f"ws://127.0.0.1:{server.port}/socket.io/?EIO=4&transport=websocket",
                                     timeout=5)
    opening = ws.recv()
    assert opening.startswith("0"), opening
    return ws, json.loads(opening[1:])


def _recv_until(ws, pred, timeout=3.0):
    ws.settimeout(timeout)
    deadline = time.monotonic() + timeout
    seen = []
    while time.monotonic() < deadline:
        try:
            f = ws.recv()
        except websocket.WebSocketTimeoutException:
            break
        except (websocket.WebSocketConnectionClosedException, ConnectionError, OSError):
            seen.append("<closed>")
            break
        seen.append(f)
        if f == "2":            # answer pings
            ws.send("3")
            continue
        if pred(f):
            return f, seen
    return None, seen


def test_engineio_open_packet_defaults(server):
    ws, op = _raw_ws(server)
    try:
        assert isinstance(op.get("sid"), str) and op["sid"]
        assert op.get("pingInterval") == 25000
        assert op.get("pingTimeout") == 20000
        assert op.get("maxPayload") == 1000000
        assert isinstance(op.get("upgrades"), list)
    finally:
        ws.close()


def test_raw_connect_error_frame_then_nothing_for_the_namespace(server, co):
    a = uid("alice")
    # a thread that exists, so that an accepted event would answer
    r = server.rest("POST", "/chat/threads", token(a, co), json={"type": "group", "memberIds": []})
    tid = r.json()["thread"]["id"]
    ws, _ = _raw_ws(server)
    try:
        ws.send('40/chat,' + json.dumps({"token": "garbage"}))
        f, seen = _recv_until(ws, lambda f: f.startswith("44/chat,") or f.startswith("40/chat,"))
        assert f is not None and f.startswith("44/chat,"), f"expected CONNECT_ERROR for /chat, got {seen}"
        body = json.loads(f[len("44/chat,"):])
        assert "invalid token" in body["message"]
        # nothing else for that namespace: an event with an ack id is not answered
        ws.send('42/chat,7' + json.dumps(["chat:history", {"threadId": tid}]))
        f, seen = _recv_until(ws, lambda f: "/chat" in f, timeout=0.5)
        assert f is None, f"unexpected frame for /chat after CONNECT_ERROR: {seen}"
    finally:
        ws.close()


def test_raw_connect_ok_frame(server, co):
    a = uid("alice")
    ws, _ = _raw_ws(server)
    try:
        ws.send('40/chat,' + json.dumps({"token": token(a, co)}))
        f, seen = _recv_until(ws, lambda f: f.startswith("40/chat,") or f.startswith("44/chat,"))
        assert f is not None and f.startswith("40/chat,"), seen
        assert isinstance(json.loads(f[len("40/chat,"):]).get("sid"), str)
        ws.send('42/chat,3' + json.dumps(["chat:history", {"threadId": uid("nope")}]))
        f, seen = _recv_until(ws, lambda f: f.startswith("43/chat,3"))
        assert f is not None, seen
        ack = json.loads(f[len("43/chat,3"):])
        assert isinstance(ack, list) and len(ack) == 1
        assert ack[0]["success"] is False and ack[0]["code"] == "not_found"
    finally:
        ws.close()


def _send_fragments(ws, text, parts):
    """Sends one text message as `parts` WebSocket frames (text, continuation…, continuation+FIN)."""
    data = text.encode()
    step = max(1, len(data) // parts)
    chunks = [data[i:i + step] for i in range(0, len(data), step)]
    for i, chunk in enumerate(chunks):
        opcode = websocket.ABNF.OPCODE_TEXT if i == 0 else websocket.ABNF.OPCODE_CONT
        ws.send_frame(websocket.ABNF.create_frame(chunk, opcode, fin=1 if i == len(chunks) - 1 else 0))


def test_fragmented_websocket_messages_are_joined(server, co):
    a = uid("alice")
    ws, _ = _raw_ws(server)
    try:
        _send_fragments(ws, '40/chat,' + json.dumps({"token": token(a, co)}), 3)
        f, seen = _recv_until(ws, lambda f: f.startswith("40/chat,") or f.startswith("44/chat,"))
        assert f is not None and f.startswith("40/chat,"), seen
        # A ping frame between fragments is allowed by RFC 6455 and must not break the message.
        msg = '42/chat,7' + json.dumps(["chat:history", {"threadId": uid("nope")}])
        half = len(msg) // 2
        ws.send_frame(websocket.ABNF.create_frame(msg[:half].encode(), websocket.ABNF.OPCODE_TEXT, fin=0))
        ws.send_frame(websocket.ABNF.create_frame(b"hi", websocket.ABNF.OPCODE_PING, fin=1))
        ws.send_frame(websocket.ABNF.create_frame(msg[half:].encode(), websocket.ABNF.OPCODE_CONT, fin=1))
        f, seen = _recv_until(ws, lambda f: f.startswith("43/chat,7"))
        assert f is not None, seen
        assert json.loads(f[len("43/chat,7"):])[0]["code"] == "not_found"
    finally:
        ws.close()


def test_fragmented_message_over_max_payload_closes_the_socket(co):
    with running_server(extra_args=("--max-payload", "4096")) as srv:
        ws, _ = _raw_ws(srv)
        try:
            body = '42/chat,' + json.dumps(["chat:typing:start", {"threadId": "x" * 6000}])
            _send_fragments(ws, body, 4)
            f, seen = _recv_until(ws, lambda f: False, timeout=3)
            assert "<closed>" in seen, f"socket stayed open after a {len(body)}-byte message: {seen}"
        finally:
            ws.close()


@peer_deviation   # the peer (aiohttp) negotiates permessage-deflate by default
def test_ws_compression_is_off_by_default(server):
    import base64
    import os
    import socket
    s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    try:
        key = base64.b64encode(os.urandom(16)).decode()
        s.sendall((f"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
                   f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                   "Sec-WebSocket-Version: 13\r\n"
                   "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(4096)
            if not chunk:
                break
            head += chunk
        head = head.split(b"\r\n\r\n")[0].decode("latin-1")
        assert head.startswith("HTTP/1.1 101"), head
        assert "permessage-deflate" not in head.lower(), head
    finally:
        s.close()


def refused_upgrade(port, query, body=True):
    """A raw websocket upgrade request for `/socket.io/?<query>`: the status line and the JSON body of the answer."""
    import base64
    import os
    import socket
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        key = base64.b64encode(os.urandom(16)).decode()
        s.sendall((f"GET /socket.io/?{query} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                   f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        raw = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            raw += chunk
        head, _, rest = raw.partition(b"\r\n\r\n")
        return head.split(b"\r\n")[0].decode("latin-1"), json.loads(rest) if body else rest
    finally:
        s.close()


REFUSED_UPGRADES = [
    ("EIO=4&transport=websocket&sid=no-such-session", {"code": 1, "message": "Session ID unknown"}),
    ("EIO=3&transport=websocket", {"code": 5, "message": "Unsupported protocol version"}),
]


@peer_deviation   # the peer answers with aiohttp's own body
@pytest.mark.parametrize("query,body", REFUSED_UPGRADES)
def test_a_refused_websocket_upgrade_says_why(server, query, body):
    """A websocket upgrade for a sid no session has (expired, or of another node) is refused with engine.io's 400
    body, as a polling request for it is."""
    status, answer = refused_upgrade(server.port, query)
    assert status.startswith("HTTP/1.1 400"), status
    assert answer == body


# ------------------------------------------------------------------ heartbeat flags

@pytest.fixture(scope="module")
def fast_ping_server():
    with running_server(["--ping-interval", "1", "--ping-timeout", "1", "--max-payload", "200000"]) as srv:
        yield srv


def test_ping_flags_and_silent_client_is_dropped(fast_ping_server):
    srv = fast_ping_server
    co = uid("co")
    quiet, lively = uid("quiet"), uid("lively")
    ws, op = _raw_ws(srv)
    try:
        assert op["pingInterval"] == 1000 and op["pingTimeout"] == 1000 and op["maxPayload"] == 200000
        ws.send('40/chat,' + json.dumps({"token": token(quiet, co)}))
        f, seen = _recv_until(ws, lambda f: f.startswith("40/chat,"))
        assert f is not None, seen
        with harness_for(srv) as hh:
            c = hh.connect(token(lively, co))      # answers pings

            def online():
                r = srv.rest("GET", f"/chat/presence?userIds={quiet},{lively}", token(uid("x"), co))
                return r.json()["online"]

            assert online() == {quiet: True, lively: True}
            # the raw client never answers a ping: dropped after pingInterval + pingTimeout
            wait_until(lambda: online()[quiet] is False, timeout=6, what="silent client dropped")
            assert online()[lively] is True and c.connected
    finally:
        ws.close()


@pytest.mark.parametrize("mode", ["websocket", "upgrade"])
def test_a_client_with_a_handler_on_the_default_namespace_connects(h, co, mode):
    """python-socketio connects every namespace it has handlers for: a client with a handler on `/` (`@sio.event
    def connect()`, as in its documentation's first example) and `/chat` handlers connects `/` as well as `/chat`.
    Every socket.io server has `/` (the gateway's has no handlers there), so both connect there; the broker refused
    `/` with `Invalid namespace`, which failed the whole `connect()` (found by an outside probe)."""
    import socketio

    a, b = uid("alice"), uid("bob")
    t = h.make_thread(token(a, co), [b])
    sio = socketio.Client(reconnection=False)
    events, default_connects = [], []

    @sio.event
    def connect():
        default_connects.append(True)

    @sio.on("chat:message", namespace="/chat")
    def on_message(data):
        events.append(data)

    sio.connect(h.server.url, auth={"token": token(b, co)}, transports=TRANSPORTS[mode], wait_timeout=10)
    try:
        assert sorted(sio.namespaces) == ["/", "/chat"]
        assert default_connects == [True]
        m = h.connect(token(a, co)).send(t["id"], "hello " + uid("m"))
        wait_until(lambda: any(e["message"]["id"] == m["id"] for e in events), timeout=10, what="the message on /chat")
        # An event on `/`, where nothing handles it, is dropped, and the connection stays.
        assert sio.call("chat:history", {"threadId": t["id"]}, namespace="/chat", timeout=10)["messages"][-1]["id"] == m["id"]
        sio.emit("anything", {"x": 1})
        time.sleep(0.3)
        assert sio.connected
        assert sio.call("chat:history", {"threadId": t["id"]}, namespace="/chat", timeout=10)["messages"][-1]["id"] == m["id"]
    finally:
        sio.disconnect()


def _default_namespace_connected(server):
    """A raw websocket connected to `/` (answered `40{"sid":…}`)."""
    ws = websocket.create_connection(f"ws://127.0.0.1:{server.port}/socket.io/?EIO=4&transport=websocket", timeout=5)
    assert ws.recv().startswith("0")
    ws.send("40")
    answer = ws.recv()
    assert answer.startswith('40{"sid":"'), answer
    return ws


def _assert_closed(ws):
    """The broker closes `ws` (a protocol error) before sending anything more."""
    with pytest.raises((websocket.WebSocketConnectionClosedException, ConnectionResetError, BrokenPipeError)):
        for _ in range(5):
            if ws.recv() == "":
                raise websocket.WebSocketConnectionClosedException("closed")


def test_the_default_namespace_is_answered_and_nothing_reaches_it(server):
    """At the protocol level: `40` is answered `40{"sid":…}` (no token: the gateway has no middleware there); an event
    on `/` is dropped, an ack asked for is never sent; `41` leaves it, and a packet for `/` after that is a protocol
    error (closes), as for any namespace the socket is not connected to. `/chat` is unaffected. A second CONNECT to
    `/` while connected to it is a protocol error, as in socket.io."""
    ws = _default_namespace_connected(server)
    try:
        ws.send('421["chat:history",{"threadId":"x"}]')
        ws.send("40/chat," + json.dumps({"token": token(uid("u"), uid("co"))}))
        assert ws.recv().startswith("40/chat,"), "nothing came for the event on /"
        ws.send("41")
        ws.send('42["x"]')
        _assert_closed(ws)
    finally:
        ws.close()
    ws = _default_namespace_connected(server)
    try:
        ws.send("40")
        _assert_closed(ws)
    finally:
        ws.close()
