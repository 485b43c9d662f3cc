#!/usr/bin/env bash
# bench/build.sh [ROUNDS]: kiln vs BuildKit (Docker 20.10's builder) on the build workloads of
# /work/shared/bench-workloads, side by side in one run, rounds interleaved (the engine that
# goes first alternates), medians and kiln/BuildKit ratios printed. See bench/README.md.
#
# Environment: KILN (binary, default $CARGO_TARGET_DIR/release/kiln), OUT (results dir,
# default /work/bench-data/results/build-DATE), BIG_CONTEXT (generated context, made if
# missing), CASES (space-separated subset of: parallel-stages many-steps big-context).
set -euo pipefail
source "$(dirname "$0")/lib.sh"

ROUNDS=${1:-5}
CASES=${CASES:-parallel-stages many-steps big-context}
DATA=${DATA:-/work/bench-data}
BIG_CONTEXT=${BIG_CONTEXT:-$DATA/big-context}
OUT=${OUT:-$DATA/results/build-$(date +%Y%m%d-%H%M%S)}
ROOT=$DATA/kiln-root
mkdir -p "$OUT"
TSV=$OUT/results.tsv
LOG=$OUT/log.txt
: >"$TSV"

ensure_lab
ensure_kiln
if [[ $CASES == *big-context* && ! -d $BIG_CONTEXT/app ]]; then
  "$WORKLOADS/big-context/generate" "$BIG_CONTEXT"
fi

context_of() {
  case $1 in
    big-context) echo "$BIG_CONTEXT" ;;
    *) echo "$WORKLOADS/$1" ;;
  esac
}

# The file the one-file-change rebuild edits: new content every time (size changes too).
CHANGED=$BIG_CONTEXT/app/src/d7/f42.txt
edit_one_file() {
  printf 'edit %s %s\n' "$1" "$(now_ns)" >>"$CHANGED"
}

kiln_build() { "$KILN" build --root "$ROOT" --progress plain -t "bench-kiln/$1:latest" "$2"; }
bk_build() { DOCKER_BUILDKIT=1 "$DOCKER" build --network=host --progress=plain -t "bench-kiln/$1:latest" "$2"; }
image_id() { "$DOCKER" image inspect -f '{{.Id}}' "$1" 2>/dev/null || true; }

# timed_bk CASE-LABEL ROUND NAME CTX: a timed BuildKit build; the image it replaces under the
# tag (left dangling by a changed build) is removed afterwards, untimed.
timed_bk() {
  local label=$1 round=$2 name=$3 ctx=$4 old new
  old=$(image_id "bench-kiln/$name:latest")
  timed "$TSV" buildkit "$label" "$round" "$LOG" -- bk_build "$name" "$ctx"
  new=$(image_id "bench-kiln/$name:latest")
  if [[ -n $old && $old != "$new" ]]; then "$DOCKER" rmi "$old" >/dev/null 2>&1 || true; fi
}

# run_kiln CASE ROUND: cold (fresh store, base image pulled untimed), no-change rebuild,
# and for big-context a one-file-change rebuild; the big-context cold build also records
# kiln's peak RSS with /usr/bin/time -v.
run_kiln() {
  local name=$1 round=$2 ctx
  ctx=$(context_of "$name")
  fresh_root "$ROOT"
  "$KILN" pull -q --root "$ROOT" "$BASE" >>"$LOG" 2>&1
  echo "== kiln $name round $round" >>"$LOG"
  if [[ $name == big-context ]]; then
    timed "$TSV" kiln "$name cold" "$round" "$LOG" -- \
      /usr/bin/time -v -o "$OUT/time-v.$round.txt" "$KILN" build --root "$ROOT" --progress plain \
      -t "bench-kiln/$name:latest" "$ctx"
    local kb
    kb=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$OUT/time-v.$round.txt")
    printf 'kiln\trss %s cold\t%s\t%s\t%s\n' "$name" "$round" "$kb" "$(load1)" >>"$TSV"
  else
    timed "$TSV" kiln "$name cold" "$round" "$LOG" -- kiln_build "$name" "$ctx"
  fi
  timed "$TSV" kiln "$name rebuild" "$round" "$LOG" -- kiln_build "$name" "$ctx"
  if [[ $name == big-context ]]; then
    edit_one_file kiln
    timed "$TSV" kiln "$name one-file" "$round" "$LOG" -- kiln_build "$name" "$ctx"
  fi
}

# run_bk CASE ROUND: the same with BuildKit; cold = `docker builder prune -af` and the
# previous tag removed; the base image stays in dockerd's store (as kiln's pre-pulled one).
run_bk() {
  local name=$1 round=$2 ctx
  ctx=$(context_of "$name")
  "$DOCKER" rmi -f "bench-kiln/$name:latest" >/dev/null 2>&1 || true
  "$DOCKER" builder prune -af >>"$LOG" 2>&1
  echo "== buildkit $name round $round" >>"$LOG"
  timed_bk "$name cold" "$round" "$name" "$ctx"
  timed_bk "$name rebuild" "$round" "$name" "$ctx"
  if [[ $name == big-context ]]; then
    edit_one_file buildkit
    timed_bk "$name one-file" "$round" "$name" "$ctx"
  fi
}

# The base image must be in dockerd's store for a fair cold build (kiln has it pre-pulled).
"$DOCKER" image inspect "$BASE" >/dev/null 2>&1 || "$DOCKER" pull -q "$BASE" >/dev/null

echo "bench: results in $OUT; load at start: $(cat /proc/loadavg)" | tee "$OUT/load.txt"
"$KILN" --version >>"$OUT/load.txt" 2>&1 || true
for round in $(seq 1 "$ROUNDS"); do
  ensure_lab
  for name in $CASES; do
    if ((round % 2)); then
      run_kiln "$name" "$round"
      run_bk "$name" "$round"
    else
      run_bk "$name" "$round"
      run_kiln "$name" "$round"
    fi
  done
  echo "bench: round $round/$ROUNDS done, load $(load1)" >&2
done
echo "load at end: $(cat /proc/loadavg)" >>"$OUT/load.txt"

# Clean up what this run made: dockerd's tags and build cache, kiln's store.
for name in $CASES; do "$DOCKER" rmi -f "bench-kiln/$name:latest" >/dev/null 2>&1 || true; done
"$DOCKER" builder prune -af >/dev/null 2>&1 || true
fresh_root "$ROOT" && rmdir "$ROOT"

python3 "$BENCH_DIR/summarize.py" "$TSV" | tee "$OUT/summary.md"
cat "$OUT/load.txt"
