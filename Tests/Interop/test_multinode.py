"""Several broker nodes on one PostgreSQL database (multinode.py): live fan-out across nodes, one order per thread
under concurrent writers on different nodes, and kill -9 of a node with chat:sync filling exactly what its
clients missed (docs/PROTOCOL.md §3, §4, §8.1, §8.3).

Three nodes A, B, C (module-scoped) started from $CHAT_BROKER_BIN (default .build/debug/chat-broker) with
--database-url $CHAT_TEST_DATABASE_URL; skipped without that variable. Each test uses its own company and users.
"""
import threading
import time

import pytest

from conftest import assert_message_shape, assert_ok, parse_iso_ms, thread_msgs, token, uid
from multinode import (Cluster, Device, MultiHarness, Pump, contiguous, event_key, event_seq, skip_reason,
                       stop_pumps, sync_all, thread_seqs)

pytestmark = pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or "")

CROSS = 5.0      # how long a live event may take to reach a socket on another node


@pytest.fixture(scope="module")
def cluster():
    c = Cluster(3)
    with c:
        yield c


@pytest.fixture
def mh(cluster):
    for n in cluster:          # a test that killed a node and failed before restarting it
        if not n.alive():
            n.restart()
    h = MultiHarness(cluster)
    yield h
    h.close()


def users(co, *names):
    u = {n: uid(n) for n in names}
    return u, {n: token(v, co) for n, v in u.items()}


# ------------------------------------------------------------------ a. fan-out across nodes

