"""Socket events: send, fan-out, ordering, idempotency, edit/delete, history, sync, join/leave,
typing, receipts."""
import json
import threading
import time

import pytest

from conftest import (assert_fail, assert_message_shape, assert_ok, harness_for, parse_iso_ms,
                      peer_deviation, running_server, service_token, subset, thread_msgs, token, uid, wait_until)


class Group:
    """A company with users alice, bob, carol (members of `tid`) and dave (not a member)."""

    def __init__(self, h, co, members=("alice", "bob", "carol")):
        self.h, self.co = h, co
        self.u = {n: uid(n) for n in ("alice", "bob", "carol", "dave")}
        self.tok = {n: token(u, co) for n, u in self.u.items()}
        others = [self.u[n] for n in members if n != "alice"]
        self.thread = h.make_thread(self.tok["alice"], others)
        self.tid = self.thread["id"]

    def connect(self, name, **kw):
        return self.h.connect(self.tok[name], name=name, **kw)


@pytest.fixture
def g(h, co):
    return Group(h, co)


def seqs_of(client, tid):
    return [d["message"]["seq"] for d in thread_msgs(client, tid)]


# ------------------------------------------------------------------ send

def test_send_ack_shape_and_message_event(g):
    a, b = g.connect("alice"), g.connect("bob")
    ack = a.call("chat:send", {"threadId": g.tid, "content": "hello 👋", "tempId": "tmp-1"})
    assert_ok(ack)
    assert set(ack) >= {"success", "message"}
    m = ack["message"]
    assert_message_shape(m, thread_id=g.tid, sender=g.u["alice"], content="hello 👋", seq=1)
    assert m["tempId"] == "tmp-1"
    assert m["attachmentUrl"] is None and m["attachmentType"] is None
    assert m["editedAt"] is None and m["deletedAt"] is None
    for c in (a, b):
        ev = c.wait_for("chat:message", lambda d: d["message"]["id"] == m["id"])
        assert ev["threadId"] == g.tid and ev["tempId"] == "tmp-1"
        assert {k: ev["message"][k] for k in m} == m

    # without tempId: null in the message and the event; type defaults to Text
    m2 = a.send(g.tid, "second")
    assert_message_shape(m2, thread_id=g.tid, sender=g.u["alice"], content="second", seq=2, type_="Text")
    assert m2["tempId"] is None
    ev = b.wait_for("chat:message", lambda d: d["message"]["id"] == m2["id"])
    assert ev["tempId"] is None
    assert parse_iso_ms(m2["createdAt"]) >= parse_iso_ms(m["createdAt"])


def test_send_with_attachment(g):
    a, b = g.connect("alice"), g.connect("bob")
    m = a.send(g.tid, "a picture", type="Image", attachmentUrl="https://cdn.example/p.png",
               attachmentType="image/png")
    assert_message_shape(m, thread_id=g.tid, type_="Image", content="a picture")
    assert m["attachmentUrl"] == "https://cdn.example/p.png" and m["attachmentType"] == "image/png"
    ev = b.wait_for("chat:message", lambda d: d["message"]["id"] == m["id"])
    assert ev["message"]["attachmentUrl"] == "https://cdn.example/p.png"
    f = a.send(g.tid, "a file", type="File", attachmentUrl="https://cdn.example/f.pdf", attachmentType="application/pdf")
    assert f["type"] == "File"


def test_system_type_only_for_service_tokens(h, co):
    a, svc = uid("alice"), uid("svc")
    t = h.make_thread(token(a, co), [svc])
    ca = h.connect(token(a, co))
    ack = ca.call("chat:send", {"threadId": t["id"], "content": "I am the system", "type": "System"})
    assert ack["success"] is False and ack["code"] in ("forbidden", "invalid_payload"), ack
    assert isinstance(ack["error"], str) and ack["error"]
    cs = h.connect(service_token(co, user=svc))
    m = cs.send(t["id"], "Alice joined", type="System")
    assert m["type"] == "System" and m["senderId"] == svc
    ca.wait_for("chat:message", lambda d: d["message"]["id"] == m["id"])
    hist = ca.call("chat:history", {"threadId": t["id"]})
    assert [x["content"] for x in hist["messages"]] == ["Alice joined"]


