#!/usr/bin/env bash
# Runs the same chat-bench scenarios against ChatBroker and the Python baseline peer, one after the other, each
# server started fresh on a free port for each scenario, and prints one table with the ratio ChatBroker / peer.
#
#   Benchmarks/compare.sh                         # quick suite (about 2–3 minutes once built)
#   Benchmarks/compare.sh --durability full       # both servers fsync before acking
#   Benchmarks/compare.sh --suite full            # every scenario of Benchmarks/README.md (about 10 minutes)
#   Benchmarks/compare.sh --suite ceiling         # chat-bench (1 loop, core 0) against its echo server (core 1)
#   Benchmarks/compare.sh -- fanout --rate 0 --duration 20     # one scenario of your own
#
# Options: --durability process|full (default process), --suite quick|full|ceiling, --skip-build,
#          --only broker|peer, --keep (keep data dirs and logs).
# Needs: swift 6.3, python3 with python-socketio, aiohttp, PyJWT. Traffic goes to 127.0.0.1 only.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
PEER="${CHAT_PEER:-/work/shared/peers/python/chat_peer.py}"
DURABILITY=process
BUILD=1
ONLY=""
SUITE=quick
KEEP=0
CUSTOM=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --durability) DURABILITY="$2"; shift 2 ;;
    --skip-build) BUILD=0; shift ;;
    --only) ONLY="$2"; shift 2 ;;
    --suite) SUITE="$2"; shift 2 ;;
    --keep) KEEP=1; shift ;;
    --) shift; CUSTOM=("$@"); break ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 64 ;;
  esac
done