def test_fan_out_edit_delete_receipts_and_membership_cross_nodes(cluster, mh):
    A, B, C = cluster.nodes
    co = uid("co")
    u, tok = users(co, "u1", "u2", "u3", "u4")
    c1A = mh.connect(A, tok["u1"], name="u1@A")
    c1C = mh.connect(C, tok["u1"], name="u1@C")
    c2B = mh.connect(B, tok["u2"], name="u2@B")
    c2A = mh.connect(A, tok["u2"], transports=("polling",), name="u2@A(polling)")
    c3C = mh.connect(C, tok["u3"], name="u3@C")
    c4C = mh.connect(C, tok["u4"], name="u4@C")        # not a member until added below
    members = [c1A, c1C, c2B, c2A, c3C]

    # created on A by u1: every socket of every member gets chat:thread:created, whichever node it is on
    thread = mh.make_thread(A, tok["u1"], [u["u2"], u["u3"]], name="across nodes")
    tid = thread["id"]
    for c in members:
        ev = c.wait_for("chat:thread:created", lambda d: d["thread"]["id"] == tid, timeout=CROSS)
        assert ev["thread"]["members"] == [u["u1"], u["u2"], u["u3"]], ev
        assert ev["thread"]["companyId"] == co and ev["thread"]["createdBy"] == u["u1"]

    # a message sent on B reaches every device on every node
    m1 = c2B.send(tid, "sent on B", tempId="b-1")
    assert_message_shape(m1, thread_id=tid, sender=u["u2"], content="sent on B", seq=1)
    for c in members:
        ev = c.wait_for("chat:message", lambda d: d["message"]["id"] == m1["id"], timeout=CROSS)
        assert ev["threadId"] == tid and ev["tempId"] == "b-1"
        assert {k: ev["message"][k] for k in m1} == m1, (c.name, ev)

    # an edit on B and a delete from u2's device on A cross nodes too, with their own seqs
    ack = assert_ok(c2B.call("chat:edit", {"threadId": tid, "messageId": m1["id"], "content": "edited on B"}))
    assert ack["message"]["content"] == "edited on B"
    for c in members:
        ev = c.wait_for("chat:message:edited", lambda d: d["message"]["id"] == m1["id"], timeout=CROSS)
        assert ev["threadId"] == tid and ev["seq"] == 2 and ev["message"]["seq"] == 1
        assert ev["message"]["content"] == "edited on B" and ev["message"]["editedAt"] is not None
    assert_ok(c2A.call("chat:delete", {"threadId": tid, "messageId": m1["id"]}))
    for c in members:
        ev = c.wait_for("chat:message:deleted", lambda d: d["messageId"] == m1["id"], timeout=CROSS)
        assert ev == {"threadId": tid, "seq": 3, "messageId": m1["id"]}, (c.name, ev)

    # receipts: u1 sends on A; u3 (on C) marks it delivered, u2 (on B) marks the thread read; the notices reach
    # every socket of u1, on A and on C
    m2 = c1A.send(tid, "sent on A")
    assert m2["seq"] == 4
    for c in members:
        c.wait_for("chat:message", lambda d: d["message"]["id"] == m2["id"], timeout=CROSS)
    assert_ok(c3C.call("chat:delivered", {"threadId": tid, "messageIds": [m2["id"]]}))
    for c in (c1A, c1C):
        ev = c.wait_for("chat:delivered", lambda d: d["threadId"] == tid and d["userId"] == u["u3"], timeout=CROSS)
        assert ev["messageIds"] == [m2["id"]] and ev["upToSeq"] == 4, (c.name, ev)
        parse_iso_ms(ev["timestamp"])
    assert_ok(c2B.call("chat:mark-read", {"threadId": tid}))
    for c in (c1A, c1C):
        ev = c.wait_for("chat:read", lambda d: d["threadId"] == tid and d["userId"] == u["u2"], timeout=CROSS)
        assert ev["messageIds"] == [m2["id"]] and ev["upToSeq"] == 4, (c.name, ev)
        parse_iso_ms(ev["timestamp"])
        ev = c.wait_for("chat:delivered", lambda d: d["threadId"] == tid and d["userId"] == u["u2"], timeout=CROSS)
        assert ev["messageIds"] == [m2["id"]] and ev["upToSeq"] == 4, (c.name, ev)
    # u2's only message is deleted and u3 sent none: no notice for them (checked after the barrier below)

    # u1 adds u4 on A: u4's live socket on C gets chat:thread:created, then the thread's next message
    mh.add_members(A, tok["u1"], tid, [u["u4"]])
    ev = c4C.wait_for("chat:thread:created", lambda d: d["thread"]["id"] == tid, timeout=CROSS)
    assert ev["thread"]["members"] == [u["u1"], u["u2"], u["u3"], u["u4"]], ev
    m3 = c1A.send(tid, "after the add, sent on A")
    assert m3["seq"] == 5
    for c in members + [c4C]:
        c.wait_for("chat:message", lambda d: d["message"]["id"] == m3["id"], timeout=CROSS)
    names = [e for e, d in c4C.events if isinstance(d, dict) and (d.get("threadId") == tid or
                                                                     (d.get("thread") or {}).get("id") == tid)]
    assert names == ["chat:thread:created", "chat:message"], f"u4@C received {names}"

    # a barrier through every node, then: each socket got each event exactly once, in seq order
    m4 = c3C.send(tid, "barrier, sent on C")
    for c in members + [c4C]:
        c.wait_for("chat:message", lambda d: d["message"]["id"] == m4["id"], timeout=CROSS)
    for c in members:
        assert thread_seqs(c, tid) == [1, 2, 3, 4, 5, 6], f"{c.name}: {thread_seqs(c, tid)}"
        assert len(c.received("chat:thread:created", lambda d: d["thread"]["id"] == tid)) == 1, c.name
    assert thread_seqs(c4C, tid) == [5, 6]
    for c in (c2B, c2A, c3C, c4C):
        assert not c.received("chat:delivered") and not c.received("chat:read"), f"{c.name} got a receipt notice"
    assert len(c1A.received("chat:read")) == 1 and len(c1C.received("chat:read")) == 1


def test_thread_created_reaches_members_only_on_other_nodes(cluster, mh):
    """The creator has no socket anywhere; its members are each on a different node than the REST call."""
    A, B, C = cluster.nodes
    co = uid("co")
    u, tok = users(co, "creator", "m1", "m2", "outsider")
    c_m1 = mh.connect(B, tok["m1"], name="m1@B")
    c_m2 = mh.connect(C, tok["m2"], name="m2@C")
    c_out = mh.connect(C, tok["outsider"], name="outsider@C")
    tid = mh.make_thread(A, tok["creator"], [u["m1"], u["m2"]])["id"]
    for c in (c_m1, c_m2):
        c.wait_for("chat:thread:created", lambda d: d["thread"]["id"] == tid, timeout=CROSS)
    # and the first message, sent right after from another node, reaches both
    m = c_m1.send(tid, "first")
    c_m2.wait_for("chat:message", lambda d: d["message"]["id"] == m["id"], timeout=CROSS)
    c_out.assert_none("chat:thread:created", settle=0.5)
    c_out.assert_none("chat:message", settle=0)


