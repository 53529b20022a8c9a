"""Two broker nodes on one PostgreSQL behind nginx, configured with docs/nginx-sticky.conf.example itself (only its
`listen` line and upstream `server` lines are replaced by the test's): what a deployment needs from the balancer.

* Without stickiness (the same file with plain round robin) a Socket.IO session breaks: a request of the session
  that reaches the other node gets `400 {"code":1,"message":"Session ID unknown"}` (docs/PROTOCOL.md §1.1), and a
  default python-socketio client (polling first, then the upgrade) does not connect.
* With the documented `hash $remote_addr consistent` (and with `ip_hash`) a default client connects through nginx,
  upgrades to websocket, and exchanges messages with clients connected directly to either node; a polling-only
  client keeps working across many requests.
* Sessions from many client addresses (127.0.0.2 …) are spread over both nodes, every session stays on one node
  for all its requests (nginx's access log says which), and their messages reach clients on both nodes.

Needs /usr/sbin/nginx (scripts/test installs Debian's nginx package) and CHAT_TEST_DATABASE_URL; skipped without.
nginx runs from a temporary prefix (`-p`, `daemon off`, pid, logs and temp files there) and is stopped by PID.
"""
import json
import os
import re
import signal
import socket
import subprocess
import tempfile
import time

import pytest
import requests

from conftest import ChatClient, ConnectFailed, HOST, assert_ok, free_port, token, uid, wait_until
from multinode import Cluster, MultiHarness, REPO, skip_reason

NGINX = "/usr/sbin/nginx"
EXAMPLE = os.path.join(REPO, "docs", "nginx-sticky.conf.example")
STICKY_LINE = "hash $remote_addr consistent;"

pytestmark = [
    pytest.mark.skipif(not os.access(NGINX, os.X_OK), reason=f"{NGINX} is missing (apt-get install nginx)"),
    pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or ""),
]


# ------------------------------------------------------------------ nginx from the documented config

def site_config(nodes, listen_port, policy=STICKY_LINE):
    """docs/nginx-sticky.conf.example with the test's listen address, upstream servers and balancing policy."""
    with open(EXAMPLE) as f:
        text = f.read()
    # directives only: comment lines start with '#', so an indented directive never matches inside one
    listen = re.compile(r"^([ \t]*)listen 80;", re.M)
    sticky = re.compile(r"^([ \t]*)" + re.escape(STICKY_LINE), re.M)
    servers = re.findall(r"^[ \t]*server [0-9.]+:\d+;[ \t]*\n", text, flags=re.M)
    assert len(listen.findall(text)) == 1 and len(sticky.findall(text)) == 1 and len(servers) == 2, \
        f"{EXAMPLE} no longer has one `listen 80;`, one `{STICKY_LINE}` and two upstream `server` lines"
    text = listen.sub(lambda m: f"{m.group(1)}listen {HOST}:{listen_port};", text)
    indent = re.match(r"[ \t]*", servers[0]).group(0)
    text = text.replace(servers[0], "".join(f"{indent}server {HOST}:{n.port};\n" for n in nodes))
    text = text.replace(servers[1], "")
    text = sticky.sub(lambda m: m.group(1) + (policy or "# round robin: no stickiness"), text)
    return text


MAIN_CONF = """\
{user}
worker_processes 1;
daemon off;
pid {root}/nginx.pid;
error_log {root}/error.log info;
events {{ worker_connections 1024; }}
http {{
    log_format chat_test '$remote_addr $request_method "$request_uri" $status $upstream_addr';
    access_log {root}/access.log chat_test;
    client_body_temp_path {root}/tmp-body;
    proxy_temp_path {root}/tmp-proxy;
    fastcgi_temp_path {root}/tmp-fastcgi;
    uwsgi_temp_path {root}/tmp-uwsgi;
    scgi_temp_path {root}/tmp-scgi;
    include {root}/chat-broker.conf;
}}
"""


