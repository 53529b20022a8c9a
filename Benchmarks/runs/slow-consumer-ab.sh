#!/usr/bin/env bash
# slow-consumer A/B: a fresh SQLite broker (--durability process) per run, binaries alternating, ROUNDS rounds (5);
# one line per run with the fast recipients' p99 before/with slow readers, slow-consumer closes and RSS.
#   ROUNDS=5 Benchmarks/runs/slow-consumer-ab.sh before=/path/to/chat-broker after=/path/to/chat-broker
set -u
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
export CHAT_JWT_SECRET=$(python3 -c 'import secrets; print(secrets.token_hex(32))')
ROUNDS=${ROUNDS:-5}
for r in $(seq 1 $ROUNDS); do
  for arg in "$@"; do
    label=${arg%%=*}
    bin=${arg#*=}
    D=$(mktemp -d /tmp/slowab.XXXX)
    P=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    "$bin" serve --host 127.0.0.1 --port $P --data-dir $D --durability process --rate-per-sec 100000 --rate-burst 100000 --log-level warning > $D.log 2>&1 &
    PID=$!
    for _ in $(seq 1 100); do curl -fsS http://127.0.0.1:$P/health >/dev/null 2>&1 && break; sleep 0.1; done
    out=$($ROOT/.build/release/chat-bench slow-consumer --url http://127.0.0.1:$P --server-pid $PID --json --quiet 2>/dev/null | grep '^{')
    kill $PID; wait $PID 2>/dev/null
    rm -rf $D $D.log
    python3 - "$label" "$r" "$out" <<'PY'
import json, sys
label, r, out = sys.argv[1], sys.argv[2], sys.argv[3]
d = json.loads(out); m = {x['key']: x['value'] for x in d['metrics']}
keys = [k for k in m if any(t in k for t in ('p99', 'rss', 'closes', 'change'))]
print(label, r, {k: m[k] for k in keys})
PY
  done
done
