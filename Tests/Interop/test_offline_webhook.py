"""The offline-delivery webhook (README "Offline-delivery webhook"), against a real HTTP receiver (aiohttp).

A member with no live socket when a message is stored gets a signed notification POSTed after
--offline-webhook-delay, unless they read it, got it on a device or came online first; notifications are batched,
retried on errors and timeouts, dropped (and counted) after --offline-webhook-max-age, and survive kill -9 of the
broker (the outbox is written in the message's transaction). Runs against SQLite and, in the second pass, PostgreSQL
(where every test's broker shares one outbox: assertions look only at their own company's notifications).
"""
import os
import tempfile
import time
from contextlib import contextmanager

import pytest
import requests

from conftest import ServerProcess, SERVER_CMD, free_port, harness_for, token, uid, wait_until
from webhook_receiver import Receiver, verify_signature

pytestmark = pytest.mark.skipif("chat-broker" not in SERVER_CMD, reason="a ChatBroker feature")

HOOK_SECRET = b"whsec-" + os.urandom(24).hex().encode()


def secret_file():
    fd, path = tempfile.mkstemp(prefix="chat-webhook-secret-")
    os.write(fd, HOOK_SECRET + b"\n")
    os.close(fd)
    return path


@pytest.fixture
def receiver():
    r = Receiver(free_port())
    yield r
    r.close()


def start(receiver, *extra):
    srv = ServerProcess(["--offline-webhook-url", receiver.url, "--offline-webhook-secret-file", secret_file(), *extra])
    srv.start()
    return srv


def metric(srv, name):
    for line in requests.get(srv.url + "/metrics", timeout=5).text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rpartition(" ")[2])
    return 0.0


@contextmanager
def webhook_broker(receiver, *extra):
    """A broker sending offline notices to `receiver`, with a harness; stopped by PID at the end."""
    srv = start(receiver, *extra)
    try:
        with harness_for(srv) as h:
            yield srv, h
    finally:
        srv.cleanup()


def chat(h, *names):
    """A fresh company, alice connected, and a thread of alice with users named `names` (none of them connected):
    returns (company, alice's client, thread id, {name: user id})."""
    co = uid("co")
    users = {n: uid(n) for n in ("alice", *names)}
    ta = token(users["alice"], co)
    a = h.connect(ta)
    tid = h.make_thread(ta, [users[n] for n in names])["id"]
    return co, a, tid, users


def test_offline_member_notified_once_signed_and_sender_and_online_members_not(receiver):
    with webhook_broker(receiver, "--offline-webhook-delay", "0.3", "--offline-webhook-preview", "12") as (srv, h):
        co, a, tid, u = chat(h, "bob", "carol")
        h.connect(token(u["carol"], co))  # carol is online: not notified
        m = a.send(tid, "Hello Bob, this is longer than twelve")
        wait_until(lambda: receiver.notifications(co), timeout=10, what="the webhook request")
        time.sleep(0.5)  # nothing else may follow
        notes = receiver.notifications(co)
        assert len(notes) == 1, notes
        n = notes[0]
        assert n["userId"] == u["bob"] and n["companyId"] == co and n["threadId"] == tid
        assert n["messageId"] == m["id"] and n["seq"] == m["seq"] and n["senderId"] == u["alice"]
        assert n["preview"] == "Hello Bob, t" and n["type"] == m["type"] and n["createdAt"] == m["createdAt"]
        assert n["idempotencyKey"] == f'{m["id"]}:{u["bob"]}' and n["attempt"] == 1
        req = [r for r in receiver.accepted() if any(x["companyId"] == co for x in r["json"]["notifications"])][0]
        assert req["headers"]["Content-Type"] == "application/json"
        assert verify_signature(HOOK_SECRET, req["headers"]["X-Chat-Signature"], req["body"])
        assert not verify_signature(b"another secret of at least 32 bytes!", req["headers"]["X-Chat-Signature"], req["body"])
        assert not verify_signature(HOOK_SECRET, req["headers"]["X-Chat-Signature"], req["body"] + b" ")
        assert req["headers"].get("X-Chat-Delivery")
        assert metric(srv, "chat_offline_notices_queued_total") >= 1
        assert metric(srv, "chat_offline_notices_sent_total") >= 1


