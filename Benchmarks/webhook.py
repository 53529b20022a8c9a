#!/usr/bin/env python3
"""What the offline-delivery webhook costs and how fast it drains, side by side with the broker without it.

    Benchmarks/webhook.py [--rounds 3] [--duration 10] [--offline 2] [--json-out FILE]

Each round runs, in alternation, the release broker (SQLite, --durability full, a fresh data dir) without a webhook
and with one pointed at a real aiohttp receiver (Tests/Interop/webhook_receiver.py) on 127.0.0.1, under the same
chat-bench closed loop: 100 threads × 10 connected members × 2 devices, plus `--offline` members per thread who
never connect, so that every message writes that many offline notices in its transaction. It reports acked
sends/s and send→ack p99 for each, a third run whose notices are written but not due during the run (the cost
of the outbox writes alone), and for the webhook run: notices queued (from /metrics), notices received by the
receiver, requests, and the drain rate (notifications per second from the first request to the last). Every notice
must arrive: the run fails if the receiver got fewer distinct idempotency keys than the broker queued.

Needs release builds of chat-broker and chat-bench (`swift build -c release --product chat-broker`, then
`--product chat-bench`). Processes are stopped by PID.
"""
import argparse
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time

import requests

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(ROOT, "Tests", "Interop"))
from cluster import free_port  # noqa: E402  (Benchmarks/cluster.py)
from webhook_receiver import Receiver  # noqa: E402

BROKER = os.path.join(ROOT, ".build", "release", "chat-broker")
BENCH = os.path.join(ROOT, ".build", "release", "chat-bench")


def metric(url, name):
    for line in requests.get(url + "/metrics", timeout=5).text.splitlines():
        if line.startswith(name + " "):
            return float(line.rpartition(" ")[2])
    return 0.0


def run(label, args, hook, secret, delay="1"):
    data = tempfile.mkdtemp(prefix="chat-webhook-bench-")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cmd = [BROKER, "serve", "--host", "127.0.0.1", "--port", str(port), "--data-dir", data,
           "--rate-per-sec", "100000", "--rate-burst", "100000"]
    if hook is not None:
        secret_file = os.path.join(data, "hook-secret")
        with open(secret_file, "w") as f:
            f.write(secrets.token_hex(32))
        cmd += ["--offline-webhook-url", hook.url, "--offline-webhook-secret-file", secret_file, "--offline-webhook-delay", delay]
    env = dict(os.environ, CHAT_JWT_SECRET=secret)
    log = open(os.path.join(data, "broker.log"), "wb")
    broker = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if requests.get(url + "/health", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, "the broker did not start"
            time.sleep(0.05)
        bench = subprocess.run([BENCH, "fanout", "--url", url, "--secret", secret, "--server-pid", str(broker.pid),
                                "--json", "--quiet", *args], capture_output=True, text=True, timeout=600)
        report = json.loads(bench.stdout)
        values = {m["key"]: m["value"] for m in report["metrics"]}
        result = {"label": label, "acked_per_s": values.get("acked_per_s"), "ack_p99_ms": values.get("ack_p99_ms"),
                  "e2e_p99_ms": values.get("latency_p99_ms"), "problems": report.get("problems", [])}
        if hook is not None and delay != "1":
            result["notices_queued"] = int(metric(url, "chat_offline_notices_queued_total"))
        elif hook is not None:
            queued = metric(url, "chat_offline_notices_queued_total")
            deadline = time.monotonic() + 300
            while len({n["idempotencyKey"] for n in hook.notifications()}) < queued and time.monotonic() < deadline:
                time.sleep(0.2)
            reqs = hook.accepted()
            keys = {n["idempotencyKey"] for n in hook.notifications()}
            span = (reqs[-1]["at"] - reqs[0]["at"]) if len(reqs) > 1 else 0
            result.update({"notices_queued": int(queued), "notices_received": len(keys), "requests": len(reqs),
                           "drain_per_s": round(len(keys) / span) if span else None,
                           "sent_metric": int(metric(url, "chat_offline_notices_sent_total"))})
            if len(keys) < queued:
                result["problems"].append(f"only {len(keys)} of {int(queued)} notices arrived")
        return result
    finally:
        broker.send_signal(signal.SIGTERM)
        try:
            broker.wait(30)
        except subprocess.TimeoutExpired:
            broker.kill()
        log.close()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=int, default=10)
    p.add_argument("--offline", type=int, default=2)
    p.add_argument("--json-out")
    a = p.parse_args()
    secret = secrets.token_urlsafe(36)
    args = ["--threads", "100", "--members", "10", "--devices", "2", "--rate", "0", "--inflight", "4",
            "--duration", str(a.duration), "--offline-members", str(a.offline)]
    results = []
    # "webhook, not due": notices are written with every message but due in an hour, so the run measures the
    # outbox writes alone; "webhook": due after 1 s, so the dispatcher (and the receiver, on the same cores) run too.
    configs = [("no webhook", False, "1"), ("webhook, not due", True, "3600"), ("webhook", True, "1")]
    for r in range(a.rounds):
        for label, with_hook, delay in (configs if r % 2 == 0 else configs[::-1]):
            hook = Receiver(free_port()) if with_hook else None
            try:
                res = run(label, args, hook, secret, delay)
            finally:
                if hook:
                    hook.close()
            res["round"] = r + 1
            results.append(res)
            print(json.dumps(res), flush=True)
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump({"command": " ".join(sys.argv), "bench_args": args, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
