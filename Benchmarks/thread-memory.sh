#!/usr/bin/env bash
# Memory an active thread keeps per stored message (bug 3 of docs/RELIABILITY.md): starts one broker, sends
# RATE msgs/s for DURATION s into 10 threads (2 members each) with chat-bench, and divides the RSS growth by the
# number of messages in the database. Threads never go idle during the run, so nothing is passivated.
#   Benchmarks/thread-memory.sh [broker-binary] [rate] [duration] [message bytes, default 100] [random]
# With "random", every message has new pseudo-random content (chat-bench --random-content), which compresses about
# as little as real text; by default a sender repeats one content, which LZ4 all but removes from the chunks.
# Needs the release chat-bench (swift build -c release --product chat-bench) and the sqlite3 CLI.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
BROKER=${1:-$ROOT/.build/release/chat-broker}
RATE=${2:-8000}
DURATION=${3:-25}
SIZE=${4:-100}
CONTENT=()
[[ ${5:-} == random ]] && CONTENT=(--random-content)
export CHAT_JWT_SECRET="$(python3 -c 'import secrets; print(secrets.token_hex(32))')"
DIR="$(mktemp -d /tmp/thread-memory.XXXXXX)"
PORT="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
"$BROKER" serve --host 127.0.0.1 --port "$PORT" --data-dir "$DIR" --rate-per-sec 100000 --rate-burst 100000 \
  --durability process --log-level warning >"$DIR.log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null || true; wait $PID 2>/dev/null || true; rm -rf "$DIR" "$DIR.log"' EXIT
for _ in $(seq 1 100); do curl -fsS "http://127.0.0.1:$PORT/health" >/dev/null 2>&1 && break; sleep 0.1; done
rss() { awk '/VmRSS/ {print $2}' "/proc/$PID/status"; }
START=$(rss)
# RSS every 10 s while the load runs: a bounded thread shows a flat line once its index and chunk cache are full.
( t=0; while kill -0 $PID 2>/dev/null; do sleep 10; t=$((t + 10)); echo "  t=${t}s RSS $(rss) KiB"; done ) >"$DIR.rss" 2>/dev/null &
SAMPLER=$!
"$ROOT/.build/release/chat-bench" fanout --threads 10 --members 2 --devices 1 --rate "$RATE" --duration "$DURATION" --size "$SIZE" "${CONTENT[@]}" \
  --url "http://127.0.0.1:$PORT" --server-pid "$PID" --quiet 2>/dev/null | grep -E "acked sends/s|gaps" || true
END=$(rss)
kill $SAMPLER 2>/dev/null || true
cat "$DIR.rss"; rm -f "$DIR.rss"
curl -s "http://127.0.0.1:$PORT/metrics" | grep -E "^chat_history_" || true
ls -la "$DIR"/chat.sqlite* | awk '{print "  " $5, $9}'
STORED=$(sqlite3 "$DIR/chat.sqlite" "SELECT count(*) FROM messages")
echo "RSS ${START} KiB -> ${END} KiB for ${STORED} stored messages: $(( (END - START) * 1024 / STORED )) bytes per message"
