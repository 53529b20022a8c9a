#!/usr/bin/env bash
# What an integer thread key would save PostgreSQL per message row, measured outside the broker (as
# Benchmarks/Micro/sqlite-key-experiment.py did for SQLite before its schema v3).
#
#   Benchmarks/pg-key-experiment.sh "$DATABASE_URL" [pairs] [seconds]
#
# Two tables shaped like chat.messages (schema v6: ids COLLATE "C"; the (thread, seq) key, the id index and the
# partial tempId index), one keyed by the thread's 36-character text id (`a`, today's schema) and one by a bigint
# thread number (`b`). pgbench inserts 1,000 rows per transaction (10 per thread over 100 threads, time-ordered
# message ids, a random tempId each, 100-byte content) from one connection, alternating a and b on emptied tables
# after a CHECKPOINT. Prints rows/s and the backend's CPU per 1,000 rows. Needs psql and pgbench (Debian's
# postgresql-client) and a role that may create databases; the database `pg_key_experiment` is dropped at the end.
set -euo pipefail
url=${1:?usage: pg-key-experiment.sh DATABASE_URL [pairs] [seconds]}
pairs=${2:-4}
seconds=${3:-10}
bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
base=${url%%\?*}
db_url="${base%/*}/pg_key_experiment"
work=$(mktemp -d)
trap 'rm -rf "$work"; psql "$base" -qc "DROP DATABASE IF EXISTS pg_key_experiment WITH (FORCE)" >/dev/null 2>&1 || true' EXIT

psql "$base" -v ON_ERROR_STOP=1 -qc "DROP DATABASE IF EXISTS pg_key_experiment WITH (FORCE)" -qc "CREATE DATABASE pg_key_experiment"
psql "$db_url" -v ON_ERROR_STOP=1 -q <<'SQL'
CREATE SEQUENCE seqs; CREATE SEQUENCE ids;
CREATE TABLE threads(id text COLLATE "C" PRIMARY KEY, no bigint UNIQUE);
INSERT INTO threads SELECT gen_random_uuid()::text, g FROM generate_series(1, 100) g;
CREATE TABLE messages_a(thread_id text COLLATE "C" NOT NULL, seq bigint NOT NULL, id text COLLATE "C" NOT NULL,
    sender_id text COLLATE "C" NOT NULL, type text NOT NULL, content text NOT NULL, created_at timestamptz NOT NULL,
    temp_id text COLLATE "C", PRIMARY KEY (thread_id, seq));
CREATE INDEX ON messages_a(id);
CREATE INDEX ON messages_a(thread_id, temp_id) WHERE temp_id IS NOT NULL;
CREATE TABLE messages_b(thread_no bigint NOT NULL, seq bigint NOT NULL, id text COLLATE "C" NOT NULL,
    sender_id text COLLATE "C" NOT NULL, type text NOT NULL, content text NOT NULL, created_at timestamptz NOT NULL,
    temp_id text COLLATE "C", PRIMARY KEY (thread_no, seq));
CREATE INDEX ON messages_b(id);
CREATE INDEX ON messages_b(thread_no, temp_id) WHERE temp_id IS NOT NULL;
SQL
for v in a b; do
    key=$([ "$v" = a ] && echo "t.id" || echo "t.no")
    echo "INSERT INTO messages_$v SELECT $key, nextval('seqs'), lpad(nextval('ids')::text, 36, '0'), 'user-000000000001', 'text', repeat('x', 100), now(), gen_random_uuid()::text FROM generate_series(1, 10) g, threads t;" > "$work/$v.sql"
done

# pgbench connects with the URL's parts; the password goes through the environment.
export PGPASSWORD
PGPASSWORD=$(python3 -c 'import sys, urllib.parse; print(urllib.parse.urlsplit(sys.argv[1]).password or "")' "$url")
read -r host port user < <(python3 -c 'import sys, urllib.parse; u = urllib.parse.urlsplit(sys.argv[1]); print(u.hostname, u.port or 5432, u.username)' "$url")

for _ in $(seq 1 "$pairs"); do
    for v in a b; do
        psql "$db_url" -qc "TRUNCATE messages_a, messages_b" -qc "CHECKPOINT"
        log="$work/$v.log"
        "$bin/pgbench" -n -h "$host" -p "$port" -U "$user" -f "$work/$v.sql" -T "$seconds" -c 1 -P 1 pg_key_experiment >"$log" 2>&1 &
        bench=$!
        sleep 0.5   # the backend's CPU is read over the run's middle `seconds - 1` seconds
        pid=$(psql "$base" -Atc "SELECT pid FROM pg_stat_activity WHERE datname = 'pg_key_experiment' AND application_name = 'pgbench'" | head -n 1)
        before=$(awk '{print $14 + $15}' "/proc/$pid/stat")
        sleep "$(echo "$seconds - 1" | bc)"
        after=$(awk '{print $14 + $15}' "/proc/$pid/stat")
        wait "$bench"
        tps=$(awk '/^tps/ {print $3}' "$log")
        ticks=$((after - before))
        hz=$(getconf CLK_TCK)
        printf '%s: %7.0f rows/s, backend CPU %.1f ms per 1,000 rows\n' \
            "$([ "$v" = a ] && echo "text thread id   " || echo "bigint thread no ")" "$(echo "$tps * 1000" | bc -l)" \
            "$(echo "$ticks * 1000 / $hz / ($tps * ($seconds - 1))" | bc -l)"
    done
done