class Nginx:
    """nginx in a temporary prefix, in the foreground (daemon off), stopped by PID."""

    def __init__(self, nodes, policy=STICKY_LINE):
        self.port = free_port()
        self.policy = policy
        site = site_config(nodes, self.port, policy)
        self.root = tempfile.mkdtemp(prefix="chat-nginx-")
        with open(os.path.join(self.root, "chat-broker.conf"), "w") as f:
            f.write(site)
        # as root the workers would switch to `nobody`, who cannot enter this 0700 folder
        user = "user root;" if os.geteuid() == 0 else ""
        self.conf = os.path.join(self.root, "nginx.conf")
        with open(self.conf, "w") as f:
            f.write(MAIN_CONF.format(root=self.root, user=user))
        self.proc = None

    @property
    def url(self):
        return f"http://{HOST}:{self.port}"

    def argv(self, *extra):
        return [NGINX, "-p", self.root, "-e", os.path.join(self.root, "error.log"), "-c", self.conf, *extra]

    def start(self, timeout=10):
        check = subprocess.run(self.argv("-t"), capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, f"nginx -t refused the config:\n{check.stderr}"
        self.proc = subprocess.Popen(self.argv(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, f"nginx exited with {self.proc.returncode}:\n{self.error_log()}"
            try:
                with socket.create_connection((HOST, self.port), timeout=0.5):
                    return self
            except OSError:
                pass
            assert time.monotonic() < deadline, f"nginx did not listen within {timeout}s:\n{self.error_log()}"
            time.sleep(0.05)

    def stop(self):
        if self.proc is None:
            return
        p, self.proc = self.proc, None
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)          # fast shutdown of master and workers
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
        try:
            os.killpg(p.pid, signal.SIGKILL)        # a worker left behind in its own process group
        except (ProcessLookupError, PermissionError):
            pass

    def error_log(self):
        try:
            with open(os.path.join(self.root, "error.log")) as f:
                return f.read()[-3000:]
        except OSError:
            return ""

    def access(self):
        """[(remote_addr, method, uri, status, upstream)] from the access log."""
        out = []
        try:
            with open(os.path.join(self.root, "access.log")) as f:
                for line in f:
                    m = re.match(r'(\S+) (\S+) "([^"]*)" (\d+) (.*)$', line.strip())
                    if m:
                        out.append((m.group(1), m.group(2), m.group(3), int(m.group(4)), m.group(5)))
        except OSError:
            pass
        return out

    def cleanup(self):
        self.stop()
        if os.environ.get("CHAT_KEEP_LOGS") == "1":
            print(f"nginx files in {self.root}")
        else:
            import shutil
            shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster():
    with Cluster(2) as c:
        yield c


@pytest.fixture
def mh(cluster):
    for n in cluster:
        if not n.alive():
            n.restart()
    h = MultiHarness(cluster)
    yield h
    h.close()


@pytest.fixture
def nginx(cluster):
    started = []

    def make(policy=STICKY_LINE):
        ng = Nginx(cluster.nodes, policy)
        started.append(ng)             # cleaned up even when start() fails
        return ng.start()
    yield make
    for ng in started:
        ng.cleanup()


def upstream_port(upstream):
    return int(upstream.split(",")[-1].strip().rsplit(":", 1)[1]) if ":" in upstream else None


# ------------------------------------------------------------------ a raw Engine.IO polling session

class SourceAddressAdapter(requests.adapters.HTTPAdapter):
    def __init__(self, source, **kw):
        self.source = source
        super().__init__(**kw)

    def init_poolmanager(self, *args, **kw):
        kw["source_address"] = (self.source, 0)
        super().init_poolmanager(*args, **kw)


class PollingSession:
    """An Engine.IO v4 polling session by hand (one HTTP request at a time), optionally from another loopback
    address, so nginx sees another client."""

    def __init__(self, base_url, source=None):
        self.base = base_url + "/socket.io/?EIO=4&transport=polling"
        self.http = requests.Session()
        if source:
            self.http.mount("http://", SourceAddressAdapter(source))
        self.sid = None
        self.packets = []

    def handshake(self):
        r = self.http.get(self.base, timeout=5)
        assert r.status_code == 200 and r.text.startswith("0"), (r.status_code, r.text[:200])
        self.sid = json.loads(r.text[1:])["sid"]
        return self.sid

    def post(self, *packets):
        return self.http.post(f"{self.base}&sid={self.sid}", data="\x1e".join(packets).encode(),
                              headers={"Content-Type": "text/plain;charset=UTF-8"}, timeout=5)

    def get(self, timeout=5):
        r = self.http.get(f"{self.base}&sid={self.sid}", timeout=timeout)
        if r.status_code == 200:
            self.packets.extend(p for p in r.text.split("\x1e") if p)
        return r

    def until(self, prefix, timeout=5.0):
        """GETs until a packet starting with `prefix` arrived; returns it."""
        deadline = time.monotonic() + timeout
        while True:
            for p in self.packets:
                if p.startswith(prefix):
                    return p
            left = deadline - time.monotonic()
            assert left > 0, f"no packet {prefix!r} within {timeout}s; got {self.packets[-5:]}"
            r = self.get(timeout=max(1.0, left))
            assert r.status_code == 200, f"GET of session {self.sid}: {r.status_code} {r.text[:200]}"

    def connect_chat(self, tok):
        r = self.post("40/chat," + json.dumps({"token": tok}))
        assert r.status_code == 200, (r.status_code, r.text[:200])
        return self.until("40/chat,")


def session_id_unknown(resp):
    if resp.status_code != 400:
        return False
    try:
        return resp.json() == {"code": 1, "message": "Session ID unknown"}
    except ValueError:
        return False


# ------------------------------------------------------------------ tests

def test_without_stickiness_a_session_breaks(cluster, nginx):
    """The counter-example: the documented file with round robin instead of the hash."""
    ng = nginx(policy=None)
    A, B = cluster.nodes
    # by hand: the handshake lands on one node, the next request of the session on the other one
    s = PollingSession(ng.url)
    s.handshake()
    answers = [s.post("40/chat," + json.dumps({"token": token(uid("u"), uid("co"))}))]
    for _ in range(3):
        if any(session_id_unknown(r) for r in answers):
            break
        try:
            answers.append(s.get(timeout=2))
        except requests.exceptions.ReadTimeout:
            pass    # a long poll held by the session's own node (nothing queued): the next request goes elsewhere
    assert any(session_id_unknown(r) for r in answers), [(r.status_code, r.text[:100]) for r in answers]
    # nginx writes a request's log line once the answer is sent: the last one may land just after we read it.
    def session_ports():
        return {upstream_port(up) for (_, _, uri, _, up) in ng.access() if s.sid in uri or "sid=" not in uri}
    try:
        wait_until(lambda: session_ports() == {A.port, B.port}, timeout=5.0, what="the session on both nodes")
    except AssertionError:
        raise AssertionError(ng.access()) from None
    # a default python-socketio client (polling, then the upgrade) cannot connect
    with pytest.raises(ConnectFailed):
        c = ChatClient(ng, token(uid("u"), uid("co")), transports=None)
        c.close()
    wait_until(lambda: any(status == 400 for (_, _, uri, status, _) in ng.access() if "sid=" in uri), timeout=5.0,
               what="a 400 for a request of the session in nginx's log")


@pytest.mark.parametrize("policy", [STICKY_LINE, "ip_hash;"], ids=["hash-remote-addr", "ip_hash"])
def test_sticky_default_client_through_nginx_talks_to_both_nodes(cluster, nginx, mh, policy):
    ng = nginx(policy=policy)
    A, B = cluster.nodes
    co = uid("co")
    u = {n: uid(n) for n in ("da", "db", "px", "pp")}
    tok = {n: token(v, co) for n, v in u.items()}
    direct_a = mh.connect(A, tok["da"], name="direct@A")
    direct_b = mh.connect(B, tok["db"], name="direct@B")
    # through nginx: a default client (polling, then the upgrade) and a polling-only one
    px = ChatClient(ng, tok["px"], transports=None, name="default@nginx")
    pp = ChatClient(ng, tok["pp"], transports=["polling"], name="polling@nginx")
    mh.clients.extend([px, pp])
    wait_until(lambda: px.transport() == "websocket", timeout=5, what="the upgrade to websocket through nginx")

    # REST through nginx as well
    r = requests.post(ng.url + "/chat/threads", headers={"Authorization": f"Bearer {tok['px']}"},
                      json={"type": "group", "memberIds": [u["da"], u["db"], u["pp"]]}, timeout=5)
    assert r.status_code == 201, r.text
    tid = r.json()["thread"]["id"]
    everyone = [direct_a, direct_b, px, pp]
    for c in everyone:
        c.wait_for("chat:thread:created", lambda d: d["thread"]["id"] == tid, timeout=5)

    for sender in (px, direct_a, direct_b, pp):
        m = sender.send(tid, f"from {sender.name}")
        for c in everyone:
            ev = c.wait_for("chat:message", lambda d: d["message"]["id"] == m["id"], timeout=5)
            assert ev["message"]["content"] == f"from {sender.name}"
    # the polling client keeps its session over many requests
    for k in range(5):
        m = pp.send(tid, f"polling {k}")
        direct_b.wait_for("chat:message", lambda d: d["message"]["id"] == m["id"], timeout=5)
    assert px.connected and pp.connected and px.transport() == "websocket"

    # every request of those sessions reached one node, and no request was refused (nginx logs a request when
    # it ends: the websocket's once it is closed)
    sids = [px.sio.eio.sid, pp.sio.eio.sid]
    px.close()
    pp.close()
    wait_until(lambda: all(any(f"sid={sid}" in uri for (_, _, uri, _, _) in ng.access()) for sid in sids),
               timeout=5, what="nginx's access log lines of both sessions")
    log = [(addr, uri, status, up) for (addr, _, uri, status, up) in ng.access() if uri.startswith("/socket.io/")]
    assert all(status in (101, 200) for (_, _, status, _) in log), log
    assert any(status == 101 for (_, _, status, _) in log), "no websocket upgrade went through nginx"
    for sid in sids:
        ports = {upstream_port(up) for (_, uri, _, up) in log if f"sid={sid}" in uri}
        assert len(ports) == 1 and ports <= {A.port, B.port}, f"session {sid} reached {ports}"


def test_sticky_hash_spreads_sessions_over_both_nodes(cluster, nginx, mh):
    try:
        with socket.create_connection((HOST, cluster.nodes[0].port), timeout=2, source_address=("127.0.0.2", 0)):
            pass
    except OSError as e:
        pytest.skip(f"cannot use 127.0.0.2 as a source address here: {e}")
    ng = nginx()
    A, B = cluster.nodes
    co = uid("co")
    n = 24
    users = [uid(f"c{i}") for i in range(n)]
    watcher = uid("w")
    tid = mh.make_thread(A, token(watcher, co), users)["id"]
    wa = mh.connect(A, token(watcher, co), name="w@A")
    wb = mh.connect(B, token(watcher, co), name="w@B")
    sessions = []
    for i, user in enumerate(users):
        s = PollingSession(ng.url, source=f"127.0.0.{i + 2}")
        s.handshake()
        s.connect_chat(token(user, co))
        payload = json.dumps(["chat:send", {"threadId": tid, "content": f"via {i}"}])
        assert s.post(f"42/chat,1{payload}").status_code == 200
        ack = json.loads(s.until("43/chat,1")[len("43/chat,1"):])[0]
        assert_ok(ack)
        sessions.append((s, ack["message"]))
    for s, m in sessions:
        for w in (wa, wb):
            w.wait_for("chat:message", lambda d: d["message"]["id"] == m["id"], timeout=5)
    by_addr = {}
    for (addr, _, uri, status, up) in ng.access():
        if uri.startswith("/socket.io/"):
            assert status == 200, (addr, uri, status)
            by_addr.setdefault(addr, set()).add(upstream_port(up))
    assert len(by_addr) == n, sorted(by_addr)
    assert all(len(ports) == 1 for ports in by_addr.values()), by_addr
    used = set().union(*by_addr.values())
    assert used == {A.port, B.port}, f"all {n} client addresses hashed to one node: {by_addr}"
