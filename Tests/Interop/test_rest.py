"""REST API: threads, members, messages, presence, service emit, CORS, errors."""
import json
import time

import pytest
from urllib.parse import urlencode
import requests

from conftest import (AGAINST_PEER, SECRET, assert_fail, assert_http_error, assert_message_shape, assert_ok, member_ids,
                      harness_for, running_server, service_token, thread_msgs, token, uid, wait_until)


@pytest.fixture
def users(co):
    names = ("alice", "bob", "carol", "dave")
    u = {n: uid(n) for n in names}
    return u, {n: token(u[n], co) for n in names}


def find_thread(h, tok, tid):
    r = h.rest("GET", "/chat/threads", tok)
    assert r.status_code == 200, r.text
    body = r.json()
    assert isinstance(body.get("threads"), list)
    matches = [t for t in body["threads"] if t["id"] == tid]
    return matches[0] if matches else None


# ------------------------------------------------------------------ health / metrics

def test_health_and_metrics(server):
    r = server.rest("GET", "/health")
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    r = server.rest("GET", "/metrics")
    assert r.status_code == 200
    assert r.headers.get("Content-Type", "").startswith("text/plain")
    lines = [ln for ln in r.text.splitlines() if ln and not ln.startswith("#")]
    assert lines, "no metric samples"
    for ln in lines:   # Prometheus text: `name{labels} value`
        name, _, value = ln.rpartition(" ")
        assert name and float(value) == float(value)


# ------------------------------------------------------------------ create

def test_create_group_thread_201_event_and_immediate_room_join(h, users):
    u, tok = users
    a1, a2 = h.connect(tok["alice"]), h.connect(tok["alice"], transports=["polling"])
    b1, b2 = h.connect(tok["bob"]), h.connect(tok["bob"], transports=None)
    c1 = h.connect(tok["carol"])
    d1 = h.connect(tok["dave"])  # same company, not a member
    r = h.rest("POST", "/chat/threads", tok["alice"],
               json={"type": "group", "name": "Project X", "memberIds": [u["bob"], u["carol"]]})
    assert r.status_code == 201, r.text
    t = r.json()["thread"]
    assert isinstance(t["id"], str) and t["id"]
    assert t["type"] == "group" and t["name"] == "Project X"
    assert member_ids(t) == {u["alice"], u["bob"], u["carol"]}
    for c in (a1, a2, b1, b2, c1):   # every socket of every member, the creator's included
        ev = c.wait_for("chat:thread:created", lambda d: d["thread"]["id"] == t["id"])
        assert member_ids(ev["thread"]) == {u["alice"], u["bob"], u["carol"]}
        assert ev["thread"]["type"] == "group"
    # the live sockets are in the room as soon as the request returned
    m = a1.send(t["id"], "first")
    for c in (a1, a2, b1, b2, c1):
        c.wait_for("chat:message", lambda d: d["message"]["id"] == m["id"])
    d1.assert_none("chat:thread:created", lambda d: d["thread"]["id"] == t["id"], settle=0.1)
    d1.assert_none("chat:message", settle=0)


def test_thread_created_room_join_before_response(h, users):
    """No wait at all between the 201 and the first send."""
    u, tok = users
    b = h.connect(tok["bob"])
    a = h.connect(tok["alice"])
    for i in range(3):
        t = h.make_thread(tok["alice"], [u["bob"]], name=f"t{i}")
        m = a.send(t["id"], f"hi {i}")
        b.wait_for("chat:message", lambda d: d["message"]["id"] == m["id"])


def test_direct_thread_exists_once(h, users):
    u, tok = users
    r = h.rest("POST", "/chat/threads", tok["alice"], json={"type": "direct", "memberIds": [u["bob"]]})
    assert r.status_code == 201, r.text
    t = r.json()["thread"]
    assert t["type"] == "direct" and member_ids(t) == {u["alice"], u["bob"]}
    r2 = h.rest("POST", "/chat/threads", tok["alice"], json={"type": "direct", "memberIds": [u["bob"]]})
    assert r2.status_code == 200, r2.text
    assert r2.json()["thread"]["id"] == t["id"]
    r3 = h.rest("POST", "/chat/threads", tok["bob"], json={"type": "direct", "memberIds": [u["alice"]]})
    assert r3.status_code == 200, r3.text
    assert r3.json()["thread"]["id"] == t["id"]
    # a different pair is a different thread
    r4 = h.rest("POST", "/chat/threads", tok["alice"], json={"type": "direct", "memberIds": [u["carol"]]})
    assert r4.status_code == 201 and r4.json()["thread"]["id"] != t["id"]
    # the same pair in another company is another thread
    co2 = uid("co")
    r5 = h.rest("POST", "/chat/threads", token(u["alice"], co2), json={"type": "direct", "memberIds": [u["bob"]]})
    assert r5.status_code == 201 and r5.json()["thread"]["id"] != t["id"]
    assert len([x for x in h.rest("GET", "/chat/threads", tok["alice"]).json()["threads"]
                if x["type"] == "direct"]) == 2


@pytest.mark.parametrize("body", [
    {"type": "direct", "memberIds": []},
    {"type": "direct", "memberIds": ["b1", "b2"]},
    {"type": "channel", "memberIds": ["b1"]},
    {"memberIds": ["b1"]},
    {"type": "group", "memberIds": "b1"},
    {"type": "group", "memberIds": [1, 2]},
    [1, 2],
])
def test_create_thread_bad_body_400(h, users, body):
    _, tok = users
    r = h.rest("POST", "/chat/threads", tok["alice"], json=body)
    assert_http_error(r, 400, "invalid_payload")


def test_create_thread_malformed_json_400(h, users):
    _, tok = users
    r = h.rest("POST", "/chat/threads", tok["alice"], data="{not json",
               headers={"Content-Type": "application/json"})
    assert_http_error(r, 400, "invalid_payload")


# ------------------------------------------------------------------ list

