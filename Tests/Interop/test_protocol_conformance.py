"""Wire-level Engine.IO v4 / Socket.IO v5 conformance, as the official suites (socketio/engine.io-protocol and
socketio/socket.io-protocol, test-suite/) and the reference servers (engine.io 6, socket.io 4) behave:

- every 400 of the Engine.IO endpoint says `Connection: close` and ends the TCP connection, and a response to a
  request that asked for `Connection: close` says so too (node's keep-alive agent, which the suites use through
  node-fetch, reuses any socket whose response did not say close: "socket hang up");
- a handshake with another method than GET is 400 {"code":2,"message":"Bad handshake method"};
- a handshake made over WebSocket offers no upgrade;
- binary Engine.IO messages go to the Socket.IO layer on both transports: an attachment that a BINARY_EVENT
  announced is consumed (the event gets an invalid_payload ack), any other binary message closes the connection;
- a malformed packet, or one for a namespace the socket is not connected to, closes the connection at once;
- heartbeat: a ping pingInterval after the open packet and after each pong, a close pingTimeout after an
  unanswered ping;
- a close packet over polling ends the pending long-poll with a noop.

Raw HTTP, raw sockets and websocket-client only: no Socket.IO client, these are wire checks.
"""
import base64
import json
import socket
import threading
import time

import pytest
import requests
import websocket

from conftest import AGAINST_PEER, HOST, running_server, token, uid

pytestmark = pytest.mark.skipif(AGAINST_PEER, reason="checks ChatBroker against socket.io's own wire behaviour")

NS = "/chat"
# Generous windows that the checked behaviour still fails: a packet that must close the connection gets CLOSE_WITHIN
# seconds (socket.io closes within milliseconds; the slow-heartbeat server below would not ping, let alone time
# out, before 5 s).
CLOSE_WITHIN = 0.8


@pytest.fixture(scope="module")
def srv():
    """Slow heartbeat: nothing in these tests is closed by a ping timeout."""
    with running_server(["--ping-interval", "5", "--ping-timeout", "5"]) as s:
        yield s


@pytest.fixture(scope="module")
def fast():
    """The official suites' heartbeat: pingInterval 300 ms, pingTimeout 200 ms."""
    with running_server(["--ping-interval", "0.3", "--ping-timeout", "0.2"]) as s:
        yield s


# ------------------------------------------------------------------ helpers

def eio(server, extra=""):
    return f"{server.url}/socket.io/?EIO=4&transport=polling{extra}"


def ws_url(server, extra=""):
    return f"ws://{HOST}:{server.port}/socket.io/?EIO=4&transport=websocket{extra}"


def raw_http(port, method, target, body=b"", connection="keep-alive", timeout=3.0):
    """One request on a fresh TCP connection. Returns (status, headers (lower-case names), body, sock): the socket
    is left open so that the caller can see whether the server ends it."""
    s = socket.create_connection((HOST, port), timeout=timeout)
    head = (f"{method} {target} HTTP/1.1\r\nHost: {HOST}:{port}\r\nConnection: {connection}\r\n"
            f"Content-Length: {len(body)}\r\n")
    if body:
        head += "Content-Type: text/plain;charset=UTF-8\r\n"
    s.sendall(head.encode() + b"\r\n" + body)
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(65536)
        assert chunk, f"connection closed before a response to {method} {target}: {buf!r}"
        buf += chunk
    raw_head, rest = buf.split(b"\r\n\r\n", 1)
    lines = raw_head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    n = int(headers.get("content-length", "0"))
    while len(rest) < n:
        chunk = s.recv(65536)
        if not chunk:
            break
        rest += chunk
    return status, headers, rest[:n], s


def says_close(headers):
    return "close" in [t.strip().lower() for t in headers.get("connection", "").split(",")]


def server_closes(sock, within=CLOSE_WITHIN):
    """True if the server ends the TCP connection (EOF or reset) within `within` seconds."""
    sock.settimeout(within)
    try:
        while True:
            if not sock.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False
    finally:
        sock.close()


def open_polling(server):
    r = requests.get(eio(server), timeout=5)
    assert r.status_code == 200 and r.text.startswith("0"), (r.status_code, r.text)
    return json.loads(r.text[1:])["sid"]


def packets(body):
    return body.split("\x1e") if body else []


