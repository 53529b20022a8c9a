"""Crash safety (kill -9), clean shutdown (SIGTERM/SIGINT exit 0), secrets at start-up."""
import os
import signal
import stat
import threading
import time

import jwt as pyjwt
import pytest

from conftest import (SECRET, ConnectFailed, ServerProcess, assert_ok, harness_for, running_server, token, uid,
                      wait_until)


def all_messages(srv, tok, tid):
    """Every message of a thread through REST paging (ascending)."""
    out, before = [], None
    for _ in range(1000):
        q = "?limit=100" + (f"&beforeSeq={before}" if before is not None else "")
        r = srv.rest("GET", f"/chat/threads/{tid}/messages{q}", tok)
        assert r.status_code == 200, r.text
        body = r.json()
        out = body["messages"] + out
        if not body["hasMore"]:
            return out
        before = body["messages"][0]["seq"]
    raise AssertionError("paging did not end")


@pytest.fixture
def crash_srv():
    srv = ServerProcess(["--rate-per-sec", "100000", "--rate-burst", "100000"])
    try:
        srv.start()
        yield srv
    finally:
        srv.cleanup()


def test_kill9_right_after_the_last_ack(crash_srv):
    """Sends, waits for every ack, then kill -9 at once: nothing acknowledged may be lost."""
    srv = crash_srv
    co = uid("co")
    alice, bob = uid("alice"), uid("bob")
    ta, tb = token(alice, co), token(bob, co)
    with harness_for(srv) as hh:
        t1 = hh.make_thread(ta, [bob])["id"]
        a, b = hh.connect(ta), hh.connect(tb, transports=["polling"])
        sent = []
        for rnd in range(3):
            sent += a.send_many(t1, [f"a{rnd}-{i}" for i in range(15)])
            sent += b.send_many(t1, [f"b{rnd}-{i}" for i in range(7)])
        m = sent[0]["message"]
        edit = a.call("chat:edit", {"threadId": t1, "messageId": m["id"], "content": "edited"})
        delete = a.call("chat:delete", {"threadId": t1, "messageId": sent[1]["message"]["id"]})
        assert_ok(edit) and assert_ok(delete)
        last = a.send(t1, "the last one")
        srv.kill9()
    srv.restart()
    msgs = all_messages(srv, ta, t1)
    n = len(sent)
    assert [x["seq"] for x in msgs] == list(range(1, n + 1)) + [n + 3]
    by_id = {x["id"]: x for x in msgs}
    missing = [x["message"]["content"] for x in sent if x["message"]["id"] not in by_id]
    assert not missing and last["id"] in by_id, f"acknowledged messages lost: {missing[:5]} ..."
    assert by_id[m["id"]]["content"] == "edited" and by_id[m["id"]]["editedAt"]
    assert by_id[sent[1]["message"]["id"]]["deletedAt"] and by_id[sent[1]["message"]["id"]]["content"] == ""
    assert by_id[last["id"]]["seq"] == len(sent) + 3     # after the edit and delete events
    with harness_for(srv) as hh:
        a = hh.connect(ta)
        r = a.call("chat:sync", {"threads": [{"threadId": t1, "afterSeq": 0}]})
        evs = r["threads"][0]["events"]
        seqs = [e["data"]["seq"] if "seq" in e["data"] else e["data"]["message"]["seq"] for e in evs]
        assert seqs == list(range(1, n + 4)), "the events are not gap-free after the crash"
        assert [e["event"] for e in evs[n:]] == ["chat:message:edited", "chat:message:deleted", "chat:message"]
        again = a.send_many(t1, [f"round 2 - {i}" for i in range(5)])
        assert sorted(x["message"]["seq"] for x in again) == list(range(n + 4, n + 9))
        srv.kill9()
    srv.restart()
    msgs = all_messages(srv, ta, t1)
    assert [x["seq"] for x in msgs] == list(range(1, n + 1)) + [n + 3] + list(range(n + 4, n + 9))
    assert sorted(x["content"] for x in msgs[-5:]) == [f"round 2 - {i}" for i in range(5)]