# ------------------------------------------------------------------ b. one order under concurrent writers

def test_concurrent_writers_on_three_nodes_one_gap_free_order(cluster, mh):
    A, B, C = cluster.nodes
    co = uid("co")
    u, tok = users(co, "u1", "u2", "u3")
    senders = [mh.connect(A, tok["u1"], name="u1@A"), mh.connect(B, tok["u2"], name="u2@B"),
               mh.connect(C, tok["u3"], name="u3@C")]
    watchers = [mh.connect(B, tok["u1"], name="u1@B"), mh.connect(C, tok["u2"], name="u2@C"),
                mh.connect(A, tok["u3"], name="u3@A"), mh.connect(C, tok["u1"], transports=("polling",),
                                                                  name="u1@C(polling)")]
    tid = mh.make_thread(A, tok["u1"], [u["u2"], u["u3"]])["id"]
    for c in senders + watchers:
        c.wait_for("chat:thread:created", lambda d: d["thread"]["id"] == tid, timeout=CROSS)
    per = 200
    total = per * len(senders)
    results, failures = {}, {}
    start = threading.Barrier(len(senders))

    def run(i, c):
        try:
            start.wait(10)
            # pipelined: all 200 emitted with a callback, none waiting for the previous ack
            results[i] = c.send_many(tid, [f"w{i}-{k}" for k in range(per)], timeout=60, window=per)
        except BaseException as e:  # noqa: BLE001
            failures[i] = e

    ts = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(senders)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(75)
    assert not failures, failures
    assert len(results) == len(senders), "a sender did not finish"

    acked = {}
    for i, acks in results.items():
        bad = [a for a in acks if not (isinstance(a, dict) and a.get("success") is True)]
        assert not bad, f"sender {senders[i].name}: {len(bad)} sends not acknowledged, e.g. {bad[:3]}"
        seqs = [a["message"]["seq"] for a in acks]
        # §8.1: sends from one socket to one thread take their seqs in the order the socket sent them
        assert seqs == sorted(seqs) and len(set(seqs)) == per, f"{senders[i].name}: seqs out of send order"
        for k, a in enumerate(acks):
            m = a["message"]
            assert m["content"] == f"w{i}-{k}" and m["threadId"] == tid
            assert m["seq"] not in acked, f"seq {m['seq']} acknowledged twice"
            acked[m["seq"]] = m["id"]
    assert sorted(acked) == list(range(1, total + 1)), "acknowledged seqs are not 1..600"

    deadline = time.monotonic() + 30
    bad = []
    for c in senders + watchers:
        try:
            c.wait_for("chat:message", lambda d: d["threadId"] == tid, count=total,
                       timeout=max(0.1, deadline - time.monotonic()))
        except AssertionError:
            pass
        got = thread_msgs(c, tid)
        seqs = [d["message"]["seq"] for d in got]
        if seqs != list(range(1, total + 1)):
            bad.append(f"{c.name} on {c.node.name}: {_describe(seqs, total)}")
        elif {d["message"]["seq"]: d["message"]["id"] for d in got} != acked:
            bad.append(f"{c.name} on {c.node.name}: message ids differ from the acks")
    assert not bad, "sockets that did not receive 1..600 exactly once in order:\n" + "\n".join(bad)

    # chat:sync from 0 on every node answers the same sequence
    for node, c in ((A, senders[0]), (B, senders[1]), (C, senders[2])):
        evs = sync_all(c, tid, 0)
        assert [e for e, _ in evs] == ["chat:message"] * total
        assert [event_seq(e, d) for e, d in evs] == list(range(1, total + 1)), f"sync on {node.name}"
        assert {d["message"]["seq"]: d["message"]["id"] for _, d in evs} == acked, f"sync on {node.name}: ids"