def test_fan_out_to_every_device_of_every_member(g):
    a1 = g.connect("alice", transports=["websocket"])
    a2 = g.connect("alice", transports=["polling"])
    b1 = g.connect("bob", transports=["websocket"])
    b2 = g.connect("bob", transports=None)
    c1 = g.connect("carol")
    d1 = g.connect("dave")  # same company, not a member
    m = a1.send(g.tid, "to everyone")
    for c in (a1, a2, b1, b2, c1):
        ev = c.wait_for("chat:message", lambda d: d["message"]["id"] == m["id"])
        assert ev["message"]["content"] == "to everyone"
    # exactly once per socket
    m2 = b2.send(g.tid, "barrier")
    for c in (a1, a2, b1, b2, c1):
        c.wait_for("chat:message", lambda d: d["message"]["id"] == m2["id"])
        assert len(c.received("chat:message", lambda d: d["message"]["id"] == m["id"])) == 1
    d1.assert_none("chat:message")


def test_seq_gap_free_and_ordered_under_concurrent_senders(g, h):
    senders = [g.connect(n) for n in ("alice", "bob", "carol")] + [g.connect("alice", transports=["polling"])]
    watchers = [g.connect("bob", transports=["polling"]), g.connect("carol")]
    per = 20
    results = {}

    def run(i, c):
        results[i] = c.send_many(g.tid, [f"s{i}-{k}" for k in range(per)], timeout=20)

    ts = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(senders)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(30)
    total = per * len(senders)
    acked = []
    for i in range(len(senders)):
        for ack in results[i]:
            assert_ok(ack)
            acked.append(ack["message"]["seq"])
    assert sorted(acked) == list(range(1, total + 1)), "acked seqs are not gap-free 1..N"
    for c in senders + watchers:
        c.wait_for("chat:message", lambda d: d["threadId"] == g.tid, count=total, timeout=10)
        assert seqs_of(c, g.tid) == list(range(1, total + 1)), "socket saw events out of seq order or with gaps"
    hist = senders[0].call("chat:history", {"threadId": g.tid, "limit": 100})
    assert [m["seq"] for m in hist["messages"]] == list(range(1, total + 1))


def test_temp_id_idempotency(g):
    a1, a2, b = g.connect("alice"), g.connect("alice"), g.connect("bob")
    first = a1.call("chat:send", {"threadId": g.tid, "content": "once", "tempId": "t-42"})
    assert_ok(first)
    again = a1.call("chat:send", {"threadId": g.tid, "content": "once", "tempId": "t-42"})
    assert_ok(again)
    assert again["message"]["id"] == first["message"]["id"]
    assert again["message"]["seq"] == first["message"]["seq"]
    assert again["message"]["tempId"] == "t-42"
    # the same user from another device: still the first message
    other_dev = a2.call("chat:send", {"threadId": g.tid, "content": "once", "tempId": "t-42"})
    assert_ok(other_dev)
    assert other_dev["message"]["id"] == first["message"]["id"]
    # another user with the same tempId gets their own message
    mb = b.call("chat:send", {"threadId": g.tid, "content": "mine", "tempId": "t-42"})
    assert_ok(mb)
    assert mb["message"]["id"] != first["message"]["id"] and mb["message"]["senderId"] == g.u["bob"]
    hist = b.call("chat:history", {"threadId": g.tid})
    assert [(m["senderId"], m["content"]) for m in hist["messages"]] == [(g.u["alice"], "once"), (g.u["bob"], "mine")]
    assert [m["seq"] for m in hist["messages"]] == [1, 2]
    # the next event takes the next seq: no seq was burnt by the duplicates
    assert mb["message"]["seq"] == 2


def test_temp_id_is_scoped_to_the_thread(g, h):
    other = h.make_thread(g.tok["alice"], [g.u["bob"]])
    a = g.connect("alice")
    m1 = a.send(g.tid, "x", tempId="same")
    m2 = a.send(other["id"], "x", tempId="same")
    assert m1["id"] != m2["id"] and m2["threadId"] == other["id"]


# ------------------------------------------------------------------ edit / delete

