#!/usr/bin/env python3
"""Crash under load: fan-out at a high rate, SIGKILL the broker at random moments, restart it on the same data
directory, and check after every restart that

  * every message whose chat:send was acknowledged is stored exactly once,
  * each thread's seq is gap-free and increasing (1..last),
  * a client that saw live events up to some seq catches up with chat:sync to exactly the stored state
    (live seqs + synced seqs == the stored seqs, same message ids).

Prints one line per kill (acknowledged vs found) and a JSON summary (--json-out).

    python3 scripts/reliability/crash_under_load.py --kills 20
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
from chatload import Broker, SioClient, default_broker, event_seq, make_token, sync_all, uid  # noqa: E402


async def one_cycle(broker, cfg, cycle, threads, toks, watcher_tok, rng):
    """Runs senders until a SIGKILL at a random moment; returns what was acked and what the watcher saw live."""
    acked = {}          # content -> (tid, id, seq)
    sent = 0
    live = {tid: [] for tid in threads}      # seqs the watcher received live, in arrival order
    live_ids = {}
    order_violations = []

    def on_event(_c, name, data):
        if name == "chat:message":
            tid = data["threadId"]
            if tid in live:
                live[tid].append(data["message"]["seq"])
                live_ids[data["message"]["seq"], tid] = data["message"]["id"]

    async with aiohttp.ClientSession() as session:
        watcher = await SioClient(session, broker.url, watcher_tok, on_event=on_event).connect()
        senders = []
        for i in range(cfg.senders):
            tid = threads[i % len(threads)]
            tok = toks[i % len(toks)]
            senders.append((await SioClient(session, broker.url, tok).connect(), tid, i))
        stop = asyncio.Event()

        async def pump(client, tid, idx):
            nonlocal sent
            inflight = set()
            n = 0
            while not stop.is_set() and n < cfg.max_per_sender:
                while len(inflight) >= cfg.window and not stop.is_set():
                    done, _ = await asyncio.wait(inflight, timeout=0.5, return_when=asyncio.FIRST_COMPLETED)
                    inflight -= done
                if stop.is_set() or client.closed.is_set():
                    return
                content = f"c{cycle}-s{idx}-{n}"
                n += 1
                try:
                    fut = client.emit_nowait("chat:send", {"threadId": tid, "content": content})
                except ConnectionError:
                    return
                sent += 1

                def done_cb(f, content=content):
                    if f.cancelled() or f.exception() is not None:
                        return
                    ack = f.result()
                    if isinstance(ack, dict) and ack.get("success"):
                        m = ack["message"]
                        acked[content] = (m["threadId"], m["id"], m["seq"])

                fut.add_done_callback(done_cb)
                inflight.add(fut)
                if n % 50 == 0:
                    await asyncio.sleep(0)

        tasks = [asyncio.ensure_future(pump(*s)) for s in senders]
        delay = rng.uniform(cfg.min_run, cfg.max_run)
        await asyncio.sleep(delay)
        acked_before_kill = len(acked)
        broker.kill()                                   # SIGKILL by PID, mid-traffic
        killed_at = time.monotonic()
        await asyncio.sleep(0.2)                        # let the readers notice the closed sockets
        stop.set()
        await asyncio.wait(tasks, timeout=5)
        for t in tasks:
            t.cancel()
        for c, _, _ in senders:
            await c.close()
        await watcher.close()
    return {"acked": dict(acked), "sent": sent, "live": live, "live_ids": live_ids, "delay": delay,
            "acked_before_kill": acked_before_kill, "killed_at": killed_at, "order_violations": order_violations}


async def verify(broker, threads, watcher_tok, prev_last, run, all_acked):
    """After a restart: the new events of every thread, checked against what was acked and seen live."""
    res = {"found": 0, "lost": [], "dupes": 0, "gap_free": True, "sync_matches_live": True, "stored_unacked": 0,
           "live_in_order": True}
    async with aiohttp.ClientSession() as session:
        watcher = await SioClient(session, broker.url, watcher_tok).connect()
        for tid in threads:
            full = await sync_all(watcher, tid, prev_last[tid])
            seqs = [event_seq(d) for (_, d) in full]
            if seqs != list(range(prev_last[tid] + 1, prev_last[tid] + 1 + len(seqs))):
                res["gap_free"] = False
            msgs = [d["message"] for (e, d) in full if e == "chat:message"]
            by_content = {}
            for m in msgs:
                by_content.setdefault(m["content"], []).append(m)
            mine = {c: v for c, v in run["acked"].items() if v[0] == tid}
            for c, (_, mid, seq) in mine.items():
                got = by_content.get(c, [])
                if len(got) == 1 and got[0]["id"] == mid and got[0]["seq"] == seq:
                    res["found"] += 1
                elif not got:
                    res["lost"].append(c)
                else:
                    res["dupes"] += max(0, len(got) - 1)
                    if not any(g["id"] == mid and g["seq"] == seq for g in got):
                        res["lost"].append(c)
                    else:
                        res["found"] += 1
            res["stored_unacked"] += sum(1 for c in by_content if c not in mine)
            # the live view: in order, no gaps, a prefix of the stored seqs; chat:sync from its last seq gives the rest
            lv = run["live"][tid]
            if lv != sorted(lv) or (lv and lv != list(range(lv[0], lv[0] + len(lv)))):
                res["live_in_order"] = False
            last_live = lv[-1] if lv else prev_last[tid]
            rest = await sync_all(watcher, tid, last_live)
            caught_up = [x for x in lv if x > prev_last[tid]] + [event_seq(d) for (_, d) in rest]
            if caught_up != seqs:
                res["sync_matches_live"] = False
            stored_ids = {m["seq"]: m["id"] for m in msgs}
            for s in lv:
                if s > prev_last[tid] and run["live_ids"].get((s, tid)) != stored_ids.get(s):
                    res["sync_matches_live"] = False
            prev_last[tid] = seqs[-1] if seqs else prev_last[tid]
        await watcher.close()
    all_acked.update(run["acked"])
    return res


def final_check(broker, threads, tok, all_acked):
    """A full REST history pass: gap-free seqs, every acked message exactly once."""
    total, lost, dupes, gaps = 0, 0, 0, 0
    for tid in threads:
        msgs = broker.history(tok, tid)
        total += len(msgs)
        if [m["seq"] for m in msgs] != list(range(1, len(msgs) + 1)):
            gaps += 1
        counts = {}
        for m in msgs:
            counts[m["content"]] = counts.get(m["content"], 0) + 1
        for c, (t, mid, seq) in all_acked.items():
            if t != tid:
                continue
            if counts.get(c, 0) == 0:
                lost += 1
            elif counts[c] > 1:
                dupes += 1
    return {"stored_total": total, "acked_total": len(all_acked), "lost": lost, "duplicated": dupes,
            "threads_with_gaps": gaps}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--broker", default=None, help="chat-broker binary (default: .build/release, else .build/debug)")
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--threads", type=int, default=4)
    ap.add_argument("--senders", type=int, default=8, help="sending sockets (spread over the threads)")
    ap.add_argument("--members", type=int, default=20, help="extra offline members per thread (fan-out size)")
    ap.add_argument("--window", type=int, default=64, help="unacknowledged sends in flight per socket")
    ap.add_argument("--min-run", type=float, default=0.5, help="shortest run before a kill (s)")
    ap.add_argument("--max-run", type=float, default=3.0, help="longest run before a kill (s)")
    ap.add_argument("--max-per-sender", type=int, default=200000)
    ap.add_argument("--durability", default="full", choices=["full", "process"])
    ap.add_argument("--time-limit", type=float, default=900, help="stop after this many seconds (s)")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--json-out", default=None)
    cfg = ap.parse_args()
    seed = cfg.seed if cfg.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    binary = cfg.broker or default_broker()
    root = tempfile.mkdtemp(prefix="chat-crash-")
    data = os.path.join(root, "data")
    broker = Broker(binary, data, extra=["--rate-per-sec", "100000", "--rate-burst", "100000",
                                         "--durability", cfg.durability], log_dir=os.path.join(root, "logs"))
    print(f"broker {binary}  data {data}  seed {seed}", flush=True)
    co = uid("co")
    users = [uid("alice"), uid("bob")]
    watcher_user = uid("watcher")
    toks = [make_token(broker.secret, u, co) for u in users]
    watcher_tok = make_token(broker.secret, watcher_user, co)
    rows = []
    all_acked = {}
    t_start = time.monotonic()
    ok = True
    try:
        broker.start()
        extra_members = [uid("m") for _ in range(cfg.members)]
        threads = [broker.make_thread(toks[0], [users[1], watcher_user] + extra_members) for _ in range(cfg.threads)]
        prev_last = {t: 0 for t in threads}
        for k in range(1, cfg.kills + 1):
            if time.monotonic() - t_start > cfg.time_limit:
                print(f"time limit reached after {k - 1} kills", flush=True)
                break
            run = asyncio.run(one_cycle(broker, cfg, k, threads, toks, watcher_tok, rng))
            restart_s = broker.start()
            res = asyncio.run(verify(broker, threads, watcher_tok, prev_last, run, all_acked))
            row = {"kill": k, "run_s": round(run["delay"], 2), "sent": run["sent"], "acked": len(run["acked"]),
                   "found": res["found"], "lost": len(res["lost"]), "duplicated": res["dupes"],
                   "stored_unacked": res["stored_unacked"], "gap_free": res["gap_free"],
                   "live_in_order": res["live_in_order"], "sync_catch_up_matches": res["sync_matches_live"],
                   "restart_s": round(restart_s, 2)}
            rows.append(row)
            good = (row["lost"] == 0 and row["duplicated"] == 0 and row["gap_free"] and row["sync_catch_up_matches"]
                    and row["live_in_order"])
            ok = ok and good
            print(("OK  " if good else "FAIL") + " " + json.dumps(row), flush=True)
            if res["lost"]:
                print("   lost e.g.", res["lost"][:5], flush=True)
        final = final_check(broker, threads, toks[0], all_acked)
        ok = ok and final["lost"] == 0 and final["duplicated"] == 0 and final["threads_with_gaps"] == 0
        print("final " + json.dumps(final), flush=True)
    finally:
        if broker.alive():
            broker.term()
    summary = {"seed": seed, "broker": binary, "durability": cfg.durability, "kills": len(rows),
               "acked": sum(r["acked"] for r in rows), "found": sum(r["found"] for r in rows),
               "lost": sum(r["lost"] for r in rows), "duplicated": sum(r["duplicated"] for r in rows),
               "stored_unacked": sum(r["stored_unacked"] for r in rows), "rows": rows,
               "final": final if rows else None, "ok": ok, "seconds": round(time.monotonic() - t_start, 1)}
    print("summary " + json.dumps({k: v for k, v in summary.items() if k != "rows"}), flush=True)
    if cfg.json_out:
        with open(cfg.json_out, "w") as f:
            json.dump(summary, f, indent=1)
    if ok:
        shutil.rmtree(root, ignore_errors=True)
    else:
        print(f"kept {root} for inspection", flush=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
