"""What a client with a valid token can make the broker do, bounded (docs/PROTOCOL.md §5): one chat:sync answer in
all, edits of one message, reads, and what all of one user's connections may do together.  Unmodified
python-socketio clients and plain HTTP."""
import json
import time

import pytest
import websocket

from conftest import assert_fail, assert_ok, fresh_health_served, harness_for, raw_ws, running_server, token, uid

PAGE = 512 * 1024


@pytest.fixture(scope="module")
def fast():
    with running_server(["--rate-per-sec", "100000", "--rate-burst", "100000", "--max-edits-per-message", "3",
                         "--read-rate-per-sec", "20", "--durability", "process"]) as srv:
        yield srv


@pytest.fixture(scope="module")
def slow_rate():
    with running_server(["--rate-per-sec", "0.001", "--rate-burst", "2", "--user-rate-connections", "2"]) as srv:
        yield srv


def _sync(client, cursors):
    ack = client.call("chat:sync", {"threads": [{"threadId": t, "afterSeq": a} for t, a in cursors]}, timeout=30)
    assert_ok(ack)
    return ack


def test_one_sync_answer_is_bounded_in_all_and_pages_give_everything_once(fast):
    with harness_for(fast) as h:
        co = uid("co")
        alice, bob = uid("alice"), uid("bob")
        tid = h.make_thread(token(alice, co), [bob])["id"]
        a, b = h.connect(token(alice, co)), h.connect(token(bob, co))
        # 40 messages of 16,000 control characters: 96,000 bytes each on the wire (\u0001).
        acks = a.send_many(tid, ["\x01" * 16000] * 40, window=8, timeout=30)
        assert all(x["success"] for x in acks)
        one_message = 16000 * 6 + 2000

        answer = _sync(b, [(tid, 0)] * 100)                     # 10 reads of the 40 in the burst
        size = len(json.dumps(answer, separators=(",", ":")))
        assert size <= PAGE + one_message, f"one sync answer of {size} bytes"
        entries = answer["threads"]
        assert len(entries) == 100 and all(e["hasMore"] for e in entries)
        assert entries[-1]["events"] == [], "the budget is spent before the last thread"

        seqs, after = [], 0
        while True:
            entry = _sync(b, [(tid, after)])["threads"][0]
            got = [ev["data"]["message"]["seq"] for ev in entry["events"]]
            seqs += got
            after = seqs[-1] if seqs else after
            if not entry["hasMore"]:
                break
            assert got, "a thread asked alone makes progress"
            time.sleep(0.06)                                    # 20 reads/s
        assert seqs == list(range(1, 41))


def test_a_message_is_edited_at_most_max_edits_times_and_can_still_be_deleted(fast):
    with harness_for(fast) as h:
        co = uid("co")
        alice, bob = uid("alice"), uid("bob")
        tid = h.make_thread(token(alice, co), [bob])["id"]
        a = h.connect(token(alice, co))
        m = a.send(tid, "v0")
        for n in range(1, 4):
            assert_ok(a.call("chat:edit", {"threadId": tid, "messageId": m["id"], "content": f"v{n}"}))
        refused = a.call("chat:edit", {"threadId": tid, "messageId": m["id"], "content": "v4"})
        assert_fail(refused, "forbidden")
        r = h.rest("PATCH", f"/chat/messages/{m['id']}", token(alice, co), json={"content": "v5"})
        assert r.status_code == 403 and r.json()["code"] == "forbidden"
        assert_ok(a.call("chat:delete", {"threadId": tid, "messageId": m["id"]}))
        hist = a.call("chat:history", {"threadId": tid})
        assert [x["content"] for x in hist["messages"]] == [""]


