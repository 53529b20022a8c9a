"""Company boundary and membership on every socket event and REST route."""
import json
from urllib.parse import quote

import pytest

from conftest import (assert_fail, assert_http_error, assert_ok, member_ids, service_token, token, uid)


class World:
    """Company A: alice, bob (members of `ta`), carol (A, not a member).
    Company B: mallory and a user whose id equals alice's (members of `tb`)."""

    def __init__(self, h):
        self.h = h
        self.co_a, self.co_b = uid("coA"), uid("coB")
        self.alice, self.bob, self.carol, self.mallory = uid("alice"), uid("bob"), uid("carol"), uid("mallory")
        self.tok_alice = token(self.alice, self.co_a)
        self.tok_bob = token(self.bob, self.co_a)
        self.tok_carol = token(self.carol, self.co_a)
        self.tok_mallory = token(self.mallory, self.co_b)
        self.tok_b_alice = token(self.alice, self.co_b)    # same user id, other company
        self.ta = h.make_thread(self.tok_alice, [self.bob])["id"]
        # B's thread lists alice's user id as a member
        self.tb = h.make_thread(self.tok_mallory, [self.alice])["id"]


@pytest.fixture
def w(h):
    return World(h)


def _events_for(thread_id, message_id):
    """Every socket event with an ack, aimed at `thread_id` (and `message_id`)."""
    return [
        ("chat:send", {"threadId": thread_id, "content": "intrusion"}),
        ("chat:join", {"threadId": thread_id}),
        ("chat:delivered", {"threadId": thread_id, "messageIds": [message_id]}),
        ("chat:mark-read", {"threadId": thread_id}),
        ("chat:mark-read", {"threadId": thread_id, "upToSeq": 1}),
        ("chat:edit", {"threadId": thread_id, "messageId": message_id, "content": "hacked"}),
        ("chat:delete", {"threadId": thread_id, "messageId": message_id}),
        ("chat:history", {"threadId": thread_id}),
        ("chat:history", {"threadId": thread_id, "beforeSeq": 5, "limit": 10}),
    ]


def test_other_company_thread_is_not_found_on_every_socket_event(w, h):
    mal = h.connect(w.tok_mallory, name="mallory")
    b_alice = h.connect(w.tok_b_alice, name="B-alice")
    mb = mal.send(w.tb, "B secret")
    b_alice.wait_for("chat:message", lambda d: d["message"]["id"] == mb["id"])
    a = h.connect(w.tok_alice, name="alice")
    for event, payload in _events_for(w.tb, mb["id"]):
        assert_fail(a.call(event, payload), "not_found")
    # typing: refused (with an ack), never forwarded
    ack = a.call("chat:typing:start", {"threadId": w.tb})
    assert ack["success"] is False and ack["code"] in ("not_found", "not_a_member"), ack
    a.emit("chat:typing:start", {"threadId": w.tb})
    r = a.call("chat:sync", {"threads": [{"threadId": w.tb, "afterSeq": 0}]})
    assert_ok(r)
    assert r["threads"][0]["threadId"] == w.tb and r["threads"][0]["code"] == "not_found"
    assert not r["threads"][0].get("events")
    assert "B secret" not in json.dumps(r)
    # nothing happened in B's thread
    m2 = mal.send(w.tb, "barrier")
    assert m2["seq"] == 2
    b_alice.wait_for("chat:message", lambda d: d["message"]["id"] == m2["id"])
    hist = mal.call("chat:history", {"threadId": w.tb})
    assert [(m["content"], m["editedAt"], m["deletedAt"]) for m in hist["messages"]] == \
        [("B secret", None, None), ("barrier", None, None)]
    b_alice.assert_none("chat:typing:start", settle=0.2)
    mal.assert_none("chat:typing:start", settle=0)
    mal.assert_none("chat:delivered", settle=0)
    mal.assert_none("chat:read", settle=0)


