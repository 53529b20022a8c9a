"""The WebSocket transport's edges, seen from a raw client: packets sent just before a close frame or a half-close
(shutdown of the client's writing side) are still handled; a WebSocket ping is answered; graceful shutdown does
not wait for a socket that is halfway through upgrading a polling session."""
import json
import os
import signal
import socket
import time

import requests
import websocket

from conftest import AGAINST_PEER, ServerProcess, harness_for, raw_ws, recv_until, running_server, token, uid, wait_until

import pytest

pytestmark = pytest.mark.skipif(AGAINST_PEER, reason="transport edges of the chat-broker executable")


def _thread_of_two(h):
    """A token of alice and a thread of alice and bob (a fresh company)."""
    co = uid("co")
    ta = token(uid("alice"), co)
    return ta, h.make_thread(ta, [uid("bob")])["id"]


def _stored(h, tok, tid, content):
    page = h.rest("GET", f"/chat/threads/{tid}/messages?limit=50", tok).json()
    return any(m["content"] == content for m in page["messages"])


@pytest.fixture(scope="module")
def wsrv():
    with running_server() as srv:
        yield srv


def test_sends_written_just_before_a_close_frame_are_handled(wsrv):
    with harness_for(wsrv) as h:
        ta, tid = _thread_of_two(h)
        ws = raw_ws(wsrv, ta)
        contents = [f"last words {i} {uid()}" for i in range(5)]
        for i, c in enumerate(contents):
            ws.send(f"42/chat,{i}" + json.dumps(["chat:send", {"threadId": tid, "content": c}]))
        ws.send_close()
        wait_until(lambda: all(_stored(h, ta, tid, c) for c in contents), timeout=5, what="the sends before the close stored")
        ws.shutdown()


def test_sends_written_before_a_half_close_are_handled_and_the_socket_is_closed(wsrv):
    with harness_for(wsrv) as h:
        ta, tid = _thread_of_two(h)
        ws = raw_ws(wsrv, ta)
        content = f"before half-close {uid()}"
        ws.send("42/chat,1" + json.dumps(["chat:send", {"threadId": tid, "content": content}]))
        ws.sock.shutdown(socket.SHUT_WR)
        wait_until(lambda: _stored(h, ta, tid, content), timeout=5, what="the send before the half-close stored")
        # The broker ends the connection: reading reaches EOF (after the ack and a close frame, if they got out).
        ws.sock.settimeout(5)
        deadline = time.monotonic() + 5
        closed = False
        while time.monotonic() < deadline:
            try:
                if ws.sock.recv(65536) == b"":
                    closed = True
                    break
            except OSError:
                closed = True
                break
        assert closed, "the broker kept a half-closed socket open"


def test_a_websocket_ping_is_answered_with_a_pong(wsrv):
    ws = raw_ws(wsrv, token(uid("u"), uid("co")))
    try:
        ws.ping(b"are you there")
        ws.settimeout(5)
        while True:
            opcode, frame = ws.recv_data_frame(control_frame=True)
            if opcode == websocket.ABNF.OPCODE_PONG:
                assert frame.data == b"are you there"
                break
    finally:
        ws.close()


def _frame(opcode, payload=b"", fin=True, mask=True, rsv=0):
    """One websocket frame as a client writes it (masked unless `mask` is false; `rsv`: the RSV bits, 0-7)."""
    head = bytes([(0x80 if fin else 0) | (rsv << 4) | opcode])
    n = len(payload)
    bit = 0x80 if mask else 0
    if n < 126:
        head += bytes([bit | n])
    else:
        head += bytes([bit | 126]) + n.to_bytes(2, "big")
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def _close_code(ws, timeout=5):
    """The code of the close frame the broker sends, then whether it closed the connection (EOF) after it."""
    ws.sock.settimeout(timeout)
    data, deadline = b"", time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = ws.sock.recv(65536)
        except OSError:
            break
        if not chunk:
            break
        data += chunk
    # Frames from the server are unmasked; skip to the close frame (opcode 8).
    i = 0
    while i + 2 <= len(data):
        opcode, n = data[i] & 0x0F, data[i + 1] & 0x7F
        i += 2
        if n == 126:
            n, i = int.from_bytes(data[i:i + 2], "big"), i + 2
        elif n == 127:
            n, i = int.from_bytes(data[i:i + 8], "big"), i + 8
        if opcode == 0x8:
            return int.from_bytes(data[i:i + 2], "big") if n >= 2 else None
        i += n
    return None


