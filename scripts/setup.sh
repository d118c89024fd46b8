#!/usr/bin/env bash
# Installs what gossipfed needs on a fresh Debian 12 machine with a Rust toolchain:
#   - librocksdb-dev (RocksDB 7.8, linked by rust-rocksdb 0.20) and libclang-dev (bindgen);
#   - a Python venv at .venv with MLflow 3.17.2, for the MLflow integration tests
#     (skipped with SKIP_MLFLOW=1).
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

need=()
for pkg in librocksdb-dev libclang-dev; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

if [ "${SKIP_MLFLOW:-0}" != "1" ] && [ ! -x .venv/bin/mlflow ]; then
  echo "setup: installing MLflow 3.17.2 into .venv (about 80 s)"
  python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check mlflow==3.17.2
fi
echo "setup: ok"