def test_reads_are_rate_limited_per_connection_and_rest_reads_per_user(fast):
    with harness_for(fast) as h:
        co = uid("co")
        alice, bob = uid("alice"), uid("bob")
        tok = token(bob, co)
        tid = h.make_thread(token(alice, co), [bob])["id"]
        b = h.connect(tok)
        started = time.monotonic()
        _sync(b, [(tid, 0)] * 400)                              # 40 reads: the whole burst
        # Refused once what 20 reads/s refill while the calls take is spent: at once on a fast machine; a debug build
        # on PostgreSQL took over 50 ms for the sync, and a read was back by then.
        served = 0
        while (ack := b.call("chat:history", {"threadId": tid})).get("success"):
            served += 1
            assert served <= 1 + 20 * (time.monotonic() - started), (served, time.monotonic() - started)
        assert_fail(ack, "rate_limited")
        assert b.connected
        time.sleep(0.2)                                         # 20 reads/s: 4 back
        assert_ok(b.call("chat:history", {"threadId": tid}))

        # Until refused: the 40-read burst, plus what 20 reads/s refill while the requests take (however slow they are).
        started, statuses = time.monotonic(), []
        while 429 not in statuses and len(statuses) < 400:
            statuses.append(h.rest("GET", "/chat/threads", tok).status_code)
        elapsed = time.monotonic() - started
        assert statuses[-1] == 429 and set(statuses[:-1]) == {200}, statuses
        assert 40 <= len(statuses) - 1 <= 40 + 20 * elapsed + 1, (len(statuses) - 1, elapsed)
        assert h.rest("GET", "/chat/threads", token(alice, co)).status_code == 200, "another user is not affected"


def test_a_page_of_threads_costs_one_rest_read_per_ten_threads(fast):
    """GET /chat/threads loads and summarises every thread of its page: a page of 100 threads costs 10 of the user's
    40-read burst, as a chat:sync of 100 threads does, where a page of one thread costs one."""
    with harness_for(fast) as h:
        co = uid("co")
        busy, quiet = token(uid("busy"), co), token(uid("quiet"), co)
        for _ in range(100):
            h.make_thread(busy, [])
        h.make_thread(quiet, [])

        def pages_before_refused(tok, most):
            started = time.monotonic()
            for n in range(most):
                r = h.rest("GET", "/chat/threads", tok)
                if r.status_code == 429:
                    return n, time.monotonic() - started
                assert r.status_code == 200, r.text[:200]
            return most, time.monotonic() - started

        # 4 pages of 10 reads, and what refills while the pages take (20 reads/s: two pages a second; a debug build on
        # PostgreSQL can take 0.3 s a page). At one read a page, the 40-read burst alone would give 40.
        served, elapsed = pages_before_refused(busy, 40)
        assert 4 <= served <= 5 + 2 * elapsed, (served, elapsed)
        assert pages_before_refused(quiet, 30)[0] == 30


def test_a_users_connections_share_four_connections_worth_and_reconnecting_gives_no_more(slow_rate):
    with harness_for(slow_rate) as h:
        co = uid("co")
        alice, bob = uid("alice"), uid("bob")
        tid = h.make_thread(token(alice, co), [bob])["id"]
        outcomes = []
        for _ in range(4):
            c = h.connect(token(alice, co))
            for n in range(3):
                outcomes.append(c.call("chat:send", {"threadId": tid, "content": f"m{n}"}))
            c.close()
        ok = [x for x in outcomes if x["success"]]
        assert len(ok) == 4, outcomes                           # two connections' worth of a burst of 2
        for x in outcomes:
            if not x["success"]:
                assert_fail(x, "rate_limited")
        b = h.connect(token(bob, co))
        assert_ok(b.call("chat:send", {"threadId": tid, "content": "bob is not affected"}))


def _recv_until_close(ws, seconds=5):
    """Frames until the server closes the socket (answering pings); [] and False if it is still open after `seconds`."""
    frames, deadline = [], time.monotonic() + seconds
    ws.settimeout(0.5)
    while time.monotonic() < deadline:
        try:
            f = ws.recv()
        except websocket.WebSocketTimeoutException:
            continue
        except (websocket.WebSocketConnectionClosedException, ConnectionError):
            return frames, True
        if f == "":
            return frames, True
        if f == "2":
            ws.send("3")
            continue
        frames.append(f)
    return frames, False


def test_receipts_cost_by_their_ids_and_syncs_by_the_threads_they_look_up(fast):
    """A receipt of 1000 ids costs a hundred signals (one per 10 ids, as a sync counts threads), and a chat:sync pays
    one more read for each thread it names that is not loaded (looked up in the store, made-up ids too): 300 made-up
    ids leave the user's reads (160 at most, refilled at 80 a second) spent, so the user's next read, on another
    socket, waits."""
    with harness_for(fast) as h:
        co, alice, bob = uid("co"), uid("alice"), uid("bob")
        tid = h.make_thread(token(alice, co), [bob])["id"]
        a, b = h.connect(token(alice, co)), h.connect(token(alice, co))
        ids = [f"m{i:04}" for i in range(1000)]
        outcomes = [a.call("chat:delivered", {"threadId": tid, "messageIds": ids}) for _ in range(6)]
        assert outcomes[0]["success"], outcomes[0]
        assert any(not x["success"] and x.get("code") == "rate_limited" for x in outcomes), outcomes

        made_up = [{"threadId": uid("nothread"), "afterSeq": 0} for _ in range(300)]
        answer = a.call("chat:sync", {"threads": made_up}, timeout=30)
        assert_ok(answer)
        assert all(e.get("code") == "not_found" for e in answer["threads"]), answer["threads"][:2]
        assert_fail(b.call("chat:history", {"threadId": tid}), "rate_limited")


