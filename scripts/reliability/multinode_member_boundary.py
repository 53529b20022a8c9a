"""Where a member change falls, node by node. Three nodes; a sender on each sends to one group thread as fast as its
acks come back; carol has a socket on each node. The thread's creator removes carol and adds her back through REST,
each change on a node in turn, --rounds times. Every node must place each change where the store's log puts it, so
carol's three sockets must receive exactly the same messages: those committed while she was a member.

Prints, per run, how many messages at least one of carol's sockets got and not all three, and, from the store's log
of member changes (read with psql), each socket's messages missing or extra, with who sent them. Exit status 1 if
any run disagreed.

    CHAT_TEST_DATABASE_URL=postgres://… python3 scripts/reliability/multinode_member_boundary.py --runs 3 --rounds 10
"""
import argparse, glob, random, shutil, subprocess, sys, threading, time
from multinode_probe_common import *

ap = argparse.ArgumentParser()
ap.add_argument("--runs", type=int, default=3)
ap.add_argument("--rounds", type=int, default=10, help="removals (each followed by an addition) per run")
ap.add_argument("--seed", type=int, default=1)
args = ap.parse_args()
random.seed(args.seed)
PSQL = shutil.which("psql") or next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/psql"))), None)
DB = os.environ["CHAT_TEST_DATABASE_URL"]


def query(sql):
    out = subprocess.run([PSQL, DB, "-Atc", sql], capture_output=True, text=True, check=True).stdout
    return [line.split("|") for line in out.split()]


def membership(tid, last):
    """The seqs carol should get, from the log: after an addition's position, up to a removal's (she is a member
    from the thread's creation)."""
    want, member, since = set(), True, 0
    for as_of, added in query(f"SELECT as_of, coalesce(array_length(added, 1), 0) FROM chat.member_changes "
                              f"WHERE thread_id = '{tid}' ORDER BY id"):
        as_of, added = int(as_of), int(added)
        if added and not member:
            member, since = True, as_of
        elif not added and member:
            want |= set(range(since + 1, as_of + 1))
            member = False
    if member:
        want |= set(range(since + 1, last + 1))
    return want


cl = make_cluster(tag="boundary")
mh = MultiHarness(cl)
failed = False
try:
    for run in range(args.runs):
        co = uid("co")
        u, tok = users(co, "o", "s0", "s1", "s2", "c")
        tid = mh.make_thread(cl["A"], tok["o"], [u["s0"], u["s1"], u["s2"], u["c"]])["id"]
        carol = {n: mh.connect(cl[n], tok["c"], name=f"c@{n}") for n in "ABC"}
        senders = [mh.connect(cl[n], tok[f"s{i}"], name=f"s{i}@{n}") for i, n in enumerate("ABC")]
        stop = threading.Event()
        sent = [0, 0, 0]

        def pump(i):
            while not stop.is_set():
                senders[i].send(tid, f"m{i}-{sent[i]}")
                sent[i] += 1

        pumps = [threading.Thread(target=pump, args=(i,)) for i in range(3)]
        for p in pumps: p.start()
        for r in range(args.rounds):
            time.sleep(random.uniform(0.1, 0.3))
            resp = cl["ABC"[r % 3]].rest("DELETE", f"/chat/threads/{tid}/members/{u['c']}", tok["o"])
            assert resp.status_code == 200, resp.text
            time.sleep(random.uniform(0.1, 0.3))
            mh.add_members(cl["ABC"[(r + 1) % 3]], tok["o"], tid, [u["c"]])
        time.sleep(0.3)
        stop.set()
        for p in pumps: p.join()
        time.sleep(1.5)
        got = {n: {d["message"]["seq"] for d in c.received("chat:message", lambda d: d.get("threadId") == tid)}
               for n, c in carol.items()}
        split = sorted(s for s in set().union(*got.values()) if not all(s in g for g in got.values()))
        print(f"run {run + 1}: {sum(sent)} messages, {2 * args.rounds} member changes; carol got "
              f"{[len(g) for g in got.values()]} (A, B, C); {len(split)} placed differently {split[:12]}", flush=True)
        failed |= bool(split)
        if PSQL:
            sender = dict(query(f"SELECT m.seq, m.sender_id FROM chat.messages m JOIN chat.threads t ON t.no = m.thread_no "
                                f"WHERE t.id = '{tid}'"))
            want = membership(tid, max(map(int, sender), default=0))
            name = {v: k for k, v in u.items()}
            for n, g in got.items():
                off = [(x, name.get(sender.get(str(x)))) for x in sorted(want ^ g)]
                failed |= bool(off)
                print(f"   socket on {n}: {len(want - g)} missing, {len(g - want)} extra against the store's log {off[:10]}")
        for c in list(carol.values()) + senders: c.close()
finally:
    mh.close(); cl.cleanup()
sys.exit(1 if failed else 0)
