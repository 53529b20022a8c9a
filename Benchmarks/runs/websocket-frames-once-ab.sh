#!/bin/bash
# Interleaved A/B: before/after binaries, closed loop 2,000 sockets and 500 msgs/s, 4 rounds alternating order.
export CHAT_JWT_SECRET=$(python3 -c 'import secrets;print(secrets.token_urlsafe(36))')
cd /work/main
run() { # $1 binary label, $2 scenario args...
  local bin=$1; shift; local label=$1; shift
  rm -rf /tmp/prof/data
  /tmp/prof/broker-$bin serve --host 127.0.0.1 --port 3901 --data-dir /tmp/prof/data --durability process --rate-per-sec 100000 --rate-burst 100000 > /tmp/prof/broker.log 2>&1 &
  local B=$!; sleep 1.5
  .build/release/chat-bench fanout --url http://127.0.0.1:3901 --server-pid $B --threads 100 --members 10 --devices 2 --duration 10 --warmup 2 --quiet --json "$@" > /tmp/prof/out.json 2>/dev/null
  python3 -c "
import json;r=json.load(open('/tmp/prof/out.json'));m={x['key']:x['value'] for x in r['metrics']}
print('$bin','$label', 'deliveries/s', m.get('deliveries_per_s'), 'p50', m.get('latency_p50_ms'), 'p99', m.get('latency_p99_ms'), 'p99.9', m.get('latency_p999_ms'), 'server cpu %', m.get('server_cpu'), 'server us/delivery', round(m.get('server_cpu',0)*1e4/max(1,m.get('deliveries_per_s',1)),2), 'problems', len(r.get('problems',[])))"
  kill -TERM $B; wait $B
}
for round in 1 2 3; do
  if [ $((round % 2)) -eq 1 ]; then order="before after"; else order="after before"; fi
  for bin in $order; do
    run $bin closed --rate 0 --inflight 4
    run $bin rate500 --rate 500
  done
done
