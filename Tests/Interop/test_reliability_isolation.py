"""Isolation matrix, beyond test_isolation.py: swapped thread ids (a message of thread 1 named with thread 2,
where the caller is a member of both), removed members, forged ids (path tricks, SQL, overlong, unicode), on
every socket event and REST route. Each attempt is refused with the right code, and no other socket receives
anything (checked by watchers in every thread and in another company, behind a barrier message)."""
import urllib.parse

import pytest

from conftest import assert_fail, assert_http_error, assert_ok, token, uid

FORGED = ["../" + "x", "' OR 1=1 --", "%00", "t\u0000x", "ťhread-ü", "*", "a" * 257, " ", "null"]


class W:
    def __init__(self, h):
        self.h = h
        self.co, self.co2 = uid("co"), uid("co2")
        self.alice, self.bob, self.carol, self.dave = uid("alice"), uid("bob"), uid("carol"), uid("dave")
        self.tok = {u: token(u, self.co) for u in (self.alice, self.bob, self.carol, self.dave)}
        self.t1 = h.make_thread(self.tok[self.alice], [self.bob, self.carol])["id"]   # alice, bob, carol
        self.t2 = h.make_thread(self.tok[self.alice], [self.dave])["id"]              # alice, dave
        self.outsider = uid("eve")
        self.tok_out = token(self.outsider, self.co2)
        self.t3 = h.make_thread(self.tok_out, [self.alice])["id"]                     # other company

    def watchers(self):
        return {
            "bob": self.h.connect(self.tok[self.bob], name="bob"),
            "dave": self.h.connect(self.tok[self.dave], name="dave"),
            "eve": self.h.connect(self.tok_out, name="eve"),
            "B-alice": self.h.connect(token(self.alice, self.co2), name="B-alice"),
        }


@pytest.fixture
def w(h):
    return W(h)


def _quiet(watchers, since):
    """No watcher received anything but what `since` allows (a dict name -> allowed event names)."""
    for name, c in watchers.items():
        allowed = since.get(name, set())
        extra = [(e, d) for (e, d) in c.events if e not in allowed]
        assert not extra, f"{name} received {extra[:3]}"


def test_swapped_thread_ids_on_every_message_event(w, h):
    a = h.connect(w.tok[w.alice], name="alice")
    m1 = a.send(w.t1, "in thread 1")
    m2 = a.send(w.t2, "in thread 2")
    watchers = w.watchers()
    for c in watchers.values():
        c.events.clear()
    # a message of t1 named with t2 (alice is a member of both): unknown in t2
    assert_fail(a.call("chat:edit", {"threadId": w.t2, "messageId": m1["id"], "content": "x"}), "not_found")
    assert_fail(a.call("chat:delete", {"threadId": w.t2, "messageId": m1["id"]}), "not_found")
    assert_fail(a.call("chat:edit", {"threadId": w.t1, "messageId": m2["id"], "content": "x"}), "not_found")
    # receipts naming the other thread's ids are ignored: no notice for anyone
    assert_ok(a.call("chat:delivered", {"threadId": w.t2, "messageIds": [m1["id"]]}))
    # bob (t1 only) names t2 with t1's message: not a member of t2
    b = watchers["bob"]
    assert_fail(b.call("chat:edit", {"threadId": w.t2, "messageId": m1["id"], "content": "x"}), "not_a_member")
    assert_fail(b.call("chat:delete", {"threadId": w.t2, "messageId": m2["id"]}), "not_a_member")
    assert_fail(b.call("chat:delivered", {"threadId": w.t2, "messageIds": [m2["id"]]}), "not_a_member")
    # another company's thread with an own message id: not_found, whatever the message
    assert_fail(a.call("chat:edit", {"threadId": w.t3, "messageId": m1["id"], "content": "x"}), "not_found")
    assert_fail(a.call("chat:delete", {"threadId": w.t3, "messageId": m1["id"]}), "not_found")
    # a barrier: every watcher of t1/t2 gets it, so anything sent before would have arrived
    mb1, mb2 = a.send(w.t1, "barrier 1"), a.send(w.t2, "barrier 2")
    b.wait_for("chat:message", lambda d: d["message"]["id"] == mb1["id"])
    watchers["dave"].wait_for("chat:message", lambda d: d["message"]["id"] == mb2["id"])
    _quiet(watchers, {"bob": {"chat:message"}, "dave": {"chat:message"}})
    for name in ("bob", "dave"):
        ids = [d["message"]["id"] for d in watchers[name].received("chat:message")]
        assert ids == [mb1["id"] if name == "bob" else mb2["id"]], (name, ids)
    # nothing changed
    for tid, mine in ((w.t1, m1), (w.t2, m2)):
        hist = a.call("chat:history", {"threadId": tid})["messages"]
        assert hist[0]["id"] == mine["id"] and hist[0]["editedAt"] is None and hist[0]["deletedAt"] is None


