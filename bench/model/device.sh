#!/usr/bin/env bash
# Runs on the GPU machine, in the repository root, after bench/model/pack.sh put the CUDA build
# in target/device/ and the PyTorch baselines in target/baselines/ (whichever of the two was
# carried runs). Writes everything under $OUT (default /tmp/out).
#   bash bench/model/device.sh decode    # forge decode_bench + HF generate (torch_lora_baseline.py)
#   bash bench/model/device.sh tests [FILTER]  # the CUDA tests (CPU agreement, softmax and NF4
#                                        # kernels, the decode graph), or those matching FILTER
#   bash bench/model/device.sh sft       # forge bench sft (QLoRA NF4, LoRA bf16) + PEFT (+ bnb)
# Peak GPU memory of decode_bench comes from nvidia-smi sampled every 50 ms (whole device, CUDA
# context included); forge bench sft reports its own (device memory in use, sampled per step);
# the PyTorch scripts report torch.cuda.max_memory_allocated.
set -euo pipefail
what=${1:?decode|tests|sft}
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
dev=target/device
base=target/baselines
forge=false torch=false
[ -f "$dev/bundle.tar.xz" ] && forge=true
[ -d "$base" ] && torch=true
$forge && { [ -x "$dev/forge" ] || tar -C "$dev" -xJf "$dev/bundle.tar.xz"; }
# cuBLAS and the CUDA runtime of the image's PyTorch (CUDA 13 wheels), ahead of whatever is set.
export LD_LIBRARY_PATH=/opt/torch/.venv/lib/python3.12/site-packages/nvidia/cu13/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
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
  $forge && peak "$dev/decode_bench" --preset 4b --prompt 512 --new 128 --batch 1,16 --runs 3 \
    | tee "$OUT/forge_decode.jsonl"
  $torch && (cd "$OUT" && OUT=$OUT "$PY" "$OLDPWD/$base/torch_lora_baseline.py") 2>&1 | tail -20
  ;;
tests)
  # The CUDA tests (CPU agreement, the softmax and NF4 kernels). They find their fixtures under
  # the path they were compiled in.
  src=$(strings "$dev/stages_tests" | grep -o '/work/[a-z-]*/stages' | head -1 | sed 's|/stages$||' || true)
  if [ -n "$src" ] && [ ! -e "$src" ]; then mkdir -p "$(dirname "$src")"; ln -s "$PWD" "$src"; fi
  "$dev/stages_tests" "${2:-cuda}" --nocapture 2>&1 | tail -40
  ;;
sft)
  if $forge; then
    for quant in nf4 none; do
      for seq in 1024 2048; do
        "$dev/forge" bench sft --preset 4b --seq $seq --quant $quant --grad-checkpointing \
          --steps 10 --device cuda | tee -a "$OUT/forge_sft.jsonl"
      done
    done
  fi
  if $torch; then
    (cd "$OUT" && PYTHONPATH=$OLDPWD/$base/site OUT=$OUT "$PY" "$OLDPWD/$base/torch_qlora_baseline.py") 2>&1 | tail -12
    (cd "$OUT" && OUT=$OUT "$PY" "$OLDPWD/$base/torch_lora_baseline.py") 2>&1 | tail -12
  fi
  ;;
*) echo "unknown: $what" >&2; exit 2 ;;
esac
