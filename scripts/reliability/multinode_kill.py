#!/usr/bin/env python3
"""Several broker nodes on one PostgreSQL under load, one of them killed -9 again and again.

Starts --nodes brokers (Tests/Interop/multinode.py) on --db-url, creates --threads group threads whose members
are users with a device on every node, and keeps --senders-per-node devices per node sending (pipelined,
--rate sends/s each, up to --window unacknowledged). --kills times, spread over --duration seconds, it kills a
random node with SIGKILL, reconnects that node's devices to the other nodes (each catches up with chat:sync from
the last seq it held), restarts the node on the same port and moves its devices back home (again with sync).

At the end, with the senders stopped:
  * every thread read with chat:sync from 0, on every node (all must answer the same), is gap-free (1..last);
  * every acknowledged send is stored exactly once, with the acknowledged seq and id (0 lost, 0 duplicated);
  * every device holds exactly the stored events: each socket's live stream was gap-free and in order, and the
    chat:sync at each reconnect returned exactly the range the device had missed (multinode.Device);
  * no send was refused (an error ack) unless --allow-send-errors.
One line per kill, then `summary {json}` as the last line; exit 0 when all of that holds, 1 otherwise.

    python3 scripts/reliability/multinode_kill.py --db-url "$CHAT_TEST_DATABASE_URL" --nodes 3 --kills 10 --duration 60

The binary is $CHAT_BROKER_BIN or --binary (default .build/debug/chat-broker). Logs are kept (and their folder
printed) when a check fails or with --keep-logs. Everything is bounded: waits have timeouts and the whole run
stops after --time-limit seconds.
"""
import argparse
import json
import os
import random
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "Tests", "Interop"))

import multinode  # noqa: E402
from conftest import token, uid  # noqa: E402
from multinode import FAST, Cluster, Device, MultiHarness, Pump, event_seq, stop_pumps, sync_all  # noqa: E402


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--db-url", default=os.environ.get("CHAT_TEST_DATABASE_URL") or os.environ.get("CHAT_DATABASE_URL"),
                    help="postgres:// URL shared by every node (default $CHAT_TEST_DATABASE_URL)")
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of load over which the kills are spread")
    ap.add_argument("--threads", type=int, default=4, help="group threads; every user is a member of each")
    ap.add_argument("--devices-per-node", type=int, default=3, help="sockets per node (one user each)")
    ap.add_argument("--senders-per-node", type=int, default=2, help="of those, how many send")
    ap.add_argument("--rate", type=float, default=20.0, help="sends per second per sender")
    ap.add_argument("--window", type=int, default=16, help="unacknowledged sends in flight per sender")
    ap.add_argument("--durability", default="full", choices=["full", "process"])
    ap.add_argument("--binary", default=multinode.BINARY)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--catch-up-timeout", type=float, default=30.0, help="seconds for a device to receive the tail")
    ap.add_argument("--time-limit", type=float, default=None, help="stop killing after this many seconds "
                    "(default --duration + 120)")
    ap.add_argument("--allow-send-errors", action="store_true", help="error acks (e.g. internal) do not fail the run")
    ap.add_argument("--keep-logs", action="store_true")
    ap.add_argument("--json-out", default=None)
    cfg = ap.parse_args()
    if not cfg.db_url:
        ap.error("--db-url (or CHAT_TEST_DATABASE_URL) is required")
    if cfg.nodes < 1 or cfg.kills < 0 or cfg.senders_per_node > cfg.devices_per_node:
        ap.error("need --nodes >= 1, --kills >= 0, --senders-per-node <= --devices-per-node")
    return cfg


T0 = time.monotonic()


def log(text):
    print(f"[{time.monotonic() - T0:6.1f}s] {text}", flush=True)


