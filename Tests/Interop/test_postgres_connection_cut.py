"""A node's PostgreSQL connections closed by the other end in the middle of a large result.

When PostgreSQL stops with `-m immediate`, or a proxy or the network drops a connection, the node sees part of a
result and then the end of the connection, with no error message. postgres-nio 1.33.2 stopped the whole process on
a precondition in that case whenever the rows were read through its async row sequence and the reader had not yet
asked for more (`RowStreamStateMachine.channelReadComplete`): found when a node crashed during a PostgreSQL
immediate restart under load. The store now collects every multi-row result on the connection's event loop
(`CollectedRows`), so a cut connection fails that one call and the node goes on serving.

Needs CHAT_TEST_DATABASE_URL and psql (the rows are set up directly in the database); skipped without.
"""
import random
import shutil
import subprocess
import time

import pytest
import requests

from conftest import token, uid
from multinode import DATABASE_URL, FAST, Cluster, MultiHarness, skip_reason
from tcp_proxy import TCPProxy

pytestmark = [
    pytest.mark.skipif(skip_reason() is not None, reason=skip_reason() or ""),
    pytest.mark.skipif(shutil.which("psql") is None, reason="psql is not installed"),
]


class CuttingProxy(TCPProxy):
    """A TCP proxy in front of PostgreSQL. While `armed`, a read of more than 8 KiB from the server (part of a large
    result) is forwarded only in part; after a pause of up to 2 ms both connections are shut down, so the client
    sees rows and then the end of the connection, with no error message. `cuts` counts them."""

    def __init__(self, target_host, target_port):
        self.armed = False
        self.cuts = 0
        super().__init__(target_host, target_port)

    def forward(self, data, dst, pair, from_server):
        if from_server and self.armed and len(data) > 8192:
            dst.sendall(data[:random.randint(4096, len(data) - 1)])
            time.sleep(random.random() * 0.002)
            with self.lock:
                self.cuts += 1
            return False
        dst.sendall(data)
        return True


def psql(sql):
    out = subprocess.run(["psql", DATABASE_URL.split("?")[0], "-v", "ON_ERROR_STOP=1", "-Atc", sql],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_a_connection_cut_in_the_middle_of_a_large_result_fails_that_call_and_the_node_goes_on():
    """40 users, each in the same 1,500 threads (set up in the database): each `GET /chat/threads` reads the
    user's 1,500 thread ids, about 60 KB, in one statement. With the proxy armed, those reads are cut part-way.
    Before the fix the node stopped at the first cut or the second (SIGILL, `RowStreamStateMachine.channelReadComplete`);
    now a cut fails that one request (500) and afterwards every user lists its threads and sends."""
    proxy = CuttingProxy.in_front_of(DATABASE_URL)
    cluster = Cluster(1, database_url=proxy.database_url, extra_args=FAST)
    try:
        cluster.start()
        node = cluster.nodes[0]
        mh = MultiHarness(cluster)
        co, owner = uid("co"), uid("owner")
        users = [uid("u") for _ in range(40)]
        first = mh.make_thread(node, token(owner, co), users[:1])["id"]   # the schema exists once this is stored
        bulk = uid("bulk")
        psql(f"INSERT INTO chat.threads(id, company_id, name, kind, created_by, created_at) "
             f"SELECT '{bulk}-' || g, '{co}', 'bulk thread ' || g, 'group', '{owner}', now() FROM generate_series(1, 1500) g")
        psql(f"INSERT INTO chat.members(thread_id, user_id, position) "
             f"SELECT '{bulk}-' || g, u, 0 FROM generate_series(1, 1500) g, unnest(ARRAY{users!r}::text[]) u")
        proxy.armed = True
        refused = 0
        for user in users:
            assert node.alive(), f"the node stopped after {proxy.cuts} cut connections:\n{node.log_tail()}"
            try:
                listed = node.rest("GET", "/chat/threads", token(user, co), timeout=15)
                refused += listed.status_code != 200
            except requests.RequestException:
                refused += 1
            if proxy.cuts >= 12:
                break
        time.sleep(1.0)
        assert node.alive(), f"the node stopped after {proxy.cuts} cut connections:\n{node.log_tail()}"
        assert proxy.cuts >= 3, f"only {proxy.cuts} reads were cut: the test did not exercise the case"
        proxy.armed = False
        # The node serves again: users list their threads (the ids read whole) and send to a bulk thread.
        deadline = time.monotonic() + 30
        for user in users[:5]:
            while node.rest("GET", "/chat/threads", token(user, co), timeout=15).status_code != 200:
                assert time.monotonic() < deadline, "the node did not serve again after the cuts"
                time.sleep(0.5)
            client = mh.connect(node, token(user, co))
            ack = client.call("chat:send", {"threadId": f"{bulk}-7", "content": "after the cuts"}, timeout=10)
            assert ack.get("success") is True, ack
            client.close()
        print(f"{proxy.cuts} cut connections, {refused} thread lists refused while cut; the node kept serving "
              f"(first thread {first})")
    finally:
        cluster.cleanup()
        proxy.close()
