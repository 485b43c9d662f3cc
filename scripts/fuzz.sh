#!/usr/bin/env bash
# scripts/fuzz.sh TARGET [SECONDS]: runs a frontend fuzz target (parse or lex) with libFuzzer
# for SECONDS (default 300), on the stable toolchain: no cargo-fuzz or nightly needed
# (RUSTC_BOOTSTRAP only unlocks the coverage instrumentation flags cargo-fuzz passes). No
# AddressSanitizer: the code is safe Rust; what is looked for is a panic, an overflow (checks
# on) or a hang. The corpus is kept in target/fuzz-corpus/TARGET, seeded with the real-world
# Dockerfiles of ../shared/conformance when they are there. Not part of scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
target=${1:?usage: scripts/fuzz.sh parse|lex [SECONDS]}
seconds=${2:-300}
triple=$(rustc -vV | sed -n 's/^host: //p')
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target/fuzz}
RUSTC_BOOTSTRAP=1 RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks" \
  cargo build --manifest-path frontend/fuzz/Cargo.toml --release --target "$triple" --bin "$target"
corpus=$PWD/target/fuzz-corpus/$target
mkdir -p "$corpus"
seeds=../shared/conformance/real-world
if [[ $target == parse && -d $seeds && -z $(ls -A "$corpus") ]]; then
  find "$seeds" -type f -name '*Dockerfile*' -exec cp --backup=numbered -t "$corpus" {} +
fi
exec "$CARGO_TARGET_DIR/$triple/release/$target" "$corpus" -max_total_time="$seconds" \
  -max_len=65536 -rss_limit_mb=2048 -print_final_stats=1