def test_a_send_costs_a_write_per_ten_offline_notices(receiver):
    """A thread of 990 members with no live socket (made-up ids need not belong to anyone): each send queues 990
    notices and costs its sender 99 more writes, so the user's burst (4 connections' worth of 100) allows four such
    sends at once, not a hundred; a send to a small thread still costs one."""
    with webhook_broker(receiver, "--offline-webhook-delay", "30") as (srv, h):
        co, alice = uid("co"), uid("alice")
        ta = token(alice, co)
        a = h.connect(ta)
        big = h.make_thread(ta, [uid(f"nobody{i}") for i in range(990)])["id"]
        # Pipelined, as "at once" means: sent one after another's ack, the sends of a debug build on PostgreSQL took
        # long enough (about 0.5 s each) for the bucket to refill the 100 writes each cost (CI failed on it).
        outcomes = a.send_many(big, [f"to all {i}" for i in range(6)], timeout=60)
        assert all(x["success"] for x in outcomes[:3]), outcomes
        assert any(not x["success"] and x.get("code") == "rate_limited" for x in outcomes), outcomes
        assert metric(srv, "chat_offline_notices_queued_total") <= 5 * 990


def test_preview_zero_sends_no_content(receiver):
    with webhook_broker(receiver, "--offline-webhook-delay", "0", "--offline-webhook-preview", "0") as (srv, h):
        co, a, tid, _ = chat(h, "bob")
        a.send(tid, "secret content")
        wait_until(lambda: receiver.notifications(co), timeout=10, what="the webhook request")
        assert "preview" not in receiver.notifications(co)[0]
        assert b"secret content" not in receiver.accepted()[-1]["body"]


def test_notifications_are_batched(receiver):
    with webhook_broker(receiver, "--offline-webhook-delay", "1", "--offline-webhook-batch", "5") as (srv, h):
        co, a, tid, u = chat(h, "bob", "dan")
        acks = a.send_many(tid, [f"m{i}" for i in range(12)])
        ids = {ack["message"]["id"] for ack in acks}
        wait_until(lambda: len(receiver.notifications(co)) >= 24, timeout=15, what="24 notifications")
        notes = receiver.notifications(co)
        assert {(n["messageId"], n["userId"]) for n in notes} == {(i, u[n]) for i in ids for n in ("bob", "dan")}
        mine = [r for r in receiver.accepted() if any(x["companyId"] == co for x in r["json"]["notifications"])]
        assert all(len(r["json"]["notifications"]) <= 5 for r in mine)
        assert len(mine) >= 5 and max(len(r["json"]["notifications"]) for r in mine) > 1


