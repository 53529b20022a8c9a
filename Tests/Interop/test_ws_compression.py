"""permessage-deflate (`--ws-compression on`): a client that offers it gets it, and the whole exchange works through
compressed frames: the handshake, CONNECT, a send with its ack, a large message both ways (14,000 characters), the upgrade of a polling
session (probe, then 5), and python-socketio (which does not offer compression) next to it on the same broker."""
import asyncio
import json

import aiohttp
import pytest
import requests

from conftest import AGAINST_PEER, harness_for, running_server, token, uid
from test_connect_auth import REFUSED_UPGRADES, refused_upgrade
from test_preauth_holding import close_code, compressed_text, deflate_websocket, masked, upgrade_answer

pytestmark = pytest.mark.skipif(AGAINST_PEER, reason="--ws-compression is a chat-broker option")


@pytest.fixture(scope="module")
def zsrv():
    with running_server(["--ws-compression", "on"]) as srv:
        yield srv


async def _recv_text(ws, timeout=5):
    """The next text message, answering Engine.IO pings meanwhile."""
    while True:
        msg = await ws.receive(timeout=timeout)
        assert msg.type == aiohttp.WSMsgType.TEXT, f"expected text, got {msg.type} {msg.data!r}"
        if msg.data == "2":
            await ws.send_str("3")
            continue
        return msg.data


async def _connect_and_send(port, tok, tid, content, sid=None):
    url = f"http://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket" + (f"&sid={sid}" if sid else "")
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(url, compress=15) as ws:
            assert ws.compress == 15, "permessage-deflate was not negotiated"
            if sid:
                await ws.send_str("2probe")
                assert await _recv_text(ws) == "3probe"
                await ws.send_str("5")
            else:
                assert (await _recv_text(ws)).startswith("0{")
            await ws.send_str("40/chat," + json.dumps({"token": tok}))
            connected = await _recv_text(ws)
            assert connected.startswith("40/chat,"), connected
            await ws.send_str('42/chat,7["chat:send",' + json.dumps({"threadId": tid, "content": content}) + "]")
            while True:
                frame = await _recv_text(ws)
                if frame.startswith("43/chat,7"):
                    ack = json.loads(frame[len("43/chat,7"):])[0]
                    break
            return ack


def test_a_compressed_websocket_connects_sends_and_gets_its_ack(zsrv):
    with harness_for(zsrv) as h:
        co = uid("co")
        alice, bob = uid("alice"), uid("bob")
        tid = h.make_thread(token(alice, co), [bob])["id"]
        watcher = h.connect(token(bob, co), name="bob")   # python-socketio: no compression offered
        big = "long, compressible content " * 500   # 14,000 characters (the default --max-content is 16,384)
        for content in ("hello over deflate", big):
            ack = asyncio.run(_connect_and_send(zsrv.port, token(alice, co), tid, content))
            assert ack.get("success") is True, ack
            assert ack["message"]["content"] == content
            watcher.wait_for("chat:message", lambda d, c=content: d["message"]["content"] == c)


def test_a_polling_session_upgrades_to_a_compressed_websocket(zsrv):
    with harness_for(zsrv) as h:
        co = uid("co")
        alice, bob = uid("alice"), uid("bob")
        tid = h.make_thread(token(alice, co), [bob])["id"]
        watcher = h.connect(token(bob, co), name="bob")
        r = requests.get(f"{zsrv.url}/socket.io/?EIO=4&transport=polling", timeout=5)
        assert r.status_code == 200 and r.text.startswith("0{")
        sid = json.loads(r.text[1:])["sid"]
        ack = asyncio.run(_connect_and_send(zsrv.port, token(alice, co), tid, "after the upgrade", sid=sid))
        assert ack.get("success") is True, ack
        watcher.wait_for("chat:message", lambda d: d["message"]["content"] == "after the upgrade")



@pytest.mark.parametrize("query", [q for q, _ in REFUSED_UPGRADES])
def test_a_refused_upgrade_is_a_400_with_compression_on(zsrv, query):
    """With permessage-deflate on, hummingbird-websocket answers a refused upgrade itself: 400, with no body."""
    status, _ = refused_upgrade(zsrv.port, query, body=False)
    assert status.startswith("HTTP/1.1 400"), status