def test_member_changes_fall_in_the_same_place_on_every_node(cluster, mh):
    """A sender on each node sends as fast as its acks come; the creator removes carol and adds her back through REST,
    each change on a node in turn. carol has a socket on every node: all three get exactly the same messages, those
    committed while she was a member (before, the node that made a change placed it up to a few events away from
    where the others did: 27-42 messages per run reached some of her sockets and not others)."""
    co = uid("co")
    u, tok = users(co, "o", "s0", "s1", "s2", "c")
    tid = mh.make_thread(cluster.nodes[0], tok["o"], [u["s0"], u["s1"], u["s2"], u["c"]])["id"]
    carol = [mh.connect(n, tok["c"], name=f"c@{n.name}") for n in cluster.nodes]
    senders = [mh.connect(n, tok[f"s{i}"], name=f"s{i}@{n.name}") for i, n in enumerate(cluster.nodes)]
    stop = threading.Event()

    def pump(sender):
        i = 0
        while not stop.is_set():
            sender.send(tid, f"m{i}")
            i += 1

    pumps = [threading.Thread(target=pump, args=(s,)) for s in senders]
    for p in pumps:
        p.start()
    try:
        for r in range(6):
            time.sleep(0.15)
            resp = cluster.nodes[r % 3].rest("DELETE", f"/chat/threads/{tid}/members/{u['c']}", tok["o"])
            assert resp.status_code == 200, resp.text
            time.sleep(0.15)
            mh.add_members(cluster.nodes[(r + 1) % 3], tok["o"], tid, [u["c"]])
        time.sleep(0.2)
    finally:
        stop.set()
        for p in pumps:
            p.join()
    last = senders[0].send(tid, "last")["seq"]
    for c in carol:
        c.wait_for("chat:message", lambda d: d["message"]["seq"] == last, timeout=CROSS)
    got = [{d["message"]["seq"] for d in c.received("chat:message", lambda d: d.get("threadId") == tid)} for c in carol]
    differ = sorted(set().union(*got) - set.intersection(*got))
    assert not differ, f"messages some of carol's sockets got and others did not: {differ[:20]}"
    assert len(got[0]) < last, "carol missed what was sent while she was not a member"


def test_steady_writers_on_two_nodes_both_make_progress(cluster, mh):
    """Two users on two nodes chat steadily in one thread: neither node's sends wait behind the other's. (A node
    whose view of the thread is stale catches up and writes again; it must not be starved while the other node
    keeps writing.)"""
    A, B, _ = cluster.nodes
    co = uid("co")
    u, tok = users(co, "ua", "ub")
    tid = mh.make_thread(A, tok["ua"], [u["ub"]])["id"]
    s_a = mh.connect(A, tok["ua"], name="ua@A")
    s_b = mh.connect(B, tok["ub"], name="ub@B")
    pumps = [Pump(s_a, [tid], rate=60, window=16, prefix="a").start(),
             Pump(s_b, [tid], rate=60, window=16, prefix="b").start()]
    seconds, stalls = 6, []
    try:
        for k in range(seconds):
            before = [p.acked_count() for p in pumps]
            time.sleep(1.0)
            for p, b in zip(pumps, before):
                if p.acked_count() == b or p.oldest_inflight_age() > 2.0:
                    stalls.append(f"second {k + 1}: {p.prefix} acked {p.acked_count() - b} new sends, oldest "
                                  f"unanswered send waiting {p.oldest_inflight_age():.1f}s "
                                  f"(the other node: {[q.acked_count() for q in pumps if q is not p]} acked)")
    finally:
        left = stop_pumps(pumps)
    assert left == [0, 0], f"sends left unanswered after both stopped: {left}"
    assert not [e for p in pumps for e in p.errors], [e for p in pumps for e in p.errors][:3]
    assert not stalls, "a node's sends stalled while the other node kept writing:\n" + "\n".join(stalls)
    worst = max(max(p.latencies) for p in pumps)
    assert worst < 2.0, f"slowest ack took {worst:.2f}s"
    acked = sorted(s for p in pumps for (_, s, _, _) in p.acked)
    assert acked == list(range(1, len(acked) + 1))


def _describe(seqs, total):
    """What is wrong with a received seq list that should be 1..total."""
    out = [f"{len(seqs)} events"]
    missing = sorted(set(range(1, total + 1)) - set(seqs))
    if missing:
        out.append(f"{len(missing)} never arrived (e.g. {missing[:8]})")
    dupes = len(seqs) - len(set(seqs))
    if dupes:
        out.append(f"{dupes} duplicates")
    for i in range(1, len(seqs)):
        if seqs[i] <= seqs[i - 1]:
            out.append(f"out of order at index {i}: {seqs[max(0, i - 3):i + 3]}")
            break
    return "; ".join(out)


# ------------------------------------------------------------------ c. kill -9 of a node

