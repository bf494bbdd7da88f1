#!/usr/bin/env bash
# Builds forge and the model benchmarks with CUDA (the toolchain of ../shared/cuda, see DESIGN.md)
# into target/device/ and the PyTorch baselines with bitsandbytes into target/baselines/ (both
# together under the device's 64 MiB carry) for the GPU machine, where
# bench/model/device.sh runs them. Usage: bash bench/model/pack.sh [CUDA_PREFIX] [BASELINES_DIR]
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cuda=${1:-/opt/cuda13}
baselines=${2:-$root/../shared/bench}
target=${CARGO_TARGET_DIR:-$root/target/cuda}
# shellcheck disable=SC1091
source "$cuda/env.sh"
cd "$root"
cargo build --release --features cuda --target-dir "$target" -p forge-stages --example decode_bench --tests
cargo build --release --features cuda --target-dir "$target" --bin forge
tests=$(ls -t "$target"/release/deps/forge_stages-* | grep -v '\.d$' | head -1)
dev=$root/target/device
rm -rf "$dev" && mkdir -p "$dev/bin"
cp "$target/release/forge" "$target/release/examples/decode_bench" "$dev/bin/"
cp "$tests" "$dev/bin/stages_tests"
strip "$dev"/bin/*
bash "$root/bench/profile/build.sh" "$dev/bin" "$cuda"
tar -C "$dev/bin" -cJf "$dev/bundle.tar.xz" .
rm -rf "$dev/bin"
base=$root/target/baselines
rm -rf "$base" && mkdir -p "$base"
cp "$baselines"/torch_*_baseline.py "$base/"
# bitsandbytes is not on the device image: it travels with the baselines, unpacked, with only
# the CUDA 13 builds of its library (the image's PyTorch is on CUDA 13), small enough to travel
# beside target/device/ in one call.
pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
  --platform manylinux_2_24_x86_64 --dest "$base" bitsandbytes==0.50.2
unzip -q "$base"/bitsandbytes-*.whl -d "$base/site" \
  -x 'bitsandbytes/libbitsandbytes_cuda1[12]*' 'bitsandbytes/libbitsandbytes_rocm*'
rm "$base"/bitsandbytes-*.whl
ls -la "$dev" "$base"
