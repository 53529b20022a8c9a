"""Crash safety (kill -9), clean shutdown (SIGTERM/SIGINT exit 0), secrets at start-up."""
import json
import os
import signal
import stat
import threading
import time

import jwt as pyjwt
import pytest
import requests
import websocket

from conftest import (SECRET, ConnectFailed, ServerProcess, assert_ok, harness_for, raw_acks, raw_ws, running_server, token,
                      uid, wait_until)


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


class RawSender:
    """Pipelined `chat:send`s over a raw Engine.IO transport (no client library between the broker and the count:
    python-socketio drops the callbacks of acks it reads right before a close). `acks` maps each ack id to its
    first argument, read until the broker closes the session."""

    def __init__(self, srv, tok, transport):
        self.srv, self.transport = srv, transport
        self.acks, self.lock, self.closed = {}, threading.Lock(), threading.Event()
        url = f"127.0.0.1:{srv.port}/socket.io/?EIO=4&transport="
        if transport == "websocket":
            self.ws = raw_ws(srv, tok)
            self.ws.settimeout(30)
        else:
            self.base = f"http://{url}polling"
            r = requests.get(self.base, timeout=5)
            self.sid = json.loads(r.text[1:])["sid"]
            assert self.post(["40/chat," + json.dumps({"token": tok})]) == 200
            for p in self.poll():
                assert p.startswith("40/chat") or p == "2", p
        threading.Thread(target=self.read, daemon=True).start()

    def post(self, packets):
        try:
            return requests.post(f"{self.base}&sid={self.sid}", data="\x1e".join(packets).encode(),
                                 headers={"Content-Type": "text/plain;charset=UTF-8"}, timeout=30).status_code
        except requests.RequestException:
            return None

    def poll(self):
        r = requests.get(f"{self.base}&sid={self.sid}", timeout=30)
        return r.text.split("\x1e") if r.status_code == 200 else None

    def note(self, packet):
        if packet.startswith("43/chat,"):
            rest = packet[len("43/chat,"):]
            with self.lock:
                self.acks[int(rest[:rest.index("[")])] = json.loads(rest[rest.index("["):])[0]
        elif packet == "2":
            self.send_packets(["3"])

    def read(self):
        try:
            while True:
                if self.transport == "websocket":
                    frame = self.ws.recv()
                    if not frame:
                        break
                    self.note(frame)
                else:
                    packets = self.poll()
                    if packets is None or "1" in packets:
                        for p in packets or []:
                            self.note(p)
                        break
                    for p in packets:
                        self.note(p)
        except Exception:
            pass
        self.closed.set()

    def send_packets(self, packets):
        if self.transport == "websocket":
            for p in packets:
                self.ws.send(p)
            return True
        return self.post(packets) == 200


def test_shutdown_answers_every_send_it_stores_websocket():
    shutdown_answers_every_send_it_stores("websocket")


def test_shutdown_answers_every_send_it_stores_polling():
    shutdown_answers_every_send_it_stores("polling")