def test_removed_member_is_refused_everywhere(w, h):
    a = h.connect(w.tok[w.alice], name="alice")
    carol = h.connect(w.tok[w.carol], name="carol")
    mc = carol.send(w.t1, "carol was here")
    m = a.send(w.t1, "before removal")
    r = h.rest("DELETE", f"/chat/threads/{w.t1}/members/{w.carol}", w.tok[w.alice])
    assert r.status_code == 200, r.text
    carol.events.clear()
    for event, payload in [
        ("chat:send", {"threadId": w.t1, "content": "still here?"}),
        ("chat:join", {"threadId": w.t1}),
        ("chat:history", {"threadId": w.t1}),
        ("chat:delivered", {"threadId": w.t1, "messageIds": [m["id"]]}),
        ("chat:mark-read", {"threadId": w.t1}),
        ("chat:typing:start", {"threadId": w.t1}),
    ]:
        assert_fail(carol.call(event, payload), "not_a_member")
    # her own old message: no longer hers to edit in a thread she left
    ack = carol.call("chat:edit", {"threadId": w.t1, "messageId": mc["id"], "content": "rewritten"})
    assert ack["success"] is False and ack["code"] in ("not_a_member", "forbidden"), ack
    r = carol.call("chat:sync", {"threads": [{"threadId": w.t1, "afterSeq": 0}]})
    assert r["threads"][0]["code"] == "not_a_member" and not r["threads"][0].get("events")
    assert_http_error(h.rest("GET", f"/chat/threads/{w.t1}/messages", w.tok[w.carol]), 403, "not_a_member")
    assert_http_error(h.rest("POST", f"/chat/threads/{w.t1}/members", w.tok[w.carol], json={"userIds": [w.carol]}),
                      403, "not_a_member")
    # she no longer receives the thread
    mb = a.send(w.t1, "after removal")
    bob = h.connect(w.tok[w.bob])
    hist = bob.call("chat:history", {"threadId": w.t1})["messages"]
    assert hist[-1]["id"] == mb["id"]
    carol.assert_none("chat:message", settle=0.3)
    assert w.t1 not in {t["id"] for t in h.rest("GET", "/chat/threads", w.tok[w.carol]).json()["threads"]}


@pytest.mark.parametrize("forged", FORGED)
def test_forged_thread_ids(w, h, forged):
    a = h.connect(w.tok[w.alice], name="alice")
    watchers = {"bob": h.connect(w.tok[w.bob], name="bob"), "eve": h.connect(w.tok_out, name="eve")}
    expected = ("not_found", "invalid_payload")
    for event, payload in [
        ("chat:send", {"threadId": forged, "content": "x"}),
        ("chat:join", {"threadId": forged}),
        ("chat:leave", {"threadId": forged}),
        ("chat:history", {"threadId": forged}),
        ("chat:delivered", {"threadId": forged, "messageIds": ["m"]}),
        ("chat:mark-read", {"threadId": forged}),
        ("chat:edit", {"threadId": forged, "messageId": forged, "content": "x"}),
        ("chat:delete", {"threadId": forged, "messageId": forged}),
        ("chat:typing:start", {"threadId": forged}),
    ]:
        ack = a.call(event, payload)
        if event == "chat:leave" and ack.get("success"):
            continue        # leaving a room one is not in is harmless either way
        assert ack["success"] is False and ack["code"] in expected + ("not_a_member",), (event, forged, ack)
    r = a.call("chat:sync", {"threads": [{"threadId": forged, "afterSeq": 0}, {"threadId": w.t1, "afterSeq": 0}]})
    if r.get("success"):
        assert r["threads"][0].get("code") in expected and not r["threads"][0].get("events")
        assert r["threads"][1]["threadId"] == w.t1 and "code" not in r["threads"][1]
    else:
        assert r["code"] == "invalid_payload", r
    q = urllib.parse.quote(forged, safe="")
    for method, path, body in [
        ("GET", f"/chat/threads/{q}/messages", None),
        ("POST", f"/chat/threads/{q}/members", {"userIds": [w.bob]}),
        ("DELETE", f"/chat/threads/{q}/members/{w.bob}", None),
        ("PATCH", f"/chat/messages/{q}", {"content": "x"}),
        ("DELETE", f"/chat/messages/{q}", None),
    ]:
        resp = h.rest(method, path, w.tok[w.alice], json=body)
        assert resp.status_code in (400, 404), (method, path, resp.status_code, resp.text)
    mb = a.send(w.t1, "barrier")
    watchers["bob"].wait_for("chat:message", lambda d: d["message"]["id"] == mb["id"])
    assert [e for e, _ in watchers["bob"].events] == ["chat:message"]
    watchers["eve"].assert_none("chat:message", settle=0.1)
    assert a.connected
