#!/usr/bin/env bash
# Creates bench/.venv with DVC for bench/engine/bench.py. Run from anywhere.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ ! -x bench/.venv/bin/python ]; then
  python3 -m venv bench/.venv
fi
bench/.venv/bin/python -m pip install --quiet --upgrade pip
bench/.venv/bin/python -m pip install --quiet dvc
bench/.venv/bin/dvc --version
cargo build --release --quiet
echo "ok: bench/.venv/bin/dvc and target/release/forge are ready"