def poll(server, sid, timeout=3.0):
    """One long-poll GET: (status, [packets]), or (None, []) if it was still pending after `timeout` s."""
    try:
        r = requests.get(eio(server, f"&sid={sid}"), timeout=timeout)
    except requests.exceptions.ReadTimeout:
        return None, []
    return r.status_code, packets(r.text) if r.status_code == 200 else []


def post(server, sid, body, timeout=5.0):
    return requests.post(eio(server, f"&sid={sid}"), data=body.encode() if isinstance(body, str) else body,
                         headers={"Content-Type": "text/plain;charset=UTF-8"}, timeout=timeout)


def connect_polling(server, tok=None):
    """A polling session connected to /chat; returns its sid."""
    sid = open_polling(server)
    tok = tok or token(uid("u"), uid("co"))
    r = post(server, sid, "40/chat," + json.dumps({"token": tok}))
    assert (r.status_code, r.text) == (200, "ok")
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        status, pk = poll(server, sid)
        assert status == 200, status
        for p in pk:
            assert not p.startswith("44"), p
            if p.startswith("40/chat,"):
                return sid
    raise AssertionError("no CONNECT answer over polling")


def polling_acks(server, sid, ack_ids, within=3.0):
    """Long-polls until acks for every id in `ack_ids` arrived; returns {id: body}. Fails on a close."""
    want = {str(a) for a in ack_ids}
    got = {}
    deadline = time.monotonic() + within
    while want - set(got):
        left = deadline - time.monotonic()
        assert left > 0, f"acks {sorted(want - set(got))} did not arrive over polling (got {got})"
        status, pk = poll(server, sid, timeout=left)
        assert status in (200, None), f"session closed while waiting for acks: HTTP {status}"
        for p in pk:
            assert p != "1", "the session was closed"
            got.update(_ack(p))
    return got


def _ack(p):
    prefix = "43/chat,"
    if not p.startswith(prefix):
        return {}
    rest = p[len(prefix):]
    i = 0
    while i < len(rest) and rest[i].isdigit():
        i += 1
    return {rest[:i]: json.loads(rest[i:])[0]}


def polling_session_closed(server, sid, within=CLOSE_WITHIN):
    """True if, within `within` s, a GET on the session answers 400 or a close packet (`1`)."""
    deadline = time.monotonic() + within
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        status, pk = poll(server, sid, timeout=left)
        if status is None:
            return False
        if status == 400 or "1" in pk:
            return True
        if status != 200:
            raise AssertionError(f"unexpected HTTP {status}")


def open_ws(server):
    ws = websocket.create_connection(ws_url(server), timeout=5)
    first = ws.recv()
    assert first.startswith("0"), first
    return ws, json.loads(first[1:])


def connect_ws(server, tok=None):
    ws, _ = open_ws(server)
    tok = tok or token(uid("u"), uid("co"))
    ws.send("40/chat," + json.dumps({"token": tok}))
    while True:
        f = ws.recv()
        assert not f.startswith("44"), f
        if f.startswith("40/chat,"):
            return ws


def ws_close_time(ws, within=CLOSE_WITHIN):
    """When (time.monotonic()) the server closed the websocket (close frame, EOF or reset), or None if it was still
    open after `within` seconds. Pings are read and left unanswered."""
    deadline = time.monotonic() + within
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ws.settimeout(left)
            op, _ = ws.recv_data_frame(control_frame=True)
            if op == websocket.ABNF.OPCODE_CLOSE:
                return time.monotonic()
    except websocket.WebSocketTimeoutException:
        return None
    except (websocket.WebSocketConnectionClosedException, ConnectionError, OSError):
        return time.monotonic()
    finally:
        try:
            ws.close(timeout=0.2)
        except Exception:  # noqa: BLE001
            pass


def ws_closed(ws, within=CLOSE_WITHIN):
    """True if the server closes the websocket within `within` seconds."""
    return ws_close_time(ws, within) is not None