def test_shutdown_answers_every_send_it_stores_over_a_compressed_websocket():
    """As test_durability's shutdown tests, with permessage-deflate: there hummingbird-websocket's writer takes the
    frames from the outbox a batch at a time and compresses them one by one, so the shutdown waits for the frames
    taken but not yet written too. Every send stored was acknowledged; every one acknowledged is stored."""
    import signal
    import time

    from conftest import ServerProcess
    from test_durability import assert_every_stored_send_was_answered

    co = uid("co")
    alice, bob = uid("alice"), uid("bob")
    ta = token(alice, co)
    srv = ServerProcess(["--ws-compression", "on", "--rate-per-sec", "100000", "--rate-burst", "100000", "--durability", "full"])
    acks = {}
    try:
        srv.start()
        with harness_for(srv) as hh:
            tid = hh.make_thread(ta, [bob])["id"]

        async def run():
            url = f"http://127.0.0.1:{srv.port}/socket.io/?EIO=4&transport=websocket"
            async with aiohttp.ClientSession() as session:
                async with session.ws_connect(url, compress=15) as ws:
                    assert ws.compress == 15
                    assert (await _recv_text(ws)).startswith("0{")
                    await ws.send_str("40/chat," + json.dumps({"token": ta}))
                    assert (await _recv_text(ws)).startswith("40/chat,")
                    emitted, window, stop = [0], 256, asyncio.Event()

                    async def send():
                        n = 0
                        while not stop.is_set():
                            if n - len(acks) + 64 > window:
                                await asyncio.sleep(0.001)
                                continue
                            try:
                                for k in range(n, n + 64):
                                    await ws.send_str("42/chat," + str(k) + json.dumps(
                                        ["chat:send", {"threadId": tid, "content": f"m{k}", "tempId": f"t{k}"}]))
                            except Exception:
                                return
                            n += 64
                            emitted[0] = n

                    async def read():
                        while True:
                            msg = await ws.receive(timeout=30)
                            if msg.type != aiohttp.WSMsgType.TEXT:
                                break
                            if msg.data == "2":
                                await ws.send_str("3")
                            elif msg.data.startswith("43/chat,"):
                                rest = msg.data[len("43/chat,"):]
                                acks[int(rest[:rest.index("[")])] = json.loads(rest[rest.index("["):])[0]
                        stop.set()

                    sender, reader = asyncio.create_task(send()), asyncio.create_task(read())
                    while len(acks) < 200:
                        await asyncio.sleep(0.005)
                    code = await asyncio.get_running_loop().run_in_executor(None, lambda: srv.stop(sig=signal.SIGTERM, timeout=20))
                    assert code == 0, f"exit status {code}"
                    await asyncio.wait_for(reader, 10)
                    stop.set()
                    await asyncio.wait_for(sender, 10)

        asyncio.run(run())
        assert_every_stored_send_was_answered(srv, ta, tid, acks)
    finally:
        srv.cleanup()


async def _compressed_reader(port, tok, compress, count):
    """A websocket with permessage-deflate (`compress`: the window aiohttp asks for, 15 or less) that connects with
    `tok` and returns the contents of the first `count` chat:message events it inflates."""
    url = f"http://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket"
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(url, compress=compress) as ws:
            # (aiohttp's `compress` is then the window it compresses with: 15, whatever it asked the broker to keep to.)
            assert ws.compress, "permessage-deflate was not negotiated"
            assert (await _recv_text(ws)).startswith("0{")
            await ws.send_str("40/chat," + json.dumps({"token": tok}))
            assert (await _recv_text(ws)).startswith("40/chat,")
            contents = []
            while len(contents) < count:
                frame = await _recv_text(ws, timeout=20)
                if frame.startswith('42/chat,["chat:message"'):
                    contents.append(json.loads(frame[len("42/chat,"):])[1]["message"]["content"])
            return contents