def test_edit_and_delete_sender_only_with_events_and_seq(g):
    a, b = g.connect("alice"), g.connect("bob")
    m = a.send(g.tid, "original", type="Image", attachmentUrl="https://x/y.png", attachmentType="image/png")
    assert m["seq"] == 1
    # not the sender
    assert_fail(b.call("chat:edit", {"threadId": g.tid, "messageId": m["id"], "content": "hacked"}), "forbidden")
    assert_fail(b.call("chat:delete", {"threadId": g.tid, "messageId": m["id"]}), "forbidden")

    ack = a.call("chat:edit", {"threadId": g.tid, "messageId": m["id"], "content": "edited"})
    assert_ok(ack)
    em = ack["message"]
    assert_message_shape(em, thread_id=g.tid, sender=g.u["alice"], content="edited", seq=1, type_="Image")
    assert em["id"] == m["id"] and em["editedAt"] is not None and em["deletedAt"] is None
    parse_iso_ms(em["editedAt"])
    for c in (a, b):
        ev = c.wait_for("chat:message:edited", lambda d: d["message"]["id"] == m["id"])
        assert ev["threadId"] == g.tid and ev["seq"] == 2
        assert ev["message"]["content"] == "edited" and ev["message"]["seq"] == 1

    ack = a.call("chat:delete", {"threadId": g.tid, "messageId": m["id"]})
    assert_ok(ack)
    for c in (a, b):
        ev = c.wait_for("chat:message:deleted", lambda d: d["messageId"] == m["id"])
        assert ev["threadId"] == g.tid and ev["seq"] == 3 and ev["messageId"] == m["id"]

    # the deleted message keeps its place and seq; content "", deletedAt set, attachments cleared
    hist = b.call("chat:history", {"threadId": g.tid})
    assert_ok(hist)
    (dm,) = hist["messages"]
    assert dm["id"] == m["id"] and dm["seq"] == 1
    assert dm["content"] == "" and dm["deletedAt"] is not None
    parse_iso_ms(dm["deletedAt"])
    assert dm["attachmentUrl"] is None and dm["attachmentType"] is None

    # the next message takes the next seq after the edit and delete events
    n = b.send(g.tid, "after")
    assert n["seq"] == 4
    # one stream per socket, in seq order: message 1, edited 2, deleted 3, message 4
    b.wait_for("chat:message", lambda d: d["message"]["id"] == n["id"])
    order = [(e, d.get("seq") or d["message"]["seq"]) for e, d in list(b.events)
             if e in ("chat:message", "chat:message:edited", "chat:message:deleted") and d["threadId"] == g.tid]
    assert order == [("chat:message", 1), ("chat:message:edited", 2), ("chat:message:deleted", 3),
                     ("chat:message", 4)]


def test_edit_or_delete_of_a_deleted_message_fails(g):
    a = g.connect("alice")
    m = a.send(g.tid, "soon gone")
    assert_ok(a.call("chat:delete", {"threadId": g.tid, "messageId": m["id"]}))
    ack = a.call("chat:edit", {"threadId": g.tid, "messageId": m["id"], "content": "back"})
    assert ack["success"] is False and ack["code"] in ("not_found", "forbidden", "invalid_payload"), ack
    hist = a.call("chat:history", {"threadId": g.tid})
    assert hist["messages"][0]["content"] == ""


def test_edit_unknown_message_is_not_found(g):
    a = g.connect("alice")
    a.send(g.tid, "x")
    assert_fail(a.call("chat:edit", {"threadId": g.tid, "messageId": uid("nope"), "content": "y"}), "not_found")
    assert_fail(a.call("chat:delete", {"threadId": g.tid, "messageId": uid("nope")}), "not_found")


# ------------------------------------------------------------------ history

def test_history_paging_has_more(g):
    a = g.connect("alice")
    acks = a.send_many(g.tid, [f"m{i}" for i in range(1, 6)])
    assert sorted(x["message"]["seq"] for x in acks) == [1, 2, 3, 4, 5]

    def page(**kw):
        r = a.call("chat:history", {"threadId": g.tid, **kw})
        assert_ok(r)
        assert set(r) >= {"messages", "hasMore"} and isinstance(r["hasMore"], bool)
        return [m["seq"] for m in r["messages"]], r["hasMore"]

    assert page(limit=2) == ([4, 5], True)
    assert page(limit=2, beforeSeq=4) == ([2, 3], True)
    # the page that reaches the first message says hasMore: false
    assert page(limit=2, beforeSeq=2) == ([1], False)
    assert page(limit=5) == ([1, 2, 3, 4, 5], False)
    assert page(limit=4) == ([2, 3, 4, 5], True)
    assert page(limit=4, beforeSeq=5) == ([1, 2, 3, 4], False)
    assert page() == ([1, 2, 3, 4, 5], False)
    assert page(beforeSeq=1) == ([], False)
    msgs = a.call("chat:history", {"threadId": g.tid, "limit": 5})["messages"]
    assert sorted((m["seq"], m["id"], m["content"]) for m in msgs) == \
        sorted((x["message"]["seq"], x["message"]["id"], x["message"]["content"]) for x in acks)
    for m in msgs:
        assert m == next(x["message"] for x in acks if x["message"]["id"] == m["id"])


