#!/usr/bin/env python3
"""What one user within every rate limit makes the broker hold: four websockets of one user send incompressible
16 KiB messages round robin into THREADS threads (left with `chat:leave`, so nothing comes back but acks), 45 sends/s
each (under the default 50/s), for SECONDS; the broker's anonymous RSS is printed every 10 s and 10 s after the
last send, with the memory-budget metrics.

    python3 Benchmarks/memory-budget.py BINARY [SECONDS] [THREADS] [-- serve flags...]
    python3 Benchmarks/memory-budget.py .build/release/chat-broker 60 80 -- --thread-memory-budget 32
"""
import base64, json, os, re, secrets, socket, subprocess, sys, tempfile, threading, time

import jwt, requests, websocket

args = sys.argv[1:]
extra = args[args.index("--") + 1:] if "--" in args else []
args = args[:args.index("--")] if "--" in args else args
binary, seconds, nthreads = args[0], float(args[1]) if len(args) > 1 else 60, int(args[2]) if len(args) > 2 else 80
secret = secrets.token_urlsafe(36)
s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
data = tempfile.mkdtemp(prefix="memory-budget-")
broker = subprocess.Popen([binary, "serve", "--host", "127.0.0.1", "--port", str(port), "--data-dir", data, "--durability", "process", *extra],
                          env=dict(os.environ, CHAT_JWT_SECRET=secret), stdout=subprocess.DEVNULL, stderr=open(os.environ.get("BROKER_LOG", os.devnull), "w"))
base = f"http://127.0.0.1:{port}"


def anon_mib():
    with open(f"/proc/{broker.pid}/status") as f:
        return round(int(re.search(r"RssAnon:\s+(\d+)", f.read()).group(1)) / 1024, 1)


try:
    for _ in range(100):
        try:
            requests.get(base + "/health", timeout=0.3); break
        except requests.RequestException:
            time.sleep(0.1)
    tok = jwt.encode({"sub": "mallory", "companyId": "memco", "exp": int(time.time()) + 3600}, secret, algorithm="HS256")
    auth = {"Authorization": "Bearer " + tok}
    threads = [requests.post(base + "/chat/threads", headers=auth, json={"type": "group", "name": f"m{i}", "memberIds": [f"ghost{i}"]},
                             timeout=10).json()["thread"]["id"] for i in range(nthreads)]
    sockets = []
    for _ in range(4):
        ws = websocket.create_connection(f"ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket", timeout=10, enable_multithread=True)
        ws.recv()
        ws.send("40/chat," + json.dumps({"token": tok}))
        while not ws.recv().startswith("40/chat"):
            pass
        for n, t in enumerate(threads):
            ws.send(f"42/chat,{n}" + json.dumps(["chat:leave", {"threadId": t}]))
        sockets.append(ws)
    acked = [0] * 4
    # Made beforehand (the four senders and readers share one interpreter): 2,000 random contents, so that hardly any
    # two of a 256-message chunk are alike and LZ4 finds nothing to compress.
    contents = [base64.b64encode(os.urandom(12_300)).decode()[:16_384] for _ in range(2_000)]
    stop = time.time() + seconds

    def run(k):
        """Sends what is due, then reads what has come (one thread per socket: the readers keep up with the acks)."""
        ws, n, start = sockets[k], 0, time.time()
        ws.settimeout(0.002)
        while time.time() < stop + 3:
            while time.time() < stop and n < (time.time() - start) * 45:
                content = contents[(n * 4 + k) % len(contents)]
                ws.send(f"42/chat,{100_000 + n}" + json.dumps(["chat:send", {"threadId": threads[(n * 4 + k) % nthreads], "content": content}]))
                n += 1
            while True:
                try:
                    frame = ws.recv()
                except websocket.WebSocketTimeoutException:
                    break
                if frame == "2":
                    ws.send("3")
                elif frame.startswith("43/chat,1") and '"success":true' in frame[:40]:
                    acked[k] += 1

    workers = [threading.Thread(target=run, args=(k,)) for k in range(4)]
    [w.start() for w in workers]
    print(f"start: anon RSS {anon_mib()} MiB", flush=True)
    while time.time() < stop:
        time.sleep(10)
        print(f"t={seconds - (stop - time.time()):.0f}s anon RSS {anon_mib()} MiB, acked {sum(acked)}", flush=True)
    [w.join() for w in workers]
    time.sleep(10)
    metrics = requests.get(base + "/metrics", timeout=5).text
    held = re.search(r"^chat_thread_memory_bytes (\S+)", metrics, re.M)
    active = re.search(r"^chat_active_threads (\S+)", metrics, re.M).group(1)
    print(f"10 s after: anon RSS {anon_mib()} MiB; acked {sum(acked)} ({sum(acked) * 16384 / 2**20:.0f} MiB of content); "
          f"active threads {active}; thread memory {held.group(1) if held else 'n/a'} bytes", flush=True)
finally:
    broker.terminate(); broker.wait(20)
    subprocess.run(["rm", "-rf", data])
