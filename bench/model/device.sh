#!/usr/bin/env bash
# Runs on the GPU machine, in the repository root, after bench/model/pack.sh put the CUDA build
# and the PyTorch baselines in target/device/. Writes everything under $OUT (default /tmp/out).
#   bash bench/model/device.sh decode    # forge decode_bench + HF generate (torch_lora_baseline.py)
#   bash bench/model/device.sh nf4       # NF4 dequant kernel: bit-exact vs the CPU path, and timing
#   bash bench/model/device.sh sft       # forge bench sft (QLoRA NF4, LoRA bf16) + PEFT + bitsandbytes
# Peak GPU memory of decode_bench comes from nvidia-smi sampled every 50 ms (whole device, CUDA
# context included); forge bench sft reports its own (device memory in use, sampled per step);
# the PyTorch scripts report torch.cuda.max_memory_allocated.
set -euo pipefail
what=${1:?decode|nf4|sft}
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
dev=target/device
[ -x "$dev/forge" ] || tar -C "$dev" -xJf "$dev/bundle.tar.xz"
export LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib}
PY=${PY:-/opt/torch/.venv/bin/python}
[ -x "$PY" ] || PY=python3
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"

# Runs "$@" with nvidia-smi sampling; prints the peak used MiB minus the idle MiB before it.
peak() {
  local log=$OUT/smi-$RANDOM.csv idle
  idle=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1)
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 50 > "$log" &
  local smi=$!
  "$@"
  kill $smi; wait $smi 2>/dev/null || true
  echo "peak_gpu_mib $(( $(sort -n "$log" | tail -1) - idle )) (idle $idle)"
}

case $what in
decode)
  peak "$dev/decode_bench" --preset 4b --prompt 512 --new 128 --batch 1,16 --runs 2 \
    | tee "$OUT/forge_decode.jsonl"
  (cd "$OUT" && OUT=$OUT "$PY" "$OLDPWD/$dev/torch_lora_baseline.py") 2>&1 | tail -20
  ;;
nf4)
  # The test finds its fixtures under the path it was compiled in.
  src=$(strings "$dev/stages_tests" | grep -o '/work/[a-z-]*/stages/fixtures' | head -1 | sed 's|/stages/fixtures||')
  if [ -n "$src" ] && [ ! -e "$src" ]; then mkdir -p "$(dirname "$src")"; ln -s "$PWD" "$src"; fi
  "$dev/stages_tests" nf4 --nocapture 2>&1 | tail -30
  ;;
sft)
  for quant in nf4 none; do
    for seq in 1024 2048; do
      "$dev/forge" bench sft --preset 4b --seq $seq --quant $quant --grad-checkpointing \
        --steps 10 --device cuda | tee -a "$OUT/forge_sft.jsonl"
    done
  done
  if ls "$dev"/bitsandbytes-*.whl >/dev/null 2>&1; then
    pip install --no-index --no-deps --target /tmp/site "$dev"/bitsandbytes-*.whl >/dev/null
    (cd "$OUT" && PYTHONPATH=/tmp/site OUT=$OUT "$PY" "$OLDPWD/$dev/torch_qlora_baseline.py") 2>&1 | tail -12
  fi
  ;;
*) echo "unknown: $what" >&2; exit 2 ;;
esac
