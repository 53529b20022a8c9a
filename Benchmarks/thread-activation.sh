#!/usr/bin/env bash
# What activating long threads costs: one broker (SQLite, --durability process) gets RATE msgs/s for DURATION s into
# 10 threads (2 members each) from chat-bench, stops (SIGTERM), starts again on the same data, and lists each
# member's threads over REST (GET /chat/threads), which activates the 10 threads from the store. Prints the time that
# took and the broker's RSS before and after it, and its peak (VmHWM).
#   Benchmarks/thread-activation.sh [broker-binary] [rate] [duration]
# Needs the release chat-bench (swift build -c release --product chat-bench).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BROKER=${1:-$ROOT/.build/release/chat-broker}
RATE=${2:-8000}
DURATION=${3:-25}
export CHAT_JWT_SECRET="$(python3 -c 'import secrets; print(secrets.token_hex(32))')"
DIR="$(mktemp -d /tmp/thread-activation.XXXXXX)"
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
PID=""
start() {
  "$BROKER" serve --host 127.0.0.1 --port "$PORT" --data-dir "$DIR" --rate-per-sec 100000 --rate-burst 100000 \
    --durability process --log-level warning >>"$DIR.log" 2>&1 &
  PID=$!
  for _ in $(seq 1 300); do curl -fsS "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && return; sleep 0.1; done
  echo "the broker did not start" >&2; exit 1
}
stop() { [[ -n $PID ]] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null || true; PID=""; }
trap 'stop; rm -rf "$DIR" "$DIR.log"' EXIT
start
"$ROOT/.build/release/chat-bench" fanout --threads 10 --members 2 --devices 1 --rate "$RATE" --duration "$DURATION" --size 100 \
  --random-content --company activation --url "http://127.0.0.1:$PORT" --quiet 2>/dev/null | grep -E "acked sends/s|gaps" || true
stop
start
status() { awk -v k="$1" '$1 == k":" {print $2}' "/proc/$PID/status"; }
BEFORE=$(status VmRSS)
python3 - "$PORT" <<'PY'
import base64, hashlib, hmac, json, os, sys, time, urllib.request
port = sys.argv[1]
secret = os.environ["CHAT_JWT_SECRET"].encode()
def b64(raw): return base64.urlsafe_b64encode(raw).rstrip(b"=")
def token(user):
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps({"sub": user, "companyId": "activation", "exp": int(time.time()) + 600}).encode())
    return (head + b"." + body + b"." + b64(hmac.new(secret, head + b"." + body, hashlib.sha256).digest())).decode()
started = time.monotonic()
threads = set()
for u in range(20):
    request = urllib.request.Request(f"http://127.0.0.1:{port}/chat/threads", headers={"Authorization": "Bearer " + token(f"u{u}")})
    for thread in json.load(urllib.request.urlopen(request, timeout=120))["threads"]:
        threads.add((thread["id"], thread["lastSeq"]))
print(f"  {len(threads)} threads, {sum(s for _, s in threads)} events, activated in {time.monotonic() - started:.2f} s")
PY
AFTER=$(status VmRSS)
PEAK=$(status VmHWM)
echo "  RSS ${BEFORE} KiB before activation, ${AFTER} KiB after, peak ${PEAK} KiB"