def ws_acks(ws, ack_ids, within=3.0):
    """Reads until acks for every id in `ack_ids` arrived; returns {id: body}. Fails if the socket closes."""
    want = {str(a) for a in ack_ids}
    got = {}
    deadline = time.monotonic() + within
    while want - set(got):
        left = deadline - time.monotonic()
        assert left > 0, f"acks {sorted(want - set(got))} did not arrive (got {got})"
        ws.settimeout(left)
        try:
            f = ws.recv()
        except websocket.WebSocketConnectionClosedException:
            raise AssertionError(f"the websocket was closed while waiting for acks {sorted(want - set(got))}")
        assert f != "", "the websocket was closed"
        if f == "2":
            ws.send("3")
        got.update(_ack(f))
    return got


def history_probe(ack_id):
    """A well-formed event that gets a `not_found` ack: proves the connection is alive and answering."""
    return f'42/chat,{ack_id}' + json.dumps(["chat:history", {"threadId": "does-not-exist"}])


ATTACHED_SEND = '451-/chat,{ack}["chat:send",{{"threadId":"t","content":{{"_placeholder":true,"num":0}}}}]'
TWO_ATTACHED_SEND = ('452-/chat,{ack}["chat:send",{{"threadId":"t","content":{{"_placeholder":true,"num":0}},'
                     '"extra":{{"_placeholder":true,"num":1}}}}]')
B64_123 = "b" + base64.b64encode(bytes([1, 2, 3])).decode()      # "bAQID"
B64_456 = "b" + base64.b64encode(bytes([4, 5, 6])).decode()


def assert_invalid_payload(ack):
    assert isinstance(ack, dict) and ack.get("success") is False and ack.get("code") == "invalid_payload", ack


# ------------------------------------------------------------------ 14: 400s end the connection and say so

BAD_REQUESTS = [
    ("GET", "/socket.io/?EIO=abc&transport=polling", b""),
    ("GET", "/socket.io/?transport=polling", b""),
    ("GET", "/socket.io/?EIO=4&transport=abc", b""),
    ("GET", "/socket.io/?EIO=4", b""),
    ("GET", "/socket.io/?EIO=4&transport=polling&sid=no-such-session", b""),
    ("POST", "/socket.io/?EIO=4&transport=polling&sid=no-such-session", b"4x"),
    ("POST", "/socket.io/?EIO=4&transport=polling", b"4x"),
    ("PUT", "/socket.io/?EIO=4&transport=polling", b""),
]


@pytest.mark.parametrize("method,target,body", BAD_REQUESTS, ids=[f"{m} {t[11:]}" for m, t, _ in BAD_REQUESTS])
def test_400_says_connection_close_and_ends_the_connection(srv, method, target, body):
    status, headers, text, sock = raw_http(srv.port, method, target, body, connection="keep-alive")
    assert status == 400, (status, text)
    if not says_close(headers):
        sock.close()
        pytest.fail(f"a 400 without 'Connection: close' (headers {headers})")
    assert server_closes(sock), "the server kept the connection open after a 400 that said 'Connection: close'"


def test_400_for_an_undecodable_polling_body_says_connection_close(srv):
    assert_undecodable_body_ends_the_session(srv, open_polling(srv), b"abc")


def assert_undecodable_body_ends_the_session(srv, sid, body):
    """A POST body that is no Engine.IO payload: 400 with `Connection: close`, the connection ended, the session gone."""
    status, headers, _, sock = raw_http(srv.port, "POST", f"/socket.io/?EIO=4&transport=polling&sid={sid}", body)
    assert status == 400
    if not says_close(headers):
        sock.close()
        pytest.fail(f"a 400 without 'Connection: close' (headers {headers})")
    assert server_closes(sock), "the server kept the connection open after a 400 that said 'Connection: close'"
    assert polling_session_closed(srv, sid)


def test_a_keep_alive_client_never_reuses_a_connection_the_server_ended(srv):
    """What node's agent does: reuse the socket unless the response said close. Two requests back to back."""
    s = socket.create_connection((HOST, srv.port), timeout=3)
    req = (f"GET /socket.io/?EIO=4&transport=abc HTTP/1.1\r\nHost: {HOST}\r\nConnection: keep-alive\r\n\r\n").encode()
    s.sendall(req)
    first = s.recv(65536)
    assert first.startswith(b"HTTP/1.1 400"), first[:60]
    reusable = b"connection: close" not in first.lower()
    if reusable:   # the client may reuse it: the server must then answer the next request on it
        s.sendall(f"GET /health HTTP/1.1\r\nHost: {HOST}\r\nConnection: keep-alive\r\n\r\n".encode())
        s.settimeout(2)
        try:
            second = s.recv(65536)
        except (socket.timeout, ConnectionResetError):
            second = b""
        s.close()
        pytest.fail(f"400 without 'Connection: close'; reusing the connection gave {second[:40]!r}")
    s.close()


