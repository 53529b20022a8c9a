#!/usr/bin/env bash
# Interleaved A/B: the broker's CPU time for 2 x 25,000 unsolicited pongs from two unauthenticated websockets
# (the pre-authentication flood of Tests/Interop/test_preauth_dos.py), read from /proc before and 3 s after the flood.
# usage: pong-flood-ab.sh ROUNDS label=binary ...
set -u
ROUNDS=$1; shift
mkdir -p /tmp/mem
FLOOD=$(mktemp /tmp/mem/pongflood.XXXX.py)
cat > "$FLOOD" <<'PY'
import sys, threading, websocket
port, n = int(sys.argv[1]), int(sys.argv[2])
conns = []
for _ in range(2):
    ws = websocket.create_connection(f"ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket", timeout=5)
    assert ws.recv().startswith("0")
    conns.append(ws)
threads = [threading.Thread(target=lambda w=w: [w.send("3") for _ in range(n)]) for w in conns]
[t.start() for t in threads]
[t.join() for t in threads]
PY
for r in $(seq 1 "$ROUNDS"); do
  for spec in "$@"; do
    label=${spec%%=*}; bin=${spec#*=}
    D=$(mktemp -d /tmp/mem/pong.XXXX)
    PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()')
    "$bin" serve --host 127.0.0.1 --port "$PORT" --data-dir "$D/data" > "$D/log" 2>&1 &
    PID=$!
    for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break; sleep 0.1; done
    t0=$(awk '{print $14+$15}' /proc/$PID/stat)
    python3 "$FLOOD" "$PORT" 25000
    sleep 3
    t1=$(awk '{print $14+$15}' /proc/$PID/stat)
    echo "round $r $label: server CPU for 50,000 pongs $(( (t1 - t0) * 10 )) ms"
    kill -TERM $PID; wait $PID 2>/dev/null; rm -rf "$D"
  done
done
rm -f "$FLOOD"