def main():
    cfg = parse_args()
    seed = cfg.seed if cfg.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    time_limit = cfg.time_limit if cfg.time_limit is not None else cfg.duration + 120
    t_start = time.monotonic()
    cluster = Cluster(cfg.nodes, cfg.db_url, extra_args=FAST + ("--durability", cfg.durability), binary=cfg.binary,
                      keep_logs=cfg.keep_logs)
    log(f"{cfg.nodes} nodes of {cfg.binary} on one database; logs in {cluster.root}; seed {seed}")
    mh = MultiHarness(cluster)
    rows, pumps, devices = [], [], []
    summary = {"ok": False, "seed": seed}
    ok = True
    try:
        cluster.start()
        log("nodes: " + ", ".join(f"{n.name}=:{n.port}" for n in cluster))
        co = uid("co")
        n_dev = cfg.nodes * cfg.devices_per_node
        users = [uid(f"u{i}") for i in range(n_dev)]
        toks = {u: token(u, co, ttl=6 * 3600) for u in users}
        threads = []
        for k in range(cfg.threads):
            creator = users[k % n_dev]
            others = [u for u in users if u != creator]
            threads.append(mh.make_thread(cluster.nodes[k % cfg.nodes], toks[creator], others, name=f"load-{k}")["id"])
        home = {}
        pump_of = {}
        for i, u in enumerate(users):
            node = cluster.nodes[i % cfg.nodes]
            d = Device(mh, toks[u], threads, f"d{i}@{node.name}")
            d.attach(node)
            home[d] = node
            devices.append(d)
            if i // cfg.nodes < cfg.senders_per_node:
                p = Pump(d.client, threads, rate=cfg.rate, window=cfg.window, prefix=f"d{i}").start()
                pumps.append(p)
                pump_of[d] = p
        log(f"{len(threads)} threads x {n_dev} members, {len(pumps)} senders at {cfg.rate}/s each")

        interval = cfg.duration / (cfg.kills + 1)
        seen_problems = {d: 0 for d in devices}
        for k in range(1, cfg.kills + 1):
            if time.monotonic() - t_start > time_limit:
                log(f"time limit reached after {k - 1} kills")
                break
            time.sleep(interval * rng.uniform(0.5, 1.5))
            victim = rng.choice(cluster.live())
            on_victim = [d for d in devices if d.node is victim]
            acked_before = sum(p.acked_count() for p in pumps)
            cluster.kill9(victim)
            t_kill = time.monotonic()
            others = [n for n in cluster.live() if n is not victim]
            synced_before = sum(t["count"] for d in devices for t in d.transitions)
            for d in on_victim:
                d.lost_connection(10)
                if pump_of.get(d):
                    pump_of[d].pause()
            if others:                              # reconnect elsewhere while the node is down
                for d in on_victim:
                    d.attach(rng.choice(others))
                    if pump_of.get(d):
                        pump_of[d].switch(d.client)
            reconnect_s = time.monotonic() - t_kill
            restart_s = cluster.restart(victim)
            for d in devices:                       # move the node's devices back home (a clean move, with sync)
                if home[d] is victim and d.node is not victim:
                    p = pump_of.get(d)
                    if p and d.node is not None:
                        p.drain(10)             # its sends on the live socket are answered before it moves
                    d.attach(victim)
                    if p:
                        p.switch(d.client)
            synced = sum(t["count"] for d in devices for t in d.transitions) - synced_before
            problems = sum(len(d.problems) for d in devices)
            new_problems = [x for d in devices for x in d.problems[seen_problems[d]:]]
            seen_problems = {d: len(d.problems) for d in devices}
            row = {"kill": k, "node": victim.name, "devices": len(on_victim), "acked_before": acked_before,
                   "synced_events": synced, "reconnect_s": round(reconnect_s, 2), "restart_s": round(restart_s, 2),
                   "device_problems": problems, "new_problems": len(new_problems)}
            rows.append(row)
            log(("OK  " if not new_problems else "FAIL") + " " + json.dumps(row))
            for text in new_problems[:6]:
                log("   " + text)
            if problems:
                ok = False
        time.sleep(min(interval, 5.0))

        # stop the load, then verify
        log("stopping the senders")
        stop_pumps(pumps)
        unanswered = sum(p.unanswered for p in pumps)       # in flight on a socket whose node was killed
        ref = cluster.live()[0]
        checker = Device(mh, toks[users[0]], [], "checker")
        checker.attach(ref, sync=False)
        stored = {tid: sync_all(checker.client, tid, 0, timeout=30) for tid in threads}
        same_everywhere = True
        for n in cluster.live():
            if n is ref:
                continue
            other = Device(mh, toks[users[0]], [], f"checker@{n.name}")
            other.attach(n, sync=False)
            for tid in threads:
                if sync_all(other.client, tid, 0, timeout=30) != stored[tid]:
                    same_everywhere = False
                    log(f"FAIL chat:sync of {tid} on {n.name} differs from {ref.name}")
            other.detach()
        log("read every thread with chat:sync from 0 on every node")
        gaps, lost, dupes, wrong, unacked_stored = 0, [], 0, [], 0
        acked = [a for p in pumps for a in p.acked]
        acked_contents = {a[3] for a in acked}
        for tid in threads:
            evs = stored[tid]
            seqs = [event_seq(e, d) for e, d in evs]
            if seqs != list(range(1, len(seqs) + 1)):
                gaps += 1
            by_content = {}
            for e, d in evs:
                if e == "chat:message":
                    by_content.setdefault(d["message"]["content"], []).append(d["message"])
            dupes += sum(len(v) - 1 for v in by_content.values() if len(v) > 1)
            unacked_stored += sum(1 for c in by_content if c not in acked_contents)
            for (t, s, mid, content) in acked:
                if t != tid:
                    continue
                got = by_content.get(content, [])
                if not got:
                    lost.append(content)
                elif not any(m["seq"] == s and m["id"] == mid for m in got):
                    wrong.append(content)
        log("checking every device against the stored threads")
        device_problems = []
        catch_up_deadline = time.monotonic() + cfg.catch_up_timeout     # one deadline for all of them
        for tid in threads:
            last = event_seq(*stored[tid][-1]) if stored[tid] else 0
            for d in devices:
                try:
                    d.wait_caught_up(tid, last, timeout=max(0.1, catch_up_deadline - time.monotonic()))
                except AssertionError as e:
                    device_problems.append(str(e))
                device_problems.extend(d.compare(tid, stored[tid]))
        for d in devices:
            device_problems.extend(d.problems)
        errors = [e for p in pumps for e in p.errors]
        error_codes = {}
        for _, ack in errors:
            code = ack.get("code") if isinstance(ack, dict) else repr(ack)
            error_codes[code] = error_codes.get(code, 0) + 1
        transitions = [t for d in devices for t in d.transitions]
        ok = (ok and gaps == 0 and not lost and dupes == 0 and not wrong and not device_problems and same_everywhere
              and (cfg.allow_send_errors or not errors))
        for text in device_problems[:20]:
            log("   " + text)
        if len(device_problems) > 20:
            log(f"   … {len(device_problems) - 20} more")
        if lost:
            log(f"   lost e.g. {lost[:5]}")
        summary = {
            "ok": ok, "seed": seed, "nodes": cfg.nodes, "kills": len(rows), "threads": len(threads),
            "devices": len(devices), "senders": len(pumps), "sent": sum(p.sent for p in pumps),
            "acked": len(acked), "stored": sum(len(v) for v in stored.values()), "lost": len(lost),
            "duplicated": dupes, "acked_with_other_seq_or_id": len(wrong), "threads_with_gaps": gaps,
            "stored_unacked": unacked_stored, "unanswered": unanswered, "send_errors": error_codes,
            "unaccounted_sends": sum(p.sent for p in pumps) - len(acked) - len(errors) - unanswered,
            "sync_same_on_every_node": same_everywhere, "device_problems": len(device_problems),
            "reconnects": sum(d.connections - 1 for d in devices),
            "synced_events": sum(t["count"] for t in transitions),
            "restart_s_max": max([r["restart_s"] for r in rows] or [0]),
            "seconds": round(time.monotonic() - t_start, 1),
        }
    except BaseException as e:  # noqa: BLE001  (report, clean up, exit 1)
        ok = False
        summary.update({"ok": False, "error": f"{type(e).__name__}: {e}"})
        log(f"FAIL {type(e).__name__}: {e}")
        if not isinstance(e, Exception):
            raise
    finally:
        for p in pumps:
            p.stop(drain_timeout=0)
        mh.close()
        if not ok:
            cluster.keep_logs = True
        cluster.cleanup()
    summary["rows"] = rows
    if cfg.json_out:
        with open(cfg.json_out, "w") as f:
            json.dump(summary, f, indent=1)
    log("summary " + json.dumps({k: v for k, v in summary.items() if k != "rows"}))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
