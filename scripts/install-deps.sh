#!/usr/bin/env bash
# Installs what kiln's build and tests need on a fresh Debian machine (run as root).
# Idempotent: only missing packages are installed, and apt-get update runs only when needed.
set -euo pipefail

packages=(
  busybox-static   # base image contents for tests and the README example
  docker-registry  # the real registry (distribution 2.8) the tests push to and pull from
  skopeo           # a third-party reader of kiln's exported images
  iproute2         # ip, for network namespace checks
  zstd
  gcc              # C compiler for the SQLite that rusqlite bundles (kiln-snapshotter metadata)
  libssl-dev       # OpenSSL's sha256 (kiln-types: every digest, layers' diffIDs)
  pkg-config       # finds libcrypto for kiln-types' build script (types/build.rs)
  python3          # reads xattrs in the image end-to-end tests (cli/tests/image_pull.rs)
)

missing=()
for package in "${packages[@]}"; do
  dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if ((${#missing[@]})); then
  echo "install-deps: installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
