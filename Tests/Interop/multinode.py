"""Several chat-broker nodes on one PostgreSQL database: the harness of test_multinode.py,
test_nginx_sticky.py and scripts/reliability/multinode_kill.py.

    cluster = Cluster(3, database_url)          # nodes A, B, C: `chat-broker serve --database-url …`
    cluster.start()                             # all at once; each waits for GET /health
    cluster.kill9(cluster["C"]); cluster.restart(cluster["C"])   # same port, same data dir
    cluster.cleanup()                           # SIGTERM, then SIGKILL, by PID

Each node is `$CHAT_BROKER_BIN serve --host 127.0.0.1 --port <free port> --data-dir <tmp> --database-url <URL>`
(default binary: <repo>/.build/debug/chat-broker) with CHAT_JWT_SECRET = conftest.SECRET, so conftest.token()
mints tokens every node accepts. Other CHAT_* variables of the environment are not passed on (a stray
CHAT_DATABASE_URL or CHAT_PORT must not change the nodes). Logs go to <root>/<node>-<run>.log; the root folder is
removed by cleanup() unless CHAT_KEEP_LOGS=1 (or keep_logs=True), and its path is printed when kept.

The database comes from CHAT_TEST_DATABASE_URL (scripts/test starts a throw-away cluster and exports it);
tests skip with NO_DATABASE_REASON without it.

Clients are conftest.ChatClient (python-socketio, namespace /chat, recording every event in order): ChatClient
only needs `.url`, which a Node has. `Device` follows threads across reconnects to different nodes and checks
that each socket's live stream is gap-free and that chat:sync after a reconnect fills exactly the missed range.
"""
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import requests

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import conftest  # noqa: E402  (the one module object pytest also uses: same SECRET)
from conftest import HOST, NS, SECRET, ChatClient, assert_ok, free_port  # noqa: E402

REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
BINARY = os.environ.get("CHAT_BROKER_BIN", os.path.join(REPO, ".build", "debug", "chat-broker"))
DATABASE_URL = os.environ.get("CHAT_TEST_DATABASE_URL", "")
NO_DATABASE_REASON = ("CHAT_TEST_DATABASE_URL is not set: several broker nodes need one shared PostgreSQL "
                      "(scripts/test starts a throw-away cluster and exports it)")
NO_BINARY_REASON = f"no chat-broker binary at {BINARY} (build it, or set CHAT_BROKER_BIN)"
STARTUP_TIMEOUT = float(os.environ.get("CHAT_STARTUP_TIMEOUT", "60"))
STOP_TIMEOUT = 10.0
# flags that let one socket send as fast as the tests need (the default burst is 100 sends per connection)
FAST = ("--rate-per-sec", "100000", "--rate-burst", "100000")
THREAD_EVENTS = ("chat:message", "chat:message:edited", "chat:message:deleted")


def skip_reason():
    """Why multi-node tests cannot run here, or None. scripts/test runs the interop suite twice (SQLite, then
    PostgreSQL) with CHAT_TEST_DATABASE_URL set both times; the multi-node tests start their own nodes and run
    only in the PostgreSQL pass (CHAT_SERVER_CMD with --database-url), or whenever CHAT_SERVER_CMD is unset.
    CHAT_MULTINODE=1 runs them regardless, CHAT_MULTINODE=0 skips them."""
    forced = os.environ.get("CHAT_MULTINODE")
    if forced == "0":
        return "CHAT_MULTINODE=0"
    server_cmd = os.environ.get("CHAT_SERVER_CMD", "")
    if forced != "1" and server_cmd and "--database-url" not in server_cmd:
        return ("multi-node tests run once, in the PostgreSQL pass (this CHAT_SERVER_CMD has no --database-url); "
                "CHAT_MULTINODE=1 runs them here too")
    if not DATABASE_URL:
        return NO_DATABASE_REASON
    if not os.access(BINARY, os.X_OK):
        return NO_BINARY_REASON
    return None


# ------------------------------------------------------------------ nodes

