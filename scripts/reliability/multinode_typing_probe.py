"""Typing across nodes. w has a socket on each of A, B, C; y types on TYPE_NODE. Case 'cold': the thread has no
message yet (created on A via REST, sockets connected after); 'warm': one message was sent first.
Then the creator removes y via REST on REST_NODE: every watcher should get chat:typing:stop (§3.6, §6.5) well
before the 6 s typing timeout."""
import sys
from multinode_probe_common import *
cl = make_cluster(tag="t7")
mh = MultiHarness(cl)
try:
    for warm in (False, True):
        for type_node, rest_node in (("A", "A"), ("C", "C"), ("C", "A"), ("B", "C")):
            co = uid("co")
            u, tok = users(co, "o", "w", "y")
            tid = mh.make_thread(cl["A"], tok["o"], [u["w"], u["y"]])["id"]
            ws = [mh.connect(cl[n], tok["w"], name=f"w@{n}") for n in "ABC"]
            y = mh.connect(cl[type_node], tok["y"], name=f"y@{type_node}")
            if warm:
                m = y.send(tid, "warm-up")
                for c in ws: c.wait_for("chat:message", lambda d: d["message"]["id"] == m["id"], timeout=5)
            st, lat = typing_then_removal(cl[rest_node], tid, u["y"], tok["o"], ws, y, 8)
            print(f"{'warm' if warm else 'cold'}: typist on {type_node}: start received {st}; removed via {rest_node}: stop after {lat}")
            for c in ws + [y]: c.close()
finally:
    mh.close(); cl.cleanup()