def test_many_compressed_sockets_each_inflate_every_message_compressed_once_for_all(zsrv):
    """Every offer is answered with server_no_context_takeover: each message the broker sends is compressed on its
    own, once for all its recipients, by a shared deflater (no compressor per socket). 16 sockets of one user, half of
    them asking for a 10-bit window, each inflate four large messages, in order. (Before, each socket compressed each
    message again with its own compressor: a user's 256 sockets made the broker compress a 16-KB message 256 times,
    starving other companies, and each socket that negotiated compression held about 125 KB before any token.)"""
    import socket as socket_
    import base64
    import os
    s = socket_.create_connection(("127.0.0.1", zsrv.port), timeout=10)
    s.sendall((f"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n"
               "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(4096)
    s.close()
    # The head only: the open packet's frame may come in the same read.
    head = head.split(b"\r\n\r\n", 1)[0]
    extensions = [line for line in head.decode().split("\r\n") if line.lower().startswith("sec-websocket-extensions:")]
    assert extensions and "server_no_context_takeover" in extensions[0], head
    with harness_for(zsrv) as h:
        co = uid("co")
        alice, bob = uid("alice"), uid("bob")
        tid = h.make_thread(token(alice, co), [bob])["id"]
        sender = h.connect(token(alice, co))
        contents = [f"message {i}: " + "compressible text, said again and again. " * (100 + 50 * i) for i in range(4)]

        async def run():
            readers = [asyncio.create_task(_compressed_reader(zsrv.port, token(bob, co), 10 if i % 2 else 15, len(contents)))
                       for i in range(16)]
            await asyncio.sleep(1.5)   # all connected
            for content in contents:
                await asyncio.to_thread(sender.send, tid, content)
            return await asyncio.gather(*readers)

        for got in asyncio.run(run()):
            assert got == contents


@pytest.mark.parametrize("compressed", [True, False])
def test_a_text_message_that_is_not_utf8_is_answered_1007_with_compression_on(zsrv, compressed):
    """As without compression (RFC 6455 8.1): a text message that is not UTF-8, compressed or not, fails the
    connection with 1007."""
    s = deflate_websocket(zsrv)
    packet = b'42/chat,1["chat:send",{"content":"b\xffd"}]'
    s.sendall(compressed_text(packet) if compressed else masked(0x1, packet))
    code = close_code(s, 5)
    s.close()
    assert code == 1007, f"close code {code}"


def test_an_upgrade_offering_extensions_past_a_kibibyte_is_served_uncompressed(zsrv):
    """hummingbird-websocket parses extension offers a character at a time, before any token (an outside probe: a 60 KB
    header of 12,000 parameters cost 13 ms of CPU per upgrade): offers longer than 1 KiB in all are declined, and
    the socket opens uncompressed (RFC 6455 lets a server decline any offer). A usual offer is taken."""
    usual = upgrade_answer(zsrv.port, "permessage-deflate; client_max_window_bits")
    assert " 101 " in usual.split("\r\n")[0] and "permessage-deflate" in usual, usual
    long_offer = "permessage-deflate; client_max_window_bits" + "; x=1" * 250  # 1,292 bytes (unknown parameters are ignored)
    answer = upgrade_answer(zsrv.port, long_offer)
    assert " 101 " in answer.split("\r\n")[0], answer
    assert "sec-websocket-extensions" not in answer, answer


def test_a_sender_that_ends_each_message_with_a_final_block_is_read(zsrv):
    """RFC 7692 §7.2.3.3 lets a sender end each message's deflate stream with a final block (where an empty stored
    block is not at hand). The four bytes a receiver appends then follow the stream's end: they are dropped, and the
    next message starts a new stream (taken as a block of their own, they swallowed the next message's first bytes,
    and its second message closed the socket with 1007). Here two noops so, then a CONNECT to an unknown namespace,
    answered."""
    import socket as _socket
    from test_preauth_holding import compressed_text, deflate_websocket, masked
    import zlib

    s = deflate_websocket(zsrv)
    try:
        data = s.recv(65536)
        for _ in range(2):
            deflater = zlib.compressobj(wbits=-15)
            frame = masked(0x1, deflater.compress(b"6") + deflater.flush(zlib.Z_FINISH))
            s.sendall(bytes([frame[0] | 0x40]) + frame[1:])
        s.sendall(compressed_text(b"40/other,"))
        s.settimeout(10)
        while b"44/other," not in data:
            try:
                chunk = s.recv(65536)
            except _socket.timeout:
                break
            assert chunk, f"closed: {data[-20:]!r}"
            data += chunk
    finally:
        s.close()
    assert b"44/other," in data, data[-200:]