def test_same_user_id_in_other_company_receives_nothing(w, h):
    a = h.connect(w.tok_alice, name="alice")          # alice of A: listed as member of B's thread by id
    b_alice = h.connect(w.tok_b_alice, name="B-alice")
    mal = h.connect(w.tok_mallory, name="mallory")
    # a new B thread with alice's id, while A-alice is online
    r = h.rest("POST", "/chat/threads", w.tok_mallory, json={"type": "group", "memberIds": [w.alice]})
    tb2 = r.json()["thread"]["id"]
    b_alice.wait_for("chat:thread:created", lambda d: d["thread"]["id"] == tb2)
    m = mal.send(w.tb, "for B only")
    mal.emit("chat:typing:start", {"threadId": w.tb})
    b_alice.wait_for("chat:message", lambda d: d["message"]["id"] == m["id"])
    b_alice.wait_for("chat:typing:start")
    # a barrier on A-alice's side
    mb = h.connect(w.tok_bob).send(w.ta, "A barrier")
    a.wait_for("chat:message", lambda d: d["message"]["id"] == mb["id"])
    a.assert_none("chat:thread:created", settle=0.3)
    a.assert_none("chat:message", lambda d: d["threadId"] in (w.tb, tb2), settle=0)
    a.assert_none("chat:typing:start", settle=0)
    # and B-alice does not see A's thread
    b_alice.assert_none("chat:message", lambda d: d["threadId"] == w.ta, settle=0)
    # nor do their thread lists mix
    ids_a = {t["id"] for t in h.rest("GET", "/chat/threads", w.tok_alice).json()["threads"]}
    ids_b = {t["id"] for t in h.rest("GET", "/chat/threads", w.tok_b_alice).json()["threads"]}
    assert ids_a == {w.ta} and ids_b == {w.tb, tb2}


def test_non_member_same_company_is_not_a_member_on_every_socket_event(w, h):
    a = h.connect(w.tok_alice)
    m = a.send(w.ta, "A members only")
    c = h.connect(w.tok_carol)
    for event, payload in _events_for(w.ta, m["id"]):
        if event in ("chat:edit", "chat:delete"):
            ack = c.call(event, payload)   # a message in a thread carol is not in
            assert ack["success"] is False and ack["code"] in ("not_a_member", "forbidden"), (event, ack)
            assert ack["error"]
        else:
            assert_fail(c.call(event, payload), "not_a_member")
    assert_fail(c.call("chat:typing:start", {"threadId": w.ta}), "not_a_member")
    r = c.call("chat:sync", {"threads": [{"threadId": w.ta, "afterSeq": 0}]})
    assert r["threads"][0]["code"] == "not_a_member" and not r["threads"][0].get("events")
    hist = a.call("chat:history", {"threadId": w.ta})
    assert [(x["content"], x["editedAt"], x["deletedAt"]) for x in hist["messages"]] == [("A members only", None, None)]
    c.assert_none("chat:message", settle=0.2)


def test_another_users_message_is_forbidden(w, h):
    a, b = h.connect(w.tok_alice), h.connect(w.tok_bob)
    m = a.send(w.ta, "alice's words")
    assert_fail(b.call("chat:edit", {"threadId": w.ta, "messageId": m["id"], "content": "bob's words"}), "forbidden")
    assert_fail(b.call("chat:delete", {"threadId": w.ta, "messageId": m["id"]}), "forbidden")
    assert_http_error(h.rest("PATCH", f"/chat/messages/{m['id']}", w.tok_bob, json={"content": "x"}), 403, "forbidden")
    assert_http_error(h.rest("DELETE", f"/chat/messages/{m['id']}", w.tok_bob), 403, "forbidden")
    # the same user id in another company is another user
    assert_http_error(h.rest("PATCH", f"/chat/messages/{m['id']}", w.tok_b_alice, json={"content": "x"}), 404,
                      "not_found")
    assert_http_error(h.rest("DELETE", f"/chat/messages/{m['id']}", w.tok_b_alice), 404, "not_found")
    b_alice = h.connect(w.tok_b_alice)
    assert_fail(b_alice.call("chat:edit", {"threadId": w.ta, "messageId": m["id"], "content": "x"}), "not_found")
    hist = b.call("chat:history", {"threadId": w.ta})
    assert [x["content"] for x in hist["messages"]] == ["alice's words"]
    assert hist["messages"][0]["editedAt"] is None and hist["messages"][0]["deletedAt"] is None


