#!/usr/bin/env bash
# Builds kiln and shows the example: the DAG of testdata/example's multi-stage Dockerfile.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
cargo build --release -p kiln
./target/release/kiln build --print-dag testdata/example
