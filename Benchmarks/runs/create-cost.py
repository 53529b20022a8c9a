"""Cost of creating group threads of many members (ids of 250 bytes), none of them online: wall time per request
and broker CPU. usage: create-cost.py BROKER ROUNDS MEMBERS (release builds; alternate two builds to compare)."""
import os, socket, subprocess, sys, tempfile, time
import jwt, requests

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

def cpu(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")

binary, rounds, members = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
secret = "s" * 40
port = free_port()
data = tempfile.mkdtemp()
env = dict(os.environ, CHAT_JWT_SECRET=secret)
p = subprocess.Popen([binary, "serve", "--host", "127.0.0.1", "--port", str(port), "--data-dir", data,
                      "--rate-per-sec", "100000", "--rate-burst", "100000", "--durability", "process"],
                     env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
try:
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            if requests.get(url + "/health", timeout=1).status_code == 200: break
        except Exception: pass
        time.sleep(0.1)
    tok = jwt.encode({"sub": "creator", "companyId": "acme", "exp": int(time.time()) + 3600}, secret, algorithm="HS256")
    h = {"Authorization": f"Bearer {tok}"}
    times = []
    c0 = cpu(p.pid)
    for r in range(rounds):
        ids = [f"{r:04d}-{i:04d}-" + "x" * 240 for i in range(members)]
        t = time.perf_counter()
        resp = requests.post(url + "/chat/threads", json={"type": "group", "memberIds": ids}, headers=h, timeout=120)
        times.append(time.perf_counter() - t)
        assert resp.status_code == 201, resp.text[:200]
    c1 = cpu(p.pid)
    times.sort()
    print(f"{binary}: {rounds} creates of {members} members: median {times[len(times)//2]*1000:.1f} ms, "
          f"max {times[-1]*1000:.1f} ms, broker CPU {(c1-c0)/rounds*1000:.1f} ms per create")
finally:
    p.terminate(); p.wait()
