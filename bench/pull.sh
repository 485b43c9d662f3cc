#!/usr/bin/env bash
# bench/pull.sh: pull + unpack of the big-layer workload (one ~150 MB layer of text on
# busybox, /work/shared/bench-workloads/big-layer), `kiln pull` into an empty root versus
# `docker pull` after `docker rmi`, side by side, several rounds; prints each time, the
# medians and the ratio kiln/docker.
#
#   bench/pull.sh [ROUNDS]          (default 5)
#
# KILN: the kiln binary to measure (as the other bench scripts take it); without it, a
# release build of this checkout in $CARGO_TARGET_DIR (default target/) is made and used.
#
# Needs the lab (registry on 127.0.0.1:5000 and dockerd 20.10): /work/shared/tools/lab-up.
# The image is built once with the workload's Dockerfile (docker build) and pushed to the
# lab registry if it is not there yet. Both pull the same bytes from the same registry; the
# registry's blob is in the page cache for both. Docker keeps the busybox base layer (the
# lab's other benchmarks use it), so it downloads 1 MB less than kiln does.
set -euo pipefail

rounds=${1:-5}
registry=127.0.0.1:5000
image=$registry/big-layer:latest
workload=/work/shared/bench-workloads/big-layer
here=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$here/target}
kiln=${KILN:-$target/release/kiln}
docker=/usr/bin/docker
[[ -x $docker ]] || docker=$(command -v docker)

if ! curl -fsS "http://$registry/v2/" >/dev/null 2>&1; then
  /work/shared/tools/lab-up
fi

if [[ -z ${KILN:-} ]]; then
  echo "building kiln (release)..." >&2
  (cd "$here" && CARGO_TARGET_DIR=$target cargo build --release -q -p kiln)
fi
[[ -x $kiln ]] || { echo "bench/pull.sh: no kiln binary at $kiln" >&2; exit 1; }

if ! curl -fsS -o /dev/null "http://$registry/v2/big-layer/manifests/latest"; then
  echo "building and pushing $image..." >&2
  DOCKER_BUILDKIT=1 "$docker" build -q --network=host -t "$image" "$workload" >/dev/null
  "$docker" push -q "$image" >/dev/null
fi

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b - a }'; }
median() { tr ' ' '\n' | sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

scratch=$(mktemp -d /var/tmp/kiln-bench-pull.XXXXXX)
cleanup() { rm -rf "$scratch"; }
trap cleanup EXIT

kiln_times=() docker_times=()
for round in $(seq 1 "$rounds"); do
  root=$scratch/root-$round
  start=$(now)
  "$kiln" pull -q --root "$root" "$image" >/dev/null
  end=$(now)
  kiln_times+=("$(elapsed "$start" "$end")")
  rm -rf "$root"

  "$docker" rmi -f "$image" >/dev/null 2>&1 || true
  start=$(now)
  "$docker" pull -q "$image" >/dev/null
  end=$(now)
  docker_times+=("$(elapsed "$start" "$end")")
  echo "round $round: kiln ${kiln_times[-1]} s, docker ${docker_times[-1]} s"
done

kiln_median=$(echo "${kiln_times[*]}" | median)
docker_median=$(echo "${docker_times[*]}" | median)
ratio=$(awk -v k="$kiln_median" -v d="$docker_median" 'BEGIN { printf "%.2f", k / d }')
echo "median: kiln $kiln_median s, docker $docker_median s, kiln/docker $ratio (goal <= 0.6)"
