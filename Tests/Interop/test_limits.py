"""Bad input, size limits, receipt limits, rate limits, sync paging limit, slow consumers, members per request."""
import json
import socket
import threading
import time

import pytest
import requests
import websocket

from conftest import (assert_fail, assert_http_error, assert_ok, harness_for, member_ids, peer_deviation, raw_acks, raw_ws,
                      running_server, service_token, thread_msgs, token, uid, wait_until)

MAX_CONTENT = 16384


class Pair:
    def __init__(self, h, co=None):
        co = co or uid("co")
        self.h = h
        self.alice, self.bob = uid("alice"), uid("bob")
        self.ta, self.tb = token(self.alice, co), token(self.bob, co)
        self.tid = h.make_thread(self.ta, [self.bob])["id"]


@pytest.fixture
def p(h):
    return Pair(h)


def _bad_payloads(tid):
    return [
        ("chat:send", None),
        ("chat:send", "just a string"),
        ("chat:send", [tid, "hello"]),
        ("chat:send", 42),
        ("chat:send", {}),
        ("chat:send", {"content": "no thread"}),
        ("chat:send", {"threadId": 5, "content": "x"}),
        ("chat:send", {"threadId": None, "content": "x"}),
        ("chat:send", {"threadId": tid}),
        ("chat:send", {"threadId": tid, "content": 5}),
        ("chat:send", {"threadId": tid, "content": {"nested": True}}),
        ("chat:send", {"threadId": tid, "content": "x", "type": "Bogus"}),
        ("chat:send", {"threadId": tid, "content": "x", "type": 3}),
        ("chat:send", {"threadId": tid, "content": "x", "tempId": 17}),
        ("chat:send", {"threadId": tid, "content": "x", "attachmentUrl": 1}),
        ("chat:join", None),
        ("chat:join", {}),
        ("chat:join", {"threadId": 7}),
        ("chat:leave", {"threadId": ["x"]}),
        ("chat:delivered", {"threadId": tid}),
        ("chat:delivered", {"threadId": tid, "messageIds": "m1"}),
        ("chat:delivered", {"threadId": tid, "messageIds": [1, 2]}),
        ("chat:delivered", "x"),
        ("chat:mark-read", {"threadId": tid, "upToSeq": "ten"}),
        ("chat:mark-read", {}),
        ("chat:edit", {"threadId": tid, "content": "x"}),
        ("chat:edit", {"threadId": tid, "messageId": 3, "content": "x"}),
        ("chat:delete", {"threadId": tid}),
        ("chat:delete", None),
        ("chat:history", {"threadId": tid, "limit": "x"}),
        ("chat:history", {"threadId": tid, "beforeSeq": "x"}),
        ("chat:history", {}),
        ("chat:sync", {}),
        ("chat:sync", {"threads": "all"}),
        ("chat:sync", None),
        ("chat:typing:start", {}),
    ]


def test_invalid_payloads_answer_invalid_payload_and_keep_the_connection(p, h):
    a = h.connect(p.ta, name="alice")
    b = h.connect(p.tb, name="bob")
    sent = []
    for i, (event, payload) in enumerate(_bad_payloads(p.tid)):
        ack = a.call(event, payload)
        assert_fail(ack, "invalid_payload")
        assert a.connected, f"connection closed after {event} {payload!r}"
        if i % 8 == 0:   # other users are not affected, and this connection still works
            m = a.send(p.tid, f"still here {i}")
            sent.append(m["id"])
            b.wait_for("chat:message", lambda d: d["message"]["id"] == m["id"])
    m = a.send(p.tid, "final")
    b.wait_for("chat:message", lambda d: d["message"]["id"] == m["id"])
    hist = b.call("chat:history", {"threadId": p.tid, "limit": 100})
    assert [x["id"] for x in hist["messages"]] == sent + [m["id"]]
    assert [x["seq"] for x in hist["messages"]] == list(range(1, len(sent) + 2))
    assert not a.disconnects and not b.disconnects