def test_history_default_limit_is_50(g):
    a = g.connect("alice")
    acks = a.send_many(g.tid, [f"m{i}" for i in range(55)])
    assert all(x["success"] for x in acks)
    r = a.call("chat:history", {"threadId": g.tid})
    assert [m["seq"] for m in r["messages"]] == list(range(6, 56)) and r["hasMore"] is True
    r = a.call("chat:history", {"threadId": g.tid, "beforeSeq": 6})
    assert [m["seq"] for m in r["messages"]] == [1, 2, 3, 4, 5] and r["hasMore"] is False
    r = a.call("chat:history", {"threadId": g.tid, "limit": 100})
    assert len(r["messages"]) == 55 and r["hasMore"] is False


def test_history_of_an_empty_thread(g):
    a = g.connect("alice")
    r = a.call("chat:history", {"threadId": g.tid})
    assert_ok(r)
    assert r["messages"] == [] and r["hasMore"] is False


# ------------------------------------------------------------------ sync

def test_sync_after_seq_returns_live_shapes_in_order(g, h):
    a, b = g.connect("alice"), g.connect("bob")
    m1 = a.send(g.tid, "one", tempId="tmp-one")
    m2 = a.send(g.tid, "two secret")
    m3 = b.send(g.tid, "three")
    assert_ok(a.call("chat:edit", {"threadId": g.tid, "messageId": m1["id"], "content": "one edited"}))   # seq 4
    assert_ok(a.call("chat:delete", {"threadId": g.tid, "messageId": m2["id"]}))                        # seq 5
    # the live stream as bob saw it
    b.wait_for("chat:message:deleted", lambda d: d["messageId"] == m2["id"])

    r = b.call("chat:sync", {"threads": [{"threadId": g.tid, "afterSeq": 0}]})
    assert_ok(r)
    (entry,) = r["threads"]
    assert entry["threadId"] == g.tid and entry["hasMore"] is False
    evs = entry["events"]
    assert [e["event"] for e in evs] == ["chat:message", "chat:message", "chat:message", "chat:message:edited",
                                         "chat:message:deleted"]
    assert all(set(e) >= {"event", "data"} for e in evs)
    d0, d1, d2, d3, d4 = (e["data"] for e in evs)
    assert d0["threadId"] == g.tid and d0["message"]["id"] == m1["id"] and d0["message"]["seq"] == 1
    assert d0["tempId"] == "tmp-one"
    assert_message_shape(d0["message"], thread_id=g.tid, sender=g.u["alice"], seq=1)
    # every message as it is now: m1 edited, m2 deleted
    assert d0["message"]["content"] == "one edited" and d0["message"]["editedAt"] is not None
    assert d1["message"]["id"] == m2["id"] and d1["message"]["content"] == "" and d1["message"]["deletedAt"]
    assert d2["message"]["id"] == m3["id"] and d2["message"]["seq"] == 3 and d2["message"]["content"] == "three"
    assert d3["threadId"] == g.tid and d3["seq"] == 4 and d3["message"]["id"] == m1["id"]
    assert d3["message"]["content"] == "one edited"
    assert d4["threadId"] == g.tid and d4["seq"] == 5 and d4["messageId"] == m2["id"]
    assert "two secret" not in json.dumps(r), "deleted content came back in sync"

    def eseq(e):
        return e["data"]["seq"] if "seq" in e["data"] else e["data"]["message"]["seq"]

    r = b.call("chat:sync", {"threads": [{"threadId": g.tid, "afterSeq": 2}]})
    assert [eseq(e) for e in r["threads"][0]["events"]] == [3, 4, 5]
    r = b.call("chat:sync", {"threads": [{"threadId": g.tid, "afterSeq": 5}]})
    assert r["threads"][0]["events"] == [] and r["threads"][0]["hasMore"] is False
    assert "two secret" not in json.dumps(b.call("chat:history", {"threadId": g.tid}))


