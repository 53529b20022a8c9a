"""Resource attacks: oversized frames and polling bodies, deep or huge JSON, unknown events, typing/receipt
floods, polling sessions never resumed, many sockets per user. Each is bounded, counted in /metrics, and
never disturbs another user (a pair of bystanders keeps chatting through every attack)."""
import json
import time

import pytest
import requests
import websocket

from conftest import assert_fail, assert_ok, harness_for, raw_ws, running_server, token, uid, wait_until

MAX_PAYLOAD = 100_000


@pytest.fixture(scope="module")
def rsrv():
    with running_server(["--max-payload", str(MAX_PAYLOAD), "--ping-interval", "1", "--ping-timeout", "1"]) as srv:
        yield srv


@pytest.fixture
def rh(rsrv):
    with harness_for(rsrv) as hh:
        yield hh


def metrics(srv):
    out = {}
    for line in requests.get(srv.url + "/metrics", timeout=5).text.splitlines():
        if line and not line.startswith("#"):
            k, _, v = line.rpartition(" ")
            try:
                out[k] = float(v)
            except ValueError:
                pass
    return out


def metric(srv, name):
    return metrics(srv).get(name, 0.0)


class Bystanders:
    """Two users of another company chatting; `check()` asserts a round trip still works promptly."""

    def __init__(self, h):
        co = uid("by")
        self.x, self.y = uid("x"), uid("y")
        tx = token(self.x, co)
        self.tid = h.make_thread(tx, [self.y])["id"]
        self.cx, self.cy = h.connect(tx, name="bx"), h.connect(token(self.y, co), name="by")

    def check(self, limit=2.0):
        t0 = time.monotonic()
        m = self.cx.send(self.tid, "still fine " + uid())
        self.cy.wait_for("chat:message", lambda d: d["message"]["id"] == m["id"], timeout=limit)
        dt = time.monotonic() - t0
        assert dt < limit, f"a bystander round trip took {dt:.2f}s"
        return dt


def assert_closed(ws, timeout=3):
    """The server closes `ws` within `timeout` (pings are answered meanwhile; any other frame is ignored)."""
    ws.settimeout(timeout)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            f = ws.recv()
            if f in ("", None):
                return
            if f == "2":
                ws.send("3")
    except (websocket.WebSocketConnectionClosedException, ConnectionError, OSError):
        return
    except websocket.WebSocketTimeoutException:
        pass
    raise AssertionError("the server did not close the connection")


def recv_ack(ws, ack_id, timeout=5):
    ws.settimeout(timeout)
    deadline = time.monotonic() + timeout
    prefix = f"43/chat,{ack_id}"
    while time.monotonic() < deadline:
        f = ws.recv()
        if f == "2":
            ws.send("3")
        elif f.startswith(prefix + "["):
            return json.loads(f[len(prefix):])[0]
    raise AssertionError(f"no ack {ack_id}")


def is_closed(ws, timeout=5):
    ws.settimeout(timeout)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            f = ws.recv()
            if f == "2":
                ws.send("3")
            if not f:
                return True
    except (websocket.WebSocketConnectionClosedException, ConnectionError, OSError):
        return True
    except websocket.WebSocketTimeoutException:
        return False
    return False


def test_oversized_websocket_frame_closes_only_that_socket(rsrv, rh):
    by = Bystanders(rh)
    ws = raw_ws(rsrv, token(uid("big"), uid("co")))
    try:
        ws.send('42/chat,["chat:send",{"threadId":"x","content":"' + "a" * (2 * MAX_PAYLOAD) + '"}]')
        assert is_closed(ws), "a frame over maxPayload did not close the connection"
    finally:
        ws.close()
    by.check()


def test_oversized_polling_body_is_413(rsrv, rh):
    by = Bystanders(rh)
    base = f"{rsrv.url}/socket.io/?EIO=4&transport=polling"
    op = requests.get(base, timeout=5).text
    sid = json.loads(op[1:])["sid"]
    r = requests.post(base + f"&sid={sid}", data=b"4" + b"x" * (2 * MAX_PAYLOAD), timeout=10)
    assert r.status_code == 413, r.status_code
    # the session is gone
    r = requests.get(base + f"&sid={sid}", timeout=5)
    assert r.status_code == 400
    by.check()


def test_deep_and_huge_json_are_refused_and_counted(rsrv, rh):
    by = Bystanders(rh)
    p_tok = token(uid("p"), uid("co"))
    # 10,000 levels deep: the bounded parser refuses it; an undecodable packet ends the connection, as socket.io
    # ends it (docs/PROTOCOL.md §1), and is counted as a protocol error
    protocol_before = metric(rsrv, "chat_protocol_errors_total")
    deep = raw_ws(rsrv, p_tok)
    deep.send('42/chat,1["chat:send",' + "[" * 10000 + "]" * 10000 + "]")
    assert_closed(deep)
    wait_until(lambda: metric(rsrv, "chat_protocol_errors_total") >= protocol_before + 1, timeout=3,
               what="protocol error counted")
    ws = raw_ws(rsrv, p_tok)
    try:
        before = metric(rsrv, "chat_event_errors_total")
        # a 90 kB array inside the payload limit: refused as a bad payload
        ws.send('42/chat,2["chat:delivered",{"threadId":"t","messageIds":[' + ",".join(["1"] * 45000) + "]}]")
        ack = recv_ack(ws, 2)
        assert ack["success"] is False and ack["code"] in ("invalid_payload", "payload_too_large"), ack
        # deep but valid-looking payload within the parser's depth: invalid_payload
        ws.send('42/chat,3["chat:send",{"threadId":' + "[" * 20 + "]" * 20 + ',"content":"x"}]')
        assert recv_ack(ws, 3)["code"] == "invalid_payload"
        ws.send('42/chat,4["chat:history",{"threadId":"nope"}]')
        assert recv_ack(ws, 4)["code"] == "not_found"       # still served after the garbage
        wait_until(lambda: metric(rsrv, "chat_event_errors_total") >= before + 3, timeout=3,
                   what="event errors counted")
    finally:
        ws.close()
    by.check()