ENGINE_REQUESTS_200 = ["handshake GET", "POST", "long-poll GET"]


@pytest.mark.parametrize("which", ENGINE_REQUESTS_200)
def test_a_request_asking_for_connection_close_gets_it_in_the_response(srv, which):
    """node-fetch sends `Connection: close` on every request, and node's keep-alive agent still pools the socket
    unless the response says close: the official suites then fail with "socket hang up" on 200s too."""
    if which == "handshake GET":
        status, headers, body, sock = raw_http(srv.port, "GET", "/socket.io/?EIO=4&transport=polling", connection="close")
    else:
        sid = open_polling(srv)
        r = post(srv, sid, "40/chat," + json.dumps({"token": token(uid("u"), uid("co"))}))
        assert r.status_code == 200
        if which == "POST":
            status, headers, body, sock = raw_http(srv.port, "POST", f"/socket.io/?EIO=4&transport=polling&sid={sid}",
                                                   history_probe(1).encode(), connection="close")
        else:
            status, headers, body, sock = raw_http(srv.port, "GET", f"/socket.io/?EIO=4&transport=polling&sid={sid}",
                                                   connection="close")
    assert status == 200, (status, body)
    if not says_close(headers):
        sock.close()
        pytest.fail(f"the request said 'Connection: close', the response did not (headers {headers})")
    assert server_closes(sock), "the server kept the connection open although the request said 'Connection: close'"


# ------------------------------------------------------------------ 15: handshake with a bad method

@pytest.mark.parametrize("method", ["PUT", "DELETE", "PATCH", "POST"])
def test_handshake_with_another_method_is_bad_handshake_method(srv, method):
    r = requests.request(method, eio(srv), data=b"4x" if method == "POST" else None, timeout=5)
    assert r.status_code == 400, (r.status_code, r.text)
    assert r.json() == {"code": 2, "message": "Bad handshake method"}


# ------------------------------------------------------------------ 16: upgrades offered

def test_websocket_handshake_offers_no_upgrade(srv):
    ws, opened = open_ws(srv)
    ws.close()
    assert opened["upgrades"] == [], opened


def test_polling_handshake_offers_websocket(srv):
    r = requests.get(eio(srv), timeout=5)
    assert json.loads(r.text[1:])["upgrades"] == ["websocket"]


# ------------------------------------------------------------------ 17/6: binary messages, both transports

def test_polling_announced_attachment_is_consumed_and_answered(srv):
    sid = connect_polling(srv)
    r = post(srv, sid, ATTACHED_SEND.format(ack=7) + "\x1e" + B64_123)
    assert (r.status_code, r.text) == (200, "ok"), (r.status_code, r.text)
    r = post(srv, sid, history_probe(8))
    assert (r.status_code, r.text) == (200, "ok")
    acks = polling_acks(srv, sid, [7, 8])
    assert_invalid_payload(acks["7"])
    assert acks["8"].get("code") == "not_found", acks["8"]


def test_polling_attachments_may_come_in_a_later_post(srv):
    sid = connect_polling(srv)
    r = post(srv, sid, TWO_ATTACHED_SEND.format(ack=7) + "\x1e" + B64_123)
    assert (r.status_code, r.text) == (200, "ok"), (r.status_code, r.text)
    r = post(srv, sid, B64_456 + "\x1e" + history_probe(8))
    assert (r.status_code, r.text) == (200, "ok"), (r.status_code, r.text)
    acks = polling_acks(srv, sid, [7, 8])
    assert_invalid_payload(acks["7"])
    assert acks["8"].get("code") == "not_found", acks["8"]


def test_polling_unannounced_binary_message_closes_the_session(srv):
    sid = connect_polling(srv)
    r = post(srv, sid, B64_123)
    assert (r.status_code, r.text) == (200, "ok"), "a decodable payload is accepted, then the session closes"
    assert polling_session_closed(srv, sid)


