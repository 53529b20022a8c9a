"""Interop acceptance suite for the ChatBroker contract (docs/PROTOCOL.md).

The server under test is started from the shell command template in CHAT_SERVER_CMD, e.g.

    CHAT_SERVER_CMD='/work/main/.build/release/chat-broker serve --host {host} --port {port} --data-dir {data_dir}'

Placeholders: {host}, {port}, {data_dir} (substituted shell-quoted); optional {extra} (where
per-fixture flags such as `--rate-per-sec 2` go; without it they are appended).  A simple command
is run as `sh -c "exec <cmd>"`, so the PID we signal is the server's own and its exit status is
the server's; a compound template must `exec` the server itself (`cd X && exec ./chat-broker ...`).  The JWT secret is passed as the env var
CHAT_JWT_SECRET (a fixed random 48-character secret per session).  Without CHAT_SERVER_CMD the
Python reference peer is used, and the tests marked `peer_deviation` are skipped.

Other knobs: CHAT_STARTUP_TIMEOUT (s, default 60), CHAT_AGAINST_PEER=1/0 (override the
peer detection), CHAT_KEEP_LOGS=1 (print the server log path at teardown).
"""
import atexit
import json
import logging
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone

import engineio.payload
import jwt
import pytest
import requests
import socketio
import websocket

# python-engineio's client refuses polling payloads of more than 16 packets; a server may batch
# any number of queued packets into one long-poll response (Engine.IO v4 sets no such limit).
engineio.payload.Payload.max_decode_packets = 1 << 20
# the client logs "packet queue is empty, aborting" when a connection it abandoned ends
logging.getLogger("engineio.client").setLevel(logging.CRITICAL)

HERE = os.path.dirname(os.path.abspath(__file__))
PEER = "/work/shared/peers/python/chat_peer.py"
DEFAULT_CMD = f"{shlex.quote(sys.executable)} {PEER} serve --host {{host}} --port {{port}} --data-dir {{data_dir}}"
SERVER_CMD = os.environ.get("CHAT_SERVER_CMD") or DEFAULT_CMD
_peer_env = os.environ.get("CHAT_AGAINST_PEER")
AGAINST_PEER = (_peer_env == "1") if _peer_env in ("0", "1") else (SERVER_CMD == DEFAULT_CMD)
STARTUP_TIMEOUT = float(os.environ.get("CHAT_STARTUP_TIMEOUT", "60"))
STOP_TIMEOUT = 10.0
HOST = "127.0.0.1"
NS = "/chat"

# A fixed random secret per session: 48 characters.
SECRET = secrets.token_urlsafe(36)
assert len(SECRET) == 48

# Tests for contract points the reference peer itself violates: kept as the contract says, and
# skipped only when running against the peer.
peer_deviation = pytest.mark.skipif(AGAINST_PEER, reason="the reference peer deviates from docs/PROTOCOL.md here")

ISO_MS = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}(Z|\+00:00)$"
MESSAGE_KEYS = {"id", "threadId", "seq", "senderId", "type", "content", "attachmentUrl", "attachmentType",
                "createdAt", "editedAt", "deletedAt", "tempId"}
ERROR_CODES = {"unauthenticated", "invalid_payload", "not_found", "not_a_member", "forbidden",
               "payload_too_large", "rate_limited", "internal"}


# ------------------------------------------------------------------ small helpers

