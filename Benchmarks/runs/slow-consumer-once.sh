#!/usr/bin/env bash
# One slow-consumer run against a fresh SQLite broker (--durability process), with each progress line stamped with
# the wall clock (to line seconds up with perf/strace of the broker) and /metrics saved before and after.
#   Benchmarks/runs/slow-consumer-once.sh /path/to/chat-broker [chat-bench slow-consumer options...]
#   SERVE_EXTRA="--log-level notice" OUT=/tmp/sc Benchmarks/runs/slow-consumer-once.sh ... --slow-fraction 0
# The broker's pid is written to $OUT.pid while it runs (for `perf record -p`); its log is kept in $OUT.log.
set -u
BIN=$1; shift
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
OUT=${OUT:-/tmp/slow-consumer-once}
export CHAT_JWT_SECRET=${CHAT_JWT_SECRET:-$(python3 -c 'import secrets; print(secrets.token_hex(32))')}
D=$(mktemp -d /tmp/slowonce.XXXX)
P=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
# shellcheck disable=SC2086
"$BIN" serve --host 127.0.0.1 --port $P --data-dir $D --durability process --rate-per-sec 100000 --rate-burst 100000 \
  --log-level warning ${SERVE_EXTRA:-} > $D.log 2>&1 &
PID=$!
echo $PID > $OUT.pid
for _ in $(seq 1 100); do curl -fsS http://127.0.0.1:$P/health >/dev/null 2>&1 && break; sleep 0.1; done
curl -s http://127.0.0.1:$P/metrics > $OUT.metrics-before
"$ROOT/.build/release/chat-bench" slow-consumer --url http://127.0.0.1:$P --server-pid $PID "$@" 2>&1 | python3 -u -c '
import sys, time
for line in sys.stdin: sys.stdout.write("%.3f %s" % (time.time(), line))'
curl -s http://127.0.0.1:$P/metrics > $OUT.metrics-after
kill $PID; wait $PID 2>/dev/null
cp $D.log $OUT.log
rm -rf $D $D.log $OUT.pid