def test_polling_more_attachments_than_announced_closes_the_session(srv):
    sid = connect_polling(srv)
    r = post(srv, sid, ATTACHED_SEND.format(ack=7) + "\x1e" + B64_123 + "\x1e" + B64_456)
    assert (r.status_code, r.text) == (200, "ok"), (r.status_code, r.text)
    assert polling_session_closed(srv, sid)


def test_polling_invalid_base64_is_an_undecodable_payload(srv):
    assert_undecodable_body_ends_the_session(srv, connect_polling(srv), b"b@@@@not*base64")


def test_websocket_announced_attachment_is_consumed_and_answered(srv):
    ws = connect_ws(srv)
    try:
        ws.send(ATTACHED_SEND.format(ack=7))
        ws.send_binary(bytes([1, 2, 3]))
        ws.send(history_probe(8))
        acks = ws_acks(ws, [7, 8])
        assert_invalid_payload(acks["7"])
        assert acks["8"].get("code") == "not_found", acks["8"]
    finally:
        ws.close()


def test_websocket_unannounced_binary_message_closes_the_connection(srv):
    ws = connect_ws(srv)
    ws.send_binary(bytes([1, 2, 3]))
    assert ws_closed(ws), "an unannounced binary message must close the connection"


def test_websocket_more_attachments_than_announced_closes_the_connection(srv):
    ws = connect_ws(srv)
    ws.send(ATTACHED_SEND.format(ack=7))
    ws.send_binary(bytes([1, 2, 3]))
    ws.send_binary(bytes([4, 5, 6]))
    assert ws_closed(ws), "a binary message after the announced attachments must close the connection"


# ------------------------------------------------------------------ 18: malformed packets close the connection

MALFORMED_WS = ["abc", "7", "4abc", "49", "42/chat,{}", "42/chat,[]", "42/chat,[null]", '42/chat,"x"',
                '42/chat,abc["chat:send",{}]', '42/chat,1["chat:send",']
MALFORMED_POLLING = ["abc", "4abc", "42/chat,{}", "42/chat,[]", '42/chat,"x"']


@pytest.mark.parametrize("frame", MALFORMED_WS)
def test_websocket_malformed_packet_closes_the_connection(srv, frame):
    ws = connect_ws(srv)
    ws.send(frame)
    assert ws_closed(ws), f"{frame!r} left the connection open"


@pytest.mark.skipif(AGAINST_PEER, reason="the broker's own promise")
@pytest.mark.parametrize("frame", ["42/chat,{}", "42/chat," + "[" * 40 + "]" * 40])
def test_sends_before_a_malformed_packet_are_acked_before_the_connection_closes(srv, frame):
    """The sends that came before a packet that breaks the protocol were stored: their acks are written before the
    connection closes (it closed at once, and the client got none of 20 acks of sends stored; an outside probe)."""
    co = uid("co")
    alice = token(uid("alice"), co)
    tid = requests.post(srv.url + "/chat/threads", json={"type": "group", "memberIds": [uid("bob")]},
                        headers={"Authorization": "Bearer " + alice}, timeout=5).json()["thread"]["id"]
    ws = connect_ws(srv, alice)
    for i in range(20):
        ws.send(f'42/chat,{i}["chat:send",{{"threadId":"{tid}","content":"m{i}"}}]')
    ws.send(frame)
    acks = {}
    deadline = time.monotonic() + 10
    try:
        while time.monotonic() < deadline:
            ws.settimeout(max(0.1, deadline - time.monotonic()))
            f = ws.recv()
            if not f:
                break
            if f.startswith("43/chat,"):
                body = f[len("43/chat,"):]
                ack_id = body[:body.index("[")]
                acks[ack_id] = json.loads(body[len(ack_id):])[0]
    except (websocket.WebSocketConnectionClosedException, ConnectionError, OSError):
        pass
    assert len(acks) == 20 and all(a["success"] for a in acks.values()), acks
    assert ws_closed(ws), "the connection closes after the acks"


@pytest.mark.parametrize("body", MALFORMED_POLLING)
def test_polling_malformed_packet_closes_the_session(srv, body):
    sid = connect_polling(srv)
    r = post(srv, sid, body)
    assert r.status_code in (200, 400), r.status_code
    assert polling_session_closed(srv, sid), f"{body!r} left the session open"


@pytest.mark.parametrize("frame", ['42/chat,1["chat:send",{"threadId":5}]', '42/chat,1[5,{"threadId":"t"}]'],
                         ids=["bad field", "numeric event name"])
