#!/usr/bin/env bash
# The planner's step-time prediction against `ultramoe bench` on this machine (docs/planner.md,
# "Step level"): one rank with one thread, then two ranks (one thread each) with ep 1 and ep 2.
#   bench/plan_check.sh [STEPS]      (default 5 timed steps; the median is compared)
# One markdown row per (config, layout): predicted and measured tokens/s and their ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-5}
BIN=build/release/ultramoe
HW=configs/hardware/cpu-local.json
MPI="mpirun --allow-run-as-root --oversubscribe --bind-to none -x OMP_NUM_THREADS"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
export OMP_NUM_THREADS=1
tps() { /usr/bin/python3 -c "import json,sys; print(round(json.load(open(sys.argv[1]))['tokens_per_s']))" "$1"; }
row() {  # config layout-label measured.json plan-flags...
  local config=$1 label=$2 measured=$3
  shift 3
  $BIN plan --model "$config" --hardware "$HW" "$@" --json > "$tmp/plan.json"
  local p m
  p=$(tps "$tmp/plan.json")
  m=$(tps "$measured")
  echo "| \`$config\` | $label | $p | $m | $(/usr/bin/python3 -c "print(f'{$p / $m:.2f}')") |"
}
echo "| config | layout | predicted tokens/s | measured tokens/s | predicted / measured |"
echo "|---|---|---|---|---|"
# config  micro-batch on two ranks (the global batch split over dp = 2)
for spec in "configs/tiny.json 4" "configs/plan/cpu-small.json 4" "configs/plan/cpu-deep.json 4" \
            "configs/plan/cpu-medium.json 2"; do
  set -- $spec
  config=$1 mbs2=$2
  $BIN bench --config "$config" --steps "$STEPS" --warmup 2 --json > "$tmp/one.json"
  row "$config" "1 rank" "$tmp/one.json" --devices 1 --layout config
  for ep in 1 2; do
    $MPI -np 2 $BIN bench --config "$config" --steps "$STEPS" --warmup 2 --json \
        --set parallel.ep=$ep --set train.micro_batch_size=$mbs2 > "$tmp/two.json"
    row "$config" "2 ranks, ep $ep, mbs $mbs2" "$tmp/two.json" --devices 2 --layout "ep=$ep,mbs=$mbs2,zero=0"
  done
done