def test_kill9_with_sends_in_flight(crash_srv):
    """kill -9 while three connections are sending: every acked message exactly once, seq gap-free."""
    srv = crash_srv
    co = uid("co")
    alice, bob = uid("alice"), uid("bob")
    ta, tb = token(alice, co), token(bob, co)
    with harness_for(srv) as hh:
        t1 = hh.make_thread(ta, [bob])["id"]
        t2 = hh.make_thread(ta, [bob])["id"]
        senders = [(hh.connect(ta), t1, "a1"), (hh.connect(tb), t1, "b1"), (hh.connect(ta), t2, "a2")]
        acked = {}          # content -> message, for every successful ack
        lock = threading.Lock()
        stop = threading.Event()
        enough = threading.Event()

        def pump(client, tid, tag):
            i = 0
            while not stop.is_set() and i < 2000:
                content = f"{tag}-{i}"
                i += 1

                def cb(ack=None, content=content):
                    if isinstance(ack, dict) and ack.get("success"):
                        with lock:
                            acked[content] = ack["message"]
                            if len(acked) >= 150:
                                enough.set()
                try:
                    client.sio.emit("chat:send", {"threadId": tid, "content": content}, namespace="/chat",
                                    callback=cb)
                except Exception:  # noqa: BLE001 - the server is gone
                    return
                if i % 20 == 0:
                    time.sleep(0.005)

        threads = [threading.Thread(target=pump, args=s, daemon=True) for s in senders]
        for t in threads:
            t.start()
        assert enough.wait(20), f"only {len(acked)} acks"
        srv.kill9()                      # while sends are still in flight
        stop.set()
        with lock:
            acked_now = dict(acked)
        for t in threads:
            t.join(5)
    assert len(acked_now) >= 150

    srv.restart()
    for tid in (t1, t2):
        msgs = all_messages(srv, ta, tid)
        seqs = [m["seq"] for m in msgs]
        assert seqs == list(range(1, len(msgs) + 1)), "seq not gap-free after the crash"
        contents = [m["content"] for m in msgs]
        assert len(contents) == len(set(contents)), "a message was stored twice"
        by_content = {m["content"]: m for m in msgs}
        mine = {c: m for c, m in acked_now.items() if m["threadId"] == tid}
        missing = [c for c in mine if c not in by_content]
        assert not missing, f"{len(missing)} acknowledged messages lost, e.g. {missing[:3]}"
        for c, m in mine.items():
            got = by_content[c]
            assert (got["id"], got["seq"], got["senderId"]) == (m["id"], m["seq"], m["senderId"])
    # the thread goes on at the next seq
    with harness_for(srv) as hh:
        a = hh.connect(ta)
        last = len(all_messages(srv, ta, t1))
        m = a.send(t1, "after the crash")
        assert m["seq"] == last + 1


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_clean_shutdown_exits_0_and_keeps_data(sig):
    co = uid("co")
    alice, bob = uid("alice"), uid("bob")
    ta = token(alice, co)
    srv = ServerProcess()
    try:
        srv.start()
        with harness_for(srv) as hh:
            tid = hh.make_thread(ta, [bob])["id"]
            a = hh.connect(ta)
            hh.connect(token(bob, co), transports=["polling"])
            hh.connect(token(bob, co), transports=None)
            sent = [a.send(tid, f"m{i}", tempId=f"tmp-{i}") for i in range(5)]
            t0 = time.monotonic()
            code = srv.stop(sig=sig, timeout=10)
            assert code == 0, f"exit status {code} after {sig!r}:\n{srv.log_tail()}"
            assert time.monotonic() - t0 < 10
            a.wait_disconnect(timeout=5)
        srv.restart()
        msgs = all_messages(srv, ta, tid)
        assert [(m["id"], m["seq"], m["content"]) for m in msgs] == [(m["id"], m["seq"], m["content"]) for m in sent]
        # tempId idempotency survives the restart
        with harness_for(srv) as hh:
            a = hh.connect(ta)
            again = a.call("chat:send", {"threadId": tid, "content": "m0", "tempId": "tmp-0"})
            assert_ok(again)
            assert again["message"]["id"] == sent[0]["id"] and again["message"]["seq"] == 1
            assert a.send(tid, "next")["seq"] == 6
    finally:
        srv.cleanup()


# ------------------------------------------------------------------ secrets

def test_short_secret_is_refused_at_startup():
    srv = ServerProcess(secret="too-short-secret-0123456789")   # 27 bytes < 32
    try:
        proc = srv.spawn()
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        code = proc.poll()
        assert code is not None, "the server started with a 27-byte secret"
        assert code != 0
        assert srv.log_tail().strip(), "no message explaining the refusal"
    finally:
        srv.cleanup()


def _rest_ok(srv, key):
    tok = pyjwt.encode({"sub": uid("u"), "companyId": uid("co"), "exp": int(time.time()) + 600}, key,
                       algorithm="HS256")
    return srv.rest("GET", "/chat/threads", tok).status_code == 200


def test_generated_secret_is_stored_0600_and_reused():
    srv = ServerProcess(secret=None)
    try:
        srv.start()
        path = os.path.join(srv.data_dir, "jwt-secret")
        assert os.path.isfile(path), "no <data-dir>/jwt-secret"
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        raw = open(path, "rb").read()
        assert len(raw.strip()) >= 32
        keys = [raw, raw.rstrip(b"\r\n"), raw.strip()]
        assert any(_rest_ok(srv, k) for k in keys), "a token signed with the stored secret is refused"
        assert not _rest_ok(srv, SECRET)
        with harness_for(srv) as hh:
            key = next(k for k in keys if _rest_ok(srv, k))
            tok = pyjwt.encode({"sub": "u1", "companyId": "c1", "exp": int(time.time()) + 600}, key, algorithm="HS256")
            assert hh.connect(tok).connected
        srv.stop()
        srv.restart()
        assert open(path, "rb").read() == raw, "the generated secret changed on restart"
        assert _rest_ok(srv, key)
    finally:
        srv.cleanup()


def test_secret_file_and_env_precedence(tmp_path):
    file_secret = "f" * 20 + uid("s") + "F" * 20
    path = tmp_path / "secret"
    path.write_text(file_secret + "\n")
    os.chmod(path, 0o600)
    srv = ServerProcess(["--jwt-secret-file", str(path)], secret=None)
    try:
        srv.start()
        assert _rest_ok(srv, file_secret)
        assert not _rest_ok(srv, SECRET)
        srv.stop()
    finally:
        srv.cleanup()
    # CHAT_JWT_SECRET wins over the file
    srv = ServerProcess(["--jwt-secret-file", str(path)], secret=SECRET)
    try:
        srv.start()
        assert _rest_ok(srv, SECRET)
        assert not _rest_ok(srv, file_secret)
        with harness_for(srv) as hh:
            with pytest.raises(ConnectFailed):
                hh.connect(pyjwt.encode({"sub": "u", "companyId": "c", "exp": int(time.time()) + 60},
                                        file_secret, algorithm="HS256"))
    finally:
        srv.cleanup()
