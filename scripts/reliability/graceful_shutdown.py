#!/usr/bin/env python3
"""Graceful shutdown under load: SIGTERM while --devices sockets are sending.

Checks: exit code 0 within --max-exit seconds, and after a restart on the same data directory every
acknowledged message is stored exactly once, seqs gap-free.

    python3 scripts/reliability/graceful_shutdown.py --devices 1000
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
from chatload import Broker, SioClient, default_broker, make_token, uid  # noqa: E402


async def load_then_term(broker, cfg, plan):
    acked = {}
    sent = [0]
    refused = {}
    after_term_acks = [0]
    term_at = [None]
    result = {}
    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as session:
        clients = []
        sem = asyncio.Semaphore(50)

        async def connect(tok, tid):
            async with sem:
                c = await SioClient(session, broker.url, tok).connect(timeout=30)
                clients.append((c, tid))

        t0 = time.monotonic()
        await asyncio.gather(*(connect(tok, tid) for tok, tid in plan))
        result["connect_s"] = round(time.monotonic() - t0, 1)
        print(f"{len(clients)} devices connected in {result['connect_s']} s", flush=True)
        stop = asyncio.Event()

        async def pump(c, tid, idx):
            n = 0
            await asyncio.sleep(random.uniform(0, cfg.interval))
            while not stop.is_set() and not c.closed.is_set() and n < 10000:
                content = f"d{idx}-{n}"
                n += 1
                try:
                    fut = c.emit_nowait("chat:send", {"threadId": tid, "content": content})
                except ConnectionError:
                    return
                sent[0] += 1

                def cb(f, content=content):
                    if f.cancelled() or f.exception() is not None:
                        return
                    a = f.result()
                    if isinstance(a, dict) and a.get("success"):
                        acked[content] = (a["message"]["threadId"], a["message"]["seq"])
                        if term_at[0] is not None:
                            after_term_acks[0] += 1
                    elif isinstance(a, dict):
                        refused[a.get("code")] = refused.get(a.get("code"), 0) + 1

                fut.add_done_callback(cb)
                await asyncio.sleep(cfg.interval * random.uniform(0.5, 1.5))

        tasks = [asyncio.ensure_future(pump(c, tid, i)) for i, (c, tid) in enumerate(clients)]
        await asyncio.sleep(cfg.load_seconds)
        result["acked_before_term"] = len(acked)
        result["send_rate_per_s"] = round(len(acked) / cfg.load_seconds)
        term_at[0] = time.monotonic()
        loop = asyncio.get_running_loop()
        rc, exit_s = await loop.run_in_executor(None, broker.term, cfg.max_exit + 30)
        result["exit_code"] = rc
        result["exit_seconds"] = round(exit_s, 2)
        stop.set()
        await asyncio.sleep(0.5)
        for t in tasks:
            t.cancel()
        result["disconnected"] = sum(1 for c, _ in clients if c.closed.is_set())
        for c, _ in clients:
            await c.close()
    result["sent"] = sent[0]
    result["acked"] = len(acked)
    result["acked_after_sigterm"] = after_term_acks[0]
    result["refused"] = refused
    return result, acked


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--broker", default=None)
    ap.add_argument("--devices", type=int, default=1000)
    ap.add_argument("--per-thread", type=int, default=2, help="devices (users) per thread")
    ap.add_argument("--interval", type=float, default=0.5, help="seconds between sends of one device")
    ap.add_argument("--load-seconds", type=float, default=5)
    ap.add_argument("--max-exit", type=float, default=10, help="the bound on the time to exit (s)")
    ap.add_argument("--durability", default="full")
    ap.add_argument("--json-out", default=None)
    cfg = ap.parse_args()
    binary = cfg.broker or default_broker()
    root = tempfile.mkdtemp(prefix="chat-term-")
    broker = Broker(binary, os.path.join(root, "data"), log_dir=os.path.join(root, "logs"),
                    extra=["--durability", cfg.durability])
    ok = False
    try:
        broker.start()
        co = uid("co")
        users = [uid("u") for _ in range(cfg.devices)]
        toks = [make_token(broker.secret, u, co) for u in users]
        plan = []
        threads = []
        for i in range(0, cfg.devices, cfg.per_thread):
            group = users[i:i + cfg.per_thread]
            tid = broker.make_thread(toks[i], group[1:])
            threads.append((tid, toks[i]))
            plan += [(toks[i + j], tid) for j in range(len(group))]
        res, acked = asyncio.run(load_then_term(broker, cfg, plan))
        print(json.dumps(res), flush=True)
        broker.start()
        lost, dup, gaps, stored = 0, 0, 0, 0
        for tid, tok in threads:
            msgs = broker.history(tok, tid)
            stored += len(msgs)
            if [m["seq"] for m in msgs] != list(range(1, len(msgs) + 1)):
                gaps += 1
            contents = [m["content"] for m in msgs]
            dup += len(contents) - len(set(contents))
            have = set(contents)
            lost += sum(1 for c, (t, _) in acked.items() if t == tid and c not in have)
        broker.term()
        res.update({"stored": stored, "lost": lost, "duplicated": dup, "threads_with_gaps": gaps,
                    "stored_unacked": stored - (len(acked) - lost)})
        ok = (res["exit_code"] == 0 and res["exit_seconds"] <= cfg.max_exit and lost == 0 and dup == 0
              and gaps == 0)
        res["ok"] = ok
        print("summary " + json.dumps(res), flush=True)
        if cfg.json_out:
            with open(cfg.json_out, "w") as f:
                json.dump(res, f, indent=1)
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