def test_list_threads_with_counts(h, users):
    u, tok = users
    t = h.make_thread(tok["alice"], [u["bob"]], name="counts")
    empty = h.make_thread(tok["alice"], [u["bob"]], name="empty")
    not_mine = h.make_thread(tok["carol"], [u["dave"]])
    a, b = h.connect(tok["alice"]), h.connect(tok["bob"])
    msgs = [a.send(t["id"], f"m{i}") for i in range(3)]

    e = find_thread(h, tok["bob"], t["id"])
    assert e is not None
    assert set(e) >= {"id", "name", "type", "members", "lastSeq", "lastMessage", "readSeq", "unreadCount"}
    assert e["name"] == "counts" and e["type"] == "group" and member_ids(e) == {u["alice"], u["bob"]}
    assert e["lastSeq"] == 3 and e["readSeq"] == 0 and e["unreadCount"] == 3
    assert_message_shape(e["lastMessage"], thread_id=t["id"], seq=3, content="m2", sender=u["alice"])
    assert e["lastMessage"]["id"] == msgs[2]["id"]

    z = find_thread(h, tok["bob"], empty["id"])
    assert z["lastSeq"] == 0 and z["lastMessage"] is None and z["readSeq"] == 0 and z["unreadCount"] == 0
    assert find_thread(h, tok["bob"], not_mine["id"]) is None

    assert_ok(b.call("chat:mark-read", {"threadId": t["id"], "upToSeq": 2}))
    e = find_thread(h, tok["bob"], t["id"])
    assert e["readSeq"] == 2 and e["unreadCount"] == 1 and e["lastSeq"] == 3

    # deleted messages do not count as unread; the delete takes seq 4
    assert_ok(a.call("chat:delete", {"threadId": t["id"], "messageId": msgs[2]["id"]}))
    e = find_thread(h, tok["bob"], t["id"])
    assert e["unreadCount"] == 0 and e["lastSeq"] == 4 and e["readSeq"] == 2


# ------------------------------------------------------------------ messages page

def test_messages_page(h, users):
    u, tok = users
    t = h.make_thread(tok["alice"], [u["bob"]])
    a = h.connect(tok["alice"])
    acks = a.send_many(t["id"], [f"m{i}" for i in range(1, 6)])
    base = f"/chat/threads/{t['id']}/messages"

    def page(q=""):
        r = h.rest("GET", base + q, tok["bob"])
        assert r.status_code == 200, r.text
        body = r.json()
        assert isinstance(body["hasMore"], bool)
        return [m["seq"] for m in body["messages"]], body["hasMore"], body["messages"]

    assert page("?limit=2")[:2] == ([4, 5], True)
    assert page("?limit=2&beforeSeq=4")[:2] == ([2, 3], True)
    assert page("?limit=2&beforeSeq=2")[:2] == ([1], False)
    assert page("?limit=5")[:2] == ([1, 2, 3, 4, 5], False)
    seqs, more, msgs = page()
    assert seqs == [1, 2, 3, 4, 5] and more is False
    assert msgs == sorted((x["message"] for x in acks), key=lambda m: m["seq"])
    assert_http_error(h.rest("GET", base + "?limit=abc", tok["bob"]), 400, "invalid_payload")
    assert_http_error(h.rest("GET", base + "?beforeSeq=x", tok["bob"]), 400, "invalid_payload")
    assert_http_error(h.rest("GET", base, tok["carol"]), 403, "not_a_member")
    assert_http_error(h.rest("GET", f"/chat/threads/{uid('nope')}/messages", tok["bob"]), 404, "not_found")


# ------------------------------------------------------------------ members

def test_add_members_event_and_room_join(h, users):
    u, tok = users
    t = h.make_thread(tok["alice"], [u["bob"]])
    c1, c2 = h.connect(tok["carol"]), h.connect(tok["carol"], transports=["polling"])
    a = h.connect(tok["alice"])
    # any member may add
    r = h.rest("POST", f"/chat/threads/{t['id']}/members", tok["bob"], json={"userIds": [u["carol"]]})
    assert r.status_code in (200, 201), r.text
    body = r.json()
    if "thread" in body:
        assert member_ids(body["thread"]) == {u["alice"], u["bob"], u["carol"]}
    for c in (c1, c2):
        ev = c.wait_for("chat:thread:created", lambda d: d["thread"]["id"] == t["id"])
        assert u["carol"] in member_ids(ev["thread"])
    m = a.send(t["id"], "welcome carol")   # no wait: joined before the request returned
    for c in (c1, c2):
        c.wait_for("chat:message", lambda d: d["message"]["id"] == m["id"])
    assert_ok(c1.call("chat:history", {"threadId": t["id"]}))
    e = find_thread(h, tok["carol"], t["id"])
    assert e is not None and member_ids(e) == {u["alice"], u["bob"], u["carol"]}


def test_add_members_errors(h, users):
    u, tok = users
    t = h.make_thread(tok["alice"], [u["bob"]])
    path = f"/chat/threads/{t['id']}/members"
    assert_http_error(h.rest("POST", path, tok["dave"], json={"userIds": [u["dave"]]}), 403, "not_a_member")
    assert_http_error(h.rest("POST", f"/chat/threads/{uid('nope')}/members", tok["alice"],
                             json={"userIds": [u["dave"]]}), 404, "not_found")
    assert_http_error(h.rest("POST", path, tok["alice"], json={"userIds": "x"}), 400, "invalid_payload")
    assert_http_error(h.rest("POST", path, tok["alice"], json={}), 400, "invalid_payload")
    # a direct thread has exactly 2 members
    d = h.rest("POST", "/chat/threads", tok["alice"], json={"type": "direct", "memberIds": [u["carol"]]}).json()
    r = h.rest("POST", f"/chat/threads/{d['thread']['id']}/members", tok["alice"], json={"userIds": [u["dave"]]})
    assert r.status_code in (400, 403), r.text
    assert_http_error(r, r.status_code)
    assert member_ids(find_thread(h, tok["alice"], d["thread"]["id"])) == {u["alice"], u["carol"]}


def test_remove_member_takes_sockets_out_of_room(h, users):
    u, tok = users
    t = h.make_thread(tok["alice"], [u["bob"], u["carol"]])
    side = h.make_thread(tok["alice"], [u["carol"]])   # a second thread, for a barrier
    a, c = h.connect(tok["alice"]), h.connect(tok["carol"])
    r = h.rest("DELETE", f"/chat/threads/{t['id']}/members/{u['carol']}", tok["alice"])
    assert r.status_code == 200, r.text
    assert member_ids(r.json()["thread"]) == {u["alice"], u["bob"]}
    m = a.send(t["id"], "carol is gone")
    s = a.send(side["id"], "barrier")
    c.wait_for("chat:message", lambda d: d["message"]["id"] == s["id"])
    c.assert_none("chat:message", lambda d: d["threadId"] == t["id"], settle=0.3)
    assert_fail(c.call("chat:send", {"threadId": t["id"], "content": "let me in"}), "not_a_member")
    assert_fail(c.call("chat:history", {"threadId": t["id"]}), "not_a_member")
    assert_fail(c.call("chat:join", {"threadId": t["id"]}), "not_a_member")
    assert find_thread(h, tok["carol"], t["id"]) is None
    assert m["seq"] == 1


