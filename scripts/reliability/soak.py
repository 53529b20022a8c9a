#!/usr/bin/env python3
"""Soak: --minutes of mixed traffic with connects and disconnects against one broker, sampling every
--sample seconds the broker's RSS (/proc/PID/status), open file descriptors (/proc/PID/fd) and the p50/p99 of
send -> delivery latency (measured by the receiving socket) and of send -> ack.

Traffic: --stable devices stay connected and send every --interval s (plus typing, mark-read, history, sync);
--churners devices loop connect -> a few sends -> disconnect. Bounded: stops after --minutes, every loop
counts and checks the deadline. At the end all clients disconnect, and the fd count is compared with the
count before any client connected.

    python3 scripts/reliability/soak.py --minutes 10 --json-out soak.json
"""
import argparse
import asyncio
import json
import os
import random
import shutil
import sys
import tempfile
import time

import aiohttp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from chatload import Broker, SioClient, default_broker, make_token, percentile, uid  # noqa: E402


class Stats:
    def __init__(self):
        self.delivery = []
        self.ack = []
        self.sent = 0
        self.acked = 0
        self.failed = 0
        self.connects = 0
        self.disconnects = 0
        self.connect_errors = 0

    def take(self):
        d, a = self.delivery, self.ack
        self.delivery, self.ack = [], []
        return d, a


async def soak(broker, cfg, plan, churn_plan, stats, samples):
    deadline = time.monotonic() + cfg.minutes * 60
    conn = aiohttp.TCPConnector(limit=0)

    def on_event(_c, name, data):
        if name == "chat:message":
            content = data["message"]["content"]
            if content.startswith("t="):
                sent_at = float(content[2:].split(" ", 1)[0])
                stats.delivery.append(time.monotonic() - sent_at)

    async with aiohttp.ClientSession(connector=conn) as session:
        async def device(tok, tid, idx):
            c = await SioClient(session, broker.url, tok, on_event=on_event).connect(timeout=30)
            stats.connects += 1
            n = 0
            while time.monotonic() < deadline and not c.closed.is_set() and n < 10_000_000:
                n += 1
                t0 = time.monotonic()
                try:
                    ack = await c.call("chat:send", {"threadId": tid, "content": f"t={t0:.6f} d{idx}-{n}"}, timeout=30)
                    stats.sent += 1
                    if ack.get("success"):
                        stats.acked += 1
                        stats.ack.append(time.monotonic() - t0)
                    else:
                        stats.failed += 1
                    r = random.random()
                    if r < 0.2:
                        c.emit_nowait("chat:typing:start", {"threadId": tid}, ack=False)
                    elif r < 0.3:
                        await c.call("chat:mark-read", {"threadId": tid}, timeout=30)
                    elif r < 0.33:
                        await c.call("chat:history", {"threadId": tid, "limit": 50}, timeout=30)
                    elif r < 0.35:
                        await c.call("chat:sync", {"threads": [{"threadId": tid, "afterSeq": max(0, ack.get("message", {}).get("seq", 0) - 100)}]}, timeout=30)
                except (asyncio.TimeoutError, ConnectionError):
                    stats.failed += 1
                await asyncio.sleep(cfg.interval * random.uniform(0.5, 1.5))
            await c.close()
            stats.disconnects += 1

        async def churner(tok, tid, idx):
            k = 0
            while time.monotonic() < deadline and k < 1_000_000:
                k += 1
                try:
                    c = await SioClient(session, broker.url, tok, on_event=on_event).connect(timeout=30)
                except (ConnectionError, asyncio.TimeoutError, aiohttp.ClientError):
                    stats.connect_errors += 1
                    await asyncio.sleep(1)
                    continue
                stats.connects += 1
                for j in range(random.randint(1, 5)):
                    t0 = time.monotonic()
                    try:
                        ack = await c.call("chat:send", {"threadId": tid, "content": f"t={t0:.6f} c{idx}-{k}-{j}"}, timeout=30)
                        stats.sent += 1
                        if ack.get("success"):
                            stats.acked += 1
                            stats.ack.append(time.monotonic() - t0)
                        else:
                            stats.failed += 1
                    except (asyncio.TimeoutError, ConnectionError):
                        stats.failed += 1
                    await asyncio.sleep(random.uniform(0.05, 0.3))
                if random.random() < 0.5:
                    await c.close()                         # clean close
                else:
                    try:                                    # abrupt: the TCP connection dropped, no close frame
                        c.ws._response.close()
                    except Exception:  # noqa: BLE001
                        pass
                    await c.close()
                stats.disconnects += 1
                await asyncio.sleep(random.uniform(0.1, 0.5))

        async def sampler():
            t_start = time.monotonic()
            while time.monotonic() < deadline + 1:
                await asyncio.sleep(cfg.sample)
                d, a = stats.take()
                row = {"t_s": round(time.monotonic() - t_start), "rss_mb": round((broker.rss_kb() or 0) / 1024, 1),
                       "fds": broker.fd_count(), "connects": stats.connects, "disconnects": stats.disconnects,
                       "acked": stats.acked, "failed": stats.failed,
                       "delivery_p50_ms": round(1000 * (percentile(d, 50) or 0), 1),
                       "delivery_p99_ms": round(1000 * (percentile(d, 99) or 0), 1),
                       "ack_p99_ms": round(1000 * (percentile(a, 99) or 0), 1), "deliveries": len(d),
                       "loadavg1": float(open("/proc/loadavg").read().split()[0])}
                samples.append(row)
                print(json.dumps(row), flush=True)

        tasks = [asyncio.ensure_future(device(tok, tid, i)) for i, (tok, tid) in enumerate(plan)]
        tasks += [asyncio.ensure_future(churner(tok, tid, i)) for i, (tok, tid) in enumerate(churn_plan)]
        sam = asyncio.ensure_future(sampler())
        await asyncio.gather(*tasks, return_exceptions=True)
        sam.cancel()


