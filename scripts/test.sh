#!/usr/bin/env bash
# Runs Meridian's whole test suite on a fresh Debian machine, installing what the tests need
# (PostgreSQL server binaries; the tests start their own throwaway servers from them).
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  echo "==> installing PostgreSQL (the tests start throwaway servers from its binaries)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast "$@"
else
  echo "==> cargo-nextest not found; using cargo test"
  cargo test --workspace --no-fail-fast "$@"
fi
