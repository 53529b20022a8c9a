#!/usr/bin/env bash
# Runs the same chat-bench scenarios against ChatBroker and the Python baseline peer, one after the other, each
# server started fresh on a free port for each scenario, and prints one table with the ratio ChatBroker / peer.
#
#   Benchmarks/compare.sh                         # quick suite (about 3–4 minutes once built)
#   Benchmarks/compare.sh --durability full       # both servers fsync before acking
#   Benchmarks/compare.sh -- fanout --rate 0 --duration 20     # one scenario of your own
#
# Options: --durability process|full (default process), --skip-build, --only broker|peer, --keep (keep data dirs).
# Needs: swift 6.3, python3 with python-socketio, aiohttp, PyJWT. Traffic goes to 127.0.0.1 only.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
PEER="${CHAT_PEER:-/work/shared/peers/python/chat_peer.py}"
DURABILITY=process
BUILD=1
ONLY=""
KEEP=0
CUSTOM=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --durability) DURABILITY="$2"; shift 2 ;;
    --skip-build) BUILD=0; shift ;;
    --only) ONLY="$2"; shift 2 ;;
    --keep) KEEP=1; shift ;;
    --) shift; CUSTOM=("$@"); break ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 64 ;;
  esac
done

if [[ ${#CUSTOM[@]} -gt 0 ]]; then
  SCENARIOS=("${CUSTOM[*]}")
else
  SCENARIOS=(
    "fanout --threads 100 --members 10 --devices 2 --rate 500 --duration 10"
    "fanout --threads 100 --members 10 --devices 2 --rate 0 --inflight 4 --duration 10"
    "connections --connections 5000 --hold 3"
    "reconnect --threads 20 --members 10 --devices 2 --rate 200 --duration 10"
  )
fi

if [[ $BUILD == 1 ]]; then
  echo "building release (chat-broker, chat-bench)…" >&2
  flock /tmp/swiftbuild.lock swift build -c release --product chat-broker >&2
  flock /tmp/swiftbuild.lock swift build -c release --product chat-bench >&2
fi
BENCH="$ROOT/.build/release/chat-bench"
BROKER="$ROOT/.build/release/chat-broker"
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
  if [[ $kind == broker ]]; then
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

KINDS=(broker peer)
[[ -n $ONLY ]] && KINDS=("$ONLY")
i=0
for scenario in "${SCENARIOS[@]}"; do
  i=$((i + 1))
  for kind in "${KINDS[@]}"; do
    port=$(free_port)
    label=$([[ $kind == broker ]] && echo "ChatBroker" || echo "python peer")
    echo "── [$i/${#SCENARIOS[@]}] $label: chat-bench $scenario" >&2
    start_server "$kind" "$WORK/$kind-$i" "$port"
    # shellcheck disable=SC2086
    "$BENCH" $scenario --url "http://127.0.0.1:$port" --server-pid "$SERVER_PID" --label "$label" --json \
      >"$WORK/$i-$kind.json" 2>"$WORK/$i-$kind.err" || echo "   (chat-bench exit $? — see below)" >&2
    grep -E "result:|note:" "$WORK/$i-$kind.err" | sed 's/^/   /' >&2 || true
    stop_server
  done
done

python3 - "$WORK" "$DURABILITY" "${#SCENARIOS[@]}" <<'PY'
import json, os, sys, platform, datetime
work, durability, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
def load(i, kind):
    try:
        with open(os.path.join(work, f"{i}-{kind}.json")) as f:
            return json.load(f)
    except Exception:
        return None
def fmtv(v, unit):
    if v is None: return "—"
    if unit == "ms": return f"{v:.3f} ms"
    if unit in ("KiB", "MiB"): return f"{v:.1f} {unit}"
    if unit == "%": return f"{v:.0f} %"
    if unit == "s": return f"{v:.2f} s"
    return f"{v:,.0f}" if abs(v - round(v)) < 1e-9 else f"{v:,.2f}"
print(f"\nChatBroker vs python peer — durability={durability}, {os.cpu_count()} cores, "
      f"{datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}")
for i in range(1, n + 1):
    b, p = load(i, "broker"), load(i, "peer")
    ref = b or p
    if ref is None:
        print(f"\n[{i}] no result"); continue
    params = " ".join(f"{k}={ref['parameters'][k]}" for k in ref.get("parameterOrder", []))
    print(f"\n[{i}] {ref['scenario']}  {params}")
    print(f"  {'metric':38} {'ChatBroker':>16} {'python peer':>16} {'ratio':>8}")
    bm = {m["key"]: m for m in (b or {}).get("metrics", [])}
    pm = {m["key"]: m for m in (p or {}).get("metrics", [])}
    keys = [m["key"] for m in ref["metrics"]] + [k for k in pm if k not in {m["key"] for m in ref["metrics"]}]
    for k in keys:
        m = bm.get(k) or pm.get(k)
        if k.endswith("_samples") or k == "sent": continue
        bv, pv = bm.get(k, {}).get("value"), pm.get(k, {}).get("value")
        ratio = f"{bv / pv:.2f}x" if bv is not None and pv not in (None, 0) and not m.get("check") else ""
        if m.get("check"):
            ratio = "ok" if (bv or 0) == 0 and (pv or 0) == 0 else "CHECK"
        print(f"  {m['label'][:38]:38} {fmtv(bv, m['unit']):>16} {fmtv(pv, m['unit']):>16} {ratio:>8}")
    for name, r in (("ChatBroker", b), ("python peer", p)):
        if r is None:
            print(f"  {name}: no result (see its .err)")
        elif r.get("problems"):
            print(f"  {name} FAILED: " + "; ".join(r["problems"]))
        for note in (r or {}).get("notes", []):
            print(f"  {name} note: {note}")
print("\nratio = ChatBroker / python peer (for latencies and memory, lower is better).")
PY