class Node:
    """One broker process of a cluster: started, stopped and killed by PID; restarts on the same port."""

    def __init__(self, name, database_url, root, binary=BINARY, extra_args=(), secret=SECRET, env=None, port=None):
        self.name = name
        self.database_url = database_url
        self.root = root
        self.binary = binary
        self.extra_args = [str(a) for a in extra_args]
        self.secret = secret
        self.extra_env = dict(env or {})
        self.port = port or free_port()
        self.data_dir = os.path.join(root, f"data-{name}")
        os.makedirs(self.data_dir, exist_ok=True)
        self.proc = None
        self.returncode = None
        self.log_path = None
        self.runs = 0
        self.kills = 0
        self._log = None

    def __repr__(self):
        state = f"pid {self.proc.pid}" if self.alive() else "down"
        return f"<Node {self.name} :{self.port} {state}>"

    @property
    def url(self):
        return f"http://{HOST}:{self.port}"

    @property
    def pid(self):
        return self.proc.pid if self.proc is not None else None

    def argv(self):
        return [self.binary, "serve", "--host", HOST, "--port", str(self.port), "--data-dir", self.data_dir,
                "--database-url", self.database_url, *self.extra_args]

    def spawn(self):
        """Starts the process; does not wait for it to serve."""
        assert not self.alive(), f"node {self.name} is already running"
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHAT_")}
        env["CHAT_JWT_SECRET"] = self.secret
        env.update(self.extra_env)
        self.runs += 1
        self.log_path = os.path.join(self.root, f"{self.name}-{self.runs}.log")
        self._log = open(self.log_path, "wb")
        self.returncode = None
        self.proc = subprocess.Popen(self.argv(), stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=env, start_new_session=True)
        conftest._LIVE.add(self)    # killed at interpreter exit whatever happens (conftest's atexit hook)
        return self.proc

    def wait_ready(self, timeout=STARTUP_TIMEOUT):
        """Polls GET /health (as conftest does) until 200; returns the seconds it took."""
        t0 = time.monotonic()
        deadline = t0 + timeout
        while True:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self._closed()
                raise RuntimeError(f"node {self.name} exited with {code} before /health answered:\n"
                                   f"$ {' '.join(self.argv())}\n{self.log_tail()}")
            try:
                if requests.get(self.url + "/health", timeout=1).status_code == 200:
                    return time.monotonic() - t0
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                self.stop(sig=signal.SIGKILL)
                raise RuntimeError(f"node {self.name} did not answer /health within {timeout}s:\n{self.log_tail()}")
            time.sleep(0.05)

    def start(self, timeout=STARTUP_TIMEOUT, attempts=3):
        """Spawns and waits for /health; a start that exits at once (e.g. the port still held right after a
        kill) is retried up to `attempts` times within `timeout`. Returns the seconds it took."""
        t0 = time.monotonic()
        for attempt in range(1, attempts + 1):
            self.spawn()
            try:
                self.wait_ready(max(1.0, timeout - (time.monotonic() - t0)))
                return time.monotonic() - t0
            except RuntimeError:
                if attempt == attempts or time.monotonic() - t0 > timeout or self.alive():
                    raise
                time.sleep(0.5)

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def _closed(self):
        if self.proc is not None:
            self.returncode = self.proc.returncode
        if self._log is not None:
            self._log.close()
            self._log = None
        self.proc = None
        conftest._LIVE.discard(self)

    def stop(self, sig=signal.SIGTERM, timeout=STOP_TIMEOUT):
        """`sig` (SIGTERM), then SIGKILL after `timeout`; returns the exit status (negative: the signal)."""
        if self.proc is None:
            return self.returncode
        conftest.terminate(self.proc, sig, timeout)
        self._closed()
        return self.returncode

    def kill9(self):
        """SIGKILL by PID: no shutdown, no final commit; sockets are reset by the kernel."""
        self.kills += 1
        return self.stop(sig=signal.SIGKILL)

    def restart(self, timeout=STARTUP_TIMEOUT):
        """Starts again on the same port and data dir (after stop or kill9); returns the seconds it took."""
        if self.alive():
            self.stop()
        return self.start(timeout)

    def log_tail(self, n=3000):
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-n:].decode("utf-8", "replace")
        except (OSError, TypeError):
            return ""

    # -- REST
    def rest(self, method, path, tok=None, json=None, headers=None, data=None, timeout=10):
        h = dict(headers or {})
        if tok is not None:
            h["Authorization"] = f"Bearer {tok}"
        return requests.request(method, self.url + path, json=json, data=data, headers=h, timeout=timeout)