def test_a_notice_the_receiver_refuses_does_not_hold_back_the_others_of_its_request(receiver):
    """The receiver answers 422 to any request that carries a notice for one user (it cannot take that one). The
    other users' notices batched with it are posted again in halves until they are taken, the same round: before,
    they were claimed and batched with the refused ones on every retry, and dropped at their max age unsent (found by
    an outside probe: 23 notices of five users never sent). A receiver that refuses everything is not asked once per
    notice: splitting stops when both halves are refused."""
    flags = ("--offline-webhook-delay", "1", "--offline-webhook-batch", "20", "--offline-webhook-retry-delay", "30")
    with webhook_broker(receiver, *flags) as (srv, h):
        co, a, tid, u = chat(h, "bob", "dan", "erin", "fay", "gus", "hal")
        receiver.refused_user = u["hal"]
        acks = a.send_many(tid, [f"m{i}" for i in range(3)])
        others = {(ack["message"]["id"], u[n]) for ack in acks for n in ("bob", "dan", "erin", "fay", "gus")}
        wait_until(lambda: {(n["messageId"], n["userId"]) for n in receiver.notifications(co)} >= others,
                   timeout=10, what="the other users' 15 notices, taken while the refused user's were not")
        assert not [n for n in receiver.notifications(co) if n["userId"] == u["hal"]]
        mine = [r for r in receiver.all() if any(n["companyId"] == co for n in r["json"]["notifications"])]
        assert len(mine) <= 12, f"{len(mine)} requests for one batch of 18 notices with one refused user"

    # A receiver that refuses everything: 3 requests per batch (it, and its two halves), not one per notice.
    refusing = Receiver(free_port(), default=400)
    try:
        with webhook_broker(refusing, *flags) as (srv, h):
            co, a, tid, u = chat(h, "bob", "dan", "erin", "fay")
            a.send_many(tid, [f"m{i}" for i in range(4)])
            wait_until(lambda: len([r for r in refusing.all() if any(n["companyId"] == co for n in r["json"]["notifications"])]) >= 3,
                       timeout=10, what="the first requests")
            time.sleep(1.0)
            mine = [r for r in refusing.all() if any(n["companyId"] == co for n in r["json"]["notifications"])]
            sizes = [len(r["json"]["notifications"]) for r in mine]
            # One claim: the batch and its halves; two, if the notices came due over two rounds.
            assert len(mine) <= 6 and min(sizes) > 1, f"requests of {sizes} notices for 16 notices refused whole"
    finally:
        refusing.close()


def test_retried_on_500_and_timeout_with_the_same_idempotency_key(receiver):
    # first answer 500, then 503, then one slower than --offline-webhook-timeout, then 204
    receiver.plan = [500, 503, ("sleep", 2.5)]
    flags = ("--offline-webhook-delay", "0", "--offline-webhook-timeout", "1", "--offline-webhook-retry-delay", "0.2")
    with webhook_broker(receiver, *flags) as (srv, h):
        co, a, tid, u = chat(h, "bob")
        m = a.send(tid, "are you there?")
        wait_until(lambda: receiver.notifications(co), timeout=20, what="the notification after retries")
        attempts = [n for r in receiver.all() for n in r["json"]["notifications"] if n["companyId"] == co]
        assert len(attempts) >= 4, attempts
        assert {n["idempotencyKey"] for n in attempts} == {f'{m["id"]}:{u["bob"]}'}
        assert [n["attempt"] for n in attempts[:4]] == [1, 2, 3, 4]
        gaps = [b["at"] - a_["at"] for a_, b in zip(receiver.all(), receiver.all()[1:])]
        assert all(g >= 0.09 for g in gaps), gaps  # backoff: never hammered
        assert metric(srv, "chat_offline_notices_retried_total") >= 3
        assert len(receiver.notifications(co)) == 1


def test_a_receiver_that_stalls_in_its_body_does_not_stall_later_batches(receiver):
    """A receiver answers 200 at once and then stalls in the middle of its body: the status counts (the batch is not
    sent again), and the next batch goes out within the timeout, not when the receiver finishes."""
    receiver.plan = [("stall_body", 20)]
    flags = ("--offline-webhook-delay", "0", "--offline-webhook-timeout", "1", "--offline-webhook-retry-delay", "0.2")
    with webhook_broker(receiver, *flags) as (srv, h):
        co, a, tid, u = chat(h, "bob")
        first = a.send(tid, "one")
        wait_until(lambda: receiver.all(), timeout=10, what="the first webhook request")
        second = a.send(tid, "two")
        wait_until(lambda: {n["messageId"] for n in receiver.notifications(co)} >= {first["id"], second["id"]},
                   timeout=6, what="the second notice while the first answer's body is stalled")
        time.sleep(1)
        keys = [n["idempotencyKey"] for n in receiver.notifications(co, accepted_only=False)]
        assert keys.count(f'{first["id"]}:{u["bob"]}') == 1, keys   # answered 200: never sent again


