"""GET /metrics: a Prometheus text exposition that Prometheus' own parser reads as typed, documented
families, whose counters are counters (not gauges named `*_total`) and whose values follow the traffic.

prometheus_client's parser strips `_total` from a counter family's name: the family `chat_events_in` holds
the sample `chat_events_in_total`.
"""
import socket
import time

import pytest
import requests
import websocket
from prometheus_client.parser import text_string_to_metric_families

from conftest import AGAINST_PEER, assert_fail, harness_for, running_server, token, uid, wait_until

pytestmark = pytest.mark.skipif(AGAINST_PEER, reason="the broker's own metric families")

COUNTERS = ["chat_events_in", "chat_event_errors", "chat_protocol_errors", "chat_messages_sent", "chat_events_fanned_out",
            "chat_frames_enqueued", "chat_outbox_dropped", "chat_slow_consumer_closes", "chat_rate_limited",
            "chat_store_failures", "chat_connections_refused", "chat_handshake_timeouts", "chat_ping_timeouts",
            "chat_thread_passivations", "chat_thread_memory_passivations"]
GAUGES = ["chat_connections", "chat_connected_devices", "chat_active_threads", "chat_thread_memory_bytes"]
HISTOGRAMS = ["chat_store_commit_seconds", "chat_delivery_seconds", "chat_store_commit_units"]
KNOWN_EVENTS = {"chat:send", "chat:join", "chat:leave", "chat:delivered", "chat:mark-read", "chat:typing:start",
                "chat:typing:stop", "chat:edit", "chat:delete", "chat:history", "chat:sync"}


@pytest.fixture(scope="module")
def msrv():
    """A server of its own, so that the gauges count only this module's connections; short handshake and
    ping timeouts so that those counters can be made to move."""
    with running_server(["--connect-timeout", "1", "--ping-interval", "1", "--ping-timeout", "1"]) as srv:
        yield srv


@pytest.fixture
def mh(msrv):
    with harness_for(msrv) as hh:
        yield hh


class Scrape:
    def __init__(self, srv):
        r = requests.get(srv.url + "/metrics", timeout=5)
        assert r.status_code == 200, r.status_code
        assert r.headers.get("Content-Type", "").startswith("text/plain"), r.headers
        self.text = r.text
        self.list = list(text_string_to_metric_families(r.text))
        self.families = {f.name: f for f in self.list}

    def family(self, name):
        assert name in self.families, f"no metric family {name!r}; families: {sorted(self.families)}"
        return self.families[name]

    def value(self, family, sample=None, default=None, **labels):
        """The sum of the family's samples named `sample` (default: the family's own value sample) whose
        labels include `labels`; `default` if there is none (or fails when `default` is None)."""
        if default is not None and family not in self.families:
            return default
        f = self.family(family)
        if sample is None:
            sample = family + "_total" if f.type == "counter" else family
        got = [s for s in f.samples if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items())]
        if not got and default is not None:
            return default
        assert got, f"no sample {sample}{labels or ''} in {family}: {[(s.name, s.labels) for s in f.samples][:20]}"
        return sum(s.value for s in got)


def scrape(srv):
    return Scrape(srv)


def _pair(h):
    co = uid("co")
    alice, bob = uid("alice"), uid("bob")
    ta, tb = token(alice, co), token(bob, co)
    tid = h.make_thread(ta, [bob])["id"]
    return ta, tb, tid


def test_every_family_is_documented_typed_and_unique(mh):
    ta, tb, tid = _pair(mh)
    a = mh.connect(ta)
    mh.connect(tb)
    a.send(tid, "so that every family has seen something")
    s = scrape(mh.server)
    names = [f.name for f in s.list]
    assert len(names) == len(set(names)), f"families exposed more than once: {sorted(n for n in names if names.count(n) > 1)}"
    problems = []      # all of them at once
    for f in s.list:
        if not f.documentation.strip():
            problems.append(f"{f.name} has no HELP")
        if f.type not in ("counter", "gauge", "histogram", "summary"):
            problems.append(f"{f.name} has type {f.type!r}")
        if f.type != "counter" and f.name.endswith("_total"):
            problems.append(f"{f.name} is named like a counter but typed {f.type}")
    for names, typ in ((COUNTERS, "counter"), (GAUGES, "gauge"), (HISTOGRAMS, "histogram")):
        for name in names:
            f = s.families.get(name)
            if f is None:
                problems.append(f"no {typ} family {name}")
            elif f.type != typ:
                problems.append(f"{name} is a {f.type}, not a {typ}")
            elif typ == "histogram":
                if not {x.name for x in f.samples} >= {name + "_bucket", name + "_sum", name + "_count"}:
                    problems.append(f"{name} lacks _bucket, _sum or _count samples")
                elif not any(x.labels.get("le") == "+Inf" for x in f.samples if x.name == name + "_bucket"):
                    problems.append(f"{name} has no +Inf bucket")
    assert not problems, "\n".join(problems)


