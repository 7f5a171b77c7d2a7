#!/usr/bin/env bash
# Thread and rank scaling of `ultramoe bench` on one machine:
#   bench/scaling.sh [CONFIG] [STEPS]      (default configs/demo.json 3)
# Prints one line per layout: ranks x threads, tokens/s, MFU, communication seconds per step.
# Ranks share the machine's cores (one thread each beyond the first rank), so on 2 cores the rank
# runs measure the engine's overhead, not a speed-up.
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=${1:-configs/demo.json}
STEPS=${2:-3}
MICRO=${MICRO:-4}   # the same micro-batch on every layout, so each forward does the same work
BIN=build/release/ultramoe
MPI="mpirun --allow-run-as-root --oversubscribe --bind-to none"
report() {  # label json
  /usr/bin/python3 - "$1" "$2" <<'PY'
import json, sys
j = json.loads(sys.argv[2])
print(f"{sys.argv[1]:<28} {j['tokens_per_s']:8.0f} tokens/s  MFU {100 * j['mfu']:5.1f}%  "
      f"communication {j['communication_s_per_step']:.3f} s/step of {j['step_s_median']:.3f}")
PY
}
for t in 1 2; do
  report "1 rank x $t threads" \
    "$(OMP_NUM_THREADS=$t $BIN bench --config "$CONFIG" --steps "$STEPS" --warmup 1 --json --set train.micro_batch_size=$MICRO)"
done
for np in 2 4; do
  for ep in 1 "$np"; do
    report "$np ranks x 1 thread, ep $ep" \
      "$(OMP_NUM_THREADS=1 $MPI -np "$np" $BIN bench --config "$CONFIG" --steps "$STEPS" --warmup 1 --json \
         --set parallel.ep=$ep --set train.micro_batch_size=$MICRO)"
  done
done