def _next_connect_answer(ws):
    """The next CONNECT answer (`40/chat` or `44/chat`) on `ws`, answering pings; None if the socket closed."""
    ws.settimeout(5)
    while True:
        try:
            f = ws.recv()
        except (websocket.WebSocketConnectionClosedException, ConnectionError):
            return None
        if f == "":
            return None
        if f == "2":
            ws.send("3")
        elif f.startswith(("40/chat", "44/chat")):
            return f


def test_connect_disconnect_cycles_on_one_connection_are_rated(fast):
    """CONNECT then DISCONNECT of /chat in a loop on one connection costs the broker a token check and a user's
    bookkeeping for a few bytes each: ten at once, then one a second. The one over is refused before its token is
    checked (a CONNECT_ERROR that says so, counted with the other refusals: the fourth closes the session); after a
    second the session connects again, and the user's other connections are not affected."""
    co, alice = uid("co"), uid("alice")
    connect = "40/chat," + json.dumps({"token": token(alice, co)})
    ws = raw_ws(fast)
    try:
        started, answers = time.monotonic(), []
        while len(answers) < 40 and not (answers and not (answers[-1] or "").startswith("40/chat")):
            ws.send(connect)
            answers.append(_next_connect_answer(ws))
            if (answers[-1] or "").startswith("40/chat"):
                ws.send("41/chat,")
        elapsed = time.monotonic() - started
        assert all(a.startswith("40/chat") for a in answers[:-1]), answers
        assert (answers[-1] or "").startswith("44/chat") and "too many CONNECTs" in answers[-1], answers[-1]
        # Ten at once, and one for each second the cycles took (a debug build on PostgreSQL: up to 0.1 s a cycle).
        assert 10 <= len(answers) - 1 <= 11 + elapsed, (len(answers) - 1, elapsed)
        other = raw_ws(fast, token(alice, co))                  # the user's other connection connects at once
        other.close()
        time.sleep(1.2)
        ws.send(connect)
        assert _next_connect_answer(ws).startswith("40/chat"), "a CONNECT a second later is taken"
        ws.send("41/chat,")
        for _ in range(2):                                      # the second and third refusals
            ws.send(connect)
            assert _next_connect_answer(ws).startswith("44/chat")
        ws.send(connect)                                        # the fourth: its answer, if any, then the close
        last = _next_connect_answer(ws)
        assert last is None or (last.startswith("44/chat") and _next_connect_answer(ws) is None), \
            "the fourth refused CONNECT closes the session"
    finally:
        ws.close()


def test_an_unknown_event_name_is_quoted_in_64_bytes_at_most(fast):
    """A refused event's name is quoted in its error only up to 64 bytes, whatever its length: a megabyte name (or
    one grapheme of many scalars) costs a short reply, not one as long as the request."""
    with harness_for(fast) as h:
        co, alice = uid("co"), uid("alice")
        ws = raw_ws(fast, token(alice, co))
        try:
            for name in ["x" * 500_000, "\u1100" * 100_000]:
                ws.send("42/chat,7" + json.dumps([name, {}]))
                ws.settimeout(10)
                while True:
                    f = ws.recv()
                    if f == "2":
                        ws.send("3")
                        continue
                    break
                assert f.startswith("43/chat,7"), f[:80]
                assert len(f.encode()) < 400, f"an error of {len(f.encode())} bytes"
                assert_fail(json.loads(f[len("43/chat,7"):])[0], "invalid_payload")
            ws.send("42/chat,8" + json.dumps(["y" * 500_000]))       # no payload object either
            while (f := ws.recv()) == "2":
                ws.send("3")
            assert f.startswith("43/chat,8") and len(f.encode()) < 400, f[:80]
        finally:
            ws.close()


@pytest.mark.parametrize("announce", [["45999999-/chat,[\"x\"]"], ["459-/chat,[\"x\"]", "459-/chat,[\"y\"]"]],
                         ids=["one-packet", "two-packets"])
