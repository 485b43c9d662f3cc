# bench/lib.sh: helpers shared by the bench scripts (sourced, not run).
# Times are wall-clock milliseconds from `date +%s%N`; results go to a TSV file
# (engine, case, round, ms) that bench/summarize.py turns into medians and ratios.

KILN=${KILN:-${CARGO_TARGET_DIR:-/work/target-bench}/release/kiln}
DOCKER=${DOCKER:-/usr/bin/docker}
BASE=${BASE:-127.0.0.1:5000/busybox:latest}
WORKLOADS=${WORKLOADS:-/work/shared/bench-workloads}
LAB_UP=${LAB_UP:-/work/shared/tools/lab-up}
BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

die() { echo "bench: $*" >&2; exit 1; }

# ensure_lab: the registry and dockerd answer, else lab-up (idempotent) starts them.
ensure_lab() {
  if ! curl -sf http://127.0.0.1:5000/v2/ >/dev/null || ! "$DOCKER" info >/dev/null 2>&1; then
    "$LAB_UP" >&2 || die "lab-up failed"
  fi
}

# ensure_kiln: the release binary exists (build it with `cargo build --release -p kiln`).
ensure_kiln() {
  [[ -x $KILN ]] || die "no kiln binary at $KILN (cargo build --release -p kiln, or set KILN)"
}

now_ns() { date +%s%N; }

# load1: the 1-minute load average.
load1() { cut -d' ' -f1 /proc/loadavg; }

# timed OUT_TSV ENGINE CASE ROUND LOG -- CMD...: `sync`, then runs CMD (stdout+stderr to LOG), appends
# "ENGINE CASE ROUND MS LOAD" to OUT_TSV, fails the script if CMD fails.
timed() {
  local out=$1 engine=$2 case=$3 round=$4 log=$5
  shift 6
  local load start end
  # write back what earlier commands (either engine's) left dirty, so that it does not
  # slow this command's fsyncs
  sync
  load=$(load1)
  start=$(now_ns)
  if ! "$@" >>"$log" 2>&1; then
    echo "bench: $engine $case round $round failed: $*; see $log" >&2
    tail -20 "$log" >&2
    return 1
  fi
  end=$(now_ns)
  printf '%s\t%s\t%s\t%s\t%s\n' "$engine" "$case" "$round" $(((end - start) / 1000000)) "$load" >>"$out"
}

# fresh_root DIR: an empty kiln store directory (the old one removed; kiln leaves no mounts
# behind after a command exits, so a plain rm is enough; a leftover mount is an error).
fresh_root() {
  local dir=$1
  if [[ -e $dir ]]; then
    if grep -q " $dir/" /proc/self/mounts; then
      die "mounts left under $dir after kiln exited: $(grep " $dir/" /proc/self/mounts | head -3)"
    fi
    rm -rf "$dir"
  fi
  mkdir -p "$dir"
}
