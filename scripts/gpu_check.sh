#!/usr/bin/env bash
# The checks of the CUDA backend that need a GPU, in one run (about 5 minutes on one H200):
#   1. the cuda-labelled tests (every op against the CPU and the fp64 references in f32 and bf16,
#      the goldens on the device, determinism, train --device cuda with bit-identical resume);
#   2. the demo (configs/demo.json, 300 steps) in bf16 on the GPU against the CPU f32 run: the
#      loss within 1% at every logged step after step 50;
#   3. resume on the GPU: 60 steps against 30 + 30, checkpoints compared byte for byte;
#   4. ultramoe bench --device cuda on configs/gpu-1b.json (tokens/s, MFU against the H200 file)
#      and one round of bench/compare_gpu.sh against the PyTorch peer.
# Runs from a bundle made by scripts/gpu_bundle.sh (binaries built elsewhere, plus their host
# libraries). Every result goes to $OUT (or gpu-check-out/); a failing part does not stop the
# others. Usage on the GPU machine, in the repository root:
#   scripts/gpu_check.sh [BUNDLE_DIR]
set -uo pipefail
cd "$(dirname "$0")/.."
BUNDLE=${1:-gpu-bundle}
OUT=${OUT:-gpu-check-out}
mkdir -p "$OUT"
log() { echo "== $*" | tee -a "$OUT/summary.txt"; }

# host libraries of the bundle, then the machine's CUDA, cuBLAS and NCCL
mkdir -p /tmp/um-lib && tar -C /tmp/um-lib -xJf "$BUNDLE/lib.tar.xz"
extra=$(find / -xdev \( -name 'libcublas.so.13' -o -name 'libnccl.so.2' \) -printf '%h\n' 2>/dev/null | sort -u | tr '\n' ':')
export LD_LIBRARY_PATH="/tmp/um-lib/lib:${extra}${LD_LIBRARY_PATH:-}"
BIN="$BUNDLE/bin/ultramoe"
TEST="$BUNDLE/bin/test_cuda"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-8}

log "device"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee -a "$OUT/summary.txt"
ldd "$BIN" | grep -E 'not found|cublas|nccl' | tee -a "$OUT/summary.txt"

log "1. cuda tests"
timeout 300 "$TEST" --gtest_brief=1 > "$OUT/test_cuda.log" 2>&1
echo "exit $? ; $(tail -n 3 "$OUT/test_cuda.log" | tr '\n' ' ')" | tee -a "$OUT/summary.txt"

log "2. demo, bf16 on the GPU vs f32 on the CPU"
rm -rf /tmp/um-demo
timeout 600 "$BIN" train --device cuda --hardware configs/hardware/h200.json --config configs/demo.json \
  --data data/austen --out /tmp/um-demo --log-every 50 > "$OUT/demo-gpu.log" 2>&1
echo "exit $?" | tee -a "$OUT/summary.txt"
cp /tmp/um-demo/metrics.jsonl "$OUT/demo-gpu-metrics.jsonl" 2>/dev/null
python3 - "$BUNDLE/ref/demo-cpu-metrics.jsonl" /tmp/um-demo/metrics.jsonl <<'PY' | tee -a "$OUT/summary.txt"
import json, sys
def losses(p):
    return {j["step"]: j["loss"] for j in map(json.loads, open(p)) if j["kind"] == "train"}
cpu, gpu = losses(sys.argv[1]), losses(sys.argv[2])
worst = max(abs(gpu[s] - cpu[s]) / cpu[s] for s in cpu if s > 50 and s in gpu)
print(f"steps compared {sum(1 for s in cpu if s > 50 and s in gpu)}, worst relative loss difference after step 50: {worst:.4f} "
      f"({'within' if worst <= 0.01 else 'OUTSIDE'} 1%)")
PY

log "3. resume on the GPU: 60 steps vs 30 + 30"
rm -rf /tmp/um-a /tmp/um-b
common="--device cuda --config configs/demo.json --data data/austen --set train.eval_every=0 --set train.checkpoint_every=0"
timeout 300 "$BIN" train $common --out /tmp/um-a --set train.steps=60 > "$OUT/resume-a.log" 2>&1
timeout 300 "$BIN" train $common --out /tmp/um-b --set train.steps=30 > "$OUT/resume-b.log" 2>&1
timeout 300 "$BIN" train $common --out /tmp/um-b --set train.steps=60 --resume >> "$OUT/resume-b.log" 2>&1
for f in model.safetensors optimizer.safetensors; do
  if cmp -s /tmp/um-a/checkpoints/step_0000060/$f /tmp/um-b/checkpoints/step_0000060/$f; then r=identical; else r=DIFFERENT; fi
  echo "$f: $r" | tee -a "$OUT/summary.txt"
done

log "4. bench: gpu-1b on the GPU, and the PyTorch peer side by side"
timeout 300 "$BIN" bench --device cuda --hardware configs/hardware/h200.json --config configs/gpu-1b.json \
  --steps 5 --warmup 2 > "$OUT/bench-gpu-1b.txt" 2>&1
echo "exit $?" | tee -a "$OUT/summary.txt"
grep -E "throughput|MFU|step time" "$OUT/bench-gpu-1b.txt" | tee -a "$OUT/summary.txt"
ULTRAMOE_BIN="$BIN" HARDWARE=configs/hardware/h200.json KEEP="$OUT/compare" timeout 420 bench/compare_gpu.sh configs/gpu-1b.json 1 5 > "$OUT/compare-gpu.txt" 2>&1
echo "exit $?" | tee -a "$OUT/summary.txt"
tail -n 3 "$OUT/compare-gpu.txt" | tee -a "$OUT/summary.txt"
