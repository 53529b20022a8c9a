"""A broker process for the Python benchmark scripts: started on a free port of 127.0.0.1 with a data directory of
its own and a throw-away secret, ready once `/health` answers, and its RSS."""
import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time

import requests


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_broker(binary, *flags):
    """Yields `(process, port)` of `binary serve … flags`, healthy; stops it (by its PID) and removes its data after."""
    port = free_port()
    data = tempfile.mkdtemp(prefix="bench-broker.")
    proc = subprocess.Popen([binary, "serve", "--host", "127.0.0.1", "--port", str(port), "--data-dir", data, *flags],
                            env=dict(os.environ, CHAT_JWT_SECRET="s" * 40), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                requests.get(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except requests.RequestException:
                time.sleep(0.1)
        yield proc, port
    finally:
        proc.kill()
        proc.wait()
        shutil.rmtree(data, ignore_errors=True)


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(next(line for line in f if line.startswith("VmRSS")).split()[1])