def test_values_follow_the_traffic(mh):
    before = scrape(mh.server)
    conns0 = before.value("chat_connections")
    ta, tb, tid = _pair(mh)
    a = mh.connect(ta, name="alice")
    b = mh.connect(tb, name="bob")
    after_connect = scrape(mh.server)
    assert after_connect.value("chat_connections") >= conns0 + 2
    assert after_connect.value("chat_connected_devices") >= 2
    for i in range(3):
        m = a.send(tid, f"m{i}")
        b.wait_for("chat:message", lambda d, mid=m["id"]: d["message"]["id"] == mid)
    assert_fail(a.call("chat:send", {"threadId": tid}), "invalid_payload")
    s = scrape(mh.server)

    def rose(family, by, sample=None, **labels):
        x0 = before.value(family, sample, default=0, **labels)    # a labelled sample may appear only once used
        x1 = s.value(family, sample, **labels)
        assert x1 - x0 >= by, f"{family}{sample or ''}{labels or ''}: {x0} -> {x1}, expected a rise of at least {by}"

    rose("chat_events_in", 4, event="chat:send")           # 3 good sends and a bad one (counted valid or not)
    rose("chat_event_errors", 1)
    rose("chat_messages_sent", 3)
    rose("chat_events_fanned_out", 3)
    rose("chat_frames_enqueued", 6)                       # 3 messages to 2 sockets
    rose("chat_store_commit_seconds", 1, "chat_store_commit_seconds_count")
    rose("chat_store_commit_units", 3, "chat_store_commit_units_sum")
    rose("chat_delivery_seconds", 3, "chat_delivery_seconds_count")
    assert s.value("chat_active_threads") >= 1
    assert s.value("chat_connections") >= conns0 + 2
    # counters never go down
    for name in COUNTERS:
        for x in before.family(name).samples:
            if x.name.endswith("_total"):
                assert s.value(name, x.name, **x.labels) >= x.value, (name, x.labels)
    a.close()
    b.close()
    wait_until(lambda: scrape(mh.server).value("chat_connections") == conns0, timeout=5,
               what=f"chat_connections back to {conns0}")
    wait_until(lambda: scrape(mh.server).value("chat_connected_devices")
               <= after_connect.value("chat_connected_devices") - 2, timeout=5, what="connected devices back down")


def test_event_label_values_are_bounded(mh):
    """Clients choose event names: the `event` label takes the protocol's names (and at most one catch-all
    value), never whatever a client sent, so that no client can grow the registry without bound."""
    ta, tb, tid = _pair(mh)
    a = mh.connect(ta)
    for i in range(40):
        a.emit(f"bogus:{uid('ev')}", {"threadId": tid})
    a.send(tid, "after the noise")       # the socket's events are handled in order
    s = scrape(mh.server)
    values = {x.labels.get("event") for x in s.family("chat_events_in").samples}
    assert "chat:send" in values, values
    others = values - KNOWN_EVENTS
    assert len(others) <= 1, f"chat_events_in has {len(others)} label values besides the protocol's: {sorted(others)[:5]}"


def test_handshake_timeouts_are_counted(mh):
    before = scrape(mh.server).value("chat_handshake_timeouts")
    r = requests.get(mh.server.url + "/socket.io/?EIO=4&transport=polling", timeout=5)
    assert r.status_code == 200 and r.text.startswith("0"), r.text
    # no CONNECT: closed after --connect-timeout 1
    wait_until(lambda: scrape(mh.server).value("chat_handshake_timeouts") >= before + 1, timeout=6,
               what="chat_handshake_timeouts_total to rise")


