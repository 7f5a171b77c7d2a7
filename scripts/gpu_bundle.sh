#!/usr/bin/env bash
# Packs what scripts/gpu_check.sh needs on a GPU machine that has the CUDA driver and toolkit but
# not this project's other dependencies (Open MPI, OpenBLAS, SentencePiece...): the cuda-preset
# binaries, the host libraries they link (not libc, not the CUDA libraries, which the machine
# provides), the demo data and the CPU reference run the GPU demo is compared with.
#   scripts/gpu_bundle.sh [OUT_DIR]      (default gpu-bundle/, ignored by git)
# Needs: build/cuda (cmake --preset cuda && cmake --build build/cuda), data/austen (make demo),
# and runs/demo-cpu/metrics.jsonl (a CPU run of the demo config: scripts/gpu_bundle.sh makes it
# when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-gpu-bundle}
BIN=build/cuda/ultramoe
TEST=build/cuda/tests/test_cuda
[ -x "$BIN" ] && [ -x "$TEST" ] || { echo "gpu_bundle: build the cuda preset first" >&2; exit 1; }
[ -f data/austen/train.bin ] || { echo "gpu_bundle: data/austen is missing (make demo)" >&2; exit 1; }
if [ ! -f runs/demo-cpu/metrics.jsonl ]; then
  echo "== the CPU reference run of configs/demo.json (f32, 300 steps)"
  build/release/ultramoe train --config configs/demo.json --data data/austen --out runs/demo-cpu --log-every 50
fi
rm -rf "$OUT"
mkdir -p "$OUT/bin" "$OUT/lib" "$OUT/ref"
cp "$BIN" "$TEST" "$OUT/bin/"
strip --strip-debug "$OUT/bin/"* || true
# host libraries: everything ldd resolves except the C runtime and the CUDA/NCCL libraries
ldd "$BIN" "$TEST" | awk '/=> \// {print $3}' | sort -u |
  grep -Ev '/(libc|libm|libpthread|libdl|librt|ld-linux[^/]*|libcuda|libcublas[^/]*|libnccl|libcudart)\.so' |
  while read -r lib; do cp -L "$lib" "$OUT/lib/"; done
tar -C "$OUT" -cJf "$OUT/lib.tar.xz" lib && rm -rf "$OUT/lib"
cp runs/demo-cpu/metrics.jsonl "$OUT/ref/demo-cpu-metrics.jsonl"
du -sh "$OUT"