def test_sync_per_thread_failures_do_not_fail_the_others(g, h):
    other = h.make_thread(g.tok["bob"], [g.u["carol"]])          # alice is not a member
    foreign = h.make_thread(token(uid("eve"), uid("co")), [])    # another company
    a = g.connect("alice")
    m = a.send(g.tid, "hi")
    missing = uid("missing")
    r = a.call("chat:sync", {"threads": [{"threadId": missing, "afterSeq": 0},
                                         {"threadId": g.tid, "afterSeq": 0},
                                         {"threadId": other["id"], "afterSeq": 0},
                                         {"threadId": foreign["id"], "afterSeq": 0}]})
    assert_ok(r)
    by_id = {e["threadId"]: e for e in r["threads"]}
    assert set(by_id) == {missing, g.tid, other["id"], foreign["id"]}
    assert by_id[missing]["code"] == "not_found" and by_id[missing]["error"]
    assert by_id[other["id"]]["code"] == "not_a_member" and by_id[other["id"]]["error"]
    assert by_id[foreign["id"]]["code"] == "not_found"
    assert not by_id[missing].get("events") and not by_id[foreign["id"]].get("events")
    assert not by_id[other["id"]].get("events")
    ok = by_id[g.tid]
    assert "code" not in ok or ok["code"] is None
    assert [e["data"]["message"]["id"] for e in ok["events"]] == [m["id"]] and ok["hasMore"] is False


# ------------------------------------------------------------------ join / leave

def test_leave_stops_this_socket_only_and_join_resumes(g):
    a = g.connect("alice")
    b1, b2 = g.connect("bob"), g.connect("bob")
    assert_ok(b1.call("chat:leave", {"threadId": g.tid}))
    m1 = a.send(g.tid, "while b1 is away")
    b2.wait_for("chat:message", lambda d: d["message"]["id"] == m1["id"])
    # membership unchanged: b1 can still read and send
    hist = b1.call("chat:history", {"threadId": g.tid})
    assert_ok(hist)
    assert [m["id"] for m in hist["messages"]] == [m1["id"]]
    assert_ok(b1.call("chat:join", {"threadId": g.tid}))
    m2 = a.send(g.tid, "b1 is back")
    b1.wait_for("chat:message", lambda d: d["message"]["id"] == m2["id"])
    # thread events arrive in seq order, so had m1 reached b1 it would be there already
    assert [d["message"]["id"] for d in thread_msgs(b1, g.tid)] == [m2["id"]]


def test_join_requires_membership(g):
    d = g.connect("dave")
    assert_fail(d.call("chat:join", {"threadId": g.tid}), "not_a_member")
    assert_fail(d.call("chat:join", {"threadId": uid("nope")}), "not_found")
    a = g.connect("alice")
    m = a.send(g.tid, "members only")
    a.wait_for("chat:message", lambda x: x["message"]["id"] == m["id"])
    d.assert_none("chat:message")


def test_join_is_idempotent_no_duplicate_delivery(g):
    a, b = g.connect("alice"), g.connect("bob")
    assert_ok(b.call("chat:join", {"threadId": g.tid}))
    assert_ok(b.call("chat:join", {"threadId": g.tid}))
    m = a.send(g.tid, "once")
    m2 = a.send(g.tid, "twice")
    b.wait_for("chat:message", lambda d: d["message"]["id"] == m2["id"])
    assert [d["message"]["seq"] for d in thread_msgs(b, g.tid)] == [m["seq"], m2["seq"]]


# ------------------------------------------------------------------ typing

def test_typing_start_stop_to_room_except_emitter(g):
    a1, a2 = g.connect("alice"), g.connect("alice")
    b, c = g.connect("bob"), g.connect("carol")
    d = g.connect("dave")
    a1.emit("chat:typing:start", {"threadId": g.tid})
    for x in (a2, b, c):
        ev = x.wait_for("chat:typing:start")
        subset(ev, threadId=g.tid, userId=g.u["alice"])
    a1.emit("chat:typing:stop", {"threadId": g.tid})
    for x in (a2, b, c):
        ev = x.wait_for("chat:typing:stop")
        subset(ev, threadId=g.tid, userId=g.u["alice"])
    # barrier on the emitting socket, then: it never got its own typing events
    m = a1.send(g.tid, "barrier")
    a1.wait_for("chat:message", lambda x: x["message"]["id"] == m["id"])
    a1.assert_none("chat:typing:start", settle=0.2)
    a1.assert_none("chat:typing:stop", settle=0)
    d.assert_none("chat:typing:start", settle=0)


