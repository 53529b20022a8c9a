#!/usr/bin/env bash
# Interleaved A/B: fanout at 500 msgs/s and closed loop (inflight 4), 2,000 sockets, --durability process.
# usage: fanout-ab.sh ROUNDS label=binary ...
# MODES (chat-bench options per mode, separated by ';') and SERVE_EXTRA (more `serve` flags) change what is run:
#   SERVE_EXTRA="--rate-per-sec 100000 --rate-burst 100000" MODES="--rate 0 --inflight 4" fanout-ab.sh 3 a=… b=…
# is the closed loop with the rate limits out of the way. Each line also gives the broker's CPU per delivery.
set -u
ROUNDS=$1; shift
BENCH=/work/main/.build/release/chat-bench
MODES=${MODES:-"--rate 500;--rate 0 --inflight 4"}
SERVE_EXTRA=${SERVE_EXTRA:-}
export CHAT_JWT_SECRET=$(python3 -c 'import secrets; print(secrets.token_urlsafe(36))')
IFS=';' read -r -a MODE_LIST <<< "$MODES"
for r in $(seq 1 $ROUNDS); do
  for spec in "$@"; do
    label=${spec%%=*}; bin=${spec#*=}
    for mode in "${MODE_LIST[@]}"; do
      D=$(mktemp -d /tmp/mem/run.XXXX)
      PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
      # shellcheck disable=SC2086
      "$bin" serve --host 127.0.0.1 --port $PORT --data-dir $D/data --durability process $SERVE_EXTRA > $D/log 2>&1 &
      PID=$!
      for _ in $(seq 1 100); do curl -sf http://127.0.0.1:$PORT/health >/dev/null && break; sleep 0.1; done
      # shellcheck disable=SC2086
      out=$($BENCH fanout --url http://127.0.0.1:$PORT --threads 100 --members 10 --devices 2 $mode --duration 10 --server-pid $PID --quiet --json 2>/dev/null)
      echo "$out" | python3 -c "
import json,sys
d=json.load(sys.stdin); m={x['key']: x['value'] for x in d['metrics']}
keys=['acked_per_s','deliveries_per_s','latency_p50_ms','latency_p99_ms','latency_p999_ms','server_cpu','server_rss_mib','gaps','reordered','unexpected_closes','refused']
us = m['server_cpu'] / 100 * 1e6 / m['deliveries_per_s'] if m.get('deliveries_per_s') else float('nan')
print('round $r $label [$mode] ' + ' '.join(f'{k}={m.get(k):.4g}' if isinstance(m.get(k),(int,float)) else f'{k}=?' for k in keys) + f' us_per_delivery={us:.3g}')"
      kill -TERM $PID; wait $PID 2>/dev/null
      rm -rf $D
    done
  done
done
