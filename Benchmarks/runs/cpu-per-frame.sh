#!/bin/bash
# Broker CPU per delivered frame, two broker binaries alternating: `cpu-per-frame.sh A B [pairs]` (paths to release
# builds of chat-broker). Each run: a fresh broker, chat-bench fanout closed loop (100 threads × 10 members × 2
# devices, 4 in flight), and 6 s in the middle measured with `perf stat -e task-clock` on the broker, frames counted
# from chat_frames_enqueued_total. Prints one line per run.
A=${1:?binary A}; B=${2:?binary B}; PAIRS=${3:-2}
export CHAT_JWT_SECRET=$(python3 -c 'import secrets;print(secrets.token_urlsafe(36))')
cd "$(dirname "$0")/../.."
DATA=$(mktemp -d)
for i in $(seq 1 "$PAIRS"); do
  if [ $((i % 2)) -eq 1 ]; then order="$A $B"; else order="$B $A"; fi
  for bin in $order; do
    rm -rf "$DATA/data"
    "$bin" serve --host 127.0.0.1 --port 3901 --data-dir "$DATA/data" --durability process --rate-per-sec 100000 --rate-burst 100000 > "$DATA/broker.log" 2>&1 &
    BROKER=$!; sleep 1.5
    .build/release/chat-bench fanout --url http://127.0.0.1:3901 --server-pid $BROKER --threads 100 --members 10 --devices 2 --duration 10 --warmup 2 --quiet --json --rate 0 --inflight 4 > /dev/null 2>&1 &
    BENCH=$!
    sleep 4
    S0=$(curl -s 127.0.0.1:3901/metrics | awk '/^chat_frames_enqueued_total /{print $2}')
    perf stat -e task-clock -x, -p $BROKER -o "$DATA/stat.txt" -- sleep 6
    S1=$(curl -s 127.0.0.1:3901/metrics | awk '/^chat_frames_enqueued_total /{print $2}')
    wait $BENCH
    MS=$(grep task-clock "$DATA/stat.txt" | cut -d, -f1)
    python3 -c "print('$bin', 'frames', int($S1-$S0), 'CPU ns per frame', round($MS*1e6/($S1-$S0)))"
    kill -TERM $BROKER; wait $BROKER
  done
done
rm -rf "$DATA"