def test_message_id_of_another_thread_is_not_found(w, h):
    """Naming an own thread with a message id of another company's thread."""
    mal = h.connect(w.tok_mallory)
    mb = mal.send(w.tb, "B message")
    a = h.connect(w.tok_alice)
    assert_fail(a.call("chat:edit", {"threadId": w.ta, "messageId": mb["id"], "content": "x"}), "not_found")
    assert_fail(a.call("chat:delete", {"threadId": w.ta, "messageId": mb["id"]}), "not_found")
    hist = mal.call("chat:history", {"threadId": w.tb})
    assert hist["messages"][0]["content"] == "B message" and hist["messages"][0]["editedAt"] is None


def test_rest_company_boundary(w, h):
    mal = h.connect(w.tok_mallory)
    mb = mal.send(w.tb, "B only")
    tok = w.tok_alice   # listed by id in B's thread, but of company A
    assert_http_error(h.rest("GET", f"/chat/threads/{w.tb}/messages", tok), 404, "not_found")
    assert_http_error(h.rest("POST", f"/chat/threads/{w.tb}/members", tok, json={"userIds": [w.bob]}), 404,
                      "not_found")
    assert_http_error(h.rest("DELETE", f"/chat/threads/{w.tb}/members/{w.alice}", tok), 404, "not_found")
    assert_http_error(h.rest("DELETE", f"/chat/threads/{w.tb}/members/{w.mallory}", tok), 404, "not_found")
    assert_http_error(h.rest("PATCH", f"/chat/messages/{mb['id']}", tok, json={"content": "x"}), 404, "not_found")
    assert_http_error(h.rest("DELETE", f"/chat/messages/{mb['id']}", tok), 404, "not_found")
    assert_http_error(h.rest("POST", "/chat/emit", service_token(w.co_a),
                             json={"event": "app:x", "threadId": w.tb}), 404, "not_found")
    # unknown and foreign look the same
    unknown = uid("t")
    r1 = h.rest("GET", f"/chat/threads/{unknown}/messages", tok)
    r2 = h.rest("GET", f"/chat/threads/{w.tb}/messages", tok)
    assert (r1.status_code, r1.json()["code"]) == (r2.status_code, r2.json()["code"]) == (404, "not_found")
    # B's thread is untouched
    r = h.rest("GET", f"/chat/threads/{w.tb}/messages", w.tok_mallory)
    assert [m["content"] for m in r.json()["messages"]] == ["B only"]
    t = next(x for x in h.rest("GET", "/chat/threads", w.tok_mallory).json()["threads"] if x["id"] == w.tb)
    assert member_ids(t) == {w.mallory, w.alice}
    # a thread created in A never lists B's users as reachable members of B
    ids = {x["id"] for x in h.rest("GET", "/chat/threads", tok).json()["threads"]}
    assert w.tb not in ids


def test_rest_non_member_same_company_403(w, h):
    a = h.connect(w.tok_alice)
    m = a.send(w.ta, "x")
    tok = w.tok_carol
    assert_http_error(h.rest("GET", f"/chat/threads/{w.ta}/messages", tok), 403, "not_a_member")
    assert_http_error(h.rest("POST", f"/chat/threads/{w.ta}/members", tok, json={"userIds": [w.carol]}), 403,
                      "not_a_member")
    assert_http_error(h.rest("DELETE", f"/chat/threads/{w.ta}/members/{w.bob}", tok), 403)
    r = h.rest("PATCH", f"/chat/messages/{m['id']}", tok, json={"content": "x"})
    assert_http_error(r, 403)
    r = h.rest("DELETE", f"/chat/messages/{m['id']}", tok)
    assert_http_error(r, 403)
    t = next(x for x in h.rest("GET", "/chat/threads", w.tok_alice).json()["threads"] if x["id"] == w.ta)
    assert member_ids(t) == {w.alice, w.bob}


