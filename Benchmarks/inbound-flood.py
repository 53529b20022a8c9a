"""Inbound flood: SOCKETS (3) sockets of one company send 0.9 MB packets of JSON (a chat:typing:start with a long
`pad`: plain ASCII, or with KIND `emoji` a string of emoji, or `ints` an array of integers) as fast as they can for
DURATION s, each as its own user, or with `one-user` all as one user; a socket of another company sends a chat:send every 50 ms and records
each ack's latency, before and during the flood; the broker's CPU during the flood from /proc. Starts the broker
BIN itself on 127.0.0.1:PORT (a temporary data folder, removed at the end).
Usage: python3 Benchmarks/inbound-flood.py BIN PORT [DURATION] [SOCKETS] [KIND] [one-user]"""
import json, os, secrets, socket, statistics, subprocess, sys, tempfile, threading, time
import jwt, requests, websocket

BIN, PORT = sys.argv[1], int(sys.argv[2])
DURATION = float(sys.argv[3]) if len(sys.argv) > 3 else 15
SOCKETS = int(sys.argv[4]) if len(sys.argv) > 4 else 3
KIND = sys.argv[5] if len(sys.argv) > 5 else "ascii"
ONE_USER = "one-user" in sys.argv[6:]
PAD = {"ascii": "x" * 900_000, "emoji": "\U0001F600" * 225_000, "ints": list(range(100_000, 212_000))}[KIND]
SECRET = secrets.token_urlsafe(36)
def tok(user, co):
    return jwt.encode({"sub": user, "companyId": co, "exp": int(time.time()) + 3600}, SECRET, algorithm="HS256")
data = tempfile.mkdtemp(prefix="flood-")
env = dict(os.environ, CHAT_JWT_SECRET=SECRET)
proc = subprocess.Popen([BIN, "serve", "--host", "127.0.0.1", "--port", str(PORT), "--data-dir", data],
                        stdout=open(data + "/log", "wb"), stderr=subprocess.STDOUT, env=env)
url = f"http://127.0.0.1:{PORT}"
for _ in range(100):
    try:
        if requests.get(url + "/health", timeout=1).status_code == 200: break
    except Exception: pass
    time.sleep(0.1)

def ws(token):
    w = websocket.create_connection(f"ws://127.0.0.1:{PORT}/socket.io/?EIO=4&transport=websocket", timeout=30)
    assert w.recv().startswith("0")
    w.send("40/chat," + json.dumps({"token": token}))
    while not w.recv().startswith("40/chat"): pass
    return w

stop = threading.Event()
sent_bytes = [0]
def flooder(i):
    w = ws(tok("f0" if ONE_USER else f"f{i}", "evil"))
    packet = "42/chat," + json.dumps(["chat:typing:start", {"threadId": "nope", "pad": PAD}], ensure_ascii=False)
    w.sock.settimeout(60)
    while not stop.is_set():
        try:
            w.send(packet)
            sent_bytes[0] += len(packet)
        except Exception:
            break
    w.close()

vt = tok("victim", "good")
tid = requests.post(url + "/chat/threads", json={"type": "group", "memberIds": ["other"]},
                    headers={"Authorization": f"Bearer {vt}"}).json()["thread"]["id"]
victim = ws(vt)
lat = []
def victim_loop(until):
    n = 0
    while time.monotonic() < until:
        n += 1
        t0 = time.monotonic()
        victim.send(f"42/chat,{n}" + json.dumps(["chat:send", {"threadId": tid, "content": f"m{n}"}]))
        while True:
            f = victim.recv()
            if f == "2": victim.send("3"); continue
            if f.startswith(f"43/chat,{n}["): break
        lat.append((time.monotonic() - t0) * 1000)
        time.sleep(0.05)

victim_loop(time.monotonic() + 3)
base = sorted(lat); lat.clear()
threads = [threading.Thread(target=flooder, args=(i,), daemon=True) for i in range(SOCKETS)]
for t in threads: t.start()
cpu0 = sum(int(x) for x in open(f"/proc/{proc.pid}/stat").read().split()[13:15])
t0 = time.monotonic()
victim_loop(time.monotonic() + DURATION)
elapsed = time.monotonic() - t0
cpu1 = sum(int(x) for x in open(f"/proc/{proc.pid}/stat").read().split()[13:15])
stop.set()
during = sorted(lat)
def q(v, p): return v[min(len(v) - 1, int(p * len(v)))]
print(json.dumps({
    "binary": BIN, "flood_MB_sent": round(sent_bytes[0] / 1e6, 1), "flood_s": round(elapsed, 1),
    "broker_cpu_pct": round((cpu1 - cpu0) / os.sysconf("SC_CLK_TCK") / elapsed * 100),
    "victim_before_ms": {"p50": round(q(base, .5), 2), "p99": round(q(base, .99), 2), "n": len(base)},
    "victim_during_ms": {"p50": round(q(during, .5), 2), "p99": round(q(during, .99), 2), "max": round(during[-1], 2), "n": len(during)},
}))
proc.terminate(); proc.wait(10)
subprocess.run(["rm", "-rf", data])
