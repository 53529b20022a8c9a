#!/bin/bash
export CHAT_JWT_SECRET=$(python3 -c 'import secrets;print(secrets.token_urlsafe(36))')
cd /work/main
for bin in batched after batched after batched after; do
  rm -rf /tmp/prof/data
  /tmp/prof/broker-$bin serve --host 127.0.0.1 --port 3901 --data-dir /tmp/prof/data --durability process --rate-per-sec 100000 --rate-burst 100000 > /tmp/prof/broker.log 2>&1 &
  B=$!; sleep 1.5
  .build/release/chat-bench fanout --url http://127.0.0.1:3901 --server-pid $B --threads 100 --members 10 --devices 2 --duration 10 --warmup 2 --quiet --json --rate 0 --inflight 4 > /tmp/prof/out.json 2>/dev/null &
  C=$!
  sleep 4
  S0=$(curl -s 127.0.0.1:3901/metrics | awk '/^chat_frames_enqueued_total /{print $2}')
  perf stat -e task-clock -x, -p $B -o /tmp/prof/stat.txt -- sleep 6
  S1=$(curl -s 127.0.0.1:3901/metrics | awk '/^chat_frames_enqueued_total /{print $2}')
  wait $C
  I=$(grep task-clock /tmp/prof/stat.txt | cut -d, -f1)
  python3 -c "print('$bin', 'frames', int($S1-$S0), 'CPU ns per frame', round($I*1e6/($S1-$S0)))"
  kill -TERM $B; wait $B
done