KILL_CYCLES = 3


def test_kill9_a_node_and_sync_fills_exactly_what_its_client_missed(cluster, mh):
    A, B, C = cluster.nodes
    co = uid("co")
    u, tok = users(co, "ua", "ub", "uw")
    # the watcher's devices on A and B stay connected throughout; the mover is on C when C is killed
    stay_a = Device(mh, tok["uw"], [], "uw@A")
    stay_b = Device(mh, tok["uw"], [], "uw@B")
    mover = Device(mh, tok["uw"], [], "uw-mover")
    stay_a.attach(A, sync=False)
    stay_b.attach(B, sync=False)
    mover.attach(C, sync=False)
    tid = mh.make_thread(A, tok["ua"], [u["ub"], u["uw"]])["id"]
    for d in (stay_a, stay_b, mover):
        d.add_thread(tid)
        d.client.wait_for("chat:thread:created", lambda x: x["thread"]["id"] == tid, timeout=CROSS)
    s_a = mh.connect(A, tok["ua"], name="ua@A")
    s_b = mh.connect(B, tok["ub"], name="ub@B")
    pumps = [Pump(s_a, [tid], rate=60, window=16, prefix="a").start(),
             Pump(s_b, [tid], rate=60, window=16, prefix="b").start()]

    def max_acked():
        return max([s for p in pumps for (_, s, _, _) in list(p.acked)] or [0])

    try:
        for cycle in range(1, KILL_CYCLES + 1):
            # the mover receives the steady traffic live on C
            time.sleep(0.5)
            mover.wait_caught_up(tid, max_acked(), timeout=CROSS + 5)
            cluster.kill9(C)
            mover.lost_connection(10)
            held = mover.last[tid]
            time.sleep(1.0)                          # A and B keep sending while C is down
            assert max_acked() > held, "no sends were acknowledged while C was down"
            mover.attach(A)                          # reconnect elsewhere and catch up
            tr = mover.transitions[-1]
            assert tr["held"] == held and tr["count"] > 0 and tr["filled"][0] == held + 1, (cycle, tr)
            assert not mover.problems, (cycle, mover.problems)
            restart_s = cluster.restart(C)
            assert restart_s < 60
            mover.wait_caught_up(tid, max_acked(), timeout=CROSS + 5)
            mover.attach(C)                          # back to the restarted node (a clean move, with sync)
            assert not mover.problems, (cycle, mover.problems)
        time.sleep(0.5)
    finally:
        left = stop_pumps(pumps)
        if not C.alive():
            C.restart()
    assert left == [0, 0], f"sends on A and B left unanswered: {left}"
    errors = [e for p in pumps for e in p.errors]
    assert not errors, f"{len(errors)} sends refused, e.g. {errors[:3]}"

    stored = sync_all(s_b, tid, 0)
    seqs = [event_seq(e, d) for e, d in stored]
    last = seqs[-1] if seqs else 0
    assert seqs == list(range(1, last + 1)), "the stored thread has a gap"
    by_seq = {event_seq(e, d): d["message"] for e, d in stored}
    contents = [m["content"] for m in by_seq.values()]
    assert len(contents) == len(set(contents)), "a message is stored twice"
    acked = [a for p in pumps for a in p.acked]
    assert len(acked) == last, f"{last} stored, {len(acked)} acknowledged (nothing else was sent)"
    for (t, s, mid, content) in acked:
        assert t == tid and by_seq.get(s, {}).get("id") == mid and by_seq[s]["content"] == content, \
            f"acknowledged {content} (seq {s}, id {mid}) is not stored as acknowledged"
    for d in (stay_a, stay_b, mover):
        d.wait_caught_up(tid, last, timeout=CROSS + 5)
        assert not d.problems, d.problems
        assert d.compare(tid, stored) == [], d.compare(tid, stored)
    assert stay_a.connections == 1 and stay_b.connections == 1
    # the live streams of the devices that stayed had no gap at all
    for d in (stay_a, stay_b):
        assert contiguous(thread_seqs(d.client, tid), 1) and thread_seqs(d.client, tid)[-1] == last, d.name
    assert mover.connections == 1 + 2 * KILL_CYCLES
    assert len([t for t in mover.transitions if t["count"] > 0]) >= KILL_CYCLES
    assert all(event_key(e, d)[0] == "chat:message" for e, d in stored)
