#!/usr/bin/env bash
# bench/run.sh: the sidecar beside direct, nginx and node-http-proxy, in one run on this
# machine, through the shared side-by-side harness (compare.sh).
#
# The harness is not part of this repository: it lives in ../shared/bench beside the
# checkout (/work/shared/bench on the team's machine; see its README). From a checkout
# elsewhere (a worktree, a fresh clone), say where it is with BENCH_SHARED.
#
#   bench/run.sh                                  # defaults: SECONDS=5 IDLE=2000 CONNS=50
#   SECONDS=5 IDLE=1000 bench/run.sh              # a smaller, faster run
#   BENCH_SHARED=/work/shared/bench bench/run.sh  # the harness from anywhere
#   bench/run.sh --help                           # this text
#
# Needs node (it installs node's ws and http-proxy itself), nginx and wrk (installed with
# apt-get when missing: run as root), and the repo's .venv (else a sidecar on PATH).
# On a shared machine run one harness at a time: flock /tmp/bench.lock bench/run.sh
#
# Passed through to compare.sh: SECONDS CONNS SIZE BIG HS_CONC IDLE BENCH_CACHE.
# SIDECAR_LOG is where the sidecar's own log is kept (the harness deletes its copy
# when it exits): default /tmp/sidecar-bench.log.
# Prints one JSON line per contender on stdout; exit 2 when something it needs is missing.
set -euo pipefail

case "${1:-}" in
  -h | --help)
    # This file's opening comment, without the '# '.
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;s/^#$//;p}' "${BASH_SOURCE[0]}"
    exit 0
    ;;
  "") ;;
  *)
    echo "run.sh: unknown argument '$1' (see bench/run.sh --help)" >&2
    exit 2
    ;;
esac

# SECONDS is special in bash: it counts up from the value it was started with (or
# from 0 when not set), so it is read from this process's starting environment,
# not from $SECONDS, which apt-get would already have advanced. compare.sh has the
# same trap, so it is always handed an explicit value (unset there, it would be 0).
secs=$(tr '\0' '\n' </proc/$$/environ | sed -n 's/^SECONDS=//p')
secs=${secs:-5}

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HARNESS="${BENCH_SHARED:-$ROOT/../shared/bench}/compare.sh"
[ -x "$HARNESS" ] || {
  echo "run.sh: the shared harness is missing: $HARNESS (not part of this repository; set BENCH_SHARED to its folder, see bench/run.sh --help)" >&2
  exit 2
}

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
