#!/bin/bash
# Editing old messages one after another (each edit reseals a whole history chunk of big messages), with a user of
# another company sending meanwhile: edits done, broker CPU and disk written per edit, the other user's ack latency.
# usage: reseal-ab.sh BROKER_BINARY LABEL   (SQLite in a fresh directory, port 38401; about 2.5 minutes)
set -e
BIN=$1; LABEL=$2; HERE=$(cd "$(dirname "$0")" && pwd)
D=$(mktemp -d /tmp/reseal-$LABEL.XXXX)
"$BIN" serve --host 127.0.0.1 --port 38401 --data-dir "$D" --log-level warning > "$D/broker.log" 2>&1 &
PID=$!; echo $PID > "$D/broker.pid"
trap 'kill -TERM $PID 2>/dev/null; sleep 2; rm -rf "$D"' EXIT
sleep 2
DD=$D PIDF=$D/broker.pid PORT=38401 timeout 600 python3 "$HERE/reseal2.py" 2 800 16000 ctl 12
