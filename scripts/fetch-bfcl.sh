#!/usr/bin/env bash
# Usage: scripts/fetch-bfcl.sh DEST
#
# Puts BFCL V4's data directory (Apache-2.0) into DEST. The data ships inside the `bfcl-eval`
# Python package, so it comes through pip from the configured package index; the wheel's hash is
# pinned so that every machine scores against the same data. Idempotent: a DEST that already holds
# the data is left alone.
set -euo pipefail

version=2025.12.17
wheel_sha256=8555bc9407a56682ceb7d969e87eb724f6b679deb0ef05114d9c6e786406b103
probe=BFCL_v4_simple_python.json

dest=${1:?usage: fetch-bfcl.sh DEST}

if [[ -f $dest/$probe ]]; then
    exit 0
fi
if [[ -e $dest ]] && [[ -n $(ls -A "$dest") ]]; then
    echo "fetch-bfcl: $dest exists, is not empty and holds no BFCL data; not touching it" >&2
    exit 1
fi

tmp=$(mktemp -d)
partial=$dest.partial.$$
trap 'rm -rf "$tmp" "$partial"' EXIT

echo "bfcl-eval==$version --hash=sha256:$wheel_sha256" >"$tmp/requirements.txt"
python3 -m pip download --quiet --no-deps --only-binary=:all: --require-hashes \
    -r "$tmp/requirements.txt" -d "$tmp/wheel"

wheels=("$tmp"/wheel/bfcl_eval-"$version"-*.whl)
if [[ ${#wheels[@]} -ne 1 || ! -f ${wheels[0]} ]]; then
    echo "fetch-bfcl: expected one bfcl_eval $version wheel, found: ${wheels[*]}" >&2
    exit 1
fi
python3 -m zipfile -e "${wheels[0]}" "$tmp/unpacked"

data=$tmp/unpacked/bfcl_eval/data
if [[ ! -f $data/$probe ]]; then
    echo "fetch-bfcl: the wheel has no bfcl_eval/data/$probe" >&2
    exit 1
fi

# Copy beside DEST, then rename: an interrupted run never leaves a DEST that looks complete.
mkdir -p "$(dirname "$dest")"
cp -R "$data" "$partial"
rmdir "$dest" 2>/dev/null || true
if ! mv -T "$partial" "$dest" 2>/dev/null && [[ ! -f $dest/$probe ]]; then
    echo "fetch-bfcl: could not move the data into $dest" >&2
    exit 1
fi
