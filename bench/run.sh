#!/usr/bin/env bash
# Run the shared side-by-side relay benchmark (../shared/bench/compare.sh) with the
# sidecar as a contender, next to direct, nginx and node-http-proxy.
#
#   bench/run.sh                      # defaults: SECONDS=5 IDLE=2000 CONNS=50
#   SECONDS=5 IDLE=1000 bench/run.sh  # a smaller, faster run
#
# Passed through to compare.sh: SECONDS CONNS SIZE BIG HS_CONC IDLE BENCH_CACHE.
# BENCH_SHARED overrides where the harness lives (default: ../shared/bench beside the repo).
# SIDECAR_LOG is where the sidecar's own log is kept (the harness deletes its copy
# when it exits): default /tmp/sidecar-bench.log.
# Prints one JSON line per contender on stdout.
set -euo pipefail

# SECONDS is special in bash: it counts up from the value it was started with (or
# from 0 when not set), so it is read from this process's starting environment,
# not from $SECONDS, which apt-get would already have advanced. compare.sh has the
# same trap, so it is always handed an explicit value (unset there, it would be 0).
secs=$(tr '\0' '\n' </proc/$$/environ | sed -n 's/^SECONDS=//p')
secs=${secs:-5}

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HARNESS="${BENCH_SHARED:-$ROOT/../shared/bench}/compare.sh"
[ -x "$HARNESS" ] || { echo "run.sh: the harness is missing: $HARNESS" >&2; exit 2; }

# What compare.sh needs and does not install itself (it installs node's ws and http-proxy).
if ! command -v nginx >/dev/null || ! command -v wrk >/dev/null; then
  echo "run.sh: installing nginx-light and wrk" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends nginx-light wrk >&2
fi
command -v node >/dev/null || { echo "run.sh: node is missing (apt-get install nodejs npm)" >&2; exit 2; }

# The sidecar: the repo's venv when there is one, else whatever is on PATH.
if [ -x "$ROOT/.venv/bin/sidecar" ]; then
  SIDECAR="$ROOT/.venv/bin/sidecar"
else
  SIDECAR="$(command -v sidecar)" || { echo "run.sh: no sidecar (pip install -e . first)" >&2; exit 2; }
fi

cd "$ROOT"
PORT=1 UPSTREAM=127.0.0.1:1 "$SIDECAR" check bench/routes.yaml >/dev/null

SIDECAR_LOG="${SIDECAR_LOG:-/tmp/sidecar-bench.log}"
: >"$SIDECAR_LOG"
echo "run.sh: SECONDS=$secs IDLE=${IDLE:-2000} CONNS=${CONNS:-50}; sidecar log: $SIDECAR_LOG" >&2
# compare.sh runs the command as 'exec $cmd': the redirection keeps the sidecar
# the process it measures (its PID and RSS), and keeps the log after the run.
exec env SECONDS="$secs" "$HARNESS" \
  "sidecar=$(printf '%q' "$SIDECAR") serve --config bench/routes.yaml 2>>$(printf '%q' "$SIDECAR_LOG")"
