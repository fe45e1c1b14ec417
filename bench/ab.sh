#!/usr/bin/env bash
# One run of the shared harness (../shared/bench/compare.sh: direct, nginx, node-http-proxy) with
# several sidecar trees as contenders, so their ratios to nginx come from the same run:
#
#   bench/ab.sh OUT.jsonl before=/path/to/old/checkout after=.     # each tree needs its .venv
#   bench/ratio.py OUT.jsonl                                       # ratios to nginx, run by run
#
# Each tree serves its own bench/routes.yaml; its log goes to /tmp/bench-NAME.log. Runs under
# /tmp/bench.lock (one harness run at a time on a machine). SECS (5), IDLE (2000), CONNS (50)
# size the run; BENCH_SHARED says where the harness is (default: ../shared/bench beside the repo).
set -euo pipefail
[[ $# -ge 2 && $1 != -h && $1 != --help ]] || { sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HARNESS="${BENCH_SHARED:-$ROOT/../shared/bench}/compare.sh"
[ -x "$HARNESS" ] || { echo "ab.sh: the harness is missing: $HARNESS (set BENCH_SHARED)" >&2; exit 2; }
out=$1; shift
contenders=()
for a in "$@"; do
  name=${a%%=*}; tree=$(cd "${a#*=}" && pwd)
  [ -x "$tree/.venv/bin/sidecar" ] || { echo "ab.sh: no $tree/.venv/bin/sidecar" >&2; exit 2; }
  contenders+=("$name=$tree/.venv/bin/sidecar serve --config $tree/bench/routes.yaml 2>>/tmp/bench-$name.log")
done
flock /tmp/bench.lock env SECONDS="${SECS:-5}" IDLE="${IDLE:-2000}" "$HARNESS" "${contenders[@]}" | tee -a "$out"