def test_remove_member_permissions(h, users):
    u, tok = users
    t = h.make_thread(tok["alice"], [u["bob"], u["carol"]])
    base = f"/chat/threads/{t['id']}/members/"
    # only self, or the thread's creator
    assert_http_error(h.rest("DELETE", base + u["carol"], tok["bob"]), 403, "forbidden")
    assert_http_error(h.rest("DELETE", base + u["alice"], tok["bob"]), 403, "forbidden")
    assert_http_error(h.rest("DELETE", base + u["bob"], tok["dave"]), 403, "not_a_member")
    assert_http_error(h.rest("DELETE", f"/chat/threads/{uid('nope')}/members/{u['bob']}", tok["alice"]), 404,
                      "not_found")
    r = h.rest("DELETE", base + u["bob"], tok["bob"])
    assert r.status_code == 200, r.text
    assert member_ids(r.json()["thread"]) == {u["alice"], u["carol"]}
    assert find_thread(h, tok["bob"], t["id"]) is None


# ------------------------------------------------------------------ PATCH / DELETE message

def test_patch_message(h, users):
    u, tok = users
    t = h.make_thread(tok["alice"], [u["bob"]])
    a, b = h.connect(tok["alice"]), h.connect(tok["bob"])
    m = a.send(t["id"], "before")
    r = h.rest("PATCH", f"/chat/messages/{m['id']}", tok["alice"], json={"content": "after"})
    assert r.status_code == 200, r.text
    body = r.json()
    if "message" in body:
        assert body["message"]["content"] == "after" and body["message"]["editedAt"]
    for c in (a, b):
        ev = c.wait_for("chat:message:edited", lambda d: d["message"]["id"] == m["id"])
        assert ev["threadId"] == t["id"] and ev["seq"] == 2 and ev["message"]["content"] == "after"
        assert ev["message"]["seq"] == 1 and ev["message"]["editedAt"]
    assert_http_error(h.rest("PATCH", f"/chat/messages/{m['id']}", tok["bob"], json={"content": "x"}), 403,
                      "forbidden")
    assert_http_error(h.rest("PATCH", f"/chat/messages/{uid('nope')}", tok["alice"], json={"content": "x"}), 404,
                      "not_found")
    assert_http_error(h.rest("PATCH", f"/chat/messages/{m['id']}", tok["alice"], json={"content": 5}), 400,
                      "invalid_payload")
    assert_http_error(h.rest("PATCH", f"/chat/messages/{m['id']}", tok["alice"], json={}), 400, "invalid_payload")
    hist = a.call("chat:history", {"threadId": t["id"]})
    assert [x["content"] for x in hist["messages"]] == ["after"]


def test_delete_message(h, users):
    u, tok = users
    t = h.make_thread(tok["alice"], [u["bob"]])
    a, b = h.connect(tok["alice"]), h.connect(tok["bob"])
    m = a.send(t["id"], "secret", attachmentUrl="https://x/y", attachmentType="image/png", type="Image")
    assert_http_error(h.rest("DELETE", f"/chat/messages/{m['id']}", tok["bob"]), 403, "forbidden")
    assert_http_error(h.rest("DELETE", f"/chat/messages/{uid('nope')}", tok["alice"]), 404, "not_found")
    r = h.rest("DELETE", f"/chat/messages/{m['id']}", tok["alice"])
    assert r.status_code in (200, 204), r.text
    for c in (a, b):
        ev = c.wait_for("chat:message:deleted", lambda d: d["messageId"] == m["id"])
        assert ev["threadId"] == t["id"] and ev["seq"] == 2
    page = h.rest("GET", f"/chat/threads/{t['id']}/messages", tok["bob"]).json()
    (dm,) = page["messages"]
    assert dm["id"] == m["id"] and dm["seq"] == 1 and dm["content"] == "" and dm["deletedAt"]
    assert dm["attachmentUrl"] is None and dm["attachmentType"] is None
    assert "secret" not in str(page)


# ------------------------------------------------------------------ presence

def test_a_thread_of_many_members_costs_a_write_per_ten_and_big_answers_cost_more():
    """Making a thread of 1000 members costs 100 REST writes (one per 10 ids, as a receipt counts ids), so the user's
    burst of 100 is spent and the next write waits; a member list answered whole costs one more token per 64 KiB.
    (Writes refill at 1 a second here, so however long the creation takes the bucket is still empty after it.)"""
    with running_server(["--rate-per-sec", "1"]) as srv:
        co, alice = uid("co"), uid("alice")
        tok = token(alice, co)
        r = srv.rest("POST", "/chat/threads", tok, json={"type": "group", "memberIds": [uid("m" * 200) for _ in range(1000)]},
                     timeout=30)
        assert r.status_code == 201, r.text[:200]
        assert len(r.content) > 200_000
        r = srv.rest("POST", "/chat/threads", tok, json={"type": "group", "memberIds": [uid("bob")]})
        assert r.status_code == 429 and r.json()["code"] == "rate_limited", r.text[:200]


def test_presence_costs_a_read_per_ten_ids(server):
    """Asking about 1000 users costs 100 REST reads (the burst is 400): the fifth such request at once waits."""
    tok = token(uid("alice"), uid("co"))
    ids = ",".join(f"u{i}" for i in range(1000))
    started, codes = time.monotonic(), []
    while len(codes) < 20 and 429 not in codes:
        codes.append(server.rest("GET", f"/chat/presence?userIds={ids}", tok).status_code)
    elapsed = time.monotonic() - started
    # Four from the burst, and one more for each 100 reads refilled while the requests take (200/s: two a second).
    assert codes[-1] == 429 and set(codes[:-1]) == {200}, codes
    assert 4 <= len(codes) - 1 <= 5 + 2 * elapsed, (codes, elapsed)


def rate_limited_total(srv):
    import re
    text = requests.get(srv.url + "/metrics", timeout=5).text
    return float(re.search(r"^chat_rate_limited_total (\S+)$", text, re.M).group(1))