class Cluster:
    """N nodes (named A, B, C, …) on one database."""

    def __init__(self, n=3, database_url=None, extra_args=FAST, binary=BINARY, secret=SECRET, env=None,
                 keep_logs=None, root=None):
        self.database_url = database_url or DATABASE_URL
        assert self.database_url, NO_DATABASE_REASON
        self.root = root or tempfile.mkdtemp(prefix="chat-multinode-")
        os.makedirs(self.root, exist_ok=True)
        self.keep_logs = (os.environ.get("CHAT_KEEP_LOGS") == "1") if keep_logs is None else keep_logs
        names = [chr(ord("A") + i) for i in range(n)]
        self.nodes = [Node(nm, self.database_url, self.root, binary=binary, extra_args=extra_args, secret=secret,
                           env=env) for nm in names]

    def __getitem__(self, key):
        if isinstance(key, int):
            return self.nodes[key]
        for n in self.nodes:
            if n.name == key:
                return n
        raise KeyError(key)

    def __iter__(self):
        return iter(self.nodes)

    def __len__(self):
        return len(self.nodes)

    def live(self):
        return [n for n in self.nodes if n.alive()]

    def start(self, timeout=STARTUP_TIMEOUT):
        """Spawns every node at once (they migrate the schema once, under an advisory lock), then waits for each."""
        for n in self.nodes:
            if not n.alive():
                n.spawn()
        try:
            for n in self.nodes:
                n.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, sig=signal.SIGTERM):
        """Stops every node in parallel; returns {name: exit status}."""
        out = {}

        def one(n):
            out[n.name] = n.stop(sig=sig)
        ts = [threading.Thread(target=one, args=(n,)) for n in self.nodes]
        for t in ts:
            t.start()
        for t in ts:
            t.join(STOP_TIMEOUT + 15)
        return out

    def kill9(self, node):
        return self._node(node).kill9()

    def restart(self, node, timeout=STARTUP_TIMEOUT):
        return self._node(node).restart(timeout)

    def _node(self, node):
        return node if isinstance(node, Node) else self[node]

    def log_tails(self, n=1500):
        return "\n".join(f"--- {nd.name} ({nd.log_path})\n{nd.log_tail(n)}" for nd in self.nodes)

    def cleanup(self):
        self.stop()
        if self.keep_logs:
            print(f"multinode logs kept in {self.root}", file=sys.stderr)
        else:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        if exc[0] is not None and not self.keep_logs:
            # a failure: keep the logs and say where
            self.keep_logs = True
        self.cleanup()
        return False


# ------------------------------------------------------------------ clients

class MultiHarness:
    """Clients and REST against any node of a cluster; close() disconnects every client it made."""

    def __init__(self, cluster):
        self.cluster = cluster
        self.clients = []
        self._lock = threading.Lock()

    def connect(self, node, tok, transports=("websocket",), name=None, **kw):
        node = self.cluster._node(node)
        c = ChatClient(node, tok, transports=list(transports) if transports else None, name=name, **kw)
        c.node = node
        with self._lock:
            self.clients.append(c)
        return c

    def make_thread(self, node, tok, member_ids, type="group", name=None):
        body = {"type": type, "memberIds": list(member_ids)}
        if name is not None:
            body["name"] = name
        r = self.cluster._node(node).rest("POST", "/chat/threads", tok, json=body)
        assert r.status_code in (200, 201), f"create thread on {node}: {r.status_code} {r.text[:300]}"
        return r.json()["thread"]

    def add_members(self, node, tok, thread_id, user_ids):
        r = self.cluster._node(node).rest("POST", f"/chat/threads/{thread_id}/members", tok,
                                          json={"userIds": list(user_ids)})
        assert r.status_code == 200, f"add members on {node}: {r.status_code} {r.text[:300]}"
        return r.json()["thread"]

    def close(self):
        with self._lock:
            cs, self.clients = list(self.clients), []
        ts = [threading.Thread(target=c.close) for c in cs]
        for t in ts:
            t.start()
        for t in ts:
            t.join(10)


def event_seq(name, data):
    """The seq a thread event takes: the message's for chat:message, the event's own for edits and deletes."""
    return data["message"]["seq"] if name == "chat:message" else data["seq"]


def event_key(name, data):
    """What identifies a thread event: (event name, message id)."""
    mid = data["messageId"] if name == "chat:message:deleted" else data["message"]["id"]
    return name, mid


def thread_events(client, thread_id):
    """[(name, data)] of the thread's events a client received, in arrival order."""
    with client.cond:
        evs = list(client.events)
    return [(e, d) for (e, d) in evs if e in THREAD_EVENTS and isinstance(d, dict) and d.get("threadId") == thread_id]


