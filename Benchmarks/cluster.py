#!/usr/bin/env python3
"""Several nodes against one, side by side: the release broker on SQLite (one node), on PostgreSQL (one node) and on
PostgreSQL (three nodes, chat-bench spreading its devices over them with --url a,b,c), in alternation, `--rounds`
times, with the same chat-bench scenarios; and PostgreSQL's own CPU per 1,000 acknowledged sends.

    Benchmarks/cluster.py --database-url "$URL" --pg-pid <postmaster pid> [--rounds 2] [--json-out FILE]
        [--broker LABEL=PATH ...] [--targets sqlite,pg1,pg3] [--scenarios rate,closed] [--fresh-database]

With several `--broker` (say the binary before a change and after it), every target runs with each binary in turn
(interleaved, in the same sitting); by default the one binary is `.build/release/chat-broker`.

Needs release builds of chat-broker and chat-bench (`swift build -c release --product chat-broker` and
`--product chat-bench`). The database must be empty of other load; the postmaster pid lets the script add up the
CPU time of PostgreSQL's processes (the postmaster and its children) around each run. Every broker is started fresh
on a free 127.0.0.1 port for each run and stopped by PID. `--fresh-database`: every PostgreSQL run gets a database
of its own (created with psql next to the URL's, dropped afterwards), so that binaries with different schema versions
can alternate and no run inherits the rows of the runs before it.
"""
import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse

import requests

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
BROKER = os.path.join(ROOT, ".build", "release", "chat-broker")
BENCH = os.path.join(ROOT, ".build", "release", "chat-bench")
TICK = os.sysconf("SC_CLK_TCK")

SCENARIOS = {  # by the name `--scenarios` takes: the label the results carry, and chat-bench's arguments
    "rate": ("p99 at 500 msgs/s", ["fanout", "--threads", "100", "--members", "10", "--devices", "2", "--rate", "500",
                                   "--duration", "10"]),
    "closed": ("closed loop, 4 in flight", ["fanout", "--threads", "100", "--members", "10", "--devices", "2", "--rate",
                                            "0", "--inflight", "4", "--duration", "10"]),
}


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def cpu_seconds(root_pid):
    """utime + stime of `root_pid` and its children (PostgreSQL's backends are children of the postmaster)."""
    total = 0
    pids = [root_pid]
    try:
        out = subprocess.run(["ps", "--ppid", str(root_pid), "-o", "pid="], capture_output=True, text=True).stdout
        pids += [int(p) for p in out.split()]
    except OSError:
        pass
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            # fields after the command: state is [0]; utime, stime, cutime, cstime are [11..14]
            total += sum(int(x) for x in fields[11:15])
        except (OSError, IndexError, ValueError):
            pass
    return total / TICK


class Nodes:
    """`n` brokers (SQLite when `database_url` is None), started fresh, stopped by PID."""

    def __init__(self, n, database_url, secret, broker=BROKER):
        self.root = tempfile.mkdtemp(prefix="chat-cluster-bench-")
        self.procs, self.ports = [], []
        env = {k: v for k, v in os.environ.items() if not k.startswith("CHAT_")}
        env["CHAT_JWT_SECRET"] = secret
        for i in range(n):
            port = free_port()
            args = [broker, "serve", "--host", "127.0.0.1", "--port", str(port), "--data-dir",
                    os.path.join(self.root, f"data-{i}"), "--rate-per-sec", "100000", "--rate-burst", "100000"]
            if database_url:
                args += ["--database-url", database_url]
            log = open(os.path.join(self.root, f"node-{i}.log"), "w")
            self.procs.append(subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT))
            self.ports.append(port)
        try:
            for port in self.ports:
                deadline = time.monotonic() + 60
                while True:
                    try:
                        if requests.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                            break
                    except requests.RequestException:
                        pass
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"a node did not come up; logs in {self.root}")
                    time.sleep(0.1)
        except BaseException:
            self.stop(keep_logs=True)   # the nodes that did start; their logs say why
            raise

    @property
    def urls(self):
        return ",".join(f"http://127.0.0.1:{p}" for p in self.ports)

    def stop(self, keep_logs=False):
        """Stops the nodes by PID and removes their folder (kept, with the logs, when a node failed)."""
        for p in self.procs:
            p.send_signal(signal.SIGTERM)
        failed = keep_logs
        for p in self.procs:
            try:
                failed = p.wait(20) != 0 or failed
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
                failed = True
        if failed:
            print(f"a node failed; its logs are in {self.root}", file=sys.stderr)
        else:
            shutil.rmtree(self.root, ignore_errors=True)


def psql(url, sql):
    out = subprocess.run(["psql", url.split("?")[0], "-v", "ON_ERROR_STOP=1", "-qAtc", sql], capture_output=True,
                         text=True, timeout=60)
    if out.returncode != 0:
        raise RuntimeError(f"psql failed ({sql}): {out.stderr.strip()}")