@pytest.mark.skipif(AGAINST_PEER, reason="a ChatBroker metric")
def test_a_refused_rest_request_says_when_to_come_back_and_is_counted(server):
    """A REST 429 carries `Retry-After` and counts in `chat_rate_limited_total`, as a socket's refused event does
    (neither did: an outside probe)."""
    tok = token(uid("alice"), uid("co"))
    ids = ",".join(f"u{i}" for i in range(1000))
    before = rate_limited_total(server)
    for _ in range(20):
        r = server.rest("GET", f"/chat/presence?userIds={ids}", tok)
        if r.status_code == 429:
            break
    assert r.status_code == 429 and r.headers.get("Retry-After") == "1", (r.status_code, dict(r.headers))
    assert rate_limited_total(server) >= before + 1


def test_presence_of_the_most_uuid_users_fits_in_a_request_head(server):
    """`GET /chat/presence` with 1,000 UUIDs (the most one request may name), their commas percent-encoded as
    `URLSearchParams` and python `requests` write them, is answered: the request head bound is made for it (a review
    found a 16-KiB bound, tried this session, refused it with 431)."""
    import uuid as uuid_module
    tok = token(uid("alice"), uid("co"))
    ids = [str(uuid_module.uuid4()) for _ in range(1000)]
    r = requests.get(f"{server.url}/chat/presence", params={"userIds": ",".join(ids)}, headers={"Authorization": f"Bearer {tok}"},
                     timeout=10)
    assert len(r.request.url) > 38_000, len(r.request.url)
    assert r.status_code == 200, (r.status_code, r.text[:200])
    assert len(r.json()["online"]) == 1000


def test_presence(h, users, co):
    u, tok = users
    co2 = uid("co")
    r = h.rest("GET", f"/chat/presence?userIds={u['alice']},{u['bob']}", tok["carol"])
    assert r.status_code == 200 and r.json()["online"] == {u["alice"]: False, u["bob"]: False}
    a = h.connect(tok["alice"])
    b = h.connect(token(u["bob"], co2))   # bob's user id, but in another company
    r = h.rest("GET", f"/chat/presence?userIds={u['alice']},{u['bob']}", tok["carol"])
    assert r.json()["online"] == {u["alice"]: True, u["bob"]: False}
    # seen from the other company: alice is not there, bob is
    r = h.rest("GET", f"/chat/presence?userIds={u['alice']},{u['bob']}", token(uid("x"), co2))
    assert r.json()["online"] == {u["alice"]: False, u["bob"]: True}
    a.close()
    wait_until(lambda: h.rest("GET", f"/chat/presence?userIds={u['alice']}", tok["carol"]).json()["online"]
               == {u["alice"]: False}, timeout=5, what="alice offline after disconnect")
    assert b.connected


# ------------------------------------------------------------------ /chat/emit

def test_service_emit(h, users, co):
    u, tok = users
    t = h.make_thread(tok["alice"], [u["bob"]])
    svc = service_token(co)
    a1, a2, b = h.connect(tok["alice"]), h.connect(tok["alice"], transports=["polling"]), h.connect(tok["bob"])
    c = h.connect(tok["carol"])
    other = h.connect(token(u["alice"], uid("co")))   # alice's id in another company

    r = h.rest("POST", "/chat/emit", svc, json={"event": "app:ping", "data": {"n": 1}, "userIds": [u["alice"]]})
    assert r.status_code == 202, r.text
    assert r.json()["delivered"] == 2
    for x in (a1, a2):
        assert x.wait_for("app:ping") == {"n": 1}

    r = h.rest("POST", "/chat/emit", svc, json={"event": "app:room", "data": ["x"], "threadId": t["id"]})
    assert r.status_code == 202 and r.json()["delivered"] == 3
    for x in (a1, a2, b):
        assert x.wait_for("app:room") == ["x"]

    r = h.rest("POST", "/chat/emit", svc, json={"event": "app:all", "data": "hello", "company": True})
    assert r.status_code == 202 and r.json()["delivered"] == 4
    for x in (a1, a2, b, c):
        assert x.wait_for("app:all") == "hello"

    # nothing of it crossed the company boundary, nor reached non-targets
    c.assert_none("app:ping", settle=0.2)
    c.assert_none("app:room", settle=0)
    for ev in ("app:ping", "app:room", "app:all"):
        other.assert_none(ev, settle=0)


def test_service_emit_refusals(h, users, co):
    u, tok = users
    a = h.connect(tok["alice"])
    svc = service_token(co)
    # not a service token
    r = h.rest("POST", "/chat/emit", tok["bob"], json={"event": "app:x", "data": 1, "userIds": [u["alice"]]})
    assert_http_error(r, 403)
    # chat events cannot be forged
    for event in ("chat:message", "chat:thread:created", "x:app:y", "app", ""):
        r = h.rest("POST", "/chat/emit", svc, json={"event": event, "data": {"threadId": "t"},
                                                    "userIds": [u["alice"]]})
        assert r.status_code in (400, 403), (event, r.status_code, r.text)
        assert_http_error(r, r.status_code)
    # another company's thread reads as unknown
    foreign = h.make_thread(token(uid("eve"), uid("co")), [])
    assert_http_error(h.rest("POST", "/chat/emit", svc, json={"event": "app:x", "threadId": foreign["id"]}), 404,
                      "not_found")
    assert_http_error(h.rest("POST", "/chat/emit", svc, json={"event": "app:x"}), 400, "invalid_payload")
    r = h.rest("POST", "/chat/emit", svc, json={"event": "app:x", "data": 1, "userIds": [u["alice"]]})
    assert r.status_code == 202 and r.json()["delivered"] == 1
    a.wait_for("app:x")
    assert not a.received("chat:message") and not a.received("chat:thread:created")


@pytest.mark.skipif(AGAINST_PEER, reason="the broker's rule for event names")
def test_emit_event_names_hold_no_control_characters(h, users, co):
    """An emit's event name is refused with a CR, LF or other control or invisible character in it, as ids are (an
    outside probe had `app:x\r\nforged: line` go out as named, into clients' logs and consoles)."""
    u, tok = users
    a = h.connect(tok["alice"])
    svc = service_token(co)
    for event in ("app:x\r\nforged: line", "app:\u0000", "app:a\u202eb", "app:zero\u200bwidth"):
        r = h.rest("POST", "/chat/emit", svc, json={"event": event, "data": 1, "userIds": [u["alice"]]})
        assert_http_error(r, 400, "invalid_payload")
    r = h.rest("POST", "/chat/emit", svc, json={"event": "app:caf\u00e9 ok", "data": 1, "userIds": [u["alice"]]})
    assert r.status_code == 202 and r.json()["delivered"] == 1
    a.wait_for("app:caf\u00e9 ok")
    with a.cond:
        names = [e for e, _ in a.events]
    assert [e for e in names if e.startswith("app:")] == ["app:caf\u00e9 ok"], names