def test_ids_with_control_characters_are_refused(p, h):
    """No id needs a control character, and JSON writes each C0 control as six bytes: a thread of 10,000 member ids of
    256 such bytes was a 15 MB object pushed to every added member (found by an outside probe). C1 controls, line
    separators and bidirectional overrides break lines or turn an id around where it is shown, and zero-width and
    other invisible characters make `bob\u200b` read as `bob` (found by outside probes). A member, thread or message
    id with one is invalid_payload, and a token whose sub holds one is refused; content may hold them."""
    a = h.connect(p.ta, name="alice")
    for bad in ["a\u0001b", "\u001f" * 10, "x\u007f", "x\u0085", "a\u2028b", "alice\u202enimda", "\u2066bob\u2069", "x\u200f", "x\u061c",
                "bob\u200b", "x\u200d", "\ufeffx", "a\u00adb", "x\u2060", "x\u180e", "x\u206a", "x\ufff9", "x\U000e0001", "\u3164",
                "x\ufe0f"]:
        r = h.rest("POST", "/chat/threads", p.ta, json={"type": "group", "memberIds": [bad]})
        assert r.status_code == 400 and r.json()["code"] == "invalid_payload", r.text
        r = h.rest("POST", f"/chat/threads/{p.tid}/members", p.ta, json={"userIds": [bad]})
        assert r.status_code == 400 and r.json()["code"] == "invalid_payload", r.text
        assert_fail(a.call("chat:history", {"threadId": bad, "limit": 1}), "invalid_payload")
    for bad_sub in ["bob\u0001", "bob\u202e", "bob\u009b", "bob\u200b", "bob\u3164"]:
        r = h.rest("GET", "/chat/threads", token(bad_sub, uid("co")))
        assert r.status_code == 401, r.text
    # A member added before they were refused can still be removed: the id is looked up (not a member here: 404).
    r = h.rest("DELETE", f"/chat/threads/{p.tid}/members/" + requests.utils.quote("alice\u202enimda", safe=""), p.ta)
    assert r.status_code == 404, r.text
    # Content and names may hold them: only ids are refused.
    m = a.send(p.tid, "line\u2028break \u202eright to left\u202c")
    assert m["seq"] >= 1
    # Presence answers false for such an id (no one's), as for one not in NFC.
    r = h.rest("GET", "/chat/presence?userIds=" + requests.utils.quote("a\u0001b"), p.ta)
    assert r.status_code == 200 and r.json()["online"] == {"a\u0001b": False}, r.text


def test_invalid_payload_without_ack_is_harmless(p, h):
    a, b = h.connect(p.ta), h.connect(p.tb)
    for event, payload in _bad_payloads(p.tid):
        a.emit(event, payload)
    m = a.send(p.tid, "after the noise")
    b.wait_for("chat:message", lambda d: d["message"]["id"] == m["id"])
    assert m["seq"] == 1 and a.connected


def test_unicode_content_roundtrip(p, h):
    a, b = h.connect(p.ta), h.connect(p.tb, transports=["polling"])
    text = "héllo wörld — ✓ 漢字 👩‍👩‍👧 \\u0000 \n\t\"quotes\" </script> \u2028 ﷽"
    m = a.send(p.tid, text)
    assert m["content"] == text
    assert b.wait_for("chat:message", lambda d: d["message"]["id"] == m["id"])["message"]["content"] == text
    assert b.call("chat:history", {"threadId": p.tid})["messages"][0]["content"] == text


