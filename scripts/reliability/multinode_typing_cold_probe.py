"""Cold threads and typing: (1) w's sockets on A,B,C connect BEFORE the thread is created on A (they get
chat:thread:created); (2) they connect AFTER; (3) a thread that had messages, then a fresh socket of w connects on B.
y types on C. Which watchers get chat:typing:start? Then y is removed via REST on A; wait 15 s for any stop."""
from multinode_probe_common import *
cl = make_cluster(tag="t8")
mh = MultiHarness(cl)
try:
    for case in ("before-create", "after-create", "fresh-socket-after-traffic"):
        co = uid("co")
        u, tok = users(co, "o", "w", "y")
        ws = []
        if case == "before-create":
            ws = [mh.connect(cl[n], tok["w"], name=f"w@{n}") for n in "ABC"]
        tid = mh.make_thread(cl["A"], tok["o"], [u["w"], u["y"]])["id"]
        if case == "before-create":
            for c in ws: c.wait_for("chat:thread:created", lambda d: d["thread"]["id"] == tid, timeout=5)
        if case == "fresh-socket-after-traffic":
            o = mh.connect(cl["A"], tok["o"]); o.send(tid, "earlier traffic"); o.close()
        if not ws:
            ws = [mh.connect(cl[n], tok["w"], name=f"w@{n}") for n in "ABC"]
        y = mh.connect(cl["C"], tok["y"], name="y@C")
        st, lat = typing_then_removal(cl["A"], tid, u["y"], tok["o"], ws, y, 15)
        print(f"{case}: typist on C: start received {st}; removed via A: stop after {lat} (15 s watched)")
        for c in ws + [y]: c.close()
finally:
    mh.close(); cl.cleanup()
