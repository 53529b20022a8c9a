#!/usr/bin/env bash
# Interleaved A/B of idle-websocket memory: for each round, each binary serves N idle authenticated sockets.
# usage: idle-ab.sh N ROUNDS label=binary ...
set -u
N=$1; ROUNDS=$2; shift 2
BENCH=/work/main/.build/release/chat-bench
export CHAT_JWT_SECRET=$(python3 -c 'import secrets; print(secrets.token_urlsafe(36))')
for r in $(seq 1 $ROUNDS); do
  for spec in "$@"; do
    label=${spec%%=*}; bin=${spec#*=}
    D=$(mktemp -d /tmp/mem/run.XXXX)
    PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
    "$bin" serve --host 127.0.0.1 --port $PORT --data-dir $D/data --durability process > $D/log 2>&1 &
    PID=$!
    for _ in $(seq 1 100); do curl -sf http://127.0.0.1:$PORT/health >/dev/null && break; sleep 0.1; done
    out=$($BENCH connections --url http://127.0.0.1:$PORT --connections $N --hold 5 --server-pid $PID 2>&1)
    echo "round $r $label: $(echo "$out" | grep -iE "per idle|connects/s|RSS|closed|failed" | tr '\n' ' ')"
    kill -TERM $PID; wait $PID 2>/dev/null
    rm -rf $D
  done
done