def thread_seqs(client, thread_id):
    return [event_seq(e, d) for e, d in thread_events(client, thread_id)]


def wait_seq(client, thread_id, seq, timeout=10.0):
    """Waits until `client` received a thread event with seq ≥ `seq`."""
    deadline = time.monotonic() + timeout
    with client.cond:
        while True:
            for e, d in reversed(client.events):
                if e in THREAD_EVENTS and isinstance(d, dict) and d.get("threadId") == thread_id \
                        and event_seq(e, d) >= seq:
                    return True
            left = deadline - time.monotonic()
            if left <= 0:
                got = [event_seq(e, d) for e, d in client.events
                       if e in THREAD_EVENTS and isinstance(d, dict) and d.get("threadId") == thread_id]
                raise AssertionError(f"{client.name or 'client'} on {getattr(client, 'node', '?')}: no event of "
                                     f"thread {thread_id} with seq >= {seq} within {timeout}s; last seqs {got[-10:]}")
            client.cond.wait(min(left, 0.5))


def sync_all(client, thread_id, after=0, timeout=10.0, max_pages=1000):
    """chat:sync from `after` through every page; returns [(name, data)] in seq order as answered."""
    out = []
    for _ in range(max_pages):
        r = client.call("chat:sync", {"threads": [{"threadId": thread_id, "afterSeq": after}]}, timeout=timeout)
        assert_ok(r)
        (entry,) = r["threads"]
        assert entry.get("threadId") == thread_id, entry
        assert "events" in entry, f"sync of {thread_id} failed: {entry}"
        evs = [(ev["event"], ev["data"]) for ev in entry["events"]]
        out.extend(evs)
        if not entry.get("hasMore"):
            return out
        assert evs, f"sync page with hasMore and no events: {entry}"
        after = event_seq(*evs[-1])
    raise AssertionError(f"sync of {thread_id} did not end within {max_pages} pages")


def contiguous(seqs, first=None):
    """True when `seqs` is first, first+1, … (first defaults to seqs[0])."""
    if not seqs:
        return True
    f = seqs[0] if first is None else first
    return list(seqs) == list(range(f, f + len(seqs)))


# ------------------------------------------------------------------ a device that follows threads across nodes