@pytest.mark.skipif(AGAINST_PEER, reason="a header of the broker's")
def test_every_answer_says_nosniff(server):
    """Every answer says `X-Content-Type-Options: nosniff`: polling payloads are `text/plain` holding text clients sent,
    and no browser may take them (or a JSON error) for HTML (found missing on polling answers by an outside probe)."""
    r = server.rest("GET", "/socket.io/?EIO=4&transport=polling")
    assert r.status_code == 200 and r.headers.get("X-Content-Type-Options") == "nosniff", r.headers
    for path in ("/health", "/chat/threads", "/no-such-route", "/socket.io/?EIO=4&transport=polling&sid=nope"):
        r = server.rest("GET", path)
        assert r.headers.get("X-Content-Type-Options") == "nosniff", (path, r.status_code, r.headers)
    r = server.rest("OPTIONS", "/chat/threads", headers={"Origin": "http://a.example", "Access-Control-Request-Method": "POST"})
    assert r.status_code == 204 and r.headers.get("X-Content-Type-Options") == "nosniff", r.headers
    # Heads refused before any route: combining marks (400), too large (431).
    for headers in ({"X-Pad": "a" + "\u0301" * 40}, {"X-Pad": "a" * 70_000}):
        r = requests.get(server.url + "/health", headers={k: v.encode() for k, v in headers.items()}, timeout=5)
        assert r.status_code in (400, 431) and r.headers.get("X-Content-Type-Options") == "nosniff", (r.status_code, r.headers)


@pytest.mark.skipif(AGAINST_PEER, reason="a header of the broker's")
def test_polling_answers_are_not_cached(server):
    """As engine.io's: the handshake, a POST's `ok` and a long poll's answer say `Cache-Control: no-store` (a client
    that turns off its `t=` timestamps behind a caching proxy would otherwise be given an old poll; found missing by
    an outside comparison with socket.io 4.8.1)."""
    r = server.rest("GET", "/socket.io/?EIO=4&transport=polling")
    assert r.status_code == 200 and r.headers.get("Cache-Control") == "no-store", r.headers
    sid = json.loads(r.text[1:])["sid"]
    r = requests.post(f"{server.url}/socket.io/?EIO=4&transport=polling&sid={sid}", data="40/other,", timeout=5)
    assert r.status_code == 200 and r.text == "ok" and r.headers.get("Cache-Control") == "no-store", r.headers
    r = requests.get(f"{server.url}/socket.io/?EIO=4&transport=polling&sid={sid}", timeout=5)
    assert r.status_code == 200 and "44/other," in r.text and r.headers.get("Cache-Control") == "no-store", (r.text, r.headers)


# ------------------------------------------------------------------ CORS

@pytest.mark.parametrize("path,method", [
    ("/chat/threads", "POST"),
    ("/chat/threads", "GET"),
    ("/chat/messages/abc", "PATCH"),
    ("/chat/messages/abc", "DELETE"),
    ("/socket.io/?EIO=4&transport=polling", "POST"),
])
def test_cors_preflight(server, path, method):
    origin = "http://app.example.com"
    r = server.rest("OPTIONS", path, headers={"Origin": origin, "Access-Control-Request-Method": method,
                                              "Access-Control-Request-Headers": "authorization,content-type"})
    assert r.status_code in (200, 204), r.text
    assert r.headers.get("Access-Control-Allow-Origin") in ("*", origin)
    allow_methods = r.headers.get("Access-Control-Allow-Methods", "").upper()
    assert method in [m.strip() for m in allow_methods.split(",")] or allow_methods.strip() == "*", allow_methods
    allow_headers = r.headers.get("Access-Control-Allow-Headers", "").lower()
    assert allow_headers.strip() == "*" or {"authorization", "content-type"} <= \
        {x.strip() for x in allow_headers.split(",")}, allow_headers


@pytest.mark.skipif(AGAINST_PEER, reason="the broker's preflight answer")
def test_a_preflight_allows_the_headers_it_asks_for(server):
    """A preflight is allowed the headers it asks for, as socket.io's `cors` answers: a browser client with
    `extraHeaders` (`x-custom`) was blocked (an outside contract probe). A list that is not header names gets the
    API's own two."""
    ask = {"Origin": "http://app.example.com", "Access-Control-Request-Method": "GET"}
    r = server.rest("OPTIONS", "/socket.io/?EIO=4&transport=polling", headers={**ask, "Access-Control-Request-Headers": "x-custom, authorization"})
    assert r.status_code == 204 and r.headers["Access-Control-Allow-Headers"] == "x-custom, authorization", r.headers
    assert "Access-Control-Request-Headers" in r.headers.get("Vary", ""), r.headers
    for bad in ("x custom", "a,,b", "x" * 2000, "é"):
        r = server.rest("OPTIONS", "/chat/threads", headers={**ask, "Access-Control-Request-Headers": bad.encode()})
        assert r.headers["Access-Control-Allow-Headers"] == "Authorization, Content-Type", (bad, r.headers)


def test_cors_on_answers(server, co):
    origin = "http://app.example.com"
    r = server.rest("GET", "/chat/threads", token(uid("a"), co), headers={"Origin": origin})
    assert r.status_code == 200 and r.headers.get("Access-Control-Allow-Origin") in ("*", origin)
    r = server.rest("GET", "/socket.io/?EIO=4&transport=polling", headers={"Origin": origin})
    assert r.status_code == 200 and r.headers.get("Access-Control-Allow-Origin") in ("*", origin)


def test_no_cors_outside_the_api(server):
    """CORS covers /socket.io/ and /chat/* only: another site's page cannot read /metrics, /console or /health."""
    origin = "http://app.example.com"
    for path in ("/metrics", "/console", "/health", "/openapi.json", "/chatx"):
        r = server.rest("GET", path, headers={"Origin": origin})
        assert "Access-Control-Allow-Origin" not in r.headers, (path, r.headers)
    r = server.rest("OPTIONS", "/metrics", headers={"Origin": origin, "Access-Control-Request-Method": "GET"})
    assert "Access-Control-Allow-Origin" not in r.headers, r.headers


@pytest.fixture(scope="module")
def cors_list_server():
    with running_server(["--cors-origins", "http://a.example,http://b.example, HTTPS://C.Example:8443"]) as srv:
        yield srv


