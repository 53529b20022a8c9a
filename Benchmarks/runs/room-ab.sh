#!/usr/bin/env bash
# Interleaved A/B: 1 × 1,000-member room, 20 senders, closed loop (inflight 4), rate limits out of the way.
# usage: room-ab.sh label=binary ... (a binary started as `BIN serve --host --port --data-dir ...`; the socket.io
# peer through a wrapper: `exec env NODE_PATH=/tmp/sio/node_modules node Benchmarks/peers/socketio/chat_peer.js "$@"`)
set -u
BENCH=/work/main/.build/release/chat-bench
export CHAT_JWT_SECRET=$(python3 -c 'import secrets; print(secrets.token_urlsafe(36))')
for r in 1 2; do
  for spec in "$@"; do
    label=${spec%%=*}; bin=${spec#*=}
    D=$(mktemp -d /tmp/mem/run.XXXX)
    PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
    "$bin" serve --host 127.0.0.1 --port $PORT --data-dir $D/data --durability process --rate-per-sec 100000 --rate-burst 100000 > $D/log 2>&1 &
    PID=$!
    for _ in $(seq 1 100); do curl -sf http://127.0.0.1:$PORT/health >/dev/null && break; sleep 0.1; done
    out=$($BENCH fanout --url http://127.0.0.1:$PORT --threads 1 --members 1000 --devices 1 --senders 20 --rate 0 --inflight 4 --duration 10 --server-pid $PID --quiet --json 2>/dev/null)
    echo "$out" | python3 -c "
import json,sys
d=json.load(sys.stdin); m={x['key']: x['value'] for x in d['metrics']}
print('round $r $label room: deliveries/s=%.0f p50=%.1f p99=%.1f ms cpu=%.0f%% gaps=%s reordered=%s' % (m['deliveries_per_s'], m['latency_p50_ms'], m['latency_p99_ms'], m['server_cpu'], m.get('gaps'), m.get('reordered')))"
    kill -TERM $PID; wait $PID 2>/dev/null
    rm -rf $D
  done
done
