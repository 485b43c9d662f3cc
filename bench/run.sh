#!/usr/bin/env bash
# bench/run.sh [ROUNDS]: `kiln run --rm BASE true` vs `docker run --rm --network=host BASE true`,
# the image already in each engine's store; rounds interleaved, medians and the ratio.
# Both use the host network (dockerd in the lab has no bridge; kiln run defaults to host).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

ROUNDS=${1:-20}
DATA=${DATA:-/work/bench-data}
OUT=${OUT:-$DATA/results/run-$(date +%Y%m%d-%H%M%S)}
ROOT=$DATA/kiln-run-root
mkdir -p "$OUT"
TSV=$OUT/results.tsv
LOG=$OUT/log.txt
: >"$TSV"

ensure_lab
ensure_kiln
fresh_root "$ROOT"
"$KILN" pull -q --root "$ROOT" "$BASE" >>"$LOG" 2>&1
"$DOCKER" image inspect "$BASE" >/dev/null 2>&1 || "$DOCKER" pull -q "$BASE" >/dev/null
# one untimed warm-up each: page cache, dockerd's first-container setup
"$KILN" run --rm --root "$ROOT" "$BASE" true >>"$LOG" 2>&1
"$DOCKER" run --rm --network=host "$BASE" true >>"$LOG" 2>&1

echo "bench: results in $OUT; load at start: $(cat /proc/loadavg)" | tee "$OUT/load.txt"
for round in $(seq 1 "$ROUNDS"); do
  if ((round % 2)); then
    timed "$TSV" kiln "run --rm true" "$round" "$LOG" -- "$KILN" run --rm --root "$ROOT" "$BASE" true
    timed "$TSV" docker "run --rm true" "$round" "$LOG" -- "$DOCKER" run --rm --network=host "$BASE" true
  else
    timed "$TSV" docker "run --rm true" "$round" "$LOG" -- "$DOCKER" run --rm --network=host "$BASE" true
    timed "$TSV" kiln "run --rm true" "$round" "$LOG" -- "$KILN" run --rm --root "$ROOT" "$BASE" true
  fi
done
echo "load at end: $(cat /proc/loadavg)" >>"$OUT/load.txt"
fresh_root "$ROOT" && rmdir "$ROOT"

python3 "$BENCH_DIR/summarize.py" "$TSV" | tee "$OUT/summary.md"
cat "$OUT/load.txt"