@pytest.mark.parametrize("case", ["unmasked", "rsv1", "rsv2", "rsv3", "opcode 3", "opcode 11", "unmasked ping"])
def test_a_frame_rfc6455_forbids_is_answered_1002_and_what_it_carries_is_not_handled(wsrv, case):
    """RFC 6455: a client's frames are masked (5.1), RSV bits are 0 unless an extension says otherwise (5.2; no
    extension is negotiated without --ws-compression), opcodes 3-7 and 11-15 are reserved (5.2). The broker fails
    the connection with 1002 (7.4.1) and does not act on the frame: a send in it is not stored."""
    with harness_for(wsrv) as h:
        ta, tid = _thread_of_two(h)
        ws = raw_ws(wsrv, ta)
        content = f"{case} {uid()}"
        packet = (f"42/chat,1" + json.dumps(["chat:send", {"threadId": tid, "content": content}])).encode()
        frame = {
            "unmasked": lambda: _frame(0x1, packet, mask=False),
            "rsv1": lambda: _frame(0x1, packet, rsv=4),
            "rsv2": lambda: _frame(0x1, packet, rsv=2),
            "rsv3": lambda: _frame(0x1, packet, rsv=1),
            "opcode 3": lambda: _frame(0x3, packet),
            "opcode 11": lambda: _frame(0xB, b"x"),
            "unmasked ping": lambda: _frame(0x9, b"x", mask=False),
        }[case]()
        # Then a well-formed send, which must not be handled either: the connection has failed.
        after = f"after {content}"
        ws.sock.sendall(frame + _frame(0x1, (f"42/chat,2" + json.dumps(["chat:send", {"threadId": tid, "content": after}])).encode()))
        code = _close_code(ws)
        ws.close()
        assert code == 1002, f"close code {code}"
        time.sleep(0.3)
        assert not _stored(h, ta, tid, content), "a send in a forbidden frame was stored"
        assert not _stored(h, ta, tid, after), "a send after a forbidden frame was stored"


def test_a_fragmented_control_frame_or_a_long_one_is_answered_1002(wsrv):
    for frame in (_frame(0x9, b"x", fin=False), _frame(0x9, b"x" * 126)):
        ws = raw_ws(wsrv)
        ws.sock.sendall(frame)
        code = _close_code(ws)
        ws.close()
        assert code == 1002, f"close code {code}"


def test_a_text_message_that_is_not_utf8_is_answered_1007_after_what_came_before_it(wsrv):
    """RFC 6455 8.1: a text message that is not UTF-8 fails the connection with 1007. The send written before it
    in the same write is handled; neither it nor the send after it is (before, the connection ended without a code)."""
    with harness_for(wsrv) as h:
        ta, tid = _thread_of_two(h)
        ws = raw_ws(wsrv, ta)
        tag = uid()
        packets = [("42/chat," + str(n) + json.dumps(["chat:send", {"threadId": tid, "content": f"{word} {tag}"}])).encode()
                   for n, word in ((1, "before"), (2, "bad"), (3, "after"))]
        bad = packets[1].replace(b"bad", b"b\xffd")
        ws.sock.sendall(_frame(0x1, packets[0]) + _frame(0x1, bad) + _frame(0x1, packets[2]))
        code = _close_code(ws)
        ws.close()
        assert code == 1007, f"close code {code}"
        wait_until(lambda: _stored(h, ta, tid, f"before {tag}"), timeout=5, what="the send before the bad message")
        time.sleep(0.3)
        assert not _stored(h, ta, tid, f"after {tag}"), "a send after the bad message was stored"


@pytest.mark.parametrize("body, expected", [
    (b"\x03", 1002),                       # a 1-byte body
    ((999).to_bytes(2, "big"), 1002),      # below 1000
    ((1005).to_bytes(2, "big"), 1002),     # "no status": never sent
    ((1006).to_bytes(2, "big"), 1002),     # "abnormal": never sent
    ((2000).to_bytes(2, "big"), 1002),     # 1016-2999: reserved
    ((5000).to_bytes(2, "big"), 1002),
    ((1000).to_bytes(2, "big") + b"bye \xff", 1007),  # a reason that is not UTF-8
])
def test_a_close_frame_the_rfc_forbids_is_answered_with_the_code_that_says_why(wsrv, body, expected):
    """RFC 6455 5.5.1 and 7.4: a close frame with a 1-byte body or a code no endpoint may send is a protocol error
    (1002), one whose reason is not UTF-8 is 1007 (before, both were answered by a close frame without a code)."""
    ws = raw_ws(wsrv)
    ws.sock.sendall(_frame(0x8, body))
    code = _close_code(ws)
    ws.close()
    assert code == expected, f"close code {code}"


