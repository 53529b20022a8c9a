#!/bin/bash
# A/B of two send-load builds (Benchmarks/Micro, `swift build -c release --product send-load`), OLD and NEW, on one
# PostgreSQL: each run on a fresh database, a 1-round warm-up run then 3 timed rounds, alternating orders, 4 pairs.
# Used for session 22 (schema 10) against session 23 (schema 11: every commit checks the thread's members version).
#   DATABASE_URL=postgres://user:pass@127.0.0.1:PORT/db OLD=/path/send-load NEW=/path/send-load members-version-ab.sh
set -e
BASE=$(cut -d'?' -f1 <<< "${DATABASE_URL:?postgres://...}"); ROOT=${BASE%/*}
run() {  # name binary
  db="ab_$(date +%s%N | tail -c 9)"
  psql "$BASE" -qc "CREATE DATABASE $db" >/dev/null
  url="$ROOT/$db?sslmode=disable"
  "$2" --rounds 1 --durability full --database-url "$url" --temp-ids 1 >/dev/null 2>&1
  out=$("$2" --rounds 3 --durability full --database-url "$url" --temp-ids 1 2>&1 | tail -3)
  echo "$1: $(echo "$out" | tr '\n' ' ')"
  psql "$BASE" -qc "DROP DATABASE $db WITH (FORCE)" >/dev/null
}
OLD=${OLD:?send-load of the older build}; NEW=${NEW:?send-load of the newer build}
for pair in 1 2 3 4; do
  if [ $((pair % 2)) = 0 ]; then run old "$OLD"; run new "$NEW"; else run new "$NEW"; run old "$OLD"; fi
done
