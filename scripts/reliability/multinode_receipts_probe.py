"""3 nodes, 3 users each with a socket on every node; each user sends from its own node, edits its messages
from a second node and deletes some from a third (REST on yet another); readers send chat:delivered / mark-read.
Checks: per socket gap-free in-order thread events identical to the stored ones; acks vs stored; receipt notices
identical on every socket of the sender, upToSeq increasing, ids disjoint."""
import random, sys
from multinode_probe_common import *

DUR = float(sys.argv[1]) if len(sys.argv) > 1 else 10
RI = float(sys.argv[2]) if len(sys.argv) > 2 else 0.1
RATE = float(sys.argv[3]) if len(sys.argv) > 3 else 40
cl = make_cluster(tag="t1")
mh = MultiHarness(cl)
problems = []
try:
    A, B, C = cl.nodes
    co = uid("co")
    u, tok = users(co, "u1", "u2", "u3")
    names = ["u1", "u2", "u3"]
    socks = {(n, nd.name): mh.connect(nd, tok[n], name=f"{n}@{nd.name}") for n in names for nd in cl.nodes}
    tid = mh.make_thread(A, tok["u1"], [u["u2"], u["u3"]])["id"]
    for c in socks.values():
        c.wait_for("chat:thread:created", lambda d: d["thread"]["id"] == tid, timeout=5)
    home = {"u1": "A", "u2": "B", "u3": "C"}
    edit_node = {"u1": "B", "u2": "C", "u3": "A"}
    del_node = {"u1": "C", "u2": "A", "u3": "B"}
    pumps = {n: Pump(socks[(n, home[n])], [tid], rate=RATE, window=8, prefix=n).start() for n in names}
    stop = threading.Event()
    edit_acks, del_acks, rec_errs = [], [], []
    ractions = []
    def editor(n):
        rnd = random.Random(n)
        c = socks[(n, edit_node[n])]
        dc = socks[(n, del_node[n])]
        deleted = set()
        while not stop.is_set():
            time.sleep(0.05)
            acked = list(pumps[n].acked)
            if not acked: continue
            _, s, mid, _ = acked[-rnd.randint(1, min(5, len(acked)))]
            if mid in deleted: continue
            r = rnd.random()
            try:
                if r < 0.6:
                    a = c.call("chat:edit", {"threadId": tid, "messageId": mid, "content": f"ed-{time.time()}"}, timeout=10)
                    edit_acks.append((n, mid, a))
                elif r < 0.8:
                    a = dc.call("chat:delete", {"threadId": tid, "messageId": mid}, timeout=10)
                    del_acks.append((n, mid, a)); deleted.add(mid)
                else:
                    nd = cl[rnd.choice("ABC")]
                    resp = nd.rest("DELETE", f"/chat/messages/{mid}", tok[n])
                    del_acks.append((n, mid, {"rest": resp.status_code, "body": resp.json()})); deleted.add(mid)
            except Exception as e:
                rec_errs.append(("editor", n, repr(e)))
    def reader(n):
        rnd = random.Random(n + "r")
        while not stop.is_set():
            time.sleep(RI)
            nd = rnd.choice("ABC")
            c = socks[(n, nd)]
            mm = [d["message"] for e, d in tev(c, tid) if e == "chat:message" and d["message"]["senderId"] != u[n]]
            msgs = [m["id"] for m in mm]
            if not msgs: continue
            try:
                t0 = time.monotonic()
                if rnd.random() < 0.6:
                    kind = "delivered"; up = mm[-1]["seq"]; a = c.call("chat:delivered", {"threadId": tid, "messageIds": msgs[-3:]}, timeout=10)
                else:
                    kind = "read"; up = mm[-1]["seq"]
                    if rnd.random() < 0.5: a = c.call("chat:mark-read", {"threadId": tid, "upToSeq": up}, timeout=10)
                    else: kind = "read-default"; a = c.call("chat:mark-read", {"threadId": tid}, timeout=10)
                ractions.append((n, nd, kind, up, t0, time.monotonic()))
                if not (isinstance(a, dict) and a.get("success")): rec_errs.append(("reader", n, a))
            except Exception as e:
                rec_errs.append(("reader", n, repr(e)))
    ths = [threading.Thread(target=editor, args=(n,)) for n in names] + [threading.Thread(target=reader, args=(n,)) for n in names]
    for t in ths: t.start()
    time.sleep(DUR)
    stop.set()
    for t in ths: t.join(20)
    left = stop_pumps(list(pumps.values()))
    time.sleep(3)
    stored = sync_all(socks[("u1", "A")], tid, 0)
    sseq = [event_seq(e, d) for e, d in stored]
    if sseq != list(range(1, len(sseq) + 1)): problems.append(f"stored not gap-free: {describe(sseq, range(1, len(sseq)+1))}")
    skey = {event_seq(e, d): event_key(e, d) for e, d in stored}
    N = len(sseq)
    # sync from other nodes identical
    for nd in "BC":
        s2 = sync_all(socks[("u2", nd)], tid, 0)
        if [(event_seq(e, d), event_key(e, d)) for e, d in s2] != [(event_seq(e, d), event_key(e, d)) for e, d in stored]:
            problems.append(f"sync on {nd} differs from sync on A")
    # acks vs stored
    byid = {}
    for e, d in stored:
        if e == "chat:message": byid[d["message"]["id"]] = d["message"]
    nacks = 0
    for n, p in pumps.items():
        if p.errors: problems.append(f"{n} send errors: {p.errors[:3]}")
        for (t, s, mid, content) in p.acked:
            nacks += 1
            m = byid.get(mid)
            if m is None or m["seq"] != s: problems.append(f"acked {content} seq {s} id {mid} not stored as such: {m}")
        seqs = [s for (_, s, _, _) in p.acked]
    edit_ok = [a for a in edit_acks if isinstance(a[2], dict) and a[2].get("success")]
    edit_fail = [a for a in edit_acks if not (isinstance(a[2], dict) and a[2].get("success"))]
    del_ok = [a for a in del_acks if (isinstance(a[2], dict) and (a[2].get("success") or a[2].get("rest") == 200))]
    del_fail = [a for a in del_acks if a not in del_ok]
    n_edit_ev = sum(1 for e, _ in stored if e == "chat:message:edited")
    n_del_ev = sum(1 for e, _ in stored if e == "chat:message:deleted")
    print(f"stored {N} events: msgs {len(byid)} (acked {nacks}), edits {n_edit_ev} (acked {len(edit_ok)}), deletes {n_del_ev} (acked {len(del_ok)})")
    print("edit failures:", [(a[0], a[2]) for a in edit_fail][:5], len(edit_fail))
    print("delete failures:", [(a[0], a[2]) for a in del_fail][:5], len(del_fail))
    print("left unanswered", left, "receipt/editor errors", rec_errs[:5], len(rec_errs))
    if n_edit_ev != len(edit_ok): problems.append(f"edit events stored {n_edit_ev} != acked edits {len(edit_ok)}")
    if n_del_ev != len(del_ok): problems.append(f"delete events stored {n_del_ev} != acked deletes {len(del_ok)}")
    if len(byid) != nacks: problems.append(f"messages stored {len(byid)} != acked {nacks}")
    # per socket live stream
    for (n, nd), c in socks.items():
        evs = tev(c, tid)
        seqs = [event_seq(e, d) for e, d in evs]
        if seqs != list(range(1, N + 1)):
            problems.append(f"{n}@{nd}: live {describe(seqs, range(1, N+1))}")
        else:
            for e, d in evs:
                if event_key(e, d) != skey[event_seq(e, d)]:
                    problems.append(f"{n}@{nd}: seq {event_seq(e,d)} is {event_key(e,d)} stored {skey[event_seq(e,d)]}"); break
    # receipts
    import pickle
    pickle.dump({"u": u, "tid": tid, "stored": stored, "ractions": ractions, "events": {f"{n}@{nd}": list(c.events) for (n, nd), c in socks.items()}}, open(os.path.join(tempfile.gettempdir(), f"multinode-receipts-{int(time.time())}.pkl"), "wb"))
    for n in names:
        lists = {}
        for nd in "ABC":
            c = socks[(n, nd)]
            rs = [(e, d["userId"], d["upToSeq"], tuple(d["messageIds"])) for e, d in [(e, d) for e, d in c.events] if e in ("chat:delivered", "chat:read") and isinstance(d, dict) and d.get("threadId") == tid]
            lists[nd] = rs
            per = {}
            for e, r, up, ids in rs:
                k = (e, r)
                prev = per.setdefault(k, [0, set()])
                if up <= prev[0]: problems.append(f"{n}@{nd}: {e} from {r} upToSeq {up} after {prev[0]}")
                dup = set(ids) & prev[1]
                if dup: problems.append(f"{n}@{nd}: {e} from {r} repeats ids {list(dup)[:3]}")
                for i in ids:
                    m = byid.get(i)
                    if m is None or m["senderId"] != u[n]: problems.append(f"{n}@{nd}: {e} lists id not of {n}: {m and m['senderId']}")
                    elif m["seq"] > up: problems.append(f"{n}@{nd}: {e} lists seq {m['seq']} > upToSeq {up}")
                prev[0] = up; prev[1] |= set(ids)
        counts = {nd: len(v) for nd, v in lists.items()}
        delseq = {d["messageId"]: event_seq(e, d) for e, d in stored if e == "chat:message:deleted"}
        for ev in ("chat:delivered", "chat:read"):
            for rdr in names:
                if rdr == n: continue
                un = {nd: set(i for e, r, up, ids in lists[nd] if e == ev and r == u[rdr] for i in ids) for nd in "ABC"}
                fin = {nd: max([up for e, r, up, ids in lists[nd] if e == ev and r == u[rdr]] or [0]) for nd in "ABC"}
                allids = un["A"] | un["B"] | un["C"]
                for nd in "ABC":
                    miss = allids - un[nd]
                    if miss:
                        info = [(byid[i]["seq"], delseq.get(i)) for i in miss]
                        problems.append(f"{n}@{nd}: {ev} from {rdr}: {len(miss)} ids others got, this socket never (seq, deleted-at): {sorted(info)[:5]}")
                if len(set(fin.values())) > 1: problems.append(f"{n}: final {ev} upToSeq from {rdr} differ {fin}")
        if False:
            # find first difference
            diff = []
            for nd in "BC":
                if lists[nd] != lists["A"]:
                    sa, sb = set(lists["A"]), set(lists[nd])
                    diff.append(f"A-only {len(sa-sb)} {sorted(sa-sb)[:2]} / {nd}-only {len(sb-sa)} {sorted(sb-sa)[:2]} ; same set but order differs={sa==sb}")
            problems.append(f"receipt notices of {n} differ between its sockets {counts}: {diff}")
        print(n, "receipt notices per socket", counts)
finally:
    mh.close(); cl.cleanup()
print("PROBLEMS:" if problems else "OK", *problems[:40], sep="\n")
