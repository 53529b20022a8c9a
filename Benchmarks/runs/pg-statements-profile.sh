#!/usr/bin/env bash
# N release nodes (default 3) on one PostgreSQL whose server preloads pg_stat_statements
# (-c shared_preload_libraries=pg_stat_statements, then CREATE EXTENSION pg_stat_statements), chat-bench fanout at RATE
# msgs/s spread over them for DUR s; prints PostgreSQL CPU (postmaster and children, /proc) per 1,000 sends and the
# statements by calls. Nodes start on free 127.0.0.1 ports and are stopped by PID.
#   CHAT_PROFILE_DATABASE_URL=postgres://… CHAT_PROFILE_PGDATA=/path/to/data Benchmarks/runs/pg-statements-profile.sh 3 500 20
set -u
URL=${CHAT_PROFILE_DATABASE_URL:?a database URL whose server preloads pg_stat_statements}; N=${1:-3}; RATE=${2:-500}; DUR=${3:-20}
PGDATA_DIR=${CHAT_PROFILE_PGDATA:?the cluster data directory (for postmaster.pid)}
PGPID=$(head -1 "$PGDATA_DIR/postmaster.pid")
export CHAT_JWT_SECRET=$(python3 -c 'import secrets; print(secrets.token_urlsafe(36))')
W=$(mktemp -d /tmp/chat-pgp.XXXX); PIDS=(); URLS=()
for i in $(seq 1 $N); do
  P=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
  "${CHAT_BROKER_BIN:-$(cd "$(dirname "$0")/../.." && pwd)/.build/release/chat-broker}" serve --host 127.0.0.1 --port $P --data-dir $W/d$i --database-url "$URL" --rate-per-sec 100000 --rate-burst 100000 ${CHAT_BROKER_EXTRA:-} > $W/n$i.log 2>&1 &
  PIDS+=($!); URLS+=("http://127.0.0.1:$P")
done
for u in "${URLS[@]}"; do for _ in $(seq 1 100); do curl -sf $u/health >/dev/null && break; sleep 0.1; done; done
pgcpu() { python3 - "$PGPID" <<'PY'
import os, sys
root = int(sys.argv[1]); tot = 0
for p in os.listdir('/proc'):
    if not p.isdigit(): continue
    try:
        st = open(f'/proc/{p}/stat').read().rsplit(')', 1)[1].split()
        ppid = int(st[1])
        if int(p) == root or ppid == root:
            tot += int(st[11]) + int(st[12])
    except Exception: pass
print(tot)
PY
}
psql "$URL" -qc "SELECT pg_stat_statements_reset()" >/dev/null
c0=$(pgcpu); t0=$(date +%s.%N)
"$(cd "$(dirname "$0")/../.." && pwd)/.build/release/chat-bench" fanout --url $(IFS=,; echo "${URLS[*]}") --rate $RATE --duration $DUR --warmup 2 --quiet --json 2>/dev/null > $W/bench.json
c1=$(pgcpu); t1=$(date +%s.%N)
python3 -c "
import json; d=json.load(open('$W/bench.json')); m={x['key']: x['value'] for x in d['metrics']}
print('acked/s', m['acked_per_s'], 'sent', m['sent'], 'p50', m['latency_p50_ms'], 'p99', m['latency_p99_ms'], 'p99.9', m['latency_p999_ms'], 'gaps', m['gaps'], 'reordered', m['reordered'])
sent=m['sent']; cpu=($c1-$c0)/100.0; wall=$t1-$t0
print(f'PG CPU {cpu:.2f} s over {wall:.1f} s wall (bench incl. connect+warmup): {cpu/wall*100:.0f}% of a core, {cpu*1000/sent*1000:.0f} ms per 1000 sends')
"
psql "$URL" -P pager=off -c "SELECT calls, round(total_exec_time::numeric,0) AS exec_ms, round(total_plan_time::numeric,0) AS plan_ms, rows, left(regexp_replace(query, '\s+', ' ', 'g'), 90) AS q FROM pg_stat_statements ORDER BY calls DESC LIMIT 25"
kill -TERM "${PIDS[@]}"; wait "${PIDS[@]}" 2>/dev/null; rm -rf $W