def uid(prefix="x"):
    """A unique id, so that tests sharing one server never see each other's data."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def token(user, company, ttl=3600, secret=None, algorithm="HS256", drop=(), **extra_claims):
    """An HS256 JWT with sub, companyId, exp (+ extra claims); `drop` removes claims."""
    claims = {"sub": user, "companyId": company, "exp": int(time.time()) + ttl}
    claims.update(extra_claims)
    for k in drop:
        claims.pop(k, None)
    key = SECRET if secret is None else secret
    if algorithm == "none":
        return jwt.encode(claims, None, algorithm="none")
    return jwt.encode(claims, key, algorithm=algorithm)


def service_token(company, user=None, ttl=3600):
    return token(user or uid("svc"), company, ttl, role="service")


def wait_until(cond, timeout=5.0, interval=0.02, what="condition"):
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def recv_until(s, done, limit):
    """Reads from socket `s` until `done(data)` holds, the peer closes, or `limit` seconds pass; what was read."""
    s.settimeout(limit)
    data = b""
    try:
        while not done(data):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    except socket.timeout:
        pass
    return data


def parse_iso_ms(s):
    """Asserts `s` is ISO-8601 UTC with milliseconds and returns it as a datetime."""
    import re
    assert isinstance(s, str) and re.match(ISO_MS, s), f"not ISO-8601 UTC with ms: {s!r}"
    return datetime.fromisoformat(s.replace("Z", "+00:00"))


def assert_message_shape(m, *, thread_id=None, sender=None, content=None, seq=None, type_="Text"):
    assert isinstance(m, dict), m
    assert set(m.keys()) >= MESSAGE_KEYS, f"message misses keys {MESSAGE_KEYS - set(m)}: {m}"
    assert isinstance(m["id"], str) and m["id"]
    assert isinstance(m["seq"], int) and not isinstance(m["seq"], bool) and m["seq"] >= 1
    created = parse_iso_ms(m["createdAt"])
    assert abs((datetime.now(timezone.utc) - created).total_seconds()) < 120, m["createdAt"]
    for k in ("editedAt", "deletedAt"):
        if m[k] is not None:
            parse_iso_ms(m[k])
    if thread_id is not None:
        assert m["threadId"] == thread_id
    if sender is not None:
        assert m["senderId"] == sender
    if content is not None:
        assert m["content"] == content
    if seq is not None:
        assert m["seq"] == seq
    if type_ is not None:
        assert m["type"] == type_


def subset(d, **expected):
    """`d` is an object holding (at least) the expected fields with these values."""
    assert isinstance(d, dict), d
    got = {k: d.get(k, "<absent>") for k in expected}
    assert got == expected, f"{got} != {expected} in {d}"
    return True


def assert_fail(ack, code):
    """A failure ack is exactly {success: false, code, error} with a human-readable error."""
    assert isinstance(ack, dict), f"ack is not an object: {ack!r}"
    assert ack.get("success") is False, f"expected failure {code}, got {ack!r}"
    assert ack.get("code") == code, f"expected code {code}, got {ack!r}"
    assert isinstance(ack.get("error"), str) and ack["error"].strip(), f"error must be a sentence: {ack!r}"
    return ack


def assert_ok(ack):
    assert isinstance(ack, dict), f"ack is not an object: {ack!r}"
    assert ack.get("success") is True, f"expected success, got {ack!r}"
    return ack


def assert_http_error(resp, status, code=None):
    assert resp.status_code == status, f"expected {status}, got {resp.status_code}: {resp.text[:300]}"
    body = resp.json()
    assert isinstance(body, dict), body
    assert body.get("code") in ERROR_CODES, body
    if code is not None:
        assert body["code"] == code, body
    assert isinstance(body.get("error"), str) and body["error"].strip(), body
    return body


def member_ids(thread):
    """`members` as a set of user ids (accepting ids or {userId|id} objects)."""
    out = set()
    for m in thread["members"]:
        if isinstance(m, dict):
            out.add(m.get("userId") or m.get("id"))
        else:
            out.add(m)
    return out


# ------------------------------------------------------------------ the server process

_LIVE = set()   # servers started and not yet stopped: killed at exit whatever happens


@atexit.register
def _kill_leftovers():
    for srv in list(_LIVE):
        try:
            srv.stop(sig=signal.SIGKILL, timeout=5)
        except Exception:  # noqa: BLE001
            pass


_TEMP_ROOT = None


def pytest_configure(config):
    # a SIGTERM to pytest (e.g. from `timeout`) tears the fixtures down like Ctrl-C does
    def _term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _term)
    # every temporary folder a test makes (data dirs, nginx and node roots) goes under one root that is removed
    # when the run ends, so that a run leaves nothing in /tmp; traversable by the other users a test runs as
    global _TEMP_ROOT
    _TEMP_ROOT = tempfile.mkdtemp(prefix="chat-tests-")
    os.chmod(_TEMP_ROOT, 0o711)
    tempfile.tempdir = _TEMP_ROOT


def pytest_unconfigure(config):
    global _TEMP_ROOT
    if _TEMP_ROOT is None:
        return
    for srv in list(_LIVE):
        try:
            srv.stop(sig=signal.SIGKILL, timeout=5)
        except Exception:  # noqa: BLE001
            pass
    tempfile.tempdir = None
    if os.environ.get("CHAT_KEEP_LOGS") == "1":
        print(f"temporary folders (logs) kept in {_TEMP_ROOT}", file=sys.stderr)
    else:
        shutil.rmtree(_TEMP_ROOT, ignore_errors=True)
    _TEMP_ROOT = None


def free_port():
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class ServerProcess:
    """One server under test: started from SERVER_CMD, stopped by PID."""

    def __init__(self, extra_args=(), data_dir=None, secret=SECRET, env=None, port=None):
        self.extra_args = [str(a) for a in extra_args]
        self._own_dir = data_dir is None
        self.root = tempfile.mkdtemp(prefix="chat-interop-")
        self.data_dir = data_dir or os.path.join(self.root, "data")
        self.secret = secret
        self.extra_env = env or {}
        self.port = port
        self.proc = None
        self.log_path = None
        self.returncode = None
        self._runs = 0

    @property
    def url(self):
        return f"http://{HOST}:{self.port}"

    def command(self):
        extra = " ".join(shlex.quote(a) for a in self.extra_args)
        tmpl = SERVER_CMD
        fmt = {"host": HOST, "port": self.port, "data_dir": shlex.quote(self.data_dir)}
        if "{extra}" in tmpl:
            cmd = tmpl.format(extra=extra, **fmt)
        else:
            cmd = tmpl.format(**fmt) + ((" " + extra) if extra else "")
        # exec so that the PID we hold is the server itself (its exit status is the server's)
        if not cmd.lstrip().startswith("exec ") and not any(c in cmd for c in ";&|\n"):
            cmd = "exec " + cmd
        return cmd

    def spawn(self):
        """Start the process (does not wait for health)."""
        if self.port is None:
            self.port = free_port()
        env = dict(os.environ)
        env.pop("CHAT_JWT_SECRET", None)
        env.pop("CHAT_JWT_SECRET_FILE", None)
        if self.secret is not None:
            env["CHAT_JWT_SECRET"] = self.secret
        env.update(self.extra_env)
        self._runs += 1
        self.log_path = os.path.join(self.root, f"server-{self._runs}.log")
        self._log = open(self.log_path, "wb")
        self.returncode = None
        self.proc = subprocess.Popen(["/bin/sh", "-c", self.command()], stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        _LIVE.add(self)
        return self.proc

    def log_tail(self, n=3000):
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-n:].decode("utf-8", "replace")
        except OSError:
            return ""

    def start(self, timeout=STARTUP_TIMEOUT):
        self.spawn()
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode} before /health answered:\n"
                                   f"$ {self.command()}\n{self.log_tail()}")
            try:
                r = requests.get(self.url + "/health", timeout=1)
                if r.status_code == 200:
                    return self
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"server did not answer /health in {timeout}s:\n{self.log_tail()}")
            time.sleep(0.05)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig=signal.SIGTERM, timeout=STOP_TIMEOUT):
        """SIGTERM (or `sig`), then SIGKILL after `timeout`; returns the exit status."""
        if self.proc is None:
            return self.returncode
        p = self.proc
        terminate(p, sig, timeout)
        self.returncode = p.returncode
        # anything the command left behind in its own session (e.g. a wrapper's child)
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self._log.close()
        self.proc = None
        _LIVE.discard(self)
        return self.returncode

    def kill9(self):
        return self.stop(sig=signal.SIGKILL)

    def restart(self, timeout=STARTUP_TIMEOUT):
        """Start again on the same port and data dir."""
        return self.start(timeout)

    def cleanup(self):
        self.stop()
        if os.environ.get("CHAT_KEEP_LOGS") == "1":
            print(f"server logs in {self.root}", file=sys.stderr)
        else:
            import shutil
            shutil.rmtree(self.root, ignore_errors=True)

    # -- REST
    def rest(self, method, path, tok=None, json=None, headers=None, data=None, timeout=5):
        h = dict(headers or {})
        if tok is not None:
            h["Authorization"] = f"Bearer {tok}"
        return requests.request(method, self.url + path, json=json, data=data, headers=h, timeout=timeout)


@contextmanager
def running_server(extra_args=(), **kw):
    srv = ServerProcess(extra_args, **kw)
    try:
        srv.start()
        yield srv
    finally:
        srv.cleanup()


# ------------------------------------------------------------------ the Socket.IO client

class ConnectFailed(Exception):
    def __init__(self, data, exc):
        super().__init__(f"connect failed: {data!r} ({exc})")
        self.data, self.exc = data, exc

    @property
    def message(self):
        d = self.data
        if isinstance(d, dict):
            return str(d.get("message", ""))
        return str(d)


def fresh_health_served(srv, n=10):
    """How many of `n` fresh connections (`GET /health`, `Connection: close`) are answered 200 within 3 s each: what a
    bystander gets while someone holds connections."""
    served = 0
    for _ in range(n):
        try:
            served += requests.get(srv.url + "/health", timeout=3, headers={"Connection": "close"}).status_code == 200
        except requests.RequestException:
            pass
    return served


def raw_ws(srv, tok=None):
    """A raw Engine.IO websocket (websocket-client) past the open packet and, with `tok`, connected to /chat
    (pings answered meanwhile)."""
    ws = websocket.create_connection(f"ws://127.0.0.1:{srv.port}/socket.io/?EIO=4&transport=websocket", timeout=5)
    assert ws.recv().startswith("0")
    if tok is not None:
        ws.send("40/chat," + json.dumps({"token": tok}))
        while True:
            f = ws.recv()
            if f == "2":
                ws.send("3")
            elif f.startswith("40/chat"):
                break
            else:
                assert not f.startswith("44"), f
    return ws


def raw_acks(ws, count, acks=None):
    """Reads a raw websocket (`raw_ws`) until `count` acks are in `acks` (a dict of ack id -> first argument, made if
    not given), answering pings meanwhile; returns the dict."""
    acks = {} if acks is None else acks
    while len(acks) < count:
        f = ws.recv()
        if f == "2":
            ws.send("3")
        elif f.startswith("43/chat,"):
            rest = f[len("43/chat,"):]
            acks[int(rest[:rest.index("[")])] = json.loads(rest[rest.index("["):])[0]
    return acks


def terminate(p, sig=signal.SIGTERM, timeout=STOP_TIMEOUT):
    """Sends `sig` to the process `p` (a Popen) if it still runs, then SIGKILL after `timeout`; waits for it."""
    if p.poll() is None:
        try:
            os.kill(p.pid, sig)
        except ProcessLookupError:
            pass
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            try:
                os.kill(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(10)


class ChatClient:
    """A python-socketio v5 client on /chat recording every event in order."""

    def __init__(self, server, tok=None, transports=None, headers=None, auth="token", name=None):
        self.server = server
        self.name = name
        self.events = []                # [(event, data)] in arrival order
        self.cond = threading.Condition()
        self.connect_errors = []
        self.disconnects = []
        self.sio = socketio.Client(reconnection=False, logger=False, engineio_logger=False)
        # never wait for a pending long-poll GET to come back on disconnect (up to pingInterval)
        _eio_disconnect = self.sio.eio.disconnect
        self.sio.eio.disconnect = lambda abort=False, reason=None: _eio_disconnect(abort=True, reason=reason)
        # python-engineio runs each received message's handler on a thread of its own (run_async=True), so under
        # load two events can be recorded in the opposite order of their arrival. Handlers here only record, so they
        # run on the reader thread instead: `events` is the order on the wire.
        _trigger = self.sio.eio._trigger_event
        self.sio.eio._trigger_event = lambda event, *a, **kw: _trigger(event, *a, **{**kw, "run_async": False})
        self.sio.on("*", self._on_any, namespace=NS)
        self.sio.on("connect_error", self._on_connect_error, namespace=NS)
        self.sio.on("disconnect", self._on_disconnect, namespace=NS)
        if auth == "token":
            auth = {"token": tok} if tok is not None else None
        try:
            self.sio.connect(server.url, namespaces=[NS], auth=auth, transports=transports,
                             headers=headers or {}, wait_timeout=5)
        except socketio.exceptions.ConnectionError as e:
            data = self.connect_errors[0] if self.connect_errors else None
            self._safe_disconnect()
            raise ConnectFailed(data, e) from None

    # handlers run on the client's reader thread
    def _on_any(self, event, *args):
        data = args[0] if len(args) == 1 else (list(args) if args else None)
        with self.cond:
            self.events.append((event, data))
            self.cond.notify_all()

    def _on_connect_error(self, data=None):
        self.connect_errors.append(data)

    def _on_disconnect(self, *args):
        with self.cond:
            self.disconnects.append(args)
            self.cond.notify_all()

    @property
    def connected(self):
        return self.sio.connected and NS in self.sio.namespaces

    def transport(self):
        return self.sio.transport()

    def emit(self, event, data=None):
        self.sio.emit(event, data, namespace=NS)

    def call(self, event, data=None, timeout=5):
        return self.sio.call(event, data, namespace=NS, timeout=timeout)

    def send(self, thread_id, content, **kw):
        """chat:send that must succeed; returns the message."""
        ack = self.call("chat:send", {"threadId": thread_id, "content": content, **kw})
        assert_ok(ack)
        return ack["message"]

    def send_many(self, thread_id, contents, timeout=10.0, window=None, **kw):
        """Emits chat:send for every content back to back (pipelined: up to `window` sends in
        flight, not waiting for each ack); returns the acks in the order of `contents`.
        Over polling the window defaults to 8 (python-engineio refuses payloads of > 16 packets)."""
        if window is None:
            window = 8 if self.transport() == "polling" else len(contents) or 1
        acks = [None] * len(contents)
        deadline = time.monotonic() + timeout
        for start in range(0, len(contents), window):
            chunk = list(range(start, min(start + window, len(contents))))
            left = [len(chunk)]
            done = threading.Event()
            lock = threading.Lock()

            def cb(i):
                def _cb(*args):
                    with lock:
                        acks[i] = args[0] if args else None
                        left[0] -= 1
                        if left[0] == 0:
                            done.set()
                return _cb

            for i in chunk:
                self.sio.emit("chat:send", {"threadId": thread_id, "content": contents[i], **kw},
                              namespace=NS, callback=cb(i))
            ok = done.wait(max(0.0, deadline - time.monotonic()))
            assert ok, f"only {start + len(chunk) - left[0]}/{len(contents)} acks within {timeout}s"
        return acks

    def received(self, event=None, predicate=None):
        with self.cond:
            evs = list(self.events)
        return [d for (e, d) in evs if (event is None or e == event) and (predicate is None or predicate(d))]

    def wait_for(self, event, predicate=None, timeout=3.0, count=1):
        """Waits until `count` matching events arrived; returns the first (count=1) or the list."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                found = [d for (e, d) in self.events if e == event and (predicate is None or predicate(d))]
                if len(found) >= count:
                    return found[0] if count == 1 else found[:count]
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"{self.name or 'client'}: no {count}x {event!r} matching within {timeout}s; got "
                        f"{[e for e, _ in self.events][-30:]}")
                self.cond.wait(left)

    def wait_disconnect(self, timeout=5.0):
        deadline = time.monotonic() + timeout
        with self.cond:
            while not self.disconnects:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{self.name or 'client'} was not disconnected within {timeout}s")
                self.cond.wait(left)
        return self.disconnects[0]

    def assert_none(self, event, predicate=None, settle=0.3):
        """After a short settle time, no matching event has arrived."""
        if settle:
            time.sleep(settle)
        got = self.received(event, predicate)
        assert not got, f"{self.name or 'client'} unexpectedly received {event}: {got[:3]}"

    def _safe_disconnect(self):
        try:
            self.sio.disconnect()
        except Exception:  # noqa: BLE001
            pass

    def close(self):
        self._safe_disconnect()