def test_cors_origin_list(cors_list_server):
    srv = cors_list_server
    tok = token(uid("a"), uid("co"))
    r = srv.rest("GET", "/chat/threads", tok, headers={"Origin": "http://b.example"})
    assert r.status_code == 200 and r.headers.get("Access-Control-Allow-Origin") == "http://b.example"
    # A listed origin may send cookies (a load balancer's sticky-session cookie, `withCredentials: true`), as with
    # socket.io's `cors: {credentials: true}` (found by an outside contract probe: never allowed).
    assert r.headers.get("Access-Control-Allow-Credentials") == "true"
    r = srv.rest("GET", "/chat/threads", tok, headers={"Origin": "http://evil.example"})
    assert r.headers.get("Access-Control-Allow-Origin") not in ("*", "http://evil.example")
    # An origin listed in capitals is taken as browsers send it (lower case).
    r = srv.rest("GET", "/chat/threads", tok, headers={"Origin": "https://c.example:8443"})
    assert r.headers.get("Access-Control-Allow-Origin") == "https://c.example:8443"
    r = srv.rest("OPTIONS", "/chat/threads", headers={"Origin": "http://a.example",
                                                      "Access-Control-Request-Method": "POST"})
    assert r.status_code in (200, 204) and r.headers.get("Access-Control-Allow-Origin") == "http://a.example"
    assert r.headers.get("Access-Control-Allow-Credentials") == "true"
    r = srv.rest("OPTIONS", "/chat/threads", headers={"Origin": "http://evil.example",
                                                      "Access-Control-Request-Method": "POST"})
    assert r.headers.get("Access-Control-Allow-Origin") not in ("*", "http://evil.example")
    # Every answer depends on the Origin, those without the CORS header too (found by an outside probe: only answers to
    # a listed origin said so, so a cache could hand one made for no origin to a listed one).
    for headers in ({"Origin": "http://b.example"}, {"Origin": "http://evil.example"}, {}):
        r = srv.rest("GET", "/chat/threads", tok, headers=headers)
        assert r.headers.get("Vary") == "Origin", (headers, r.headers)
        r = srv.rest("OPTIONS", "/chat/threads", headers={**headers, "Access-Control-Request-Method": "POST"})
        assert r.headers.get("Vary") == "Origin, Access-Control-Request-Headers", (headers, r.headers)
    assert srv.rest("GET", "/chat/threads", headers={"Origin": "http://evil.example"}).headers.get("Vary") == "Origin"


# ------------------------------------------------------------------ 401 / errors

def _bad_auth_headers():
    import jwt as pyjwt
    return {
        "none": {},
        "not_bearer": {"Authorization": "Basic dXNlcjpwYXNz"},
        "garbage": {"Authorization": "Bearer garbage"},
        "wrong_secret": {"Authorization": "Bearer " + token("u", "c", secret="y" * 48)},
        "alg_none": {"Authorization": "Bearer " + token("u", "c", algorithm="none")},
        "expired": {"Authorization": "Bearer " + token("u", "c", ttl=-60)},
        "no_company": {"Authorization": "Bearer " + token("u", "c", drop=("companyId",))},
        "no_exp": {"Authorization": "Bearer " + pyjwt.encode({"sub": "u", "companyId": "c"}, SECRET,
                                                             algorithm="HS256")},
    }


@pytest.mark.parametrize("case", list(_bad_auth_headers()))
@pytest.mark.parametrize("method,path", [
    ("GET", "/chat/threads"),
    ("POST", "/chat/threads"),
    ("GET", "/chat/threads/x/messages"),
    ("POST", "/chat/threads/x/members"),
    ("DELETE", "/chat/threads/x/members/y"),
    ("PATCH", "/chat/messages/x"),
    ("DELETE", "/chat/messages/x"),
    ("GET", "/chat/presence?userIds=a"),
    ("POST", "/chat/emit"),
])
def test_rest_401(server, case, method, path):
    body = {"type": "group", "memberIds": [], "content": "x", "userIds": ["a"], "event": "app:x", "company": True}
    r = server.rest(method, path, json=body if method in ("POST", "PATCH") else None,
                    headers=_bad_auth_headers()[case])
    assert_http_error(r, 401, "unauthenticated")
    if not AGAINST_PEER:
        assert r.headers.get("WWW-Authenticate") == "Bearer", r.headers   # RFC 6750 §3


@pytest.mark.parametrize("query", ["userIds=", "userIds=a,,b", "userIds=a,", "userIds=,"])
def test_presence_with_an_empty_user_id_is_a_400(h, query):
    """An empty query parameter is a 400 on every route (`limit=`), and so is an empty item in the presence list;
    without userIds the answer is about no one."""
    tok = token(uid("u"), uid("co"))
    assert_http_error(h.rest("GET", f"/chat/presence?{query}", tok), 400, "invalid_payload")
    r = h.rest("GET", "/chat/presence", tok)
    assert r.status_code == 200 and r.json() == {"online": {}}, r.text


def test_presence_of_an_id_with_u0000_is_false_not_an_error(h):
    """Found by schemathesis on PostgreSQL: a presence query for a user id holding U+0000 (which no token can carry)
    answered 500, because PostgreSQL's text cannot hold the character. It is simply nobody."""
    tok = token(uid("u"), uid("co"))
    r = h.rest("GET", "/chat/presence?userIds=a%00b,c", tok)
    assert r.status_code == 200, r.text
    assert r.json() == {"online": {"a\u0000b": False, "c": False}}


def test_a_query_reads_plus_as_a_space_and_a_repeated_presence_id_once(h):
    """Queries are read as browsers and `URLSearchParams` write them (application/x-www-form-urlencoded): `+` is a
    space, `%2B` a plus; a presence query naming an id twice answers it once (a JSON object has no repeated key)."""
    co = uid("co")
    spaced = f"{uid('ann')} smith"
    c = h.connect(token(spaced, co))
    tok = token(uid("u"), co)
    plus = spaced.replace(" ", "+")
    r = h.rest("GET", f"/chat/presence?userIds={plus}", tok)
    assert r.status_code == 200 and r.json() == {"online": {spaced: True}}, r.text
    r = h.rest("GET", f"/chat/presence?userIds={spaced.replace(' ', '%2B')}", tok)
    assert r.json() == {"online": {plus: False}}, r.text
    r = h.rest("GET", f"/chat/presence?userIds={plus},x,{plus}", tok)
    assert r.status_code == 200 and r.text.count(f'"{spaced}"') == 1, r.text
    assert r.json() == {"online": {spaced: True, "x": False}}, r.text
    c.close()