def test_websocket_well_formed_event_with_bad_data_gets_an_error_ack(srv, frame):
    """Bad data in a well-formed EVENT, or an unknown event (socket.io's parser takes a number as an event name),
    is answered with an error ack and the connection stays open."""
    ws = connect_ws(srv)
    try:
        ws.send(frame)
        ws.send(history_probe(2))
        acks = ws_acks(ws, [1, 2])
        assert_invalid_payload(acks["1"])
        assert acks["2"].get("code") == "not_found"
    finally:
        ws.close()


def test_polling_well_formed_event_with_bad_data_gets_an_error_ack(srv):
    sid = connect_polling(srv)
    r = post(srv, sid, '42/chat,1["chat:send",{"threadId":5}]')
    assert (r.status_code, r.text) == (200, "ok")
    r = post(srv, sid, history_probe(2))
    assert (r.status_code, r.text) == (200, "ok")
    acks = polling_acks(srv, sid, [1, 2])
    assert_invalid_payload(acks["1"])
    assert acks["2"].get("code") == "not_found"


# ------------------------------------------------------------------ "invalid state": namespace not connected

def test_websocket_event_before_connect_closes_the_connection(srv):
    ws, _ = open_ws(srv)
    ws.send(history_probe(1))
    assert ws_closed(ws), "an EVENT for /chat before CONNECT must close the connection (socket.io: invalid state)"


def test_websocket_event_after_a_refused_connect_closes_the_connection(srv):
    ws, _ = open_ws(srv)
    ws.send("40/chat," + json.dumps({"token": "not-a-jwt"}))
    f = ws.recv()
    assert f.startswith("44/chat,"), f
    time.sleep(0.1)   # let the refused CONNECT settle on the server (it may still count as "connecting" briefly)
    ws.send(history_probe(1))
    assert ws_closed(ws), "an EVENT for /chat after CONNECT_ERROR must close the connection"


@pytest.mark.parametrize("frame", ['42/other,["x"]', '42["x"]', '42/other,1["x"]'])
def test_websocket_event_for_a_namespace_never_connected_closes_the_connection(srv, frame):
    ws = connect_ws(srv)
    ws.send(frame)
    assert ws_closed(ws), f"{frame!r} (namespace not connected) left the connection open"


def test_polling_event_before_connect_closes_the_session(srv):
    sid = open_polling(srv)
    r = post(srv, sid, history_probe(1))
    assert r.status_code in (200, 400)
    assert polling_session_closed(srv, sid)


def test_polling_event_for_a_namespace_never_connected_closes_the_session(srv):
    sid = connect_polling(srv)
    r = post(srv, sid, '42/other,["x"]')
    assert r.status_code in (200, 400)
    assert polling_session_closed(srv, sid)


# ------------------------------------------------------------------ 19: heartbeat timing (300 ms / 200 ms)

FIRST_PING = (0.25, 0.45)     # pingInterval after the open packet
NEXT_PING = (0.25, 0.45)      # pingInterval after the pong
DEAD_CLOSE = (0.42, 0.70)     # pingInterval + pingTimeout after the open packet


def timed_within(window, measure, what, tries=3):
    """Runs `measure` (which returns a delay in seconds) until one falls in `window`, at most `tries` times: a
    client or machine stalled for a tenth of a second (this suite shares two cores with the broker) moves one
    measurement, a heartbeat that keeps the wrong time moves them all. Fails naming every measurement."""
    seen = []
    for _ in range(tries):
        dt = measure()
        seen.append(dt)
        if window[0] <= dt <= window[1]:
            return
    raise AssertionError(f"{what}: {', '.join(f'{d * 1000:.0f} ms' for d in seen)}; expected {window[0] * 1000:.0f}-{window[1] * 1000:.0f} ms")


def test_websocket_first_ping_comes_ping_interval_after_open(fast):
    # sessions opened one after another: a heartbeat on a coarse global tick shows on some of them
    def first_ping():
        ws = websocket.create_connection(ws_url(fast), timeout=3)
        assert ws.recv().startswith("0")
        t0 = time.monotonic()
        f = ws.recv()
        dt = time.monotonic() - t0
        ws.close()
        assert f == "2", f
        return dt

    for _ in range(3):
        timed_within(FIRST_PING, first_ping, "first ping after the open packet")