def test_unknown_events_are_refused_counted_and_harmless(rsrv, rh):
    by = Bystanders(rh)
    ws = raw_ws(rsrv, token(uid("u"), uid("co")))
    try:
        before = metric(rsrv, "chat_event_errors_total")
        for i in range(1, 201):
            ws.send(f'42/chat,{i}' + json.dumps([f"chat:bogus{i}", {"threadId": "t"}]))
        for name in ("chat:message", "app:x", "", "__proto__"):
            ws.send('42/chat,' + json.dumps([name, {}]))         # without ack: silently refused
        ack = recv_ack(ws, 200)
        assert_fail(ack, "invalid_payload")
        wait_until(lambda: metric(rsrv, "chat_event_errors_total") >= before + 200, timeout=5,
                   what="unknown events counted")
    finally:
        ws.close()
    # names socket.io reserves are not events at all: a protocol error that ends the connection, as in socket.io
    for name in ("connect", "disconnect"):
        reserved = raw_ws(rsrv, token(uid("u"), uid("co")))
        reserved.send('42/chat,' + json.dumps([name, {}]))
        assert_closed(reserved)
    by.check()


def test_typing_and_receipt_flood_is_bounded_and_counted(rsrv, rh):
    by = Bystanders(rh)
    co = uid("co")
    a, b = uid("a"), uid("b")
    tid = rh.make_thread(token(a, co), [b])["id"]
    watcher = rh.connect(token(b, co), name="b")
    ws = raw_ws(rsrv, token(a, co))
    try:
        before = metric(rsrv, "chat_rate_limited_total")
        frame_start = "42/chat," + json.dumps(["chat:typing:start", {"threadId": tid}])
        frame_read = "42/chat," + json.dumps(["chat:mark-read", {"threadId": tid}])
        for i in range(3000):
            ws.send(frame_start if i % 2 else frame_read)
        # Probes right behind the flood: the bucket refills one token every 5 ms, so a single probe can find one
        # after any short pause of client or server; twenty back to back cannot all find one.
        probes = range(9, 29)
        for i in probes:
            ws.send(f'42/chat,{i}["chat:typing:start",' + json.dumps({"threadId": tid}) + "]")
        acks = [recv_ack(ws, i, timeout=10) for i in probes]
        refused = [a for a in acks if a["success"] is False]
        assert all(a["code"] == "rate_limited" for a in refused), acks
        assert len(refused) >= 15, acks
        wait_until(lambda: metric(rsrv, "chat_rate_limited_total") > before + 1000, timeout=5,
                   what="refused signals counted")
        by.check()
        # the flood reached the room only up to the bucket's burst (400) plus what refilled meanwhile
        time.sleep(0.3)
        n = len(watcher.received("chat:typing:start"))
        assert n <= 1500, f"{n} typing frames forwarded out of a 3000-event flood"
    finally:
        ws.close()


def test_polling_session_never_resumed_is_closed_and_counted(rsrv, rh):
    by = Bystanders(rh)
    base = f"{rsrv.url}/socket.io/?EIO=4&transport=polling"
    before = metric(rsrv, "chat_ping_timeouts_total")
    sids = []
    for _ in range(20):
        sid = json.loads(requests.get(base, timeout=5).text[1:])["sid"]
        r = requests.post(base + f"&sid={sid}", data="40/chat," + json.dumps({"token": token(uid("p"), uid("co"))}),
                          timeout=5)
        assert r.status_code == 200
        sids.append(sid)
    # never polled again: dropped after pingInterval + pingTimeout (1 s + 1 s here)
    wait_until(lambda: metric(rsrv, "chat_ping_timeouts_total") >= before + 20, timeout=8,
               what="abandoned polling sessions closed")
    for sid in sids[:3]:
        assert requests.get(base + f"&sid={sid}", timeout=5).status_code == 400
    by.check()


@pytest.fixture(scope="module")
def slow_ping_srv():
    """A broker with the default ping interval: the sockets test below opens 300 websockets one after another and
    answers pings only on the one being opened, so a 1 s ping timeout would close earlier ones before the limit
    is reached (and the test would pass or fail on the machine's speed)."""
    with running_server(["--max-payload", str(MAX_PAYLOAD)]) as srv:
        yield srv


def test_sockets_per_user_are_bounded(slow_ping_srv):
    rsrv = slow_ping_srv
    with harness_for(rsrv) as rh:
        _sockets_per_user_are_bounded(rsrv, rh)


def _sockets_per_user_are_bounded(rsrv, rh):
    by = Bystanders(rh)
    tok = token(uid("many"), uid("co"))
    socks, refused = [], 0
    try:
        for _ in range(300):
            ws = websocket.create_connection(f"ws://127.0.0.1:{rsrv.port}/socket.io/?EIO=4&transport=websocket",
                                             timeout=5)
            assert ws.recv().startswith("0")
            ws.send("40/chat," + json.dumps({"token": tok}))
            f = ws.recv()
            while f == "2":
                ws.send("3")
                f = ws.recv()
            if f.startswith("44"):
                refused += 1
                ws.close()
            else:
                socks.append(ws)
        by.check()
        assert refused > 0 and len(socks) <= 256, f"{len(socks)} sockets accepted for one user, {refused} refused"
    finally:
        for s in socks:
            s.close()
