#!/usr/bin/env bash
# Builds kprof.so (bench/profile/kprof.c) into DEST (default target/device/profile) with the CUPTI
# of CUDA 13.0 from PyPI, and puts libcupti.so.13 next to it for machines without one.
# Usage: bash bench/profile/build.sh [DEST] [CUDA_PREFIX] (the toolchain of ../shared/cuda, for cuda.h)
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
dest=${1:-$root/target/device/profile}
cuda=${2:-/opt/cuda13}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
pip download --quiet --no-deps --only-binary=:all: --dest "$work" nvidia-cuda-cupti==13.0.85
(cd "$work" && python3 -m zipfile -e nvidia_cuda_cupti-*.whl x)
cupti=$work/x/nvidia/cu13
mkdir -p "$dest"
cp "$cupti/lib/libcupti.so.13" "$dest/"
gcc -O2 -shared -fPIC -Wall -Wextra -I"$cupti/include" -I"$cuda/include" "$root/bench/profile/kprof.c" \
  -o "$dest/kprof.so" "$dest/libcupti.so.13" -Wl,-rpath,'$ORIGIN'
ls -la "$dest"