class Device:
    """One socket identity (a user's device) that follows `thread_ids` across connections to different nodes.

    Its view is {thread: {seq: (event, message id)}}, built from what its sockets received live and from
    chat:sync after each reconnect. Checked on the way (every breach goes to `problems`):
      * a socket's live events of a thread are consecutive seqs, each once (docs/PROTOCOL.md §4, §8.1);
      * the chat:sync at a (re)connect, from the last seq the device held, returns exactly last+1, last+2, …
        (no gap, no duplicate), and the socket's first live event is at most one past what the sync returned
        (events committed after the CONNECT are delivered live; earlier ones are in the sync);
      * a live event the device already holds (the overlap of the sync and the live stream of a new socket) is
        the same event (same name and message id).
    `transitions` records each reconnect: the node, the last seq held, and the range the sync filled.
    """

    def __init__(self, harness, tok, thread_ids, name, transports=("websocket",)):
        self.h = harness
        self.tok = tok
        self.name = name
        self.transports = transports
        self.threads = list(thread_ids)
        self.view = {t: {} for t in self.threads}
        self.last = {t: 0 for t in self.threads}
        self.client = None
        self.node = None
        self.problems = []
        self.transitions = []
        self.connections = 0
        self._pos = 0
        self._live_last = {}
        self._synced_to = {}
        self._lock = threading.RLock()

    def __repr__(self):
        return f"<Device {self.name} on {self.node.name if self.node else '-'}>"

    def add_thread(self, tid):
        with self._lock:
            if tid not in self.view:
                self.threads.append(tid)
                self.view[tid] = {}
                self.last[tid] = 0

    def _problem(self, text):
        self.problems.append(f"{self.name}: {text}")

    def attach(self, node, sync=True, connect_timeout=None):
        """Connects to `node` (closing the previous socket first) and, with `sync`, catches up every thread with
        chat:sync from the last seq held. Returns the ChatClient."""
        with self._lock:
            self.detach()
            c = self.h.connect(node, self.tok, transports=self.transports, name=f"{self.name}#{self.connections + 1}")
            self.client, self.node = c, c.node
            self.connections += 1
            self._pos = 0
            self._live_last = {}
            self._synced_to = {}
            if sync:
                for tid in self.threads:
                    before = self.last[tid]
                    evs = sync_all(c, tid, before)
                    seqs = [event_seq(e, d) for e, d in evs]
                    if seqs and seqs != list(range(before + 1, before + 1 + len(seqs))):
                        self._problem(f"sync of {tid} after {before} on {node.name} is not exactly "
                                      f"{before + 1}..: {seqs[:5]}…{seqs[-5:]} ({len(seqs)} events)")
                    for e, d in evs:
                        self._take(tid, e, d, source="sync")
                    self._synced_to[tid] = self.last[tid]
                    self.transitions.append({"device": self.name, "node": node.name, "thread": tid,
                                             "held": before, "filled": [seqs[0], seqs[-1]] if seqs else None,
                                             "count": len(seqs)})
            self.absorb()
            return c

    def absorb(self):
        """Takes in the live events the current socket received since the last call."""
        with self._lock:
            c = self.client
            if c is None:
                return
            with c.cond:
                new = c.events[self._pos:]
                self._pos = len(c.events)
            for e, d in new:
                if e in THREAD_EVENTS and isinstance(d, dict) and d.get("threadId") in self.view:
                    tid = d["threadId"]
                    s = event_seq(e, d)
                    prev = self._live_last.get(tid)
                    if prev is None:
                        start = self._synced_to.get(tid, self.last[tid])
                        if s > start + 1:
                            self._problem(f"first live event of {tid} on {self.node.name} is seq {s}, but the device "
                                          f"held only up to {start}: {start + 1}..{s - 1} missing")
                    elif s != prev + 1:
                        self._problem(f"live stream of {tid} on {self.node.name}: seq {s} after {prev}")
                    self._live_last[tid] = s
                    self._take(tid, e, d, source="live")

    def _take(self, tid, e, d, source):
        s = event_seq(e, d)
        key = event_key(e, d)
        v = self.view[tid]
        if s in v:
            if v[s] != key:
                self._problem(f"{source} seq {s} of {tid} is {key}, but the device holds {v[s]}")
            return
        if s != self.last[tid] + 1:
            self._problem(f"{source} seq {s} of {tid} leaves a gap after {self.last[tid]}")
        v[s] = key
        self.last[tid] = max(self.last[tid], s)

    def detach(self, close=True):
        """Takes in what the current socket received and drops it (closing it with `close`)."""
        with self._lock:
            if self.client is None:
                return
            self.absorb()
            if close:
                self.client.close()
            self.client, self.node = None, None

    def lost_connection(self, timeout=10.0):
        """After its node was killed: waits for the socket's disconnect, then detaches."""
        if self.client is not None:
            self.client.wait_disconnect(timeout)
        self.detach()

    def seqs(self, tid):
        with self._lock:
            return sorted(self.view[tid])

    def wait_caught_up(self, tid, seq, timeout=10.0):
        """Waits until the device holds every event up to `seq` (live)."""
        deadline = time.monotonic() + timeout
        while True:
            self.absorb()
            if self.last[tid] >= seq:
                return True
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} on {self.node}: holds {tid} up to {self.last[tid]}, "
                                     f"not {seq}, after {timeout}s")
            time.sleep(0.02)

    def compare(self, tid, stored):
        """Problems of the device's view of `tid` against the stored events [(name, data)] from sync at 0."""
        with self._lock:
            self.absorb()
            want = {event_seq(e, d): event_key(e, d) for e, d in stored}
            got = self.view[tid]
            out = []
            missing = sorted(set(want) - set(got))
            extra = sorted(set(got) - set(want))
            wrong = sorted(s for s in set(want) & set(got) if want[s] != got[s])
            if missing:
                out.append(f"{self.name}: {len(missing)} stored events of {tid} never received (e.g. {missing[:5]})")
            if extra:
                out.append(f"{self.name}: {len(extra)} events of {tid} received that are not stored (e.g. {extra[:5]})")
            if wrong:
                out.append(f"{self.name}: {len(wrong)} events of {tid} differ from the stored ones (e.g. {wrong[:5]})")
            return out


# ------------------------------------------------------------------ a steady sender