def test_reading_or_coming_online_before_the_delay_coalesces(receiver):
    with webhook_broker(receiver, "--offline-webhook-delay", "2") as (srv, h):
        co, a, tid, u = chat(h, "bob", "dan", "erin")
        coalesced_before = metric(srv, "chat_offline_notices_coalesced_total")
        m = a.send(tid, "read me")
        # bob reads it and goes away again before the delay; dan comes online and stays; erin does nothing
        b = h.connect(token(u["bob"], co))
        assert b.call("chat:mark-read", {"threadId": tid, "upToSeq": m["seq"]})["success"]
        b.close()
        h.connect(token(u["dan"], co))
        wait_until(lambda: receiver.notifications(co), timeout=10, what="erin's notification")
        time.sleep(1.0)
        assert [n["userId"] for n in receiver.notifications(co)] == [u["erin"]]
        assert metric(srv, "chat_offline_notices_coalesced_total") - coalesced_before >= 2


def test_dropped_and_counted_after_max_age(receiver):
    receiver.default = 500
    flags = ("--offline-webhook-delay", "0", "--offline-webhook-max-age", "2", "--offline-webhook-retry-delay", "0.2")
    with webhook_broker(receiver, *flags) as (srv, h):
        co, a, tid, _ = chat(h, "bob")
        sent_at = time.monotonic()
        a.send(tid, "nobody will take this")
        wait_until(lambda: metric(srv, "chat_offline_notices_dropped_total") >= 1, timeout=15, what="the drop")

        def tries():
            return [r["at"] for r in receiver.all() for n in r["json"]["notifications"] if n["companyId"] == co]
        assert len(tries()) >= 2
        n = len(tries())
        time.sleep(1.5)  # dropped: no more attempts
        assert len(tries()) == n
        assert receiver.notifications(co) == []
        # No attempt starts past the max age (the fifth came 6.7 s after the message with a 4-s max age before).
        assert max(tries()) - sent_at < 2.0, [round(t - sent_at, 2) for t in tries()]


def test_kill9_with_notifications_pending_delivers_all_after_restart(receiver):
    with webhook_broker(receiver, "--offline-webhook-delay", "3") as (srv, h):
        co, a, tid, _ = chat(h, "bob")
        acks = a.send_many(tid, [f"pending {i}" for i in range(40)])
        ids = {ack["message"]["id"] for ack in acks}
        assert all(ack["success"] for ack in acks)
        srv.kill9()  # before any notice is due
        assert receiver.notifications(co) == []
        srv.restart()
        wait_until(lambda: {n["messageId"] for n in receiver.notifications(co)} >= ids, timeout=20, what="all 40 notifications")
        assert {n["messageId"] for n in receiver.notifications(co)} == ids


@pytest.mark.parametrize("args, words", [
    (["--offline-webhook-url", "http://127.0.0.1:9/hook"], "secret-file"),
    (["--offline-webhook-url", "ftp://127.0.0.1/hook", "--offline-webhook-secret-file", "{secret}"], "http"),
    (["--offline-webhook-url", "http://127.0.0.1:9/hook", "--offline-webhook-secret-file", "{short}"], "at least 32"),
    (["--offline-webhook-url", "http://127.0.0.1:9/hook", "--offline-webhook-secret-file", "/nonexistent/secret"], "cannot read"),
    (["--offline-webhook-delay", "3"], "needs --offline-webhook-url"),
    (["--offline-webhook-url", "http://127.0.0.1:9/hook", "--offline-webhook-secret-file", "{secret}", "--offline-webhook-batch", "0"], "batch"),
    # A port past 65535 stopped the broker (a trap in the HTTP client) at the first notice due, again after each restart,
    # and with a host name wrapped to another port (found by an outside probe).
    (["--offline-webhook-url", "http://127.0.0.1:99999/hook", "--offline-webhook-secret-file", "{secret}"], "1-65535"),
    (["--offline-webhook-url", "http://localhost:65536/hook", "--offline-webhook-secret-file", "{secret}"], "1-65535"),
    # A number past Int: Foundation's URL reads no port, and the client posted to port 80 (a second outside probe).
    (["--offline-webhook-url", "http://127.0.0.1:99999999999999999999/hook", "--offline-webhook-secret-file", "{secret}"], "1-65535"),
    (["--offline-webhook-url", "http://127.0.0.1/ x", "--offline-webhook-secret-file", "{secret}"], "spaces"),
    (["--offline-webhook-url", "http://127.0.0.1:9/hook#x", "--offline-webhook-secret-file", "{secret}"], "fragment"),
    (["--offline-webhook-url", "http://u:pw@127.0.0.1:9/hook", "--offline-webhook-secret-file", "{secret}"], "credentials"),
    # No attempt would start before the max age: every notice would be dropped unsent (found by an outside probe).
    (["--offline-webhook-url", "http://127.0.0.1:9/hook", "--offline-webhook-secret-file", "{secret}", "--offline-webhook-delay", "6",
      "--offline-webhook-max-age", "3"], "must be shorter than --offline-webhook-max-age"),
])
def test_bad_webhook_configuration_is_a_usage_error(args, words):
    short = tempfile.mkstemp()[1]
    with open(short, "w") as f:
        f.write("too short")
    args = [a.replace("{secret}", secret_file()).replace("{short}", short) for a in args]
    srv = ServerProcess(args)
    try:
        srv.spawn()
        assert srv.proc.wait(30) == 64
        assert words in srv.log_tail()
    finally:
        srv.cleanup()


