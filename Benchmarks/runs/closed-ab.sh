#!/usr/bin/env bash
# Interleaved A/B of the closed loop (inflight 4), 2,000 sockets, --durability process, rate limits out of the way.
set -u
ROUNDS=$1; shift
BENCH=/work/main/.build/release/chat-bench
export CHAT_JWT_SECRET=$(python3 -c 'import secrets; print(secrets.token_urlsafe(36))')
for r in $(seq 1 $ROUNDS); do
  for spec in "$@"; do
    label=${spec%%=*}; bin=${spec#*=}
    D=$(mktemp -d /tmp/mem/run.XXXX)
    PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
    "$bin" serve --host 127.0.0.1 --port $PORT --data-dir $D/data --durability process --rate-per-sec 100000 --rate-burst 100000 > $D/log 2>&1 &
    PID=$!
    for _ in $(seq 1 100); do curl -sf http://127.0.0.1:$PORT/health >/dev/null && break; sleep 0.1; done
    out=$($BENCH fanout --url http://127.0.0.1:$PORT --threads 100 --members 10 --devices 2 --rate 0 --inflight 4 --duration 10 --server-pid $PID --quiet --json 2>/dev/null)
    echo "$out" | python3 -c "
import json,sys
d=json.load(sys.stdin); m={x['key']: x['value'] for x in d['metrics']}
us = m['server_cpu'] / 100 * 1e6 / m['deliveries_per_s']
print('round $r $label acked_per_s=%.0f deliveries_per_s=%.0f server_cpu=%.1f us_per_delivery=%.2f p99=%.1f gaps=%s reordered=%s refused=%s' % (m['acked_per_s'], m['deliveries_per_s'], m['server_cpu'], us, m['latency_p99_ms'], m['gaps'], m['reordered'], m['refused']))"
    kill -TERM $PID; wait $PID 2>/dev/null
    rm -rf $D
  done
done