def shutdown_answers_every_send_it_stores(transport):
    """Sends pipelined back to back while SIGTERM arrives: every send the broker stored was acknowledged, every
    acknowledged one is stored, and the ones it did not take got an error ack saying to send them again. (Before:
    sockets were closed first, so a send being committed was stored and its ack lost.)"""
    co = uid("co")
    alice, bob = uid("alice"), uid("bob")
    ta = token(alice, co)
    srv = ServerProcess(["--rate-per-sec", "100000", "--rate-burst", "100000", "--durability", "full"])
    try:
        srv.start()
        with harness_for(srv) as hh:
            tid = hh.make_thread(ta, [bob])["id"]
        sender = RawSender(srv, ta, transport)
        window = 8 if transport == "polling" else 256   # the most a connection may have awaiting replies
        emitted = []

        def flood():
            for i in range(0, 100_000, window // 2):
                while True:
                    with sender.lock:
                        in_flight = len(emitted) - len(sender.acks)
                    if in_flight + window // 2 <= window or sender.closed.is_set():
                        break
                    time.sleep(0.0005)
                batch = list(range(i, i + window // 2))
                packets = ["42/chat," + str(n) + json.dumps(["chat:send", {"threadId": tid, "content": f"m{n}", "tempId": f"t{n}"}])
                           for n in batch]
                try:
                    if sender.closed.is_set() or not sender.send_packets(packets):
                        return
                except Exception:
                    return
                emitted.extend(batch)

        flooding = threading.Thread(target=flood, daemon=True)
        flooding.start()
        wait_until(lambda: len(sender.acks) >= 200, timeout=20, what="200 acks before the signal")
        code = srv.stop(sig=signal.SIGTERM, timeout=20)
        assert code == 0, f"exit status {code}:\n{srv.log_tail()}"
        assert sender.closed.wait(10), "the session was not closed"
        flooding.join(10)
        with sender.lock:
            acks = dict(sender.acks)
        assert_every_stored_send_was_answered(srv, ta, tid, acks)
    finally:
        srv.cleanup()


def test_shutdown_is_not_ready_and_refuses_new_sessions():
    """Once SIGTERM arrives, `GET /health/ready` answers 503 and a new Engine.IO session (a polling handshake, a
    websocket) is refused 503, so that a balancer and reconnecting clients go elsewhere while the broker finishes
    (before: ready 200 and new sessions opened during the shutdown, their events then refused). A connected websocket
    that does not answer the close frame keeps the broker in its shutdown for a second, which the test needs."""
    import websocket
    srv = ServerProcess()
    try:
        srv.start()
        ws = raw_ws(srv, token(uid("alice"), uid("co")))
        assert requests.get(f"{srv.url}/health/ready", timeout=5).status_code == 200
        srv.proc.send_signal(signal.SIGTERM)
        seen, deadline = [], time.monotonic() + 0.9
        while time.monotonic() < deadline and 503 not in seen:
            seen.append(requests.get(f"{srv.url}/health/ready", timeout=2).status_code)
        assert seen and set(seen) <= {200, 503} and seen[-1] == 503, seen
        assert seen.count(200) <= 1, f"ready after SIGTERM: {seen}"
        r = requests.get(f"{srv.url}/socket.io/?EIO=4&transport=polling", timeout=2)
        assert r.status_code == 503 and r.json()["code"] == 3, (r.status_code, r.text)
        with pytest.raises(websocket.WebSocketBadStatusException) as refused:
            websocket.create_connection(f"ws://127.0.0.1:{srv.port}/socket.io/?EIO=4&transport=websocket", timeout=2)
        assert refused.value.status_code == 503
        ws.close()
        assert srv.proc.wait(timeout=10) == 0
    finally:
        srv.cleanup()


def test_shutdown_does_not_reset_a_socket_whose_reading_was_paused():
    """A client far over its inbound budget (the broker stopped reading its socket) gets SIGTERM and reads nothing for
    1.5 s: the broker reads the rest of its input before it closes the socket, so the close is not a reset, and the
    client then reads the acks of everything that was stored (before: the socket closed with unread input was reset,
    and the client's system dropped the acks it had not read)."""
    co = uid("co")
    alice, bob = uid("alice"), uid("bob")
    ta = token(alice, co)
    srv = ServerProcess(["--rate-per-sec", "100000", "--rate-burst", "100000",
                         "--inbound-bytes-per-sec", "16384", "--inbound-bytes-burst", "65536"])
    try:
        srv.start()
        with harness_for(srv) as hh:
            tid = hh.make_thread(ta, [bob])["id"]
        ws = raw_ws(srv, ta)
        content = "x" * 8000
        for n in range(200):   # 1.6 MB: the broker reads the first 64 KiB, then 16 KiB a second
            ws.send("42/chat," + str(n) + json.dumps(["chat:send", {"threadId": tid, "content": content, "tempId": f"t{n}"}]))
        time.sleep(0.3)
        srv.proc.send_signal(signal.SIGTERM)
        time.sleep(1.5)
        acks, reset = {}, None
        ws.settimeout(5)
        try:
            while True:
                f = ws.recv()
                if not f:
                    break
                if f.startswith("43/chat,"):
                    body = f[len("43/chat,"):]
                    i = body.index("[")
                    acks[int(body[:i])] = json.loads(body[i:])[0]
                elif f == "2":
                    ws.send("3")
        except websocket.WebSocketConnectionClosedException:
            pass
        except (ConnectionResetError, OSError) as e:
            reset = e
        assert srv.proc.wait(timeout=10) == 0
        assert reset is None, f"the socket was reset: {reset!r}"
        srv.restart()
        stored = {m["tempId"] for m in all_messages(srv, ta, tid)}
        ok = {f"t{n}" for n, ack in acks.items() if ack.get("success")}
        assert stored, "nothing was stored before the shutdown"
        assert stored == ok, f"stored but not acknowledged: {sorted(stored - ok)[:5]}; acknowledged, not stored: {sorted(ok - stored)[:5]}"
    finally:
        srv.cleanup()


def assert_every_stored_send_was_answered(srv, tok, tid, acks):
    """After a shutdown under pipelined sends (`acks`: ack id n -> answer of the send with tempId `t<n>`): restarts
    the broker and checks that every send it stored was acknowledged, every one acknowledged is stored, and every
    other answer says the server was shutting down."""
    srv.restart()
    stored = {m["tempId"] for m in all_messages(srv, tok, tid)}
    ok = {f"t{n}" for n, ack in acks.items() if ack.get("success")}
    refused = [ack for ack in acks.values() if not ack.get("success")]
    assert len(ok) >= 200
    missing = sorted(stored - ok, key=lambda t: int(t[1:]))
    assert not missing, (f"stored but never acknowledged: {missing[:10]} ({len(acks)} answered; their answers: "
                         f"{[acks.get(int(t[1:])) for t in missing[:3]]})")
    assert ok - stored == set(), f"acknowledged but not stored: {sorted(ok - stored)[:10]}"
    assert all(r.get("code") == "internal" and "shutting down" in r.get("error", "") for r in refused), refused[:3]


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


@pytest.mark.parametrize("transports", [["polling"], ["websocket"], None])
def test_an_unmodified_client_reconnects_after_a_restart(transports):
    """A python-socketio client with its default reconnection, on each transport, connects again once the broker is
    back after a SIGTERM, and gets what is sent then. Found by an outside probe: a polling client's waiting GET was
    answered `1` (close) at the shutdown, which python-engineio takes as a deliberate disconnect, so the client never
    came back; it is answered 503 now, an error after which both Socket.IO clients reconnect."""
    import socketio
    srv = ServerProcess()
    try:
        srv.start()
        co, alice, bob = uid("co"), uid("alice"), uid("bob")
        r = srv.rest("POST", "/chat/threads", token(alice, co), json={"memberIds": [bob], "type": "group", "name": "t"})
        assert r.status_code == 201, r.text
        tid = r.json()["thread"]["id"]
        sio = socketio.Client(reconnection_delay=0.2, reconnection_delay_max=1)
        connects, messages = [], []
        sio.on("connect", lambda: connects.append(time.monotonic()), namespace="/chat")
        sio.on("chat:message", lambda data: messages.append(data["message"]["content"]), namespace="/chat")
        sio.connect(srv.url, auth={"token": token(bob, co)}, namespaces=["/chat"], transports=transports, wait_timeout=10)
        try:
            wait_until(lambda: connects, timeout=10, what="the first connect")
            time.sleep(0.5)  # a long poll is waiting
            assert srv.stop() == 0
            srv.restart()
            wait_until(lambda: len(connects) >= 2, timeout=20, what="the reconnect after the restart")
            ws = raw_ws(srv, token(alice, co))
            ws.send("42/chat,1" + json.dumps(["chat:send", {"threadId": tid, "content": "after the restart"}]))
            assert raw_acks(ws, 1)[1]["success"]
            ws.close()
            wait_until(lambda: "after the restart" in messages, timeout=10, what="the message sent after the restart")
        finally:
            sio.disconnect()
    finally:
        srv.cleanup()
