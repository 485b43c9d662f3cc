#!/usr/bin/env bash
# bench/oracle.sh [CASE...]: builds every testdata/oracle/<case> with kiln and with the
# reference BuildKit (Docker 20.10, via /work/shared/tools/buildkit-build), saves kiln's
# image with `kiln save` (docker-archive) and compares the two with image-diff.
#
# A case is a folder: Dockerfile, optional ctx/ (the context; the Dockerfile is copied into
# it), optional prepare.sh (run inside a copy of the context: modes and files git cannot
# hold), optional args (extra build arguments for both engines, e.g. --target, --build-arg).
# Exit 0 when every case builds on both sides; differences are listed, not failures (each
# is analysed in docs/dev/buildkit-diffs.md). OUT (default /work/bench-data/results/oracle-DATE).
set -uo pipefail
source "$(dirname "$0")/lib.sh"

ORACLE=${ORACLE:-$(cd "$BENCH_DIR/../testdata/oracle" && pwd)}
BUILDKIT_BUILD=${BUILDKIT_BUILD:-/work/shared/tools/buildkit-build}
IMAGE_DIFF=${IMAGE_DIFF:-/work/shared/tools/image-diff}
OUT=${OUT:-/work/bench-data/results/oracle-$(date +%Y%m%d-%H%M%S)}
ROOT=$OUT/kiln-root
mkdir -p "$OUT"

ensure_lab
ensure_kiln
"$KILN" save --help >/dev/null 2>&1 || die "this kiln has no 'save' command; cannot export its images"

cases=("$@")
if ((${#cases[@]} == 0)); then
  for d in "$ORACLE"/*/; do cases+=("$(basename "$d")"); done
fi

fresh_root "$ROOT"
failed=0
summary=$OUT/summary.txt
: >"$summary"
for name in "${cases[@]}"; do
  src=$ORACLE/$name
  work=$OUT/$name
  ctx=$work/ctx
  rm -rf "$work" && mkdir -p "$work"
  if [[ -d $src/ctx ]]; then cp -a "$src/ctx" "$ctx"; else mkdir -p "$ctx"; fi
  cp "$src/Dockerfile" "$ctx/Dockerfile"
  if [[ -f $src/prepare.sh ]]; then (cd "$ctx" && sh "$src/prepare.sh") || { echo "$name: prepare failed" | tee -a "$summary"; failed=1; continue; }; fi
  args=()
  if [[ -f $src/args ]]; then read -r -a args <"$src/args"; fi

  if ! "$KILN" build --root "$ROOT" --progress plain "${args[@]}" -t "oracle/$name:latest" "$ctx" >"$work/kiln-build.log" 2>&1; then
    echo "$name: KILN BUILD FAILED: $(grep -i error "$work/kiln-build.log" | tail -1)" | tee -a "$summary"
    failed=1
  elif ! "$KILN" save --root "$ROOT" -o "$work/kiln.tar" "oracle/$name:latest" >"$work/kiln-save.log" 2>&1; then
    echo "$name: KILN SAVE FAILED: $(tail -1 "$work/kiln-save.log")" | tee -a "$summary"
    failed=1
  fi
  if ! "$BUILDKIT_BUILD" "$work/buildkit.tar" "${args[@]}" "$ctx" >"$work/buildkit-build.log" 2>&1; then
    echo "$name: BUILDKIT BUILD FAILED: $(tail -1 "$work/buildkit-build.log")" | tee -a "$summary"
    failed=1
  fi
  if [[ -f $work/kiln.tar && -f $work/buildkit.tar ]]; then
    "$IMAGE_DIFF" "$work/kiln.tar" "$work/buildkit.tar" >"$work/diff.txt" 2>&1
    echo "$name: $(tail -1 "$work/diff.txt") (A = kiln, B = BuildKit)" | tee -a "$summary"
    sed '$d' "$work/diff.txt" | sed 's/^/    /' | tee -a "$summary"
    # the rest of the config (top-level fields, history, layer count); `created` times
    # compared for presence only
    "$BENCH_DIR/config-diff.py" "$work/kiln.tar" "$work/buildkit.tar" >"$work/config-diff.txt" 2>&1
    echo "  $(tail -1 "$work/config-diff.txt")" | tee -a "$summary"
    sed '$d' "$work/config-diff.txt" | grep -v '\.created: A: absent  B: set$' | sed 's/^/    /' | tee -a "$summary"
  fi
done
"$DOCKER" builder prune -af >/dev/null 2>&1 || true
fresh_root "$ROOT" && rmdir "$ROOT"
echo "oracle: results in $OUT (summary.txt; per case: diff.txt, build logs, both archives)"
exit $failed