@contextmanager
def two_webhook_nodes(receiver, *extra):
    """Two nodes on one PostgreSQL, both posting to `receiver` 1 s after a message; yields the cluster and a harness for
    each node."""
    from multinode import FAST, Cluster, skip_reason
    if skip_reason() is not None:
        pytest.skip(skip_reason())
    cluster = Cluster(2, extra_args=(*FAST, "--offline-webhook-url", receiver.url, "--offline-webhook-secret-file", secret_file(),
                                     "--offline-webhook-delay", "1", *extra))
    with cluster:
        cluster.start()
        with harness_for(cluster["A"]) as ha, harness_for(cluster["B"]) as hb:
            yield cluster, ha, hb


def test_a_user_whose_only_socket_died_with_its_node_is_notified(receiver):
    """bob's only socket is on node B, which is killed (-9); alice then sends on node A. B's presence still counts for
    up to 15 s, but B has written no heartbeat since the messages were stored: bob's notices are neither coalesced nor
    sent at once, but looked at again once their lease ends, and sent (B's presence has expired by then). Found by an
    outside probe: they were coalesced as if bob were online, and lost (3 of 3 runs)."""
    with two_webhook_nodes(receiver, "--offline-webhook-timeout", "2") as (cluster, ha, hb):
        b_node = cluster["B"]
        co, a, tid, u = chat(ha, "bob", "carol")
        hb.connect(token(u["bob"], co))  # bob is online on node B only
        time.sleep(1)
        b_node.kill9()
        time.sleep(1)
        acks = a.send_many(tid, [f"x{i}" for i in range(3)])
        ids = {ack["message"]["id"] for ack in acks}
        # Carol (offline throughout) is notified after the delay; bob once his notices' lease (2 x 2 + 10 s) ended.
        wait_until(lambda: {n["messageId"] for n in receiver.notifications(co) if n["userId"] == u["bob"]} >= ids,
                   timeout=40, what="bob's 3 notifications")
        notes = receiver.notifications(co)
        assert sorted(n["messageId"] for n in notes if n["userId"] == u["carol"]) == sorted(ids)
        assert sorted(n["messageId"] for n in notes if n["userId"] == u["bob"]) == sorted(ids), "each once"


def test_two_nodes_share_one_outbox_and_presence_across_nodes(receiver):
    """Two nodes on one PostgreSQL, both with the webhook: each notice is sent by one of them (claims lease rows),
    and a member online on the *other* node than the sender's is not notified (presence is checked on every node)."""
    with two_webhook_nodes(receiver, "--offline-webhook-batch", "7") as (_, ha, hb):
        co, a, tid, u = chat(ha, "bob", "carol")
        hb.connect(token(u["bob"], co))  # bob is online on node B only
        acks = a.send_many(tid, [f"x{i}" for i in range(30)])
        ids = {ack["message"]["id"] for ack in acks}
        wait_until(lambda: len(receiver.notifications(co)) >= 30, timeout=20, what="30 notifications")
        time.sleep(1.5)
        notes = receiver.notifications(co)
        assert sorted(n["messageId"] for n in notes) == sorted(ids), "each message notified exactly once"
        assert {n["userId"] for n in notes} == {u["carol"]}