def test_websocket_next_ping_comes_ping_interval_after_pong(fast):
    ws = websocket.create_connection(ws_url(fast), timeout=3)
    try:
        assert ws.recv().startswith("0")
        assert ws.recv() == "2"

        def next_ping():
            ws.send("3")
            t0 = time.monotonic()
            f = ws.recv()
            dt = time.monotonic() - t0
            assert f == "2", f
            return dt

        for _ in range(3):
            timed_within(NEXT_PING, next_ping, "next ping after the pong")
    finally:
        ws.close()


def test_websocket_unanswered_ping_closes_after_ping_timeout(fast):
    def close_time():
        ws = websocket.create_connection(ws_url(fast), timeout=3)
        assert ws.recv().startswith("0")
        t0 = time.monotonic()
        closed_at = ws_close_time(ws, within=2.0)
        assert closed_at is not None, "a session that never answers a ping was not closed"
        return closed_at - t0

    for _ in range(3):
        timed_within(DEAD_CLOSE, close_time, "close after the open packet")


def test_polling_first_ping_and_ping_after_pong(fast):
    sids = []

    def first_ping():
        r = requests.get(eio(fast), timeout=3)
        t0 = time.monotonic()
        sid = json.loads(r.text[1:])["sid"]
        status, pk = poll(fast, sid, timeout=2)
        dt = time.monotonic() - t0
        assert (status, pk) == (200, ["2"]), (status, pk)
        sids.append(sid)
        return dt

    def next_ping():
        sid = sids[-1]
        r = post(fast, sid, "3")
        t0 = time.monotonic()
        assert r.status_code == 200
        status, pk = poll(fast, sid, timeout=2)
        dt = time.monotonic() - t0
        assert (status, pk) == (200, ["2"]), (status, pk)
        return dt

    for _ in range(3):
        timed_within(FIRST_PING, first_ping, "first ping after the handshake")
    timed_within(NEXT_PING, next_ping, "next ping after the pong")


def test_polling_session_without_pong_is_gone_after_ping_interval_plus_timeout(fast):
    """The suite's check (GET 500 ms after the handshake is a 400) with a little slack, on sessions opened 50 ms
    apart so that a heartbeat on a coarse tick cannot pass by luck."""
    results = {}

    def one(i):
        time.sleep(0.05 * i)
        r = requests.get(eio(fast), timeout=3)
        t0 = time.monotonic()
        sid = json.loads(r.text[1:])["sid"]
        time.sleep(max(0.0, 0.65 - (time.monotonic() - t0)))
        status, pk = poll(fast, sid, timeout=1.5)
        results[i] = (status, pk)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    alive = {i: v for i, v in results.items() if v[0] != 400}
    assert len(results) == 5 and not alive, f"sessions still open 650 ms after the handshake: {alive}"


# ------------------------------------------------------------------ 20: close packet over polling

def test_polling_close_packet_ends_the_pending_poll_with_a_noop(srv):
    sid = open_polling(srv)
    pending = {}

    def long_poll():
        pending["result"] = poll(srv, sid, timeout=4)

    t = threading.Thread(target=long_poll)
    t.start()
    time.sleep(0.2)
    r = post(srv, sid, "1")
    assert r.status_code == 200, r.status_code
    t.join(5)
    assert pending.get("result") == (200, ["6"]), f"pending GET got {pending.get('result')}, expected noop '6'"
    status, _ = poll(srv, sid, timeout=2)
    assert status == 400, f"GET after close: {status}"


# ------------------------------------------------------------------ further deviations found with the official suites
# The reference servers behaved otherwise in each of these; fixed along with the list above.


def test_websocket_with_the_sid_of_an_upgraded_session_is_accepted_then_closed(srv):
    """engine.io accepts the WebSocket handshake and closes it ("transport had already been upgraded"); an HTTP 400
    makes node's `ws` emit an error that the engine.io suite does not handle ("ignores WebSocket connection with same
    sid after upgrade")."""
    sid = connect_polling(srv)
    ws = websocket.create_connection(ws_url(srv, f"&sid={sid}"), timeout=5)
    try:
        ws.send("2probe")
        assert ws.recv() == "3probe"
        ws.send("5")
        time.sleep(0.1)
        try:
            second = websocket.create_connection(ws_url(srv, f"&sid={sid}"), timeout=5)
        except websocket.WebSocketBadStatusException as e:
            pytest.fail(f"the WebSocket handshake was refused: {e}")
        assert ws_closed(second), "the second WebSocket for an upgraded session was left open"
        ws.send(history_probe(9))
        assert ws_acks(ws, [9])["9"].get("code") == "not_found"
    finally:
        ws.close()