def test_typing_stop_only_forwarded_if_typing(g):
    a, b = g.connect("alice"), g.connect("bob")
    a.emit("chat:typing:stop", {"threadId": g.tid})
    m = a.send(g.tid, "barrier")
    b.wait_for("chat:message", lambda x: x["message"]["id"] == m["id"])
    b.assert_none("chat:typing:stop")


def test_typing_auto_stop_when_typist_disconnects(g):
    a, b = g.connect("alice"), g.connect("bob")
    b.emit("chat:typing:start", {"threadId": g.tid})
    a.wait_for("chat:typing:start", lambda d: d["userId"] == g.u["bob"])
    b.close()
    ev = a.wait_for("chat:typing:stop", lambda d: d["userId"] == g.u["bob"], timeout=3)
    subset(ev, threadId=g.tid, userId=g.u["bob"])


def test_typing_from_outside_the_room_is_refused(g):
    d = g.connect("dave")
    assert_fail(d.call("chat:typing:start", {"threadId": g.tid}), "not_a_member")
    b1, a = g.connect("bob"), g.connect("alice")
    assert_ok(b1.call("chat:leave", {"threadId": g.tid}))
    assert_fail(b1.call("chat:typing:start", {"threadId": g.tid}), "not_a_member")
    # without an ack: ignored
    d.emit("chat:typing:start", {"threadId": g.tid})
    m = a.send(g.tid, "barrier")
    a.wait_for("chat:message", lambda x: x["message"]["id"] == m["id"])
    a.assert_none("chat:typing:start")
    assert d.connected and b1.connected


@peer_deviation   # the peer answers success to a typing stop from outside the room
def test_typing_stop_from_outside_the_room_is_refused_with_ack(g):
    d = g.connect("dave")
    assert_fail(d.call("chat:typing:stop", {"threadId": g.tid}), "not_a_member")


@pytest.fixture(scope="module")
def fast_typing_server():
    # 3 s: the starts below come 0.3 s apart, so a stall of up to 2.7 s on a busy machine cannot end the typing.
    with running_server(["--typing-timeout", "3"]) as srv:
        yield srv


def test_typing_auto_stop_after_timeout(fast_typing_server):
    with harness_for(fast_typing_server) as hh:
        gg = Group(hh, uid("co"))
        a, b = gg.connect("alice"), gg.connect("bob")
        a.emit("chat:typing:start", {"threadId": gg.tid})
        b.wait_for("chat:typing:start")
        ev = b.wait_for("chat:typing:stop", timeout=10)     # sent by the server itself
        subset(ev, threadId=gg.tid, userId=gg.u["alice"])
        # new starts before the timeout keep the typist typing
        a.emit("chat:typing:start", {"threadId": gg.tid})
        b.wait_for("chat:typing:start", count=2)
        for _ in range(4):
            time.sleep(0.3)
            a.emit("chat:typing:start", {"threadId": gg.tid})
        assert len(b.received("chat:typing:stop")) == 1, "stop sent although starts kept coming"
        ev = b.wait_for("chat:typing:stop", count=2, timeout=10)[1]
        subset(ev, threadId=gg.tid, userId=gg.u["alice"])


# ------------------------------------------------------------------ receipts

