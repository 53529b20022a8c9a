"""Shared set-up of the multi-node probes (three nodes on one PostgreSQL, python-socketio clients on each).

Environment: CHAT_TEST_DATABASE_URL (required: a PostgreSQL the nodes share), CHAT_BROKER_BIN (default: the release
build). Node logs go to a temporary directory."""
import os, sys, time, threading, json, uuid, tempfile
REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BINARY = os.environ.setdefault("CHAT_BROKER_BIN", os.path.join(REPO, ".build", "release", "chat-broker"))
if not os.environ.get("CHAT_TEST_DATABASE_URL"):
    sys.exit("set CHAT_TEST_DATABASE_URL to a PostgreSQL database the nodes can share")
sys.path.insert(0, os.path.join(REPO, "Tests", "Interop"))
import conftest
from conftest import token, service_token, uid, assert_ok, thread_msgs
import multinode
from multinode import (Cluster, MultiHarness, Device, Pump, sync_all, event_seq, event_key, stop_pumps,
                       contiguous, thread_seqs, THREAD_EVENTS)

def make_cluster(n=3, extra=multinode.FAST, tag="run"):
    root = os.path.join(tempfile.gettempdir(), f"multinode-probe-{tag}-{uuid.uuid4().hex[:6]}")
    c = Cluster(n, extra_args=extra, binary=BINARY, keep_logs=True, root=root)
    c.start()
    return c

def users(co, *names):
    u = {n: uid(n) for n in names}
    return u, {n: token(v, co) for n, v in u.items()}

def tev(c, tid):
    with c.cond:
        evs = list(c.events)
    return [(e, d) for e, d in evs if e in THREAD_EVENTS and isinstance(d, dict) and d.get("threadId") == tid]

def describe(seqs, want):
    out = []
    missing = sorted(set(want) - set(seqs)); extra = sorted(set(seqs) - set(want))
    if missing: out.append(f"missing {len(missing)} e.g. {missing[:8]}")
    if extra: out.append(f"extra {len(extra)} e.g. {extra[:8]}")
    d = len(seqs) - len(set(seqs))
    if d: out.append(f"{d} dupes")
    for i in range(1, len(seqs)):
        if seqs[i] <= seqs[i-1]:
            out.append(f"out of order at {i}: {seqs[max(0,i-3):i+3]}"); break
    return "; ".join(out) or "ok"


def typing_then_removal(rest_node, tid, typist_id, owner_token, watchers, typist, watch):
    """The typist starts typing; after a second the owner removes them through REST on `rest_node`. Returns how many
    starts each watcher got, and after how many seconds each got the typist's stop (watched for `watch` s)."""
    typist.emit("chat:typing:start", {"threadId": tid})
    time.sleep(1.0)
    starts = {c.name: len(c.received("chat:typing:start")) for c in watchers}
    t0 = time.monotonic()
    r = rest_node.rest("DELETE", f"/chat/threads/{tid}/members/{typist_id}", owner_token)
    assert r.status_code == 200, r.text
    stops = {}
    while time.monotonic() - t0 < watch:
        for c in watchers:
            if c.name not in stops and c.received("chat:typing:stop", lambda d: d["userId"] == typist_id):
                stops[c.name] = round(time.monotonic() - t0, 2)
        time.sleep(0.02)
    return starts, stops