def test_presence_of_an_id_with_a_comma_is_asked_with_userids_repeated(h):
    """Found by an outside probe: a user id may hold a comma, and no presence query could name it (`c%2Cd` is split
    after decoding, as it must be: `URLSearchParams` encodes the commas of a joined list too). Given several times,
    each `userIds` value is one id, not split."""
    co = uid("co")
    odd = f"{uid('c')},d"
    c = h.connect(token(odd, co))
    other = h.connect(token("x", co))
    tok = token(uid("u"), co)
    r = h.rest("GET", "/chat/presence?" + urlencode([("userIds", odd), ("userIds", "x"), ("userIds", "y")]), tok)
    assert r.status_code == 200 and r.json() == {"online": {odd: True, "x": True, "y": False}}, r.text
    # Given once, the list is split whether its commas are sent as they are or encoded.
    for query in (f"userIds={odd}", urlencode({"userIds": odd})):
        r = h.rest("GET", f"/chat/presence?{query}", tok)
        assert r.json() == {"online": {odd.split(",")[0]: False, "d": False}}, (query, r.text)
    assert_http_error(h.rest("GET", "/chat/presence?userIds=a&userIds=", tok), 400, "invalid_payload")
    c.close()
    other.close()


@pytest.mark.parametrize("value", ["+5", "%2B5", "-0", " 5", "5 ", "+", "0x5", "5.0", "1e3"])
def test_an_integer_query_parameter_is_digits_only(h, value):
    """`limit` and `beforeSeq` are decimal digits: a sign, a space (`+` is one) or an exponent is a 400."""
    tok = token(uid("alice"), uid("co"))
    t = h.make_thread(tok, [uid("bob")])
    base = f"/chat/threads/{t['id']}/messages"
    for key in ("limit", "beforeSeq"):
        assert_http_error(h.rest("GET", f"{base}?{key}={value}", tok), 400, "invalid_payload")
    assert h.rest("GET", f"{base}?limit=5&beforeSeq=0005", tok).status_code == 200


@pytest.mark.parametrize("method,path", [
    ("GET", "/chat/nope"), ("GET", "/chat/threads/x"), ("POST", "/chat/threads/x/nothing"), ("GET", "/"),
    ("GET", "/no/such/path"),
])
def test_an_unknown_route_is_a_404_with_the_error_body(server, method, path):
    """Every error of the HTTP API carries `{code, error}`: a path no route matches too, with or without a token."""
    for tok in (None, token(uid("u"), uid("co"))):
        assert_http_error(server.rest(method, path, tok), 404, "not_found")


def test_ready_says_the_node_can_serve(server):
    """`/health/ready` is 200 while the node's store answers (on PostgreSQL: `SELECT 1` within 2 s and the LISTEN
    connection up; `test_postgres_restart.py` checks its 503 during an outage); HEAD gets the same without a body."""
    r = server.rest("GET", "/health/ready")
    assert r.status_code == 200 and r.json() == {"status": "ok"}, r.text
    h = requests.head(server.url + "/health/ready", timeout=5)
    assert h.status_code == 200 and h.content == b""


def test_head_health_answers_like_get_without_a_body(server):
    """A load balancer's or `curl -I`'s HEAD probe of /health gets the GET's 200 and no body (on a connection that
    stays usable: the next request on it is answered)."""
    with requests.Session() as s:
        r = s.head(server.url + "/health", timeout=5)
        assert r.status_code == 200 and r.content == b""
        assert r.headers.get("Content-Type", "").startswith("application/json")
        g = s.get(server.url + "/health", timeout=5)
        assert g.status_code == 200 and g.json() == {"status": "ok"}
        assert r.headers.get("Content-Length") == g.headers.get("Content-Length") == str(len(g.content))


@pytest.mark.parametrize("method,path,allow", [
    ("PUT", "/chat/threads", "GET, POST"), ("DELETE", "/chat/threads", "GET, POST"),
    ("GET", "/chat/emit", "POST"), ("POST", "/health", "GET, HEAD"), ("DELETE", "/health/ready", "GET, HEAD"), ("PATCH", "/chat/threads/x/messages", "GET"),
])
def test_a_known_path_with_another_method_is_a_405_with_allow(server, method, path, allow):
    """A route that exists under other methods answers 405 with `Allow` and the API's error body, with or without a
    token, instead of the 404 of a path that does not exist."""
    for tok in (None, token(uid("u"), uid("co"))):
        r = server.rest(method, path, tok)
        assert_http_error(r, 405, "invalid_payload")
        assert r.headers.get("Allow") == allow


@pytest.mark.parametrize("method,path,allow", [
    ("HEAD", "/metrics", "GET"), ("HEAD", "/openapi.json", "GET"), ("HEAD", "/console", "GET"),
    ("HEAD", "/chat/threads", "GET, POST"), ("OPTIONS", "/metrics", "GET"), ("OPTIONS", "/health", "GET, HEAD"),
    ("OPTIONS", "/console", "GET"),
])
def test_head_and_options_where_they_are_not_served_are_a_405_with_allow(server, method, path, allow):
    """Found by an outside probe: HEAD and OPTIONS on these paths answered 404 "no such route" (OPTIONS under
    /chat/* is CORS's preflight, and HEAD /health is served)."""
    r = server.rest(method, path, None)
    assert r.status_code == 405 and r.headers.get("Allow") == allow, (r.status_code, r.headers)