def test_a_graceful_stop_waits_for_a_request_under_way_and_nothing_is_sent_twice(receiver):
    """SIGTERM while a request is under way: the broker waits for its answer (within --shutdown-grace, 5 s) and
    stores the outcome before it exits, so after a restart nothing is sent again. Found by an outside probe: the stop
    cut the request off at once and stored nothing; after the restart the notice, which the receiver had, went again
    once its lease ended (14 s here), still as attempt 1."""
    receiver.plan = [("sleep", 1.2)]
    with webhook_broker(receiver, "--offline-webhook-delay", "0", "--offline-webhook-timeout", "2") as (srv, h):
        co, a, tid, u = chat(h, "bob")
        m = a.send(tid, "on its way when the broker stops")
        wait_until(lambda: receiver.all(), timeout=10, what="the webhook request")
        claimed = time.monotonic()
        started = time.monotonic()
        assert srv.stop() == 0
        took = time.monotonic() - started
        assert took >= 0.8, f"exited after {took:.2f} s, before the request under way was answered"
        srv.restart()
        # The lease of a claimed notice is 2 x timeout + 10 s: past it, a notice left leased would go again.
        time.sleep(max(0, claimed + 15 - time.monotonic()))
        keys = [n["idempotencyKey"] for n in receiver.notifications(co, accepted_only=False)]
        assert keys == [f'{m["id"]}:{u["bob"]}'], keys


def test_requests_past_the_shutdown_grace_are_cut_off_and_retried_as_the_next_attempt(receiver):
    """A request still unanswered --shutdown-grace after SIGTERM is cut off; its notice is put back as failed, so
    after a restart it goes again at once (retry delay), as attempt 2, not as attempt 1 once its lease ends."""
    receiver.plan = [("sleep", 8)]
    flags = ("--offline-webhook-delay", "0", "--offline-webhook-timeout", "10", "--offline-webhook-retry-delay", "0.2",
             "--shutdown-grace", "1")
    with webhook_broker(receiver, *flags) as (srv, h):
        co, a, tid, u = chat(h, "bob")
        m = a.send(tid, "the receiver is slow")
        wait_until(lambda: receiver.all(), timeout=10, what="the webhook request")
        started = time.monotonic()
        assert srv.stop() == 0
        assert time.monotonic() - started < 6, "waited past the grace"
        srv.restart()
        wait_until(lambda: receiver.notifications(co), timeout=8, what="the notice again after the restart")
        again = receiver.notifications(co)
        assert [(n["idempotencyKey"], n["attempt"]) for n in again] == [(f'{m["id"]}:{u["bob"]}', 2)], again


def test_a_retried_batch_stays_together_in_seq_order(receiver):
    """Ten notices of one user fail once (500): they go again in one request, in seq order, as they went first. Found
    by an outside probe: each notice's backoff was drawn apart, so the retry split them over requests, out of order."""
    receiver.plan = [500]
    flags = ("--offline-webhook-delay", "1", "--offline-webhook-retry-delay", "0.5")
    with webhook_broker(receiver, *flags) as (srv, h):
        co, a, tid, u = chat(h, "bob")
        acks = a.send_many(tid, [f"m{i}" for i in range(10)])
        seqs = [ack["message"]["seq"] for ack in acks]
        wait_until(lambda: len(receiver.notifications(co)) >= 10, timeout=15, what="the ten notices after the retry")
        requests_ = [[n["seq"] for n in r["json"]["notifications"] if n["companyId"] == co] for r in receiver.all()]
        requests_ = [r for r in requests_ if r]
        assert requests_ == [seqs, seqs], requests_