def test_service_emit_stays_in_company(w, h):
    a = h.connect(w.tok_alice)
    b_alice = h.connect(w.tok_b_alice)
    mal = h.connect(w.tok_mallory)
    svc_b = service_token(w.co_b)
    r = h.rest("POST", "/chat/emit", svc_b, json={"event": "app:hi", "data": 1, "userIds": [w.alice]})
    assert r.status_code == 202 and r.json()["delivered"] == 1
    b_alice.wait_for("app:hi")
    r = h.rest("POST", "/chat/emit", svc_b, json={"event": "app:all", "data": 2, "company": True})
    assert r.status_code == 202 and r.json()["delivered"] == 2
    b_alice.wait_for("app:all")
    mal.wait_for("app:all")
    r = h.rest("POST", "/chat/emit", svc_b, json={"event": "app:room", "data": 3, "threadId": w.tb})
    assert r.status_code == 202 and r.json()["delivered"] == 2
    mal.wait_for("app:room")
    a.assert_none("app:hi", settle=0.3)
    a.assert_none("app:all", settle=0)
    a.assert_none("app:room", settle=0)


def test_an_id_written_another_way_names_no_one(h):
    """Ids are compared as exact strings: a company or user id that is canonically equivalent to another but not in
    Unicode NFC ('é' as 'e' + U+0301, 'K' as the Kelvin sign) is refused in tokens and in requests, so it never
    reaches the data of the id it resembles."""
    suffix = uid("")
    co_nfc, co_nfd = "caf\u00e9" + suffix, "cafe\u0301" + suffix
    user_nfc, user_nfd = "zo\u00eb" + suffix, "zoe\u0308" + suffix
    kelvin_co = "\u212a" + suffix          # canonically equivalent to "K" + suffix
    victim, other = token(user_nfc, co_nfc), uid("other")
    tid = h.make_thread(victim, [other])["id"]
    v = h.connect(victim, name="victim")
    assert_ok(v.call("chat:send", {"threadId": tid, "content": "the password is hunter2"}))
    # Tokens whose ids are not NFC: refused at CONNECT and on REST, whichever id is written another way.
    for tok in (token(user_nfc, co_nfd), token(user_nfd, co_nfc), token("someone", kelvin_co)):
        assert h.connect_error(tok).message == "invalid token"
        assert_http_error(h.rest("GET", "/chat/threads", tok), 401, "unauthenticated")
    # The NFC spelling of the Kelvin company is an ordinary, separate company.
    k = h.connect(token("someone", "K" + suffix))
    assert_fail(k.call("chat:history", {"threadId": tid}), "not_found")
    # Ids in requests: a thread id, member ids and presence ids written another way.
    assert_fail(v.call("chat:send", {"threadId": "\u212a" + tid, "content": "x"}), "invalid_payload")
    assert_http_error(h.rest("POST", f"/chat/threads/{tid}/members", victim, json={"userIds": [user_nfd]}), 400,
                      "invalid_payload")
    assert_http_error(h.rest("POST", "/chat/threads", victim, json={"type": "group", "memberIds": ["e\u0301"]}), 400,
                      "invalid_payload")
    online = h.rest("GET", f"/chat/presence?userIds={quote(user_nfc)},{quote(user_nfd)}", victim).json()["online"]
    assert online == {user_nfc: True, user_nfd: False}
    v.assert_none("chat:message", lambda d: d["message"]["content"] != "the password is hunter2", settle=0.2)
