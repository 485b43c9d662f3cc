#!/usr/bin/env bash
# bench/push.sh: push of the big-layer workload (one ~150 MB layer of text on busybox,
# /work/shared/bench-workloads/big-layer) to the lab registry: kiln with gzip, kiln with
# zstd and `docker push`, side by side, several rounds, each push to a fresh repository;
# prints each time, the medians and the ratios kiln/docker (goals: gzip 0.33, zstd 0.15).
#
#   bench/push.sh [ROUNDS]          (default 5; ROUNDS=1 for a smoke run)
#
# What is timed (see bench/README.md, "push.sh"): every push compresses its layer then.
# - docker: `docker push` of an image built just before (untimed, `--no-cache`, so its
#   layer is new: dockerd has never compressed or pushed it and cannot mount it from
#   another repository). docker push diffs the layer, gzips it and uploads it.
# - kiln: the same build first run untimed into a fresh root with
#   `-o type=image,compression=uncompressed` (the RUN executes; the stored layer is a
#   plain tar, so no gzip or zstd blob exists), then timed
#   `kiln build -o type=image,name=REPO,push=true,compression=gzip|zstd`: the RUN step is a
#   cache hit, the layer is diffed from the snapshot and compressed in the requested
#   variant, then pushed. So kiln's figure includes compression, as docker's does, plus
#   kiln's build cache lookup.
# The busybox base layer is mounted from its repository by both.
#
# Needs the lab (registry on 127.0.0.1:5000 and dockerd 20.10): /work/shared/tools/lab-up
# (run by this script if the registry or dockerd does not answer), and a release build of
# kiln (KILN=..., default $CARGO_TARGET_DIR/release/kiln, see lib.sh).
set -euo pipefail

source "$(dirname "$0")/lib.sh"

rounds=${1:-${ROUNDS:-5}}
registry=127.0.0.1:5000
workload=$WORKLOADS/big-layer
stamp=$(date +%Y%m%d-%H%M%S)

ensure_lab
ensure_kiln

scratch=$(mktemp -d /var/tmp/kiln-bench-push.XXXXXX)
docker_source=bench-kiln/push-source:latest
cleanup() {
  rm -rf "$scratch"
  "$DOCKER" rmi -f "$docker_source" >/dev/null 2>&1 || true
  "$DOCKER" image ls --format '{{.Repository}}:{{.Tag}}' | grep "^$registry/push-bench-" |
    xargs -r "$DOCKER" rmi -f >/dev/null 2>&1 || true
}
trap cleanup EXIT

OUT=${OUT:-/work/bench-data/results/push-$stamp}
mkdir -p "$OUT"
tsv=$OUT/results.tsv log=$OUT/log.txt
: >"$tsv"

# kiln_push ROUND COMPRESSION: an untimed uncompressed build into a fresh root, then the
# timed build + compress + push.
kiln_push() {
  local round=$1 compression=$2 root=$scratch/root-$1-$2
  local repository=$registry/push-bench-kiln-$compression-$stamp-$round:latest
  fresh_root "$root"
  "$KILN" build --root "$root" --progress plain --network host \
    -o type=image,compression=uncompressed "$workload" >>"$log" 2>&1 ||
    die "kiln prepare build failed; see $log"
  timed "$tsv" "kiln-$compression" push "$round" "$log" -- \
    "$KILN" build --root "$root" --progress plain --network host \
    -o "type=image,name=$repository,push=true,compression=$compression" "$workload"
  rm -rf "$root"
}

docker_push() {
  local round=$1 repository=$registry/push-bench-docker-$stamp-$1:latest
  DOCKER_BUILDKIT=1 "$DOCKER" build -q --no-cache --network=host -t "$docker_source" \
    "$workload" >>"$log" 2>&1 || die "docker build failed; see $log"
  "$DOCKER" tag "$docker_source" "$repository"
  timed "$tsv" docker push "$round" "$log" -- "$DOCKER" push -q "$repository"
  "$DOCKER" rmi -f "$repository" >/dev/null 2>&1 || true
}

for round in $(seq 1 "$rounds"); do
  ensure_lab
  # alternate which engine goes first
  if ((round % 2)); then
    kiln_push "$round" gzip
    kiln_push "$round" zstd
    docker_push "$round"
  else
    docker_push "$round"
    kiln_push "$round" zstd
    kiln_push "$round" gzip
  fi
  echo "round $round: $(awk -v r="$round" -F'\t' '$3 == r { printf "%s %.2f s  ", $1, $4 / 1000 }' "$tsv")"
done

median() { sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
engine_median() { awk -v e="$1" -F'\t' '$1 == e { print $4 }' "$tsv" | median; }
docker_ms=$(engine_median docker)
{
  echo "# push of big-layer, $rounds rounds, $(date -Is)"
  echo
  echo "| engine | median | kiln/docker | goal |"
  echo "| --- | --- | --- | --- |"
  printf '| docker push (gzip) | %.2f s | | |\n' "$(awk -v m="$docker_ms" 'BEGIN { print m / 1000 }')"
  for compression in gzip zstd; do
    ms=$(engine_median "kiln-$compression")
    goal=0.33
    [[ $compression == zstd ]] && goal=0.15
    awk -v m="$ms" -v d="$docker_ms" -v c="$compression" -v g="$goal" \
      'BEGIN { printf "| kiln %s | %.2f s | %.2f | %s |\n", c, m / 1000, m / d, g }'
  done
} | tee "$OUT/summary.md"