def test_websocket_disconnect_from_the_namespace_keeps_the_session(srv):
    """socket.io (and docs/PROTOCOL.md §1.3): after the client's `41/chat,` the Engine.IO session stays open and may
    CONNECT again. The baseline closes the whole connection."""
    ws = connect_ws(srv)
    try:
        ws.send("41/chat,")
        ws.send("40/chat," + json.dumps({"token": token(uid("u"), uid("co"))}))
        ws.settimeout(2)
        while True:
            try:
                f = ws.recv()
            except websocket.WebSocketConnectionClosedException:
                pytest.fail("the connection was closed after the client left /chat")
            assert f != "", "the connection was closed after the client left /chat"
            if f.startswith("40/chat,"):
                break
        ws.send(history_probe(3))
        assert ws_acks(ws, [3])["3"].get("code") == "not_found"
    finally:
        ws.close()


def test_websocket_second_connect_to_a_connected_namespace_closes_the_connection(srv):
    """socket.io: a CONNECT for a namespace the socket is already connected to is an "invalid state"."""
    ws = connect_ws(srv)
    ws.send("40/chat," + json.dumps({"token": token(uid("u"), uid("co"))}))
    assert ws_closed(ws)


def test_client_ping_is_a_transport_error(srv):
    """engine.io v4: only the server pings; a client ping closes ("invalid heartbeat direction"). (docs/PROTOCOL.md
    §1.2 says a client ping is answered: decide which.)"""
    ws, _ = open_ws(srv)
    ws.send("2")
    assert ws_closed(ws)


@pytest.mark.parametrize("query,expected", [
    ("?EIO=4&transport=abc", {"code": 0, "message": "Transport unknown"}),
    ("?EIO=abc&transport=polling", {"code": 5, "message": "Unsupported protocol version"}),
], ids=["unknown transport", "bad EIO"])
def test_engine_io_error_codes(srv, query, expected):
    """engine.io's codes (the suites only check the 400). docs/PROTOCOL.md §1.1 says code 3 for both: decide which."""
    r = requests.get(f"{srv.url}/socket.io/{query}", timeout=5)
    assert r.status_code == 400
    assert r.json() == expected


def test_connects_to_other_namespaces_do_not_use_up_the_chat_connects(srv):
    """A socket.io client multiplexes every namespace an app uses over one connection (a NestJS app with several
    gateways): each CONNECT to a namespace the broker does not serve gets its CONNECT_ERROR, and /chat still connects
    after ten of them. Found by an outside probe: they counted with the refused /chat CONNECTs, so a fourth namespace
    closed the connection, and the client's reconnection sent them all again. The 16th closes the connection (a
    bound for a client without a token: with three refused /chat CONNECTs, their answers stay within the 32 unread
    frames such a session may leave)."""
    url = f"ws://{HOST}:{srv.port}/socket.io/?EIO=4&transport=websocket"
    ws = websocket.create_connection(url, timeout=10)
    try:
        assert ws.recv().startswith("0")
        for i in range(10):
            ws.send(f"40/ns{i},")
            assert ws.recv() == f'44/ns{i},{{"message":"Invalid namespace"}}'
        ws.send("40/chat," + json.dumps({"token": token(uid("u"), uid("co"))}))
        assert ws.recv().startswith("40/chat,")
    finally:
        ws.close()
    ws = websocket.create_connection(url, timeout=10)
    assert ws.recv().startswith("0")
    refused, closed = 0, False
    for i in range(40):
        try:
            ws.send(f"40/x{i},")
            answer = ws.recv()
        except (websocket.WebSocketConnectionClosedException, ConnectionResetError, BrokenPipeError):
            closed = True
            break
        if answer == "":
            closed = True
            break
        refused += answer.startswith("44/x")
    ws.close()
    assert closed and 15 <= refused <= 16, (closed, refused)