def test_a_packet_announcing_many_binary_attachments_closes_the_session(fast, announce):
    """Binary attachments are not supported; the few a session may owe (16) are read and dropped. A header announcing
    more (999,999), or packets that together do, would make the session a sink for that many frames: a protocol
    error."""
    with harness_for(fast) as h:
        co, alice = uid("co"), uid("alice")
        ws = raw_ws(fast, token(alice, co))
        try:
            ws.send('452-/chat,1["chat:send",{"threadId":"t","content":{"_placeholder":true,"num":0}}]')
            ws.send_binary(b"\x01\x02")
            ws.send_binary(b"\x03")
            frames, closed = _recv_until_close(ws, seconds=2)
            assert not closed and any(f.startswith("43/chat,1") and "binary" in f for f in frames), frames
            for packet in announce:
                ws.send(packet)
            frames, closed = _recv_until_close(ws, seconds=5)
            assert closed, f"still open after announcing {announce}: {frames}"
        finally:
            ws.close()


def _sessions_asking_for_pages(srv, tok, tid, count):
    """`count` polling sessions of one user, each connected to /chat and sent two history pages of `tid` it has not
    read: with the thread of ten 96,000-byte messages that `_thread_of_big_messages` makes, about 963,000 bytes each
    (one answer is at most 512 KiB), under --outbound-limit. Returns their polling URLs."""
    import requests

    engine = "/socket.io/?EIO=4&transport=polling"
    sessions = []
    for _ in range(count):
        r = requests.get(srv.url + engine, timeout=5)
        sid = json.loads(r.text[1:])["sid"]
        url = f"{srv.url}{engine}&sid={sid}"
        assert requests.post(url, data="40/chat," + json.dumps({"token": tok}), timeout=5).status_code == 200
        assert "40/chat" in requests.get(url, timeout=5).text
        ask = "\x1e".join(f"42/chat,{n}" + json.dumps(["chat:history", {"threadId": tid, "limit": 10}]) for n in (1, 2))
        assert requests.post(url, data=ask, timeout=5).status_code == 200
        sessions.append(url)
    return sessions


def _thread_of_big_messages(h, tok):
    """A thread of ten messages of 16,000 control characters (about 96,000 bytes each on the wire, \\u0001); returns
    its id and the connected sender."""
    tid = h.make_thread(tok, [uid("bob")])["id"]
    sender = h.connect(tok)
    assert all(x["success"] for x in sender.send_many(tid, ["\x01" * 16000] * 10, window=5, timeout=30))
    return tid, sender


def test_what_one_users_connections_hold_unread_is_bounded_in_all():
    """One user's connections that ask for history pages and never read them hold at most the user's outbound bound
    together (twice --outbound-limit per connection of --user-rate-connections: 8 MiB by default), not
    --outbound-limit per connection: past it, a connection that is behind is closed as a slow consumer once the
    grace period (1 s) ends. Found by an outside probe: 256 polling sessions of one user, each answered two pages it
    never read, kept alive by pongs sent blind, held about 240 MB. Polling, so that no kernel buffer takes any of
    it."""
    import requests

    with running_server(["--rate-per-sec", "100000", "--rate-burst", "100000"]) as srv, harness_for(srv) as h:
        tok = token(uid("alice"), uid("co"))
        tid, sender = _thread_of_big_messages(h, tok)
        sessions = _sessions_asking_for_pages(srv, tok, tid, 14)
        # The grace (1 s), and the stall check's period (0.25 s).
        time.sleep(1.8)
        held, closed = 0, 0
        for url in sessions:
            r = requests.get(url, timeout=10)
            if r.status_code == 200 and len(r.content) > 900_000:
                held += 1
            elif r.status_code == 400:
                closed += 1
        # 8 sessions' pages fit in 8 MiB; the 9th's would take the user past it.
        assert held <= 9 and held + closed == 14, (held, closed)
        assert sender.connected, "the sender, which keeps up, stays"


