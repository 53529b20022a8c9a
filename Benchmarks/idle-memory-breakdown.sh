#!/usr/bin/env bash
# Where an idle websocket's memory goes: the broker (system allocator build) under heaptrack (Debian package) while
# chat-bench holds N idle, authenticated websockets; the peak heap is then split by the innermost frame that names
# a layer (Swift task stack slabs, hummingbird-websocket/WSCore, NIO WebSocket codec, NIO channel, Hummingbird HTTP,
# ChatServer, ChatCore).
#
#   CHAT_BROKER_ALLOCATOR=system swift build -c release --product chat-broker && cp .build/release/chat-broker /tmp/broker-sys
#   swift build -c release --product chat-broker chat-bench      # (mimalloc again for the other benchmarks)
#   Benchmarks/idle-memory-breakdown.sh /tmp/broker-sys 5000
set -euo pipefail
BROKER=${1:?path to a system-allocator chat-broker}
N=${2:-5000}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OUT=$(mktemp -d /tmp/chat-heap.XXXXXX)
export CHAT_JWT_SECRET=$(python3 -c 'import secrets; print(secrets.token_urlsafe(36))')
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
heaptrack -o "$OUT/heap" "$BROKER" serve --host 127.0.0.1 --port "$PORT" --data-dir "$OUT/data" >"$OUT/broker.log" 2>&1 &
HEAPTRACK=$!
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break; sleep 0.1; done
"$ROOT/.build/release/chat-bench" connections --url "http://127.0.0.1:$PORT" --connections "$N" --hold 10 --quiet | grep -E "connections|failed"
BROKER_PID=$(pgrep -P "$HEAPTRACK" -f "serve --host 127.0.0.1 --port $PORT" || pgrep -f "$BROKER serve --host 127.0.0.1 --port $PORT" | tail -1)
kill -TERM "$BROKER_PID"
wait "$HEAPTRACK" || true
heaptrack_print -f "$OUT"/heap*.zst --flamegraph-cost-type peak -F "$OUT/peak.folded" >/dev/null 2>&1
python3 - "$OUT/peak.folded" "$N" <<'PY'
import collections, re, sys
rules = [
    ("Swift task stack slabs (async frames of per-connection tasks)", r"StackAllocator"),
    ("NIO WebSocket codec (decoder, encoder, aggregator, upgrade)", r"NIOWebSocket"),
    ("NIO socket channel, pipeline, handlers, receive buffer", r"NIOPosix.*(SocketChannel|PendingStreamWrites|ChannelPipeline|Selector)|NIOCore.*(ChannelPipeline|ChannelHandlerContext)|RecvBuffer"),
    ("hummingbird-websocket / WSCore (upgrade, handler, async channel)", r"HummingbirdWebSocket|WSCore|NIOAsyncChannel"),
    ("ChatServer (Engine.IO session, writer, timers)", r"ChatServer"),
    ("ChatCore (device, outbox, user session)", r"ChatCore"),
    ("Hummingbird HTTP (request handling, upgrade)", r"Hummingbird|HTTP1"),
]
cost, total = collections.Counter(), 0
for line in open(sys.argv[1]):
    stack, _, c = line.rstrip().rpartition(" ")
    if not c.isdigit():
        continue
    total += int(c)
    name = next((n for f in reversed(stack.split(";")) for n, rx in rules if re.search(rx, f)), "other")
    cost[name] += int(c)
n = int(sys.argv[2])
print(f"peak heap {total / 1e6:.1f} MB for {n} idle websockets: {total / n / 1024:.1f} KiB each (baseline included)")
for name, c in cost.most_common():
    print(f"{c / 1e6:8.1f} MB {c / n:8.0f} B/connection  {name}")
PY
rm -rf "$OUT"
