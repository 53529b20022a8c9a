#!/usr/bin/env bash
# Runs the whole reliability campaign (issue #5) and leaves every figure as JSON in $OUT (default
# /tmp/chat-reliability). Needs root (tmpfs/loop mounts, strace). About 25 minutes; every step is bounded.
#   scripts/reliability/run_all.sh [broker-binary]
set -uo pipefail
cd "$(dirname "$0")/../.."
BROKER=${1:-}
[[ -z "$BROKER" ]] && { [[ -x .build/release/chat-broker ]] && BROKER=.build/release/chat-broker || BROKER=.build/debug/chat-broker; }
OUT=${OUT:-/tmp/chat-reliability}
mkdir -p "$OUT"
R=scripts/reliability
run() { local name=$1; shift; echo "== $name: $*"; timeout "${LIMIT:-1200}" "$@" > "$OUT/$name.log" 2>&1; echo "   exit $? (log $OUT/$name.log)"; }
run crash     python3 $R/crash_under_load.py --broker "$BROKER" --kills 25 --json-out "$OUT/crash.json"
run disk      python3 $R/disk_trouble.py --broker "$BROKER" --json-out "$OUT/disk.json"
run shutdown  python3 $R/graceful_shutdown.py --broker "$BROKER" --devices 1000 --json-out "$OUT/shutdown.json"
run handshake python3 $R/handshake_timeout.py --broker "$BROKER" --json-out "$OUT/handshake.json"
run fuzz      $R/fuzz.sh 90
run soak      python3 $R/soak.py --broker "$BROKER" --minutes 10 --idle-check 400 --json-out "$OUT/soak.json"
echo "== interop reliability tests"
CHAT_SERVER_CMD="$PWD/$BROKER serve --host {host} --port {port} --data-dir {data_dir}" \
    timeout 300 python3 -m pytest -q Tests/Interop/test_reliability_*.py