def test_a_session_that_reads_its_pages_within_the_grace_keeps_its_connection_while_the_user_is_over_the_bound():
    """While a user's other connections hold nearly the user's outbound bound (8 MiB), a session that asks for two
    history pages, taking the user past the bound, and reads them at once keeps its connection: it has the grace
    period to catch up. Before the fortieth session it was closed at its second page's frame, with no grace (as were
    two sockets of one user that read a burst of messages a little late, a CI failure)."""
    import requests

    with running_server(["--rate-per-sec", "100000", "--rate-burst", "100000"]) as srv, harness_for(srv) as h:
        tok = token(uid("alice"), uid("co"))
        tid, sender = _thread_of_big_messages(h, tok)
        # Eight sessions hold about 7.7 MB unread; the reader's first page takes the user to about 8.2 MB (under
        # 8,388,608 bytes), its second past the bound while the first is still waiting.
        _sessions_asking_for_pages(srv, tok, tid, 8)
        (reader,) = _sessions_asking_for_pages(srv, tok, tid, 1)
        answers = ""
        for _ in range(4):
            if answers.count("43/chat,") == 2:
                break
            r = requests.get(reader, timeout=10)
            assert r.status_code == 200, f"the reader was closed: {r.status_code} {r.text[:200]}"
            answers += r.text
        assert answers.count("43/chat,") == 2, answers[:200]
        time.sleep(1.8)
        ask = "42/chat,3" + json.dumps(["chat:history", {"threadId": tid, "limit": 1}])
        assert requests.post(reader, data=ask, timeout=5).status_code == 200
        r = requests.get(reader, timeout=10)
        assert r.status_code == 200 and "43/chat,3" in r.text, (r.status_code, r.text[:200])
        assert sender.connected


def _closed_with(ws, seconds=3.0):
    """The close code `ws` got within `seconds` (None if it stayed open)."""
    ws.settimeout(seconds)
    try:
        while True:
            opcode, data = ws.recv_data(control_frame=True)
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                return int.from_bytes(data[:2], "big") if len(data) >= 2 else 1005
    except websocket.WebSocketTimeoutException:
        return None
    except (websocket.WebSocketConnectionClosedException, ConnectionError):
        return 1006


def test_what_one_users_unfinished_messages_hold_is_bounded():
    """Bytes of websocket messages begun and not yet whole are held by the broker until their last byte comes, and no
    budget charges them before: an outside probe had one user's 256 sockets each send all but the last bytes of a 1 MB
    frame, 250 MB held until the ping timeout. One user's unfinished messages may now hold twice --max-payload per
    --user-rate-connections (here 1: 2 MB); a socket whose read would take them past it is closed with 1013 (try
    again later). Four sockets of one user each send 800 KB of a frame announced as 900 KB: two fit, two are closed;
    another user's socket still may."""
    with running_server(["--user-rate-connections", "1"]) as srv:
        co = uid("co")
        tok = token(uid("alice"), co)
        header = bytes([0x81, 0x80 | 127]) + (900_000).to_bytes(8, "big") + b"\x01\x02\x03\x04"
        sockets = [raw_ws(srv, tok) for _ in range(4)]
        other = raw_ws(srv, token(uid("bob"), co))
        try:
            for ws in sockets:
                ws.sock.sendall(header + b"a" * 800_000)
                time.sleep(0.2)
            other.sock.sendall(header + b"a" * 800_000)
            codes = [_closed_with(ws, 1.5) for ws in sockets]
            # Closed with 1013, or reset: the client was still sending, and what it sent is not read.
            assert codes.count(None) == 2 and all(c in (None, 1013, 1006) for c in codes), codes
            assert _closed_with(other, 0.5) is None, "another user's unfinished message was refused"
        finally:
            # Without a closing handshake: a socket in the middle of a frame would take a close frame for its payload.
            for ws in sockets + [other]:
                ws.shutdown()


def test_one_user_holding_rest_bodies_cannot_hold_every_connection():
    """A REST write whose body has not all arrived keeps its connection busy until `--request-read-timeout`, for one
    write token: one user with a valid token held every connection that way (POSTs declaring 2 bytes and sending 1),
    and no one else got in, `/health` included (an outside probe: 5 fresh connections of 142 served at
    `--max-connections 300`). Now such a connection is closed for a newcomer at the bound, oldest first, as a silent
    one is."""
    import socket
    with running_server(["--max-connections", "24", "--request-read-timeout", "30",
                         "--rate-per-sec", "100000", "--rate-burst", "100000"]) as srv:
        tok = token(uid("holder"), uid("co"))
        head = (f"POST /chat/threads HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {tok}\r\n"
                f"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{{").encode()
        held = []
        try:
            for _ in range(30):
                s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
                s.sendall(head)
                held.append(s)
            time.sleep(0.5)
            served = fresh_health_served(srv)
            assert served == 10, f"{served} of 10 fresh connections served while one user's unfinished bodies held the bound"
        finally:
            for s in held:
                s.close()