def fresh_database(url):
    """Creates an empty database beside `url`'s; returns its URL and a function that drops it."""
    name = "bench_" + secrets.token_hex(6)
    psql(url, f"CREATE DATABASE {name}")
    parts = urllib.parse.urlsplit(url)
    fresh = urllib.parse.urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))
    return fresh, lambda: psql(url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def run(label, nodes, database_url, scenario, secret, pg_pid, broker=BROKER, fresh=False):
    drop = None
    if database_url and fresh:
        database_url, drop = fresh_database(database_url)
    try:
        result = measure(label, nodes, database_url, scenario, secret, pg_pid, broker)
    except BaseException:
        if drop:
            try:
                drop()
            except Exception as error:   # the run's own error is the one to report
                print(f"could not drop the run's database: {error}", file=sys.stderr)
        raise
    if drop:
        drop()
    return result


def measure(label, nodes, database_url, scenario, secret, pg_pid, broker):
    cluster = Nodes(nodes, database_url, secret, broker)
    try:
        before = cpu_seconds(pg_pid) if (database_url and pg_pid) else None
        r = subprocess.run([BENCH] + scenario + ["--url", cluster.urls, "--json", "--quiet"],
                           capture_output=True, text=True, env={**os.environ, "CHAT_JWT_SECRET": secret}, timeout=300)
        after = cpu_seconds(pg_pid) if before is not None else None
    finally:
        cluster.stop()
    line = [x for x in r.stdout.splitlines() if x.startswith("{")]
    if not line:
        raise RuntimeError(f"chat-bench failed for {label}: {r.stderr[-2000:]}")
    report = json.loads(line[-1])
    m = {x["key"]: x["value"] for x in report["metrics"]}
    out = {"target": label, "acked_per_s": m.get("acked_per_s"), "deliveries_per_s": m.get("deliveries_per_s"),
           "p50_ms": m.get("latency_p50_ms"), "p99_ms": m.get("latency_p99_ms"), "p999_ms": m.get("latency_p999_ms"),
           "ack_p99_ms": m.get("ack_p99_ms"), "sent": m.get("sent"),
           "checks_failed": [x["key"] for x in report["metrics"] if x.get("check") and x["value"] != 0]}
    if before is not None and m.get("sent"):
        out["pg_cpu_s"] = round(after - before, 2)
        out["pg_cpu_ms_per_1000_sends"] = round((after - before) * 1e6 / m["sent"], 1)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--database-url", required=True)
    ap.add_argument("--pg-pid", type=int, default=None, help="the postmaster's pid (for PostgreSQL CPU per send)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json-out", default=None)
    ap.add_argument("--broker", action="append", default=[], metavar="LABEL=PATH",
                    help="a broker binary to run every target with (repeat to compare binaries, interleaved)")
    ap.add_argument("--targets", default="sqlite,pg1,pg3", help="which of sqlite, pg1, pg3 to run")
    ap.add_argument("--scenarios", default="rate,closed", help="which of rate (500 msgs/s) and closed (closed loop) to run")
    ap.add_argument("--fresh-database", action="store_true", help="a new database for every PostgreSQL run")
    args = ap.parse_args()
    all_targets = [("sqlite", "SQLite, 1 node", 1, None), ("pg1", "PostgreSQL, 1 node", 1, args.database_url),
                   ("pg3", "PostgreSQL, 3 nodes", 3, args.database_url)]
    for name, known in (("--scenarios", set(SCENARIOS)), ("--targets", {key for key, *_ in all_targets})):
        unknown = set(getattr(args, name[2:]).split(",")) - known
        if unknown:
            sys.exit(f"{name}: unknown {', '.join(sorted(unknown))} (known: {', '.join(sorted(known))})")
    brokers = [tuple(b.split("=", 1)) for b in args.broker] or [("", BROKER)]
    for path in [BENCH] + [path for _, path in brokers]:
        if not os.access(path, os.X_OK):
            sys.exit(f"missing {path}: swift build -c release --product chat-broker && swift build -c release --product chat-bench")
    secret = secrets.token_urlsafe(36)
    targets = [target for target in all_targets if target[0] in args.targets.split(",")]
    results = []
    for rnd in range(1, args.rounds + 1):
        for key, (name, scenario) in SCENARIOS.items():
            if key not in args.scenarios.split(","):
                continue
            for _, label, n, url in targets:
                for broker_label, broker in brokers:
                    res = run(label, n, url, scenario, secret, args.pg_pid, broker, args.fresh_database)
                    res.update({"round": rnd, "scenario": name})
                    if broker_label:
                        res["broker"] = broker_label
                    results.append(res)
                    print(json.dumps(res), flush=True)
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