def test_delivered_and_read_notices_and_watermarks(g):
    a1, a2 = g.connect("alice"), g.connect("alice")
    b, c = g.connect("bob"), g.connect("carol")
    m1 = a1.send(g.tid, "m1")
    m2 = a1.send(g.tid, "m2")
    m3 = c.send(g.tid, "m3")
    assert (m1["seq"], m2["seq"], m3["seq"]) == (1, 2, 3)

    assert_ok(b.call("chat:delivered", {"threadId": g.tid, "messageIds": [m1["id"]]}))
    for x in (a1, a2):   # every socket of the sender
        ev = x.wait_for("chat:delivered")
        assert set(ev) >= {"threadId", "messageIds", "userId", "upToSeq", "timestamp"}
        assert ev["threadId"] == g.tid and ev["messageIds"] == [m1["id"]]
        assert ev["userId"] == g.u["bob"] and ev["upToSeq"] == 1
        parse_iso_ms(ev["timestamp"])

    # the mark moves to the highest seq among the ids: m2 (alice) and m3 (carol) are newly covered
    assert_ok(b.call("chat:delivered", {"threadId": g.tid, "messageIds": [m3["id"]]}))
    ev = a1.wait_for("chat:delivered", lambda d: d["upToSeq"] == 3)
    assert ev["messageIds"] == [m2["id"]] and ev["userId"] == g.u["bob"]
    ev = c.wait_for("chat:delivered")
    assert ev["messageIds"] == [m3["id"]] and ev["upToSeq"] == 3 and ev["userId"] == g.u["bob"]

    # below the watermark: nothing newly covered, no notice
    assert_ok(b.call("chat:delivered", {"threadId": g.tid, "messageIds": [m2["id"], m1["id"]]}))

    # read up to 1: alice gets a read notice for m1; delivered mark already beyond
    assert_ok(b.call("chat:mark-read", {"threadId": g.tid, "upToSeq": 1}))
    ev = a2.wait_for("chat:read")
    assert ev["threadId"] == g.tid and ev["messageIds"] == [m1["id"]] and ev["upToSeq"] == 1
    assert ev["userId"] == g.u["bob"]
    parse_iso_ms(ev["timestamp"])
    # read to the latest (default)
    assert_ok(b.call("chat:mark-read", {"threadId": g.tid}))
    ev = a1.wait_for("chat:read", lambda d: d["upToSeq"] == 3)
    assert ev["messageIds"] == [m2["id"]]
    ev = c.wait_for("chat:read")
    assert ev["messageIds"] == [m3["id"]] and ev["upToSeq"] == 3
    a2.wait_for("chat:read", lambda d: d["upToSeq"] == 3)

    # barrier, then the exact notice lists
    mb = c.send(g.tid, "barrier")
    for x in (a1, a2):
        x.wait_for("chat:message", lambda d: d["message"]["id"] == mb["id"])
    time.sleep(0.3)
    for x in (a1, a2):
        assert [(d["messageIds"], d["upToSeq"]) for d in x.received("chat:delivered")] == \
            [([m1["id"]], 1), ([m2["id"]], 3)]
        assert [(d["messageIds"], d["upToSeq"]) for d in x.received("chat:read")] == \
            [([m1["id"]], 1), ([m2["id"]], 3)]
    assert len(c.received("chat:delivered")) == 1 and len(c.received("chat:read")) == 1
    # the reader gets no notices about other people's messages
    assert not b.received("chat:delivered") and not b.received("chat:read")


def test_mark_read_also_advances_delivered(g):
    a, b = g.connect("alice"), g.connect("bob")
    m1 = a.send(g.tid, "m1")
    m2 = a.send(g.tid, "m2")
    assert_ok(b.call("chat:mark-read", {"threadId": g.tid, "upToSeq": m2["seq"]}))
    d = a.wait_for("chat:delivered")
    r = a.wait_for("chat:read")
    assert d["messageIds"] == [m1["id"], m2["id"]] and d["upToSeq"] == 2 and d["userId"] == g.u["bob"]
    assert r["messageIds"] == [m1["id"], m2["id"]] and r["upToSeq"] == 2 and r["userId"] == g.u["bob"]


def test_mark_read_beyond_last_seq_is_clamped(g, h):
    a, b = g.connect("alice"), g.connect("bob")
    m1 = a.send(g.tid, "m1")
    m2 = a.send(g.tid, "m2")
    assert_ok(b.call("chat:mark-read", {"threadId": g.tid, "upToSeq": 1000000}))
    r = a.wait_for("chat:read")
    assert r["upToSeq"] == m2["seq"] and r["messageIds"] == [m1["id"], m2["id"]]

    def mine():
        resp = h.rest("GET", "/chat/threads", g.tok["bob"])
        assert resp.status_code == 200
        return next(t for t in resp.json()["threads"] if t["id"] == g.tid)

    t = mine()
    assert t["readSeq"] == t["lastSeq"] == 2 and t["unreadCount"] == 0
    # later messages are unread: the mark was clamped, not left at 1000000
    m3 = a.send(g.tid, "m3")
    t = mine()
    assert t["lastSeq"] == 3 and t["readSeq"] == 2 and t["unreadCount"] == 1
    assert_ok(b.call("chat:mark-read", {"threadId": g.tid}))
    r = a.wait_for("chat:read", lambda d: d["upToSeq"] == 3)
    assert r["messageIds"] == [m3["id"]]
