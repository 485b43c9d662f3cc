#!/usr/bin/env bash
# The whole test suite: installs what it needs first, then runs every test (as root).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  echo "test.sh: kiln's tests need root (namespaces, overlayfs, cgroups)" >&2
  exit 1
fi
./scripts/install-deps.sh
# no incremental cache: CI builds once from a clean clone, and it would double the target dir
export CARGO_INCREMENTAL=0
cargo build --workspace --all-targets
cargo test --workspace --no-fail-fast