KINDS=(broker peer)
PIN_BENCH=()
if [[ ${#CUSTOM[@]} -gt 0 ]]; then
  SCENARIOS=("${CUSTOM[*]}")
elif [[ $SUITE == quick ]]; then
  SCENARIOS=(
    "fanout --threads 100 --members 10 --devices 2 --rate 500 --duration 10"
    "fanout --threads 100 --members 10 --devices 2 --rate 0 --inflight 4 --duration 10"
    "connections --connections 5000 --hold 3"
    "reconnect --threads 20 --members 10 --devices 2 --rate 200 --duration 10"
  )
elif [[ $SUITE == full ]]; then
  SCENARIOS=(
    "fanout --threads 100 --members 10 --devices 2 --rate 500 --duration 20"
    "fanout --threads 100 --members 10 --devices 2 --rate 0 --inflight 4 --duration 20"
    "fanout --threads 100 --members 10 --devices 2 --rate 0 --inflight 16 --duration 20"
    "fanout --threads 1 --members 200 --devices 1 --rate 50 --duration 20"
    "fanout --threads 1 --members 1000 --devices 1 --rate 50 --duration 20"
    "fanout --threads 1 --members 1000 --devices 1 --senders 20 --rate 0 --inflight 4 --duration 20"
    "connections --connections 10000 --hold 5"
    "connections --connections 19000 --hold 5"
    "slow-consumer"
    "reconnect"
  )
elif [[ $SUITE == ceiling ]]; then
  # The harness on one core (one event loop, pinned to CPU 0) against the echo server pinned to CPU 1.
  KINDS=(echo)
  PIN_BENCH=(taskset -c 0)
  SCENARIOS=(
    "fanout --loops 1 --threads 10 --members 100 --devices 1 --senders 100 --rate 0 --inflight 8 --duration 10"
    "fanout --loops 1 --threads 1 --members 1000 --devices 1 --senders 20 --rate 0 --inflight 8 --duration 10"
  )
else
  echo "unknown suite $SUITE (quick, full, ceiling)" >&2; exit 64
fi

if [[ $BUILD == 1 ]]; then
  echo "building release (chat-broker, chat-bench)…" >&2
  flock /tmp/swiftbuild.lock swift build -c release --product chat-broker >&2
  flock /tmp/swiftbuild.lock swift build -c release --product chat-bench >&2
fi
BENCH="$ROOT/.build/release/chat-bench"
BROKER="${CHAT_BROKER_BIN:-$ROOT/.build/release/chat-broker}"   # CHAT_BROKER_BIN: another build, for an A/B
[[ -x $BENCH && -x $BROKER ]] || { echo "release binaries missing; run without --skip-build" >&2; exit 1; }

ulimit -n 200000 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
WORK="$(mktemp -d /tmp/chat-compare.XXXXXX)"
export CHAT_JWT_SECRET="$(python3 -c 'import secrets; print(secrets.token_hex(32))')"
SERVER_PID=""

stop_server() {
  if [[ -n $SERVER_PID ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  SERVER_PID=""
}
cleanup() {
  stop_server
  if [[ $KEEP == 0 ]]; then rm -rf "$WORK"; else echo "data and logs kept in $WORK" >&2; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# start_server broker|peer DIR PORT  → sets SERVER_PID
start_server() {
  local kind=$1 dir=$2 port=$3
  mkdir -p "$dir"
  if [[ $kind == echo ]]; then
    taskset -c 1 "$BENCH" echo-server --host 127.0.0.1 --port "$port" >"$dir.log" 2>&1 &
  elif [[ $kind == broker ]]; then
    "$BROKER" serve --host 127.0.0.1 --port "$port" --data-dir "$dir" --rate-per-sec 100000 --rate-burst 100000 \
      --durability "$DURABILITY" --log-level warning >"$dir.log" 2>&1 &
  else
    python3 "$PEER" serve --host 127.0.0.1 --port "$port" --data-dir "$dir" --rate-per-sec 100000 --rate-burst 100000 \
      --durability "$DURABILITY" >"$dir.log" 2>&1 &
  fi
  SERVER_PID=$!
  for _ in $(seq 1 150); do
    if curl -fsS "http://127.0.0.1:$port/health" >/dev/null 2>&1; then return 0; fi
    kill -0 "$SERVER_PID" 2>/dev/null || { echo "$kind exited at start:" >&2; tail -20 "$dir.log" >&2; return 1; }
    sleep 0.1
  done
  echo "$kind did not become healthy; log:" >&2; tail -20 "$dir.log" >&2
  return 1
}

[[ -n $ONLY ]] && KINDS=("$ONLY")
i=0
for scenario in "${SCENARIOS[@]}"; do
  i=$((i + 1))
  for kind in "${KINDS[@]}"; do
    port=$(free_port)
    case $kind in broker) label="ChatBroker" ;; peer) label="python peer" ;; *) label="echo server" ;; esac
    echo "── [$i/${#SCENARIOS[@]}] $label: chat-bench $scenario" >&2
    start_server "$kind" "$WORK/$kind-$i" "$port"
    # shellcheck disable=SC2086
    "${PIN_BENCH[@]}" "$BENCH" $scenario --url "http://127.0.0.1:$port" --server-pid "$SERVER_PID" --label "$label" --json \
      >"$WORK/$i-$kind.json" 2>"$WORK/$i-$kind.err" || echo "   (chat-bench exit $? — see below)" >&2
    grep -E "result:|note:" "$WORK/$i-$kind.err" | sed 's/^/   /' >&2 || true
    [[ -s "$WORK/$i-$kind.json" ]] || tail -3 "$WORK/$i-$kind.err" | sed 's/^/   /' >&2
    stop_server
  done
done

python3 - "$WORK" "$DURABILITY" "${#SCENARIOS[@]}" "${KINDS[*]}" <<'PY'
import json, os, sys, datetime
work, durability, n, kinds = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4].split()
names = {"broker": "ChatBroker", "peer": "python peer", "echo": "echo server"}
ratio_col = kinds == ["broker", "peer"]
def load(i, kind):
    try:
        with open(os.path.join(work, f"{i}-{kind}.json")) as f:
            return json.load(f)
    except Exception:
        return None
def fmtv(v, unit):
    if v is None: return "—"
    if unit == "ms": return f"{v:.3f} ms"
    if unit == "µs": return f"{v:.3f} µs"
    if unit in ("KiB", "MiB"): return f"{v:.1f} {unit}"
    if unit == "%": return f"{v:.0f} %"
    if unit == "s": return f"{v:.2f} s"
    return f"{v:,.0f}" if abs(v - round(v)) < 1e-9 else f"{v:,.2f}"
load_avg = open("/proc/loadavg").read().split()[0]
print(f"\n{' vs '.join(names[k] for k in kinds)} — durability={durability}, {os.cpu_count()} cores, "
      f"{datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}, load {load_avg} at the end")
for i in range(1, n + 1):
    results = {k: load(i, k) for k in kinds}
    ref = next((r for r in results.values() if r), None)
    if ref is None:
        print(f"\n[{i}] no result"); continue
    params = " ".join(f"{k}={ref['parameters'][k]}" for k in ref.get("parameterOrder", []))
    print(f"\n[{i}] {ref['scenario']}  {params}")
    header = f"  {'metric':38}" + "".join(f" {names[k]:>16}" for k in kinds) + (f" {'ratio':>8}" if ratio_col else "")
    print(header)
    maps = {k: {m["key"]: m for m in (r or {}).get("metrics", [])} for k, r in results.items()}
    keys, seen = [], set()
    for k in kinds:
        for m in (results[k] or {}).get("metrics", []):
            if m["key"] not in seen:
                seen.add(m["key"]); keys.append(m["key"])
    for key in keys:
        if key.endswith("_samples") or key == "sent": continue
        m = next(maps[k][key] for k in kinds if key in maps[k])
        vals = [maps[k].get(key, {}).get("value") for k in kinds]
        line = f"  {m['label'][:38]:38}" + "".join(f" {fmtv(v, m['unit']):>16}" for v in vals)
        if ratio_col:
            b, p = vals
            if m.get("check"):
                r = "ok" if (b or 0) == 0 and (p or 0) == 0 else "CHECK"
            else:
                r = f"{b / p:.3g}x" if b is not None and p not in (None, 0) else ""
            line += f" {r:>8}"
        print(line)
    for k in kinds:
        r = results[k]
        if r is None:
            print(f"  {names[k]}: no result (see {work}/{i}-{k}.err)")
            continue
        if r.get("problems"):
            print(f"  {names[k]} FAILED: " + "; ".join(r["problems"]))
        for note in r.get("notes", []):
            print(f"  {names[k]} note: {note}")
if ratio_col:
    print("\nratio = ChatBroker / python peer (for latencies and memory, lower is better).")
PY
