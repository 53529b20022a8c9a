#!/usr/bin/env bash
# 50,001 idle websockets over three release broker nodes on one PostgreSQL: three chat-bench processes of 16,667
# connections, one per node (one process may open 20,000 descriptors here), held HOLD seconds; each prints its
# node's RSS per idle connection. Nodes are started on free 127.0.0.1 ports and stopped by PID.
#   Benchmarks/runs/idle-50k-3-nodes.sh postgres://user:pass@127.0.0.1:port/db [HOLD]
set -euo pipefail
URL=${1:?database URL}
HOLD=${2:-40}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
export CHAT_JWT_SECRET=$(python3 -c 'import secrets; print(secrets.token_urlsafe(36))')
WORK=$(mktemp -d /tmp/chat-idle3.XXXXXX)
PIDS=() PORTS=()
for node in A B C; do
  PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
  "$ROOT/.build/release/chat-broker" serve --host 127.0.0.1 --port "$PORT" --data-dir "$WORK/data-$node" --database-url "$URL" \
    >"$WORK/$node.log" 2>&1 &
  PIDS+=($!) PORTS+=("$PORT")
done
trap 'kill -TERM "${PIDS[@]}" 2>/dev/null; wait "${PIDS[@]}" 2>/dev/null; rm -rf "$WORK"' EXIT
for port in "${PORTS[@]}"; do
  for _ in $(seq 1 200); do curl -sf "http://127.0.0.1:$port/health" >/dev/null && break; sleep 0.1; done
done
BENCH=()
for i in 0 1 2; do
  "$ROOT/.build/release/chat-bench" connections --url "http://127.0.0.1:${PORTS[$i]}" --connections $((i == 0 ? 16667 : 16667)) \
    --hold "$HOLD" --server-pid "${PIDS[$i]}" --quiet >"$WORK/bench-$i.txt" 2>&1 &
  BENCH+=($!)
done
wait "${BENCH[@]}" || true
for i in 0 1 2; do echo "== node $((i + 1))"; cat "$WORK/bench-$i.txt"; done