def test_threads_are_listed_a_bounded_page_at_a_time():
    """A user in threads of many members gets them a bounded page at a time (the byte budget is --max-payload / 2,
    20,000 bytes here): each page after the last thread of the previous one, every thread once, oldest first. (Writes
    are not rated here: a thread of 1000 members costs 100 of them.)"""
    with running_server(["--max-payload", "40000", "--rate-per-sec", "100000", "--rate-burst", "100000"]) as srv:
        co, alice = uid("co"), uid("alice")
        tok = token(alice, co)
        made = []
        for n in range(3):
            members = [f"{uid('m')}-{i}" for i in range(1000)]        # about 20 KB of member ids per thread
            r = srv.rest("POST", "/chat/threads", tok, json={"type": "group", "name": f"big {n}", "memberIds": members})
            assert r.status_code == 201, r.text[:300]
            made.append(r.json()["thread"]["id"])
            time.sleep(0.005)
        small = srv.rest("POST", "/chat/threads", tok, json={"type": "group", "memberIds": [uid("bob")]}).json()["thread"]["id"]
        made.append(small)
        pages, after = [], None
        while True:
            r = srv.rest("GET", "/chat/threads" + (f"?after={after}" if after else ""), tok)
            assert r.status_code == 200, r.text[:300]
            body = r.json()
            assert len(r.content) <= 40_000 + 2_000 or len(body["threads"]) == 1, len(r.content)
            pages.append([t["id"] for t in body["threads"]])
            if not body["hasMore"]:
                break
            after = body["threads"][-1]["id"]
        assert [t for page in pages for t in page] == made
        assert len(pages) >= 3, pages
        # `after` must be one of the caller's threads.
        other = srv.rest("POST", "/chat/threads", token(uid("x"), co), json={"type": "group", "memberIds": []}).json()["thread"]["id"]
        assert_http_error(srv.rest("GET", f"/chat/threads?after={other}", tok), 400, "invalid_payload")
        # A user in few threads gets them all at once.
        r = srv.rest("GET", "/chat/threads", token(alice, uid("co")))
        assert r.status_code == 200 and r.json() == {"threads": [], "hasMore": False}


def test_a_page_of_threads_costs_the_ids_it_reads():
    """Found by an outside probe: a page of `GET /chat/threads` reads every thread id of the caller (to start after
    `after`), so a user in 20,002 threads asking for empty pages cost the broker 53 ms each for one read token, and
    17 requests a second stalled other companies' reads (p50 3.5 -> 633 ms). Each 100 ids read now cost one more read
    token: here 600 ids, 6 tokens a page, against a read burst of 10 (`--read-rate-per-sec 5`)."""
    with running_server(["--rate-per-sec", "100000", "--rate-burst", "100000", "--read-rate-per-sec", "5",
                         "--durability", "process"]) as srv:
        tok = token(uid("whale"), uid("co"))
        last = None
        for _ in range(600):
            r = srv.rest("POST", "/chat/threads", tok, json={"type": "group", "memberIds": []})
            assert r.status_code == 201, r.text[:300]
            last = r.json()["thread"]["id"]
        time.sleep(2.5)     # the read bucket is full again (creating threads reads nothing)
        codes = [srv.rest("GET", f"/chat/threads?after={last}", tok).status_code for _ in range(6)]
        assert codes[0] == 200 and 429 in codes, codes
        # Another user, in few threads, is not charged for the whale's ids.
        other = token(uid("minnow"), uid("co"))
        assert [srv.rest("GET", "/chat/threads", other).status_code for _ in range(6)] == [200] * 6


def test_unread_messages_the_store_counts_cost_the_reader():
    """Found by an outside probe: a member whose read mark is older than the messages memory holds has every listing
    count their unread messages in the store, which looks at each message of the range (37 ms for a 100,000-message
    thread), for one read token; 48 such requests at a time raised another company's `GET /chat/threads` p50 from
    4 to 523 ms. Each 1,000 messages counted now cost one more read token: here about 1,500 counted (2.5 tokens a
    page), against a read burst of 10 (`--read-rate-per-sec 5`): a 429 within ten pages (ten 200s before). A read
    mark of 0 is counted in memory (per sender), so the reader first marks the first message read, as the probe did."""
    with running_server(["--rate-per-sec", "100000", "--rate-burst", "100000", "--read-rate-per-sec", "5",
                         "--durability", "process"]) as srv:
        with harness_for(srv) as h:
            co, bob = uid("co"), uid("bob")
            ta, reader = token(uid("alice"), co), token(bob, co)
            tid = h.make_thread(ta, [bob])["id"]
            c = h.connect(ta)
            for start in range(0, 3_000, 500):
                acks = c.send_many(tid, [f"m{i}" for i in range(start, start + 500)], timeout=60)
                assert all(a and a.get("success") for a in acks)
            # bob has read the first message: his count then needs the store (from 0, memory counts per sender).
            assert_ok(h.connect(reader).call("chat:mark-read", {"threadId": tid, "upToSeq": 1}))
            time.sleep(2.5)     # the reader's bucket is full again
            started, pages = time.monotonic(), []
            while len(pages) < 40 and (not pages or pages[-1].status_code == 200):
                pages.append(srv.rest("GET", "/chat/threads", reader))
            elapsed = time.monotonic() - started
            assert pages[0].status_code == 200, pages[0].text[:300]
            assert pages[0].json()["threads"][0]["unreadCount"] == 2_999
            # Each page costs its read and one per 1,000 messages counted (1,500 to 2,000 here): what the burst (10)
            # and the refill while the pages take (5/s) buy, at 2.5 reads or more a page. At one read a page, 10 and
            # five more a second.
            served = len(pages) - 1
            assert pages[-1].status_code == 429 and served <= 1 + (10 + 5 * elapsed) / 2.5, (served, elapsed)
            # The sender, whose read mark is the thread's last message, is charged one read a page.
            time.sleep(2.5)
            assert [srv.rest("GET", "/chat/threads", ta).status_code for _ in range(8)] == [200] * 8


def test_a_member_id_in_the_path_is_percent_decoded(h):
    """A member whose id holds a space or a non-ASCII letter is named percent-encoded in the URL (`zo%C3%AB`): found by
    an outside probe's neighbour case, the router handed the segment over encoded, so such a member could not be
    removed (404). Encoding that is not UTF-8 is a 400, and a decoded id that is not NFC is a 400 as any id."""
    co = uid("co")
    ta = token(uid("alice"), co)
    zoe, spaced = "zo\u00eb-" + uid(""), "a b-" + uid("")
    tid = h.make_thread(ta, [zoe, spaced, "carol"])["id"]
    for encoded in (requests.utils.quote(zoe), requests.utils.quote(spaced)):
        r = h.rest("DELETE", f"/chat/threads/{tid}/members/{encoded}", ta)
        assert r.status_code == 200, (encoded, r.text[:300])
    members = member_ids(h.rest("GET", "/chat/threads", ta).json()["threads"][0])
    assert zoe not in members and spaced not in members and "carol" in members, members
    for bad, why in (("e%CC%81", "normalization"), ("%C3", "percent-encoded"), ("%FF%FE", "percent-encoded")):
        r = h.rest("DELETE", f"/chat/threads/{tid}/members/{bad}", ta)
        assert r.status_code == 400 and why in r.json()["error"], (bad, r.status_code, r.text[:300])