class Pump:
    """Sends chat:send from one client at `rate` per second, up to `window` unacknowledged, without waiting for
    each ack (emit with a callback). Records every ack: `acked` [(threadId, seq, id, content)], `errors`
    [(content, ack)]. `switch(client)` continues on another socket (after its node died: the sends in flight on
    the dead socket stay unanswered, `unanswered` counts them)."""

    def __init__(self, client, thread_ids, rate=50.0, window=32, prefix="p"):
        self.client = client
        self.threads = list(thread_ids)
        self.rate = rate
        self.window = window
        self.prefix = prefix
        self.acked = []
        self.errors = []
        self.latencies = []             # seconds from emit to ack, in ack order
        self.sent = 0
        self._sent_at = {}
        self.unanswered = 0
        self._inflight = set()
        self._gen = 0
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._stop = threading.Event()
        self._paused = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"pump-{prefix}", daemon=True)

    def start(self):
        self._thread.start()
        return self

    def _run(self):
        n = 0
        interval = 1.0 / self.rate if self.rate > 0 else 0.0
        next_at = time.monotonic()
        while not self._stop.is_set():
            if self._paused.is_set():
                time.sleep(0.02)
                next_at = time.monotonic()
                continue
            with self._lock:
                while len(self._inflight) >= self.window and not self._stop.is_set() and not self._paused.is_set():
                    self._wake.wait(0.2)
                if self._stop.is_set() or self._paused.is_set():
                    continue
                client, gen = self.client, self._gen
                content = f"{self.prefix}-{n}"
                tid = self.threads[n % len(self.threads)]
                self._inflight.add(content)
                self._sent_at[content] = time.monotonic()
            n += 1
            try:
                client.sio.emit("chat:send", {"threadId": tid, "content": content}, namespace=NS,
                                callback=self._callback(content, gen))
                with self._lock:
                    self.sent += 1
                    if gen != self._gen and content not in self._inflight:
                        self.unanswered += 1        # emitted on a socket switch() had already given up
            except Exception:  # noqa: BLE001  (the socket is gone: wait for switch())
                with self._lock:
                    self._inflight.discard(content)
                time.sleep(0.05)
            if interval:
                next_at += interval
                delay = next_at - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                else:
                    next_at = time.monotonic()

    def _callback(self, content, gen):
        def cb(*args):
            ack = args[0] if args else None
            with self._lock:
                self._inflight.discard(content)
                t = self._sent_at.pop(content, None)
                if t is not None:
                    self.latencies.append(time.monotonic() - t)
                if isinstance(ack, dict) and ack.get("success") is True:
                    m = ack["message"]
                    self.acked.append((m["threadId"], m["seq"], m["id"], content))
                else:
                    self.errors.append((content, ack))
                self._wake.notify_all()
        return cb

    def pause(self):
        self._paused.set()

    def drain(self, timeout=10.0):
        """Pauses and waits (bounded) until no send is in flight; returns how many still are."""
        self.pause()
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._inflight and time.monotonic() < deadline:
                self._wake.wait(0.2)
            return len(self._inflight)

    def switch(self, client):
        """Continues on `client`; sends still in flight on the old socket are counted as unanswered."""
        with self._lock:
            self.unanswered += len(self._inflight)
            for c in self._inflight:
                self._sent_at.pop(c, None)
            self._inflight.clear()
            self.client = client
            self._gen += 1
            self._wake.notify_all()
        self._paused.clear()

    def stop(self, drain_timeout=15.0):
        """Stops sending and waits (bounded) for the acks still in flight; returns how many never came."""
        self._stop.set()
        with self._lock:
            self._wake.notify_all()
        self._thread.join(5)
        deadline = time.monotonic() + drain_timeout
        with self._lock:
            while self._inflight and time.monotonic() < deadline:
                self._wake.wait(0.2)
            left = len(self._inflight)
            self.unanswered += left
            self._inflight.clear()
            self._sent_at.clear()
        return left

    def acked_count(self):
        with self._lock:
            return len(self.acked)

    def oldest_inflight_age(self):
        """Seconds the oldest unanswered send has waited (0 when none)."""
        with self._lock:
            now = time.monotonic()
            return max([now - self._sent_at[c] for c in self._inflight if c in self._sent_at] or [0.0])


def stop_pumps(pumps, drain_timeout=15.0):
    """Stops every pump's sending first, then waits for their acks (so no pump's last sends wait behind another
    pump that is still sending); returns how many sends each left unanswered."""
    for p in pumps:
        p.pause()
    deadline = time.monotonic() + drain_timeout
    return [p.stop(drain_timeout=max(0.0, deadline - time.monotonic())) for p in pumps]
