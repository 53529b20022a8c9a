"""`--durability full` (the default) must fsync before it acknowledges: watched with strace, every acknowledged
chat:send sent one at a time is preceded by at least one fsync/fdatasync of the store. (A kill -9 cannot show
the difference: the page cache survives a process crash. A power loss, or the disk turning read-only, does.)"""
import os
import shutil
import signal
import subprocess
import time

import pytest

from conftest import SERVER_CMD, harness_for, running_server, token, uid

STRACE = shutil.which("strace")


def _count_syncs(srv, n_sends):
    co = uid("co")
    a, b = uid("a"), uid("b")
    with harness_for(srv) as hh:
        tid = hh.make_thread(token(a, co), [b])["id"]
        c = hh.connect(token(a, co))
        c.send(tid, "warm-up")
        out = os.path.join(srv.root, "strace.txt")
        tracer = subprocess.Popen([STRACE, "-f", "-qq", "-e", "trace=fsync,fdatasync", "-o", out, "-p", str(srv.proc.pid)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            time.sleep(0.5)                      # let strace attach to every thread
            for i in range(n_sends):
                c.send(tid, f"durable {i}")
            time.sleep(0.2)
        finally:
            os.kill(tracer.pid, signal.SIGINT)
            tracer.wait(10)
    with open(out) as f:
        return sum(1 for line in f if "fsync(" in line or "fdatasync(" in line)


@pytest.mark.skipif(STRACE is None or os.geteuid() != 0, reason="needs strace and root")
@pytest.mark.skipif("--database-url" in SERVER_CMD, reason="on PostgreSQL the database server flushes (synchronous_commit), not the broker")
def test_full_durability_fsyncs_before_every_ack():
    with running_server([]) as srv:
        n = 5
        syncs = _count_syncs(srv, n)
        assert syncs >= n, f"{syncs} fsync/fdatasync calls for {n} acknowledged sends with --durability full"