@pytest.mark.parametrize("body", [b"", (1000).to_bytes(2, "big") + "au revoir, ça va".encode(), (4001).to_bytes(2, "big"),
                                  (1012).to_bytes(2, "big")])
def test_a_close_frame_the_rfc_allows_closes_cleanly(wsrv, body):
    ws = raw_ws(wsrv)
    ws.sock.sendall(_frame(0x8, body))
    code = _close_code(ws)
    ws.close()
    assert code in (None, 1000), f"close code {code}"


def test_graceful_shutdown_does_not_wait_for_a_socket_halfway_through_an_upgrade():
    srv = ServerProcess()
    srv.start()
    try:
        r = requests.get(f"{srv.url}/socket.io/?EIO=4&transport=polling", timeout=5)
        sid = json.loads(r.text[1:])["sid"]
        ws = websocket.create_connection(f"ws://127.0.0.1:{srv.port}/socket.io/?EIO=4&transport=websocket&sid={sid}", timeout=5)
        ws.send("2probe")
        assert ws.recv() == "3probe"
        # The client never sends 5 and never closes: the broker must not wait for it.
        started = time.monotonic()
        code = srv.stop(signal.SIGTERM, timeout=15)
        took = time.monotonic() - started
        assert code == 0, f"exit status {code} after SIGTERM"
        assert took < 10, f"shutdown took {took:.1f}s with a probing websocket open"
        ws.close()
    finally:
        srv.cleanup()


def _read_until_closed(sock, seconds):
    """Everything `sock` receives until the peer closes it (None if it is still open after `seconds`)."""
    sock.settimeout(0.2)
    data, deadline = b"", time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            continue
        except OSError:
            return data
        if chunk == b"":
            return data
        data += chunk
    return None


def test_graceful_shutdown_closes_connections_whose_first_request_comes_after_it():
    """A browser opens connections ahead of need and sends a page's next request on one of them, so a connection's
    first request may come after SIGTERM. One that has sent nothing is closed at once; one whose first request is on
    its way gets its answer and is closed; the broker exits though a page keeps polling (before, a console page open
    in chromium kept it alive until the page was closed)."""
    srv = ServerProcess()
    srv.start()
    try:
        idle = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
        later = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
        later.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")        # the head is not finished
        time.sleep(0.3)
        started = time.monotonic()
        os.kill(srv.proc.pid, signal.SIGTERM)
        assert _read_until_closed(idle, 5) == b"", "a connection that had sent nothing stayed open after SIGTERM"
        later.sendall(b"\r\n")
        answer = _read_until_closed(later, 5)
        assert answer is not None, "the connection stayed open after answering its first request"
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        assert srv.proc.wait(timeout=10) == 0
        assert time.monotonic() - started < 10
    finally:
        srv.cleanup()


@pytest.mark.parametrize("compression", [False, True], ids=["default", "compression on"])
def test_an_upgrade_after_a_plain_request_is_redirected_only_to_the_engine_io_endpoint(compression):
    """NIO upgrades only a connection's first request: a websocket upgrade sent after a plain one is redirected (307,
    Connection: close) to its own target, to be sent again on a new connection. Only the Engine.IO endpoint upgrades,
    so only it is redirected: an upgrade to any other target is a plain request (404). Found by an outside probe: the
    Location was the target as sent, and `//evil.example/...` is a URL of another host."""
    key = (b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nUpgrade: websocket\r\n"
           b"Connection: Upgrade\r\n")
    flags = ["--ws-compression", "on"] if compression else []
    with running_server(flags) as srv:
        for target, status, location in [
            (b"/socket.io/?EIO=4&transport=websocket", b"307", b"/socket.io/?EIO=4&transport=websocket"),
            (b"//evil.example/socket.io/?EIO=4&transport=websocket", b"404", None),
            (b"/\\evil.example/x", b"404", None),
        ]:
            s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\nGET " + target + b" HTTP/1.1\r\nHost: x\r\n" + key + b"\r\n")
            data = recv_until(s, lambda d: d.count(b"HTTP/1.1 ") >= 2 and b"\r\n\r\n" in d.rsplit(b"HTTP/1.1 ", 1)[1], 5)
            s.close()
            second = data.rsplit(b"HTTP/1.1 ", 1)[1]
            assert second.startswith(status), (target, data[:400])
            locations = [line.split(b":", 1)[1].strip() for line in second.split(b"\r\n") if line.lower().startswith(b"location:")]
            assert locations == ([location] if location else []), (target, locations)
