#!/usr/bin/env python3
"""Disk trouble: the store's directory fills up, or turns read-only, while a client keeps sending.

Needs root (it mounts a tmpfs and a loop device):  python3 scripts/reliability/disk_trouble.py

Part A, disk full, on one running broker whose --data-dir is a tmpfs of --size (default 2m):
  1. healthy: sends are acknowledged;
  2. full: a filler file takes every free byte; sends must fail with code `internal` (never acknowledged), the
     log must say why, the connection and the broker stay up;
  3. space returns (filler deleted): sends succeed again, without a restart;
  then SIGTERM (exit 0), restart on the same directory: every acknowledged message is stored exactly once,
  seqs gap-free, no refused send stored.
Part B, read-only, on an ext4 loop image mounted errors=remount-ro: the kernel's trigger_fs_error turns the
file system read-only under the running broker (a remount,ro is refused while SQLite holds files open for
writing, so this is how a disk goes read-only in real life):
  1. healthy; 2. read-only: sends fail with `internal`, broker stays up; then SIGTERM (exit code recorded),
  umount, e2fsck, mount again, restart: every acknowledged message is there, and sends work.
"""
import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import aiohttp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from chatload import Broker, SioClient, default_broker, make_token, uid  # noqa: E402


def sh(*cmd):
    subprocess.run(list(cmd), check=True)


async def send_batch(client, tid, tag, n, size):
    """n sends one after another; returns (acked contents, refused [(content, code, error)], other)."""
    acked, refused = {}, []
    pad = "x" * size
    for i in range(n):
        content = f"{tag}-{i}-{pad}"
        try:
            ack = await client.call("chat:send", {"threadId": tid, "content": content}, timeout=15)
        except (asyncio.TimeoutError, ConnectionError) as e:
            refused.append((content[:40], "no-ack", repr(e)))
            continue
        if ack.get("success"):
            acked[content] = ack["message"]["seq"]
        else:
            refused.append((content[:40], ack.get("code"), ack.get("error")))
    return acked, refused


async def run_readonly(broker, cfg, tok, tid, mnt, dev):
    phases, all_acked, all_refused = [], {}, []
    async with aiohttp.ClientSession() as session:
        client = await SioClient(session, broker.url, tok).connect()
        for name, n in (("ro-healthy", 20), ("read-only", 20)):
            if name == "read-only":
                with open(f"/sys/fs/ext4/{dev}/trigger_fs_error", "w") as f:
                    f.write("1")
                await asyncio.sleep(0.3)
            t0 = time.monotonic()
            acked, refused = await send_batch(client, tid, name, n, cfg.content)
            all_acked.update(acked)
            all_refused.extend(refused)
            row = {"phase": name, "tried": n, "acked": len(acked), "refused": len(refused),
                   "codes": sorted({r[1] for r in refused}), "errors": sorted({str(r[2]) for r in refused})[:2],
                   "seconds": round(time.monotonic() - t0, 2), "connected": not client.closed.is_set(),
                   "broker_alive": broker.alive()}
            phases.append(row)
            print(json.dumps(row), flush=True)
        await client.close()
    return phases, all_acked, all_refused


