#!/usr/bin/env bash
# A throw-away PostgreSQL cluster for the tests, sourced by scripts/test: `start_postgres` installs Debian's
# postgresql when missing, runs initdb in a temporary folder as a non-root user (PostgreSQL refuses to run as root),
# listens on 127.0.0.1 and a free port with password (SCRAM) authentication, creates the database `chat`, and
# exports CHAT_TEST_DATABASE_URL (and CHAT_TEST_PG_CTL, pg_ctl for this cluster); `stop_postgres` stops the server by its PID and removes the folder.
set -euo pipefail

PG_DIR=""
PG_PID=""

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

start_postgres() {
    install_apt postgresql
    local bin
    bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
    PG_DIR=$(mktemp -d /tmp/chat-pg.XXXXXX)
    local run=()
    if [ "$(id -u)" -eq 0 ]; then
        # initdb and postgres refuse root: the cluster belongs to the postgres user the Debian package created.
        chown postgres: "$PG_DIR"
        run=(runuser -u postgres --)
    fi
    local password port
    password=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
    port=$(free_port)
    printf '%s\n' "$password" > "$PG_DIR/pw"
    [ "$(id -u)" -eq 0 ] && chown postgres: "$PG_DIR/pw"
    "${run[@]}" "$bin/initdb" -D "$PG_DIR/data" -U chat --pwfile="$PG_DIR/pw" --auth-local=scram-sha-256 \
        --auth-host=scram-sha-256 -E UTF8 >"$PG_DIR/initdb.log" 2>&1 || { cat "$PG_DIR/initdb.log" >&2; return 1; }
    # 400 connections: the Swift tests run in parallel, each store with a pool of up to 8 connections, a LISTEN
    # connection and a probe; a full run peaked at 182 (twenty-sixth session), too close to the 200 it had.
    "${run[@]}" "$bin/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $port -k $PG_DIR -c max_connections=400 -c fsync=on -c log_lock_waits=on" start >/dev/null \
        || { cat "$PG_DIR/server.log" >&2; return 1; }
    PG_PID=$(head -n 1 "$PG_DIR/data/postmaster.pid")
    PGPASSWORD=$password "${run[@]}" "$bin/createdb" -h 127.0.0.1 -p "$port" -U chat chat
    export CHAT_TEST_DATABASE_URL="postgres://chat:$password@127.0.0.1:$port/chat?sslmode=disable"
    # For the tests that restart PostgreSQL under load (`$CHAT_TEST_PG_CTL restart -m fast`): pg_ctl on this cluster,
    # run as its owner.
    export CHAT_TEST_PG_CTL="${run[*]} $bin/pg_ctl -D $PG_DIR/data -l $PG_DIR/server.log -w -t 60"
    echo "PostgreSQL $("$bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$port (pid $PG_PID, $PG_DIR)"
}

stop_postgres() {
    [ -n "$PG_PID" ] || return 0
    # A test may have restarted the server: its PID is the one in postmaster.pid now.
    if [ -f "$PG_DIR/data/postmaster.pid" ]; then PG_PID=$(head -n 1 "$PG_DIR/data/postmaster.pid"); fi
    # SIGINT is PostgreSQL's fast shutdown; wait for the postmaster to exit.
    kill -INT "$PG_PID" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$PG_PID" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$PG_PID" 2>/dev/null; then kill -KILL "$PG_PID"; fi
    rm -rf "$PG_DIR"
    PG_PID=""
}
