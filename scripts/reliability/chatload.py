"""Small building blocks for the reliability scripts: a broker process started and stopped by PID, a minimal
asyncio Socket.IO v5 / Engine.IO v4 websocket client (aiohttp), REST helpers and token minting.

Everything talks to 127.0.0.1 only. No script here runs unbounded: every loop has a count and a deadline.
"""
import asyncio
import json
import os
import secrets
import signal
import socket
import subprocess
import time
import uuid

import aiohttp
import jwt
import requests

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
HOST = "127.0.0.1"
NS = "/chat"


def default_broker():
    for cfg in ("release", "debug"):
        p = os.path.join(ROOT, ".build", cfg, "chat-broker")
        if os.path.exists(p):
            return p
    raise SystemExit("no chat-broker binary: flock /tmp/swiftbuild.lock swift build --product chat-broker")


def uid(prefix="x"):
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def free_port():
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def make_token(secret, user, company, ttl=7200, **extra):
    claims = {"sub": user, "companyId": company, "exp": int(time.time()) + ttl}
    claims.update(extra)
    return jwt.encode(claims, secret, algorithm="HS256")


class Broker:
    """One chat-broker process on a fixed port and data dir; restartable; stopped by PID."""

    def __init__(self, binary, data_dir, port=None, secret=None, extra=(), log_dir=None):
        self.binary = binary
        self.data_dir = data_dir
        self.port = port or free_port()
        self.secret = secret or secrets.token_urlsafe(36)
        self.extra = [str(a) for a in extra]
        self.log_dir = log_dir or data_dir + "-logs"
        os.makedirs(self.log_dir, exist_ok=True)
        self.proc = None
        self.runs = 0
        self.log_path = None

    @property
    def url(self):
        return f"http://{HOST}:{self.port}"

    def start(self, timeout=60):
        self.runs += 1
        self.log_path = os.path.join(self.log_dir, f"broker-{self.runs}.log")
        log = open(self.log_path, "wb")
        env = dict(os.environ, CHAT_JWT_SECRET=self.secret)
        cmd = [self.binary, "serve", "--host", HOST, "--port", str(self.port), "--data-dir", self.data_dir] + self.extra
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
        log.close()
        t0 = time.monotonic()
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"broker exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if requests.get(self.url + "/health", timeout=1).status_code == 200:
                    return time.monotonic() - t0
            except requests.RequestException:
                pass
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"broker did not become healthy in {timeout}s:\n{self.log_tail()}")

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def kill(self):
        """SIGKILL by PID."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        rc = self.proc.wait(30)
        self.proc = None
        return rc

    def term(self, timeout=30):
        """SIGTERM by PID; returns (exit code, seconds to exit); SIGKILL after `timeout`."""
        if self.proc is None:
            return None, 0.0
        t0 = time.monotonic()
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            rc = ("killed after timeout", self.proc.wait(10))
        dt = time.monotonic() - t0
        self.proc = None
        return rc, dt

    def log_tail(self, n=4000):
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-n:].decode("utf-8", "replace")
        except (OSError, TypeError):
            return ""

    def log_text(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except (OSError, TypeError):
            return ""

    # -- REST (blocking)
    def rest(self, method, path, tok=None, json_body=None, timeout=10):
        h = {"Authorization": f"Bearer {tok}"} if tok else {}
        return requests.request(method, self.url + path, json=json_body, headers=h, timeout=timeout)

    def make_thread(self, tok, members, type_="group"):
        r = self.rest("POST", "/chat/threads", tok, {"type": type_, "memberIds": list(members)})
        assert r.status_code in (200, 201), r.text
        return r.json()["thread"]["id"]

    def history(self, tok, tid):
        """Every message of a thread through REST paging, ascending."""
        out, before = [], None
        for _ in range(100000):
            q = "?limit=100" + (f"&beforeSeq={before}" if before is not None else "")
            r = self.rest("GET", f"/chat/threads/{tid}/messages{q}", tok, timeout=30)
            assert r.status_code == 200, r.text
            body = r.json()
            out = body["messages"] + out
            if not body["hasMore"] or not body["messages"]:
                return out
            before = body["messages"][0]["seq"]
        raise AssertionError("history paging did not end")

    def metrics(self):
        out = {}
        try:
            text = requests.get(self.url + "/metrics", timeout=5).text
        except requests.RequestException:
            return out
        for line in text.splitlines():
            if line.startswith("#") or not line.strip():
                continue
            k, _, v = line.rpartition(" ")
            try:
                out[k] = float(v)
            except ValueError:
                pass
        return out

    def rss_kb(self):
        return proc_rss_kb(self.pid)

    def fd_count(self):
        return proc_fd_count(self.pid)


def proc_rss_kb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def proc_fd_count(pid):
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


class SioClient:
    """A minimal Socket.IO v5 client over an Engine.IO v4 websocket: connect to /chat, emit with acks, record events."""

    def __init__(self, session, url, tok, on_event=None, name=None):
        self.session = session
        self.url = url
        self.tok = tok
        self.name = name
        self.ws = None
        self.acks = {}
        self.next_ack = 1
        self.on_event = on_event
        self.reader = None
        self.closed = asyncio.Event()
        self.connect_error = None

    async def connect(self, timeout=10):
        wsurl = self.url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket"
        self.ws = await self.session.ws_connect(wsurl, timeout=timeout, max_msg_size=0, autoping=True)
        opened = await asyncio.wait_for(self.ws.receive(), timeout)
        if opened.type != aiohttp.WSMsgType.TEXT or not opened.data.startswith("0"):
            raise ConnectionError(f"no Engine.IO open: {opened}")
        await self.ws.send_str("40/chat," + json.dumps({"token": self.tok}))
        deadline = time.monotonic() + timeout
        while True:
            msg = await asyncio.wait_for(self.ws.receive(), max(0.01, deadline - time.monotonic()))
            if msg.type != aiohttp.WSMsgType.TEXT:
                raise ConnectionError(f"closed during CONNECT: {msg}")
            if msg.data == "2":
                await self.ws.send_str("3")
            elif msg.data.startswith("40/chat"):
                break
            elif msg.data.startswith("44/chat"):
                self.connect_error = json.loads(msg.data[len("44/chat,"):])
                raise ConnectionError(f"CONNECT_ERROR {self.connect_error}")
        self.reader = asyncio.ensure_future(self._read())
        return self

    async def _read(self):
        try:
            async for msg in self.ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
                d = msg.data
                if d == "2":
                    await self.ws.send_str("3")
                elif d.startswith("43/chat,"):
                    rest = d[len("43/chat,"):]
                    i = 0
                    while i < len(rest) and rest[i].isdigit():
                        i += 1
                    fut = self.acks.pop(int(rest[:i]), None)
                    if fut is not None and not fut.done():
                        args = json.loads(rest[i:])
                        fut.set_result(args[0] if args else None)
                elif d.startswith("42/chat,"):
                    if self.on_event is not None:
                        arr = json.loads(d[len("42/chat,"):])
                        self.on_event(self, arr[0], arr[1] if len(arr) > 1 else None)
                elif d.startswith("1"):
                    break
        except (aiohttp.ClientError, ConnectionError, asyncio.CancelledError, RuntimeError):
            pass
        finally:
            self.closed.set()
            for fut in self.acks.values():
                if not fut.done():
                    fut.set_exception(ConnectionError("connection closed"))
            self.acks.clear()

    def emit_nowait(self, event, data, ack=True):
        """Sends an event; returns a future for its ack (or None)."""
        if self.closed.is_set():
            raise ConnectionError("closed")
        if ack:
            n = self.next_ack
            self.next_ack += 1
            fut = asyncio.get_event_loop().create_future()
            self.acks[n] = fut
            frame = f"42/chat,{n}" + json.dumps([event, data])
        else:
            fut = None
            frame = "42/chat," + json.dumps([event, data])
        asyncio.ensure_future(self._send(frame))
        return fut

    async def _send(self, frame):
        try:
            await self.ws.send_str(frame)
        except (ConnectionError, RuntimeError, aiohttp.ClientError):
            pass

    async def call(self, event, data, timeout=10):
        fut = self.emit_nowait(event, data)
        return await asyncio.wait_for(fut, timeout)

    async def close(self):
        try:
            if self.ws is not None and not self.ws.closed:
                await self.ws.close()
        except Exception:  # noqa: BLE001
            pass
        if self.reader is not None:
            self.reader.cancel()


async def sync_all(client, tid, after, timeout=30):
    """Every event of `tid` after `after` through chat:sync pages: [(event, data)]."""
    out = []
    for _ in range(100000):
        r = await client.call("chat:sync", {"threads": [{"threadId": tid, "afterSeq": after}]}, timeout)
        assert r and r.get("success"), r
        e = r["threads"][0]
        assert "events" in e, e
        for ev in e["events"]:
            out.append((ev["event"], ev["data"]))
        if not e["hasMore"] or not e["events"]:
            return out
        after = event_seq(e["events"][-1]["data"])
    raise AssertionError("sync paging did not end")


def event_seq(data):
    return data["seq"] if "seq" in data else data["message"]["seq"]


def percentile(values, p):
    if not values:
        return None
    s = sorted(values)
    k = min(len(s) - 1, max(0, int(round(p / 100.0 * (len(s) - 1)))))
    return s[k]