def part_b(binary, cfg, root):
    """Read-only: ext4 loop image, emergency read-only under the running broker, repair, restart."""
    img = os.path.join(root, "ro.img")
    mnt = os.path.join(root, "rodata")
    os.makedirs(mnt)
    sh("truncate", "-s", "32M", img)
    sh("mkfs.ext4", "-q", img)
    sh("mount", "-o", "loop,errors=remount-ro", img, mnt)
    dev = os.path.basename(subprocess.run(["findmnt", "-n", "-o", "SOURCE", mnt], capture_output=True, text=True,
                                          check=True).stdout.strip())
    broker = Broker(binary, mnt, log_dir=os.path.join(root, "ro-logs"))
    try:
        broker.start()
        co = uid("co")
        alice, bob = uid("alice"), uid("bob")
        tok = make_token(broker.secret, alice, co)
        tid = broker.make_thread(tok, [bob])
        phases, acked, refused = asyncio.run(run_readonly(broker, cfg, tok, tid, mnt, dev))
        log_lines = [ln for ln in broker.log_text().splitlines() if "store" in ln.lower() and ("fail" in ln.lower() or "error" in ln.lower())]
        rc, stop_s = broker.term()
        sh("umount", mnt)
        subprocess.run(["e2fsck", "-fy", img], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        sh("mount", "-o", "loop,errors=remount-ro", img, mnt)
        broker.start()
        r = broker.rest("GET", f"/chat/threads/{tid}/messages?limit=100", tok)
        if r.status_code != 200:
            ls = subprocess.run(["ls", "-la", mnt], capture_output=True, text=True).stdout
            return {"phases": phases, "acked_total": len(acked), "error": f"after repair and restart: {r.status_code} {r.text}",
                    "sigterm_exit_while_read_only": rc, "data_dir": ls, "log_lines": log_lines[:3],
                    "shutdown_log": broker_log_tail(broker), "ok": False}
        msgs = broker.history(tok, tid)
        stored = {m["content"]: m for m in msgs}
        lost = [c for c in acked if c not in stored]
        gap_free = [m["seq"] for m in msgs] == list(range(1, len(msgs) + 1))
        after = asyncio.run(run_after(broker, tok, tid))
        rc2, _ = broker.term()
        by = {p["phase"]: p for p in phases}
        ok = (by["ro-healthy"]["acked"] == 20 and by["read-only"]["refused"] == 20
              and set(by["read-only"]["codes"]) <= {"internal"} and not lost and gap_free
              and len(msgs) == len(stored) and after and by["read-only"]["broker_alive"])
        return {"phases": phases, "acked_total": len(acked), "stored_total": len(msgs), "lost": len(lost),
                "gap_free": gap_free, "sigterm_exit_while_read_only": rc, "sigterm_seconds": round(stop_s, 2),
                "send_after_repair_ok": after, "log_lines": log_lines[:3], "ok": ok}
    finally:
        if broker.alive():
            broker.kill()
        subprocess.run(["umount", mnt], stderr=subprocess.DEVNULL)


def broker_log_tail(broker):
    path = os.path.join(broker.log_dir, f"broker-{broker.runs - 1}.log")
    try:
        return open(path).read()[-1500:]
    except OSError:
        return ""


async def run_after(broker, tok, tid):
    async with aiohttp.ClientSession() as session:
        client = await SioClient(session, broker.url, tok).connect()
        acked, refused = await send_batch(client, tid, "after-repair", 5, 100)
        await client.close()
    return len(acked) == 5


async def run_phases(broker, cfg, tok, tid, mnt):
    phases = []
    all_acked = {}
    all_refused = []
    async with aiohttp.ClientSession() as session:
        client = await SioClient(session, broker.url, tok).connect()

        async def phase(name, n, size=cfg.content):
            t0 = time.monotonic()
            acked, refused = await send_batch(client, tid, name, n, size)
            all_acked.update(acked)
            all_refused.extend(refused)
            codes = sorted({r[1] for r in refused})
            row = {"phase": name, "tried": n, "acked": len(acked), "refused": len(refused), "codes": codes,
                   "errors": sorted({str(r[2]) for r in refused})[:2], "seconds": round(time.monotonic() - t0, 2),
                   "connected": not client.closed.is_set(), "broker_alive": broker.alive()}
            phases.append(row)
            print(json.dumps(row), flush=True)
            return row

        await phase("healthy", 20)
        # fill the disk: a filler file takes every free byte
        filler = os.path.join(mnt, "filler")
        subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], stderr=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL)
        st = os.statvfs(mnt)
        print(f"disk full: {st.f_bavail * st.f_frsize} bytes free", flush=True)
        await phase("full", 40)
        os.unlink(filler)
        await asyncio.sleep(0.2)
        await phase("space-returned", 20)
        await client.close()
    return phases, all_acked, all_refused


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--broker", default=None)
    ap.add_argument("--size", default="2m", help="tmpfs size (default 2m)")
    ap.add_argument("--content", type=int, default=8000, help="bytes of content per message")
    ap.add_argument("--json-out", default=None)
    cfg = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root to mount a tmpfs")
    binary = cfg.broker or default_broker()
    root = tempfile.mkdtemp(prefix="chat-disk-")
    mnt = os.path.join(root, "data")
    os.makedirs(mnt)
    sh("mount", "-t", "tmpfs", "-o", f"size={cfg.size}", "tmpfs", mnt)
    broker = Broker(binary, mnt, log_dir=os.path.join(root, "logs"))
    ok = False
    try:
        broker.start()
        co = uid("co")
        alice, bob = uid("alice"), uid("bob")
        tok = make_token(broker.secret, alice, co)
        tid = broker.make_thread(tok, [bob])
        phases, acked, refused = asyncio.run(run_phases(broker, cfg, tok, tid, mnt))
        health = broker.rest("GET", "/health").status_code
        metrics = broker.metrics()
        log = broker.log_text()
        log_lines = [line for line in log.splitlines() if "store" in line.lower() and ("fail" in line.lower() or "error" in line.lower())]
        rc, stop_s = broker.term()
        broker.start()
        msgs = broker.history(tok, tid)
        rc2, _ = broker.term()
        stored = {m["content"]: m for m in msgs}
        lost = [c[:40] for c in acked if c not in stored]
        dup = len(msgs) - len(stored)
        refused_stored = [r for r in refused if any(c.startswith(r[0]) for c in stored if c not in acked)]
        gap_free = [m["seq"] for m in msgs] == list(range(1, len(msgs) + 1))
        by_phase = {p["phase"]: p for p in phases}
        ok = (by_phase["healthy"]["acked"] == 20 and by_phase["full"]["refused"] > 0
              and set(by_phase["full"]["codes"]) <= {"internal"} and by_phase["space-returned"]["acked"] == 20
              and not lost and dup == 0 and gap_free and not refused_stored
              and rc == 0 and all(p["broker_alive"] for p in phases))
        summary = {"phases": phases, "acked_total": len(acked), "stored_total": len(msgs), "lost": len(lost),
                   "duplicated": dup, "stored_but_refused": len(refused_stored), "gap_free": gap_free,
                   "health_during": health, "sigterm_exit": rc, "sigterm_seconds": round(stop_s, 2),
                   "store_failures_metric": metrics.get("chat_store_failures_total"),
                   "log_lines": log_lines[:4], "ok": ok}
        print("part A (full) " + json.dumps(summary, indent=1), flush=True)
        ok_a, ok = ok, False
        b = part_b(binary, cfg, root)
        print("part B (read-only) " + json.dumps(b, indent=1), flush=True)
        ok = ok_a and b["ok"]
        summary = {"disk_full": summary, "read_only": b, "ok": ok}
        if cfg.json_out:
            with open(cfg.json_out, "w") as f:
                json.dump(summary, f, indent=1)
    finally:
        if broker.alive():
            broker.kill()
        subprocess.run(["umount", mnt])
        if ok:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"kept {root} for inspection", flush=True)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
