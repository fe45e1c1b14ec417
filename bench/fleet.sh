#!/usr/bin/env bash
# What the fleet's shared state costs: the shared harness (compare.sh) with the sidecar twice in
# one run, in-process ("sidecar") and with its agent leases in Redis ("sidecar-redis": state.redis
# set, a redis-server on this machine), then the handshake latency of each (load.js handshake:
# connect, auth, one round trip, close; 20 at a time), in ROUNDS rounds taking turns.
#
#   BENCH_SHARED=/work/shared/bench flock /tmp/bench.lock bench/fleet.sh > /tmp/me/fleet.jsonl
#
# Prints compare.sh's JSON line per contender, one {"latency": ...} line per contender and round,
# and a last {"summary": ...} line: sessions/s with Redis over without, and the handshake p50/p99
# each way. Env: SECONDS (5), ROUNDS (3), REDIS_PORT (19379), and what compare.sh reads.
# Needs redis-server (apt-get install redis-server) besides what bench/run.sh needs; the
# harness is not part of this repository (BENCH_SHARED, default ../shared/bench).
#   bench/fleet.sh --help    # this text
set -euo pipefail

case "${1:-}" in
  -h | --help)
    # This file's opening comment, without the '# '.
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;s/^#$//;p}' "${BASH_SOURCE[0]}"
    exit 0
    ;;
  "") ;;
  *)
    echo "fleet.sh: unknown argument '$1' (see bench/fleet.sh --help)" >&2
    exit 2
    ;;
esac

secs=$(tr '\0' '\n' </proc/$$/environ | sed -n 's/^SECONDS=//p')  # see bench/run.sh
secs=${secs:-5}
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SHARED="${BENCH_SHARED:-$ROOT/../shared/bench}"
ROUNDS=${ROUNDS:-3}
REDIS_PORT=${REDIS_PORT:-19379}
REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0"
SIDECAR="$ROOT/.venv/bin/sidecar"
LOG="${SIDECAR_LOG:-/tmp/sidecar-fleet-bench.log}"
command -v redis-server >/dev/null || { echo "fleet.sh: apt-get install redis-server" >&2; exit 2; }
[ -x "$SHARED/compare.sh" ] || {
  echo "fleet.sh: the shared harness is missing: $SHARED/compare.sh (not part of this repository; set BENCH_SHARED to its folder)" >&2
  exit 2
}
[ -x "$SIDECAR" ] || { echo "fleet.sh: no $SIDECAR (make the venv first)" >&2; exit 2; }
cd "$ROOT"
: >"$LOG"

work="$(mktemp -d)"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.1; done; echo "port $1 never opened" >&2; return 1; }
wait_free() { for _ in $(seq 300); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null || return 0; sleep 0.1; done; echo "port $1 still taken" >&2; return 1; }

redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no >"$work/redis.log" 2>&1 &
pids+=($!)
wait_port "$REDIS_PORT"

# 1. The harness: both contenders in one run, so their ratios to nginx compare.
env SECONDS="$secs" "$SHARED/compare.sh" \
  "sidecar=$(printf '%q' "$SIDECAR") serve --config bench/routes.yaml 2>>$(printf '%q' "$LOG")" \
  "sidecar-redis=env REDIS_URL=$REDIS_URL $(printf '%q' "$SIDECAR") serve --config bench/routes.yaml 2>>$(printf '%q' "$LOG")" \
  | tee "$work/harness.jsonl"

# 2. Handshake latency, p50 and p99 as the client sees them, the two taking turns.
export NODE_PATH="${BENCH_CACHE:-$HOME/.cache/sidecar-bench}/node_modules"
wait_free 19001 && wait_free 19210 && wait_free 19211
node "$SHARED/echo_server.js" 19001 >/dev/null & pids+=($!)
wait_port 19001
# Ports of their own: compare.sh's contenders may still be draining on 19200 and up.
PORT=19210 UPSTREAM=127.0.0.1:19001 "$SIDECAR" serve --config bench/routes.yaml 2>>"$LOG" & pids+=($!)
declare -A pid_of=([sidecar]=$!)
PORT=19211 UPSTREAM=127.0.0.1:19001 REDIS_URL=$REDIS_URL "$SIDECAR" serve --config bench/routes.yaml 2>>"$LOG" & pids+=($!)
pid_of[sidecar-redis]=$!
wait_port 19210 && wait_port 19211
ticks() { awk '{sub(/^.*\) /, ""); print $12+$13}' "/proc/$1/stat"; }  # user+system CPU, in clock ticks
HZ=$(getconf CLK_TCK)
for conc in 1 20; do  # one at a time: the round trip itself; 20: under load, as compare.sh
  for round in $(seq "$ROUNDS"); do
    for spec in sidecar=19210 sidecar-redis=19211; do
      name=${spec%%=*}; port=${spec#*=}
      before=$(ticks "${pid_of[$name]}")
      result=$(node "$SHARED/load.js" handshake "ws://127.0.0.1:$port/ws/edge" "$conc" "$secs")
      cpu=$(( $(ticks "${pid_of[$name]}") - before ))
      echo "{\"latency\": \"$name\", \"concurrency\": $conc, \"round\": $round, \"cpu_ticks\": $cpu, \"hz\": $HZ, \"result\": $result}" \
        | tee -a "$work/latency.jsonl"
    done
  done
done

python3 - "$work/harness.jsonl" "$work/latency.jsonl" "$secs" <<'PY'
import json, statistics, sys
harness = {r["name"]: r for r in map(json.loads, open(sys.argv[1])) if r}
latency = [json.loads(line) for line in open(sys.argv[2])]
def median(name, conc, key):
    values = [r["result"][key] for r in latency if r["latency"] == name and r["concurrency"] == conc]
    return round(statistics.median(values), 2)
without, with_ = harness["sidecar"], harness["sidecar-redis"]
summary = {
    "sessions_per_s": [without["sessions_per_s"], with_["sessions_per_s"]],
    "sessions_ratio": round(with_["sessions_per_s"] / without["sessions_per_s"], 2),
    "cpu_us_per_session": [without["cpu_us_per_session"], with_["cpu_us_per_session"]],
}
secs = float(sys.argv[3])
for r in latency:  # the sidecar's own CPU per session in that round
    cpu_s = r["cpu_ticks"] / r["hz"]
    r["result"]["cpu_us_per_session"] = cpu_s * 1e6 / max(1.0, r["result"]["sessions_per_s"] * secs)
for conc in (1, 20):  # [without, with] Redis: the median over the rounds
    for key in ("sessions_per_s", "p50_ms", "p99_ms", "cpu_us_per_session"):
        summary[f"c{conc}_{key}"] = [median("sidecar", conc, key), median("sidecar-redis", conc, key)]
print(json.dumps({"summary": summary}))
PY