def thread_msgs(client, thread_id, event="chat:message"):
    return client.received(event, lambda d: isinstance(d, dict) and d.get("threadId") == thread_id)


# ------------------------------------------------------------------ fixtures

@pytest.fixture(scope="session")
def server():
    """The shared server for most tests (each test uses its own company/user ids)."""
    with running_server() as srv:
        yield srv


class Harness:
    """Per-test helpers bound to one server: connect, rest, make_thread; closes its clients."""

    def __init__(self, srv):
        self.server = srv
        self.clients = []

    def connect(self, tok, transports=("websocket",), headers=None, auth="token", name=None):
        c = ChatClient(self.server, tok, transports=list(transports) if transports else None,
                       headers=headers, auth=auth, name=name)
        self.clients.append(c)
        return c

    def connect_error(self, tok=None, transports=("websocket",), headers=None, auth="token"):
        """Connect that must fail with CONNECT_ERROR; returns its message."""
        with pytest.raises(ConnectFailed) as ei:
            c = ChatClient(self.server, tok, transports=list(transports) if transports else None,
                           headers=headers, auth=auth)
            self.clients.append(c)
        return ei.value

    def rest(self, method, path, tok=None, json=None, **kw):
        return self.server.rest(method, path, tok, json=json, **kw)

    def make_thread(self, tok, member_ids, type="group", name=None):
        body = {"type": type, "memberIds": list(member_ids)}
        if name is not None:
            body["name"] = name
        r = self.rest("POST", "/chat/threads", tok, json=body)
        assert r.status_code in (200, 201), f"create thread: {r.status_code} {r.text[:300]}"
        return r.json()["thread"]

    def close(self):
        # close in parallel: a polling client's disconnect can take a moment
        ts = [threading.Thread(target=c.close) for c in self.clients]
        for t in ts:
            t.start()
        for t in ts:
            t.join(10)
        self.clients.clear()


@contextmanager
def harness_for(srv):
    h = Harness(srv)
    try:
        yield h
    finally:
        h.close()


@pytest.fixture
def h(server):
    with harness_for(server) as hh:
        yield hh


@pytest.fixture
def rest(server):
    """rest(method, path, token, json=None) against the shared server."""
    def _rest(method, path, tok=None, json=None, **kw):
        return server.rest(method, path, tok, json=json, **kw)
    return _rest


@pytest.fixture
def connect(h):
    return h.connect


@pytest.fixture
def co():
    """A fresh company id for this test."""
    return uid("co")