async def prime(broker, plan):
    async with aiohttp.ClientSession() as session:
        clients = [await SioClient(session, broker.url, tok).connect() for tok, _ in plan]
        for c, (_, tid) in zip(clients, plan):
            await c.call("chat:send", {"threadId": tid, "content": "prime"})
            await c.call("chat:history", {"threadId": tid})
            await c.call("chat:sync", {"threads": [{"threadId": tid, "afterSeq": 0}]})
        for c in clients:
            await c.close()


def fd_kinds(pid):
    kinds = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        k = target.split(":", 1)[0] if ":" in target else os.path.basename(target)
        kinds[k] = kinds.get(k, 0) + 1
    return kinds


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--broker", default=None)
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--stable", type=int, default=200)
    ap.add_argument("--churners", type=int, default=40)
    ap.add_argument("--per-thread", type=int, default=4)
    ap.add_argument("--interval", type=float, default=0.5)
    ap.add_argument("--sample", type=float, default=15)
    ap.add_argument("--warmup", type=float, default=120, help="seconds of warm-up before the RSS baseline")
    ap.add_argument("--p99-target-ms", type=float, default=500)
    ap.add_argument("--idle-check", type=float, default=0,
                    help="after the load, stay idle this long (> 300 s passivates every thread) and sample RSS again")
    ap.add_argument("--json-out", default=None)
    cfg = ap.parse_args()
    binary = cfg.broker or default_broker()
    root = tempfile.mkdtemp(prefix="chat-soak-")
    broker = Broker(binary, os.path.join(root, "data"), log_dir=os.path.join(root, "logs"))
    ok = False
    try:
        broker.start()
        time.sleep(1)
        rss0 = broker.rss_kb()
        co = uid("co")
        users = [uid("u") for _ in range(cfg.stable)]
        toks = [make_token(broker.secret, u, co, ttl=4 * 3600) for u in users]
        plan, threads = [], []
        for i in range(0, cfg.stable, cfg.per_thread):
            group = users[i:i + cfg.per_thread]
            tid = broker.make_thread(toks[i], group[1:])
            threads.append(tid)
            plan += [(toks[i + j], tid) for j in range(len(group))]
        churn_users = [uid("ch") for _ in range(cfg.churners)]
        churn_plan = []
        for i, u in enumerate(churn_users):
            tid = threads[i % len(threads)]
            owner = toks[(i % len(threads)) * cfg.per_thread]
            r = broker.rest("POST", f"/chat/threads/{tid}/members", owner, {"userIds": [u]})
            assert r.status_code == 200, r.text
            churn_plan.append((make_token(broker.secret, u, co, ttl=4 * 3600), tid))
        # priming: the store opens its reader connections lazily; take the fd baseline after a short burst
        asyncio.run(prime(broker, plan[:20]))
        time.sleep(3)
        fd0 = broker.fd_count()
        fd_kinds0 = fd_kinds(broker.pid)
        stats = Stats()
        samples = []
        print(json.dumps({"start_rss_mb": round(rss0 / 1024, 1), "start_fds": fd0, "stable": cfg.stable,
                          "churners": cfg.churners, "threads": len(threads)}), flush=True)
        t0 = time.monotonic()
        asyncio.run(soak(broker, cfg, plan, churn_plan, stats, samples))
        time.sleep(3)
        fd_end, rss_end = broker.fd_count(), broker.rss_kb()
        fd_kinds_end = fd_kinds(broker.pid)
        print(json.dumps({"fd_kinds_start": fd_kinds0, "fd_kinds_end": fd_kinds_end}), flush=True)
        # SQLite files: GRDB opens up to 5 reader connections lazily (db + wal each), so up to 12 are expected
        sqlite_fds = sum(v for k, v in fd_kinds_end.items() if k.startswith("chat.sqlite"))
        other_end = sum(v for k, v in fd_kinds_end.items() if not k.startswith("chat.sqlite"))
        other_start = sum(v for k, v in fd_kinds0.items() if not k.startswith("chat.sqlite"))
        conns_end = broker.metrics().get("chat_connections")
        warm = [s for s in samples if s["t_s"] >= cfg.warmup]
        rss_warm = warm[0]["rss_mb"] if warm else None
        rss_last_loaded = samples[-2]["rss_mb"] if len(samples) >= 2 else None
        p99s = [s["delivery_p99_ms"] for s in samples if s["deliveries"]]
        res = {"seconds": round(time.monotonic() - t0), "start_rss_mb": round(rss0 / 1024, 1),
               "rss_after_warmup_mb": rss_warm, "rss_end_loaded_mb": rss_last_loaded,
               "rss_end_idle_mb": round(rss_end / 1024, 1), "start_fds": fd0, "end_fds_idle": fd_end,
               "connections_metric_end": conns_end, "connects": stats.connects, "disconnects": stats.disconnects,
               "acked": stats.acked, "failed": stats.failed, "connect_errors": stats.connect_errors,
               "max_window_p99_ms": max(p99s) if p99s else None,
               "median_window_p99_ms": sorted(p99s)[len(p99s) // 2] if p99s else None, "samples": samples}
        growth = (rss_last_loaded - rss_warm) / rss_warm if rss_warm and rss_last_loaded else None
        res["rss_growth_after_warmup"] = round(growth, 3) if growth is not None else None
        res.update({"fd_kinds_start": fd_kinds0, "fd_kinds_end": fd_kinds_end})
        ok = (other_end <= other_start and sqlite_fds <= 13 and growth is not None and growth < 0.2
              and res["max_window_p99_ms"] is not None and res["max_window_p99_ms"] <= cfg.p99_target_ms
              and stats.failed == 0)
        if cfg.idle_check > 0:
            idle = []
            t_idle = time.monotonic()
            while time.monotonic() - t_idle < cfg.idle_check:
                time.sleep(min(30, cfg.idle_check))
                m = broker.metrics()
                idle.append({"idle_s": round(time.monotonic() - t_idle), "rss_mb": round(broker.rss_kb() / 1024, 1),
                             "active_threads": m.get("chat_active_threads"), "fds": broker.fd_count()})
                print(json.dumps(idle[-1]), flush=True)
            res["idle"] = idle
        res["ok"] = ok
        print("summary " + json.dumps({k: v for k, v in res.items() if k != "samples"}), flush=True)
        if cfg.json_out:
            with open(cfg.json_out, "w") as f:
                json.dump(res, f, indent=1)
        broker.term()
    finally:
        if broker.alive():
            broker.kill()
        if ok:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"kept {root}", flush=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
