#!/usr/bin/env bash
# Builds kiln, makes a busybox base image from Debian's busybox-static (no registry needed),
# builds testdata/example (a multi-stage Dockerfile with RUN steps) and runs the result.
# Run as root. The store is $KILN_ROOT (default /var/lib/kiln).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh
cargo build --release -p kiln
kiln=./target/release/kiln
if ! "$kiln" inspect busybox:latest >/dev/null 2>&1; then
  ./scripts/make-busybox-rootfs.sh | "$kiln" import - busybox:latest --change 'CMD ["sh"]'
fi
"$kiln" build --progress plain -t kiln-example:latest testdata/example
"$kiln" run --rm kiln-example:latest