@pytest.mark.parametrize("unit", ["a", "é", "€", "😀"])
def test_content_size_is_counted_in_utf8_bytes(p, h, unit):
    a = h.connect(p.ta)
    n = len(unit.encode("utf-8"))
    exact = unit * (MAX_CONTENT // n) + "a" * (MAX_CONTENT % n)
    assert len(exact.encode("utf-8")) == MAX_CONTENT
    m = a.send(p.tid, exact)                   # exactly --max-content bytes is accepted
    assert m["content"] == exact
    over = exact + "a"
    assert len(over.encode("utf-8")) == MAX_CONTENT + 1
    assert_fail(a.call("chat:send", {"threadId": p.tid, "content": over}), "payload_too_large")
    if n > 1:   # fewer characters than the limit, too many bytes
        over2 = unit * (MAX_CONTENT // n + 1)
        assert len(over2) < MAX_CONTENT < len(over2.encode("utf-8"))
        assert_fail(a.call("chat:send", {"threadId": p.tid, "content": over2}), "payload_too_large")
    # edits have the same limit
    assert_fail(a.call("chat:edit", {"threadId": p.tid, "messageId": m["id"], "content": over}), "payload_too_large")
    assert_ok(a.call("chat:edit", {"threadId": p.tid, "messageId": m["id"], "content": exact[::-1]}))
    assert_http_error(h.rest("PATCH", f"/chat/messages/{m['id']}", p.ta, json={"content": over}), 413,
                      "payload_too_large")
    hist = a.call("chat:history", {"threadId": p.tid})
    assert [x["id"] for x in hist["messages"]] == [m["id"]]
    assert a.connected


def test_receipt_id_limit(p, h):
    a, b = h.connect(p.ta), h.connect(p.tb)
    m = a.send(p.tid, "x")
    ids = [m["id"]] + [uid("m") for _ in range(999)]
    assert_ok(b.call("chat:delivered", {"threadId": p.tid, "messageIds": ids}))        # 1000: fine
    a.wait_for("chat:delivered", lambda d: d["messageIds"] == [m["id"]])
    assert_fail(b.call("chat:delivered", {"threadId": p.tid, "messageIds": ids + [uid("m")]}), "payload_too_large")
    assert b.connected


def test_flood_of_typing_and_receipts_does_not_slow_others(p, h):
    a, b = h.connect(p.ta), h.connect(p.tb)
    co = uid("co")
    x, y = uid("x"), uid("y")
    t2 = h.make_thread(token(x, co), [y])["id"]
    cx, cy = h.connect(token(x, co)), h.connect(token(y, co))
    m0 = a.send(p.tid, "m0")
    for i in range(300):
        a.emit("chat:typing:start", {"threadId": p.tid})
        a.emit("chat:typing:stop", {"threadId": p.tid})
        b.emit("chat:delivered", {"threadId": p.tid, "messageIds": [m0["id"]]})
    t0 = time.monotonic()
    m = cx.send(t2, "unaffected")
    cy.wait_for("chat:message", lambda d: d["message"]["id"] == m["id"], timeout=3)
    assert time.monotonic() - t0 < 3
    assert a.connected and b.connected
    m2 = a.send(p.tid, "still fine")
    b.wait_for("chat:message", lambda d: d["message"]["id"] == m2["id"], timeout=5)


# ------------------------------------------------------------------ a server with small limits

@pytest.fixture(scope="module")
def small():
    with running_server(["--max-content", "64", "--max-receipt-ids", "5", "--rate-per-sec", "2",
                         "--rate-burst", "5", "--sync-limit", "3"]) as srv:
        yield srv


@pytest.fixture
def hs(small):
    with harness_for(small) as hh:
        yield hh


def test_max_content_flag(hs):
    pp = Pair(hs)
    a = hs.connect(pp.ta)
    assert_ok(a.call("chat:send", {"threadId": pp.tid, "content": "é" * 32}))
    assert_fail(a.call("chat:send", {"threadId": pp.tid, "content": "é" * 32 + "a"}), "payload_too_large")
    assert_fail(a.call("chat:send", {"threadId": pp.tid, "content": "x" * 65}), "payload_too_large")
    assert_ok(a.call("chat:send", {"threadId": pp.tid, "content": "x" * 64}))


def test_max_receipt_ids_flag(hs):
    pp = Pair(hs)
    b = hs.connect(pp.tb)
    assert_ok(b.call("chat:delivered", {"threadId": pp.tid, "messageIds": [uid("m") for _ in range(5)]}))
    assert_fail(b.call("chat:delivered", {"threadId": pp.tid, "messageIds": [uid("m") for _ in range(6)]}),
                "payload_too_large")


def test_rate_limited_sends(hs):
    pp = Pair(hs)
    a1, b = hs.connect(pp.ta), hs.connect(pp.tb)
    acks = a1.send_many(pp.tid, [f"burst {i}" for i in range(9)])
    ok = [x for x in acks if x["success"]]
    limited = [x for x in acks if not x["success"]]
    assert 5 <= len(ok) <= 6, acks            # the burst, plus at most one refilled token
    assert limited, "no rate_limited answer over the burst"
    for x in limited:
        assert_fail(x, "rate_limited")
    assert a1.connected
    # refused sends are not stored and take no seq
    hist = b.call("chat:history", {"threadId": pp.tid})
    assert [m["seq"] for m in hist["messages"]] == list(range(1, len(ok) + 1))
    assert sorted(m["content"] for m in hist["messages"]) == sorted(x["message"]["content"] for x in ok)
    # the limit is per connection: other users and other connections are unaffected
    mb = b.send(pp.tid, "bob is fine")
    a2 = hs.connect(pp.ta)
    ma = a2.send(pp.tid, "alice's other device is fine")
    b.wait_for("chat:message", lambda d: d["message"]["id"] == ma["id"])
    assert mb["seq"] == len(ok) + 1 and ma["seq"] == len(ok) + 2
    # tokens refill at --rate-per-sec
    time.sleep(0.8)
    assert_ok(a1.call("chat:send", {"threadId": pp.tid, "content": "after a pause"}))


@pytest.fixture(scope="module")
def no_refill():
    """Sends, edits and deletes at a burst of 5 and a rate too slow to give one back during a test (a debug build on
    PostgreSQL can take 0.1 s a call, and at the `small` server's 2/s a token would come back within 0.5 s)."""
    with running_server(["--rate-per-sec", "0.001", "--rate-burst", "5"]) as srv:
        yield srv


@peer_deviation   # the peer counts only chat:send toward the rate
def test_edits_and_deletes_count_toward_the_rate(no_refill):
    with harness_for(no_refill) as hs:
        _edits_and_deletes_count_toward_the_rate(hs)


def _edits_and_deletes_count_toward_the_rate(hs):
    pp = Pair(hs)
    a, b = hs.connect(pp.ta), hs.connect(pp.tb)
    m1 = a.send(pp.tid, "to be edited")                  # burst of 5: 1
    m2 = a.send(pp.tid, "to be deleted")                 # 2
    assert_ok(a.call("chat:edit", {"threadId": pp.tid, "messageId": m1["id"], "content": "e1"}))   # 3
    assert_ok(a.call("chat:edit", {"threadId": pp.tid, "messageId": m1["id"], "content": "e2"}))   # 4
    assert_ok(a.call("chat:delete", {"threadId": pp.tid, "messageId": m2["id"]}))                  # 5
    # over the burst now: edits, deletes and sends are all refused
    assert_fail(a.call("chat:edit", {"threadId": pp.tid, "messageId": m1["id"], "content": "e3"}), "rate_limited")
    assert_fail(a.call("chat:delete", {"threadId": pp.tid, "messageId": m1["id"]}), "rate_limited")
    assert_fail(a.call("chat:send", {"threadId": pp.tid, "content": "more"}), "rate_limited")
    hist = b.call("chat:history", {"threadId": pp.tid})
    assert [(x["content"], x["deletedAt"] is None) for x in hist["messages"]] == [("e2", True), ("", False)]


def test_edits_and_deletes_are_not_rate_limited_below_the_rate(hs):
    pp = Pair(hs)
    a = hs.connect(pp.ta)
    m = a.send(pp.tid, "x")
    assert_ok(a.call("chat:edit", {"threadId": pp.tid, "messageId": m["id"], "content": "y"}))
    assert_ok(a.call("chat:delete", {"threadId": pp.tid, "messageId": m["id"]}))


def test_sync_limit_pages(hs):
    pp = Pair(hs)
    a, b = hs.connect(pp.ta), hs.connect(pp.tb)
    sent = a.send_many(pp.tid, [f"a{i}" for i in range(4)]) + b.send_many(pp.tid, ["b0", "b1"])
    assert all(x["success"] for x in sent)

    def page(after):
        r = b.call("chat:sync", {"threads": [{"threadId": pp.tid, "afterSeq": after}]})
        assert_ok(r)
        e = r["threads"][0]
        return [ev["data"]["message"]["seq"] for ev in e["events"]], e["hasMore"]

    assert page(0) == ([1, 2, 3], True)
    assert page(3) == ([4, 5, 6], False)      # the page that reaches the last event
    assert page(6) == ([], False)
    c = hs.connect(pp.tb)
    c.send(pp.tid, "b2")
    assert page(3) == ([4, 5, 6], True)
    assert page(6) == ([7], False)
    assert page(1) == ([2, 3, 4], True)


@peer_deviation   # the peer has no REST rate limit
def test_rest_writes_are_rate_limited_per_user(hs):
    import requests
    pp = Pair(hs)
    a = hs.connect(pp.ta)
    m = a.send(pp.tid, "edit me")
    from concurrent.futures import ThreadPoolExecutor

    def patch(i):
        return requests.patch(f"{hs.server.url}/chat/messages/{m['id']}", json={"content": f"v{i}"},
                              headers={"Authorization": "Bearer " + pp.ta}, timeout=30)

    # At once, eight at a time: one after another, a debug build on PostgreSQL can take long enough a write for the
    # 2/s rate to give each one back.
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(patch, range(40)))
    elapsed = time.monotonic() - started
    statuses = [r.status_code for r in answers]
    assert set(statuses) <= {200, 429}, statuses
    assert 429 in statuses, "40 REST writes at once by one user were never answered 429"
    for r in answers:
        if r.status_code == 429:
            assert_http_error(r, 429, "rate_limited")
    assert statuses.count(200) <= 6 + 2 * elapsed, (statuses.count(200), elapsed)
    # per user: another user's write goes through
    mb = hs.connect(pp.tb).send(pp.tid, "bob's")
    r = hs.rest("PATCH", f"/chat/messages/{mb['id']}", pp.tb, json={"content": "bob's, edited"})
    assert r.status_code == 200, r.text


# ------------------------------------------------------------------ slow consumers

@pytest.fixture(scope="module")
def slow_srv():
    with running_server(["--outbound-limit", "65536", "--rate-per-sec", "5000", "--rate-burst", "5000",
                         "--durability", "process"]) as srv:
        yield srv


def _stalled_client(srv, tok):
    """A raw Socket.IO websocket client that connects to /chat and then never reads."""
    ws = websocket.create_connection(f"ws://127.0.0.1:{srv.port}/socket.io/?EIO=4&transport=websocket",
                                     timeout=5, sockopt=((socket.SOL_SOCKET, socket.SO_RCVBUF, 4096),))
    assert ws.recv().startswith("0")
    ws.send('40/chat,{"token":"%s"}' % tok)
    while True:
        f = ws.recv()
        if f.startswith("40/chat"):
            return ws
        assert not f.startswith("44"), f


def test_slow_consumer_never_blocks_others_and_is_closed(slow_srv):
    with harness_for(slow_srv) as hh:
        pp = Pair(hh)
        stalled = _stalled_client(slow_srv, pp.tb)
        try:
            wait_until(lambda: slow_srv.rest("GET", f"/chat/presence?userIds={pp.bob}", pp.ta).json()
                       ["online"][pp.bob], timeout=3, what="bob online")
            a = hh.connect(pp.ta)
            watcher = hh.connect(pp.ta)
            big = "z" * 16000
            n = 0
            t0 = time.monotonic()
            # flood until the stalled socket is dropped; every send is still acked promptly. In batches of 10 (160 KB
            # to each of alice's two sockets): at 50, alice's own sockets could fall past the outbound bound her
            # sockets share (2 x --outbound-limit x 4 = 512 KB here) when the client read slowly on a loaded machine,
            # and were closed as slow consumers too (a CI failure: "only 4/50 acks").
            closed = False
            while time.monotonic() - t0 < 25:
                acks = a.send_many(pp.tid, [big] * 10, timeout=10)
                assert all(x["success"] for x in acks), [x for x in acks if not x["success"]][:1]
                n += 10
                online = slow_srv.rest("GET", f"/chat/presence?userIds={pp.bob}", pp.ta).json()["online"][pp.bob]
                if not online:
                    closed = True
                    break
            assert closed, f"the stalled consumer was not dropped after {n} messages of 16 kB"
            # the others got everything, in order
            watcher.wait_for("chat:message", lambda d: d["threadId"] == pp.tid, count=n, timeout=15)
            assert [d["message"]["seq"] for d in thread_msgs(watcher, pp.tid)] == list(range(1, n + 1))
            # bob reconnects and catches up with chat:sync: nothing is lost
            b = hh.connect(pp.tb)
            got, after = [], 0
            while True:
                r = b.call("chat:sync", {"threads": [{"threadId": pp.tid, "afterSeq": after}]}, timeout=10)
                e = r["threads"][0]
                got += [ev["data"]["message"]["seq"] for ev in e["events"]]
                if not e["hasMore"]:
                    break
                after = got[-1]
            assert got == list(range(1, n + 1))
        finally:
            try:
                stalled.close()
            except Exception:  # noqa: BLE001
                pass


def test_a_client_catches_up_with_sync_under_a_small_outbound_limit():
    """With --outbound-limit 16384 (the user's outbound bound 2 x 16 KiB x 4 = 128 KiB), a reconnecting client's
    `chat:sync` from 0 over 1,000 messages pages through everything and keeps its connection: a page is at most half
    the outbound limit (at least 16 KiB). Found by an outside probe: a page was about 485 KB whatever the limit, past
    the user's whole bound, so the client was closed as a slow consumer at every reconnect and never caught up."""
    with running_server(["--outbound-limit", "16384", "--rate-per-sec", "5000", "--rate-burst", "5000",
                         "--durability", "process"]) as srv, harness_for(srv) as h:
        pp = Pair(h)
        a = h.connect(pp.ta)
        for start in range(0, 1000, 50):
            acks = a.send_many(pp.tid, [f"m{start + i} " + "x" * 300 for i in range(50)], timeout=20)
            assert all(x["success"] for x in acks)
        b = h.connect(pp.tb)
        got, after, pages = [], 0, 0
        while True:
            r = b.call("chat:sync", {"threads": [{"threadId": pp.tid, "afterSeq": after}]}, timeout=10)
            assert r and r.get("success"), r
            e = r["threads"][0]
            got += [ev["data"]["message"]["seq"] for ev in e["events"]]
            pages += 1
            if not e["hasMore"]:
                break
            after = got[-1]
        assert got == list(range(1, 1001))
        assert pages > 1
        assert b.connected, "the client that paged through was closed"


# ------------------------------------------------------------------ --max-members-per-request

def _ids(n, prefix="m"):
    return [f"{prefix}{i}" for i in range(n)]


def _members_of(srv, tok, tid):
    r = srv.rest("GET", "/chat/threads", tok)
    assert r.status_code == 200, r.text
    [t] = [t for t in r.json()["threads"] if t["id"] == tid]
    return member_ids(t)


@pytest.fixture(scope="module")
def cap50():
    with running_server(["--max-members-per-request", "50"]) as srv:
        yield srv


@peer_deviation   # the peer answers 400 over 1000 memberIds, has no cap on userIds and no such flag
def test_max_members_per_request_flag_on_create(cap50):
    co = uid("co")
    alice = uid("alice")
    ta = token(alice, co)
    over = cap50.rest("POST", "/chat/threads", ta, json={"type": "group", "name": "big", "memberIds": _ids(51)})
    assert_http_error(over, 413, "payload_too_large")
    assert cap50.rest("GET", "/chat/threads", ta).json()["threads"] == [], "a refused create must create nothing"
    exact = cap50.rest("POST", "/chat/threads", ta, json={"type": "group", "name": "cap", "memberIds": _ids(50)})
    assert exact.status_code == 201, exact.text
    assert member_ids(exact.json()["thread"]) == {alice, *_ids(50)}


@peer_deviation
def test_max_members_per_request_flag_on_add(cap50):
    co = uid("co")
    alice, bob = uid("alice"), uid("bob")
    ta = token(alice, co)
    tid = cap50.rest("POST", "/chat/threads", ta, json={"type": "group", "memberIds": [bob]}).json()["thread"]["id"]
    over = cap50.rest("POST", f"/chat/threads/{tid}/members", ta, json={"userIds": _ids(51)})
    assert_http_error(over, 413, "payload_too_large")
    assert _members_of(cap50, ta, tid) == {alice, bob}, "a refused add must add nobody"
    exact = cap50.rest("POST", f"/chat/threads/{tid}/members", ta, json={"userIds": _ids(50)})
    assert exact.status_code == 200, exact.text
    assert member_ids(exact.json()["thread"]) == {alice, bob, *_ids(50)}
    # the cap is per request, not per thread: another 50 go in
    more = cap50.rest("POST", f"/chat/threads/{tid}/members", ta, json={"userIds": _ids(50, "n")})
    assert more.status_code == 200, more.text
    assert len(member_ids(more.json()["thread"])) == 102


@peer_deviation
def test_max_members_per_request_counts_the_list_as_sent(cap50):
    """The cap applies to the list as sent (its number of entries), before duplicates are collapsed: 3,000
    entries naming only 3 users are over a cap of 50 (413), so that a request's cost is bounded by its
    length, not by what it collapses to. Within the cap, duplicates (and the caller's own id) are collapsed:
    50 entries naming 3 users make a thread of 4 members."""
    co = uid("co")
    alice, bob = uid("alice"), uid("bob")
    ta = token(alice, co)
    three = ["x", "y", "z"]
    r = cap50.rest("POST", "/chat/threads", ta, json={"type": "group", "memberIds": three * 1000})
    assert_http_error(r, 413, "payload_too_large")
    tid = cap50.rest("POST", "/chat/threads", ta, json={"type": "group", "memberIds": [bob]}).json()["thread"]["id"]
    r = cap50.rest("POST", f"/chat/threads/{tid}/members", ta, json={"userIds": three * 1000})
    assert_http_error(r, 413, "payload_too_large")
    assert _members_of(cap50, ta, tid) == {alice, bob}
    # 51 entries, of which the caller's own id: still over
    r = cap50.rest("POST", "/chat/threads", ta, json={"type": "group", "memberIds": [alice] + _ids(50)})
    assert_http_error(r, 413, "payload_too_large")
    # at the cap with duplicates: collapsed
    listed = (three * 17)[:49] + [alice]
    assert len(listed) == 50
    r = cap50.rest("POST", "/chat/threads", ta, json={"type": "group", "memberIds": listed})
    assert r.status_code == 201, r.text
    assert member_ids(r.json()["thread"]) == {alice, *three}
    assert len(r.json()["thread"]["members"]) == 4
    r = cap50.rest("POST", f"/chat/threads/{tid}/members", ta, json={"userIds": (three * 17)[:50]})
    assert r.status_code == 200, r.text
    assert len(r.json()["thread"]["members"]) == 5


@peer_deviation
def test_max_members_per_request_bounds_presence_and_emit(cap50):
    """The same cap bounds the user ids of GET /chat/presence and POST /chat/emit."""
    co = uid("co")
    ta = token(uid("alice"), co)
    r = cap50.rest("GET", "/chat/presence?userIds=" + ",".join(_ids(51)), ta)
    assert_http_error(r, 413, "payload_too_large")
    r = cap50.rest("GET", "/chat/presence?userIds=" + ",".join(_ids(50)), ta)
    assert r.status_code == 200, r.text
    assert set(r.json()["online"]) == set(_ids(50))
    svc = service_token(co)
    r = cap50.rest("POST", "/chat/emit", svc, json={"event": "app:ping", "data": {}, "userIds": _ids(51)})
    assert_http_error(r, 413, "payload_too_large")
    r = cap50.rest("POST", "/chat/emit", svc, json={"event": "app:ping", "data": {}, "userIds": _ids(50)})
    assert r.status_code == 202, r.text
    assert r.json() == {"delivered": 0}


@peer_deviation
def test_max_members_per_request_default_is_1000(h):
    co = uid("co")
    alice, bob = uid("alice"), uid("bob")
    ta = token(alice, co)
    assert_http_error(h.rest("POST", "/chat/threads", ta, json={"type": "group", "memberIds": _ids(1001)}),
                      413, "payload_too_large")
    r = h.rest("POST", "/chat/threads", ta, json={"type": "group", "memberIds": _ids(1000)}, timeout=30)
    assert r.status_code == 201, r.text
    assert len(r.json()["thread"]["members"]) == 1001
    time.sleep(2.1)                                             # 1000 members cost 100 writes (a burst at 50/s)
    tid = h.make_thread(ta, [bob])["id"]
    assert_http_error(h.rest("POST", f"/chat/threads/{tid}/members", ta, json={"userIds": _ids(1001, "n")}),
                      413, "payload_too_large")
    r = h.rest("POST", f"/chat/threads/{tid}/members", ta, json={"userIds": _ids(1000, "n")}, timeout=30)
    assert r.status_code == 200, r.text
    assert len(r.json()["thread"]["members"]) == 1002


@peer_deviation
@pytest.mark.parametrize("size", ["under_max_payload", "over_max_payload"])
def test_a_hundred_thousand_member_ids_are_refused(size):
    """100,000 distinct ids: 413 payload_too_large, and the server still answers. Under --max-payload (short
    ids, ~0.9 MB) it is the members cap that refuses; over it (~1.5 MB) the body limit may refuse first.
    Not timed (the 30 s request timeout only guards against a hang: a refusal by the cap takes milliseconds,
    while collapsing 100,000 ids with a quadratic scan takes minutes). A server of its own, so that work
    left running after a failure cannot slow the tests after it."""
    co = uid("co")
    alice, bob = uid("alice"), uid("bob")
    ta = token(alice, co)
    ids = [f"{i:05d}" for i in range(100_000)] if size == "under_max_payload" else _ids(100_000, "member-")
    n = len(json.dumps({"type": "group", "memberIds": ids}))
    assert (n < 1_000_000) == (size == "under_max_payload"), n
    with running_server() as srv, harness_for(srv) as h:
        tid = h.make_thread(ta, [bob])["id"]
        r = h.rest("POST", "/chat/threads", ta, json={"type": "group", "memberIds": ids}, timeout=30)
        assert_http_error(r, 413, "payload_too_large")
        r = h.rest("POST", f"/chat/threads/{tid}/members", ta, json={"userIds": ids}, timeout=30)
        assert_http_error(r, 413, "payload_too_large")
        assert _members_of(srv, ta, tid) == {alice, bob}
        assert [t["id"] for t in h.rest("GET", "/chat/threads", ta).json()["threads"]] == [tid]
        # and the server goes on answering
        a = h.connect(ta)
        m = a.send(tid, "still here")
        assert m["seq"] == 1


def test_a_lone_surrogate_is_refused_with_a_clear_error_and_the_connection_stays(p, h):
    """JavaScript's JSON.stringify of a string cut inside an emoji writes a lone surrogate escape (\\ud83d): valid
    JSON syntax, but no text, so nothing can store it. It is refused as invalid_payload ("unpaired surrogate")
    wherever it is, and the connection stays (it used to close, as for a packet that is not JSON); an emoji written
    as its two escapes is stored."""
    a, b = h.connect(p.ta), h.connect(p.tb)
    for payload in ({"threadId": p.tid, "content": "hi \ud83d"}, {"threadId": p.tid, "content": "\ude00 x"},
                    {"threadId": p.tid, "content": "ok", "tempId": "t\ud83d"},
                    {"threadId": p.tid, "content": "ok", "x\udfff": 1}):
        ack = assert_fail(a.call("chat:send", payload), "invalid_payload")
        assert "unpaired surrogate" in ack["error"], ack
        assert a.connected
    a.emit("chat:send", {"threadId": p.tid, "content": "no ack \ud83d"})
    m = a.send(p.tid, "emoji \U0001F600")
    assert b.wait_for("chat:message", lambda d: d["message"]["id"] == m["id"])["message"]["content"] == "emoji \U0001F600"
    assert m["seq"] == 1 and a.connected and not a.disconnects


def test_whole_numbers_past_2_to_the_53_are_taken_as_beyond_everything(p, h):
    """A Java or Kotlin client's Long.MAX_VALUE (2^63 - 1) for "up to the newest", or any whole number past 2^53, is
    taken as 2^53 - 1, as the REST routes take it: upToSeq is clamped to the last seq, beforeSeq reads the newest
    page, limit is clamped to 100, afterSeq past the end syncs nothing. Fractions and negatives are still refused."""
    a, b = h.connect(p.ta), h.connect(p.tb)
    sent = [a.send(p.tid, f"m{i}") for i in range(3)]
    # 121 and 401 digits: whole numbers, not broken packets (an outside probe saw 311 digits close the socket)
    for big in (2**53, 2**63 - 1, 10**30, 10**120, 10**400):
        assert_ok(b.call("chat:mark-read", {"threadId": p.tid, "upToSeq": big}))
        page = assert_ok(b.call("chat:history", {"threadId": p.tid, "beforeSeq": big, "limit": big}))
        assert [m["id"] for m in page["messages"]] == [m["id"] for m in sent] and page["hasMore"] is False, page
        synced = assert_ok(b.call("chat:sync", {"threads": [{"threadId": p.tid, "afterSeq": big}]}))
        assert synced["threads"] == [{"threadId": p.tid, "events": [], "hasMore": False}], synced
    for big in (2**63 - 1, 10**30, 10**120):
        r = h.rest("GET", f"/chat/threads/{p.tid}/messages?beforeSeq={big}&limit={big}", p.tb)
        assert r.status_code == 200 and [m["id"] for m in r.json()["messages"]] == [m["id"] for m in sent], r.text
    for bad in (1.5, -1, -(2**63)):
        ack = assert_fail(b.call("chat:mark-read", {"threadId": p.tid, "upToSeq": bad}), "invalid_payload")
        assert "upToSeq" in ack["error"], ack
    assert b.connected


def test_a_long_number_anywhere_in_an_event_is_answered_not_a_reason_to_close(p, h):
    """Any length of JSON number is valid JSON (JavaScript reads 10^400 as Infinity): one in a field the broker
    ignores is ignored, one where a whole number is wanted is taken as beyond everything (1e400 too), a long
    fraction there is invalid_payload, and the socket stays. An outside probe saw 311 digits close it."""
    ws = raw_ws(h.server, p.ta)
    long_int, long_fraction = "9" * 400, "0." + "0" * 400 + "1"
    packets = [
        f'42/chat,1["chat:send",{{"threadId":"{p.tid}","content":"a","extra":{long_int}}}]',
        f'42/chat,2["chat:send",{{"threadId":"{p.tid}","content":"b","extra":{long_fraction}}}]',
        f'42/chat,3["chat:history",{{"threadId":"{p.tid}","limit":{long_int}}}]',
        f'42/chat,4["chat:history",{{"threadId":"{p.tid}","limit":1e400}}]',
        f'42/chat,5["chat:history",{{"threadId":"{p.tid}","limit":1.{"0" * 100}5}}]',
        f'42/chat,6["chat:history",{{"threadId":"{p.tid}","limit":{long_fraction}}}]',
    ]
    acks = {}
    for upto in (2, len(packets)):        # the sends are stored before the history is read
        for packet in packets[len(acks):upto]:
            ws.send(packet)
        raw_acks(ws, upto, acks)
    ws.close()
    assert acks[1]["success"] and acks[2]["success"], acks
    assert [m["content"] for m in acks[3]["messages"]] == ["a", "b"] and acks[4]["messages"] == acks[3]["messages"]
    # 1.000…05 is read as 1 (the nearest double): the newest message.
    assert [m["content"] for m in acks[5]["messages"]] == ["b"], acks[5]
    assert acks[6]["success"] is False and acks[6]["code"] == "invalid_payload", acks[6]


def test_an_empty_temp_id_is_no_temp_id(p, h):
    """tempId "" is no id (a client that defaults it to "" must not see every send after the first answered with the
    first message, and nothing stored): each send is stored, and tempId is echoed as null. An empty message needs an
    attachmentUrl that is not empty either."""
    a, b = h.connect(p.ta), h.connect(p.tb)
    msgs = [assert_ok(a.call("chat:send", {"threadId": p.tid, "content": f"m{i}", "tempId": ""}))["message"] for i in range(3)]
    assert [m["seq"] for m in msgs] == [1, 2, 3] and len({m["id"] for m in msgs}) == 3, msgs
    assert all(m["tempId"] is None for m in msgs), msgs
    got = b.wait_for("chat:message", lambda d: d["message"]["id"] == msgs[2]["id"])
    assert got["tempId"] is None, got
    ack = assert_fail(a.call("chat:send", {"threadId": p.tid, "content": "", "attachmentUrl": ""}), "invalid_payload")
    assert "attachmentUrl" in ack["error"], ack
    m = assert_ok(a.call("chat:send", {"threadId": p.tid, "content": "", "attachmentUrl": "https://files.example/a.png",
                                        "type": "Image"}))["message"]
    assert m["seq"] == 4 and m["content"] == "" and m["attachmentUrl"] == "https://files.example/a.png", m


def test_text_with_a_long_run_of_combining_marks_is_refused_with_a_clear_error(p, h):
    """More than 30 combining marks in a row (beyond Unicode's stream-safe limit; no language needs them, and
    comparing such text costs the broker quadratic time) is refused as invalid_payload, and the connection stays;
    30 in a row (heavy "zalgo" text) is stored and delivered unchanged."""
    a, b = h.connect(p.ta), h.connect(p.tb)
    heavy = "z" + "\u0301" * 15 + "\u0316" * 15 + "algo"
    m = a.send(p.tid, heavy)
    assert b.wait_for("chat:message", lambda d: d["message"]["id"] == m["id"])["message"]["content"] == heavy
    for payload in ({"threadId": p.tid, "content": "z" + "\u0301" * 31},
                    {"threadId": p.tid, "content": "ok", "tempId": "t" + "\u0316" * 40},
                    {"threadId": p.tid, "content": "ok", "x" + "\u0301" * 31: 1}):
        ack = assert_fail(a.call("chat:send", payload), "invalid_payload")
        assert "combining marks" in ack["error"], ack
        assert a.connected
    a.emit("chat:send", {"threadId": p.tid, "content": "no ack " + "\u0301" * 31})
    m2 = a.send(p.tid, "after")
    b.wait_for("chat:message", lambda d: d["message"]["id"] == m2["id"])
    assert m2["seq"] == m["seq"] + 1 and a.connected and not a.disconnects