def test_a_session_that_left_chat_closes_one_connect_timeout_after_its_last_disconnect(mh):
    """CONNECT and DISCONNECT cycled on one session for longer than --connect-timeout (1 s): the session is open as
    long as it cycles, and closes about one timeout after its last DISCONNECT. (The broker keeps one deadline timer
    per session and moves it on; this checks the deadline it keeps, not the timer count.)"""
    ta, _, _ = _pair(mh)
    before = scrape(mh.server).value("chat_handshake_timeouts")
    ws = websocket.create_connection(f"ws://127.0.0.1:{mh.server.port}/socket.io/?EIO=4&transport=websocket",
                                     timeout=5)
    try:
        assert ws.recv().startswith("0")

        def answer_until(predicate):
            while True:
                frame = ws.recv()
                if frame == "2":
                    ws.send("3")
                elif predicate(frame):
                    return

        start = time.monotonic()
        while time.monotonic() - start < 1.6:
            ws.send('40/chat,{"token":"%s"}' % ta)
            answer_until(lambda f: f.startswith("40/chat"))
            ws.send("41/chat,")
            time.sleep(0.2)                     # 8 cycles: within the 10 CONNECTs a session may begin at once
        left = time.monotonic()
        try:
            answer_until(lambda f: f == "")
        except (websocket.WebSocketConnectionClosedException, ConnectionResetError, BrokenPipeError, OSError):
            pass
        took = time.monotonic() - left
        assert 0.8 <= took <= 3.5, f"closed {took:.2f} s after the last DISCONNECT"
        wait_until(lambda: scrape(mh.server).value("chat_handshake_timeouts") >= before + 1, timeout=3,
                   what="the close to be counted as a handshake timeout")
    finally:
        ws.close()


def test_ping_timeouts_are_counted(mh):
    ta, _, _ = _pair(mh)
    s0 = scrape(mh.server)
    before, conns0 = s0.value("chat_ping_timeouts"), s0.value("chat_connections")
    ws = websocket.create_connection(f"ws://127.0.0.1:{mh.server.port}/socket.io/?EIO=4&transport=websocket",
                                     timeout=5)
    try:
        assert ws.recv().startswith("0")
        ws.send('40/chat,{"token":"%s"}' % ta)
        assert ws.recv().startswith("40/chat"), "not connected"
        assert scrape(mh.server).value("chat_connections") >= conns0 + 1
        # never answer the pings: dropped after --ping-interval 1 + --ping-timeout 1
        wait_until(lambda: scrape(mh.server).value("chat_ping_timeouts") >= before + 1, timeout=8,
                   what="chat_ping_timeouts_total to rise")
        wait_until(lambda: scrape(mh.server).value("chat_connections") == conns0, timeout=5,
                   what="the dropped connection to leave chat_connections")
    finally:
        try:
            ws.close()
        except (OSError, websocket.WebSocketException, socket.error):
            pass


# ------------------------------------------------------------------ --metrics-token-file

METRICS_TOKEN = "m3tr1cs-" + "x" * 40


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    path = tmp_path_factory.mktemp("metrics-token") / "token"
    path.write_text(METRICS_TOKEN + "\n")   # the newline an editor adds is not part of the token
    with running_server(["--metrics-token-file", str(path)]) as srv:
        yield srv


@pytest.mark.parametrize("header", [None, "Bearer wrong-token-of-some-length-xxxxxxxxxxxxxxxxxxx", "Bearer " + METRICS_TOKEN[:-1],
                                    "Bearer " + METRICS_TOKEN + "y", "Basic " + METRICS_TOKEN, METRICS_TOKEN, "Bearer "],
                         ids=["none", "wrong", "prefix", "longer", "basic", "no-scheme", "empty"])
def test_metrics_with_a_token_file_refuse_a_request_without_that_token(guarded, header):
    """With --metrics-token-file, /metrics answers 401 (the API's error body and a Bearer challenge) to every
    request that does not carry exactly that token, and leaks no metric in the refusal."""
    headers = {} if header is None else {"Authorization": header}
    r = requests.get(guarded.url + "/metrics", headers=headers, timeout=5)
    assert r.status_code == 401, (r.status_code, r.text[:200])
    assert r.headers.get("WWW-Authenticate", "").startswith("Bearer"), r.headers
    body = r.json()
    assert body["code"] == "unauthenticated" and "metrics" in body["error"], body
    assert "chat_" not in r.text


def test_metrics_with_a_token_file_answer_the_token_and_leave_other_routes_alone(guarded):
    r = requests.get(guarded.url + "/metrics", headers={"Authorization": "bearer  " + METRICS_TOKEN}, timeout=5)
    assert r.status_code == 200, (r.status_code, r.text[:200])
    names = {f.name for f in text_string_to_metric_families(r.text)}
    assert set(GAUGES) <= names, names
    assert requests.get(guarded.url + "/health", timeout=5).status_code == 200
    tok = token("u-" + uid(), "c-" + uid())
    r = requests.get(guarded.url + "/chat/threads", headers={"Authorization": "Bearer " + tok}, timeout=5)
    assert r.status_code == 200, r.text[:200]
