#!/usr/bin/env bash
# ultramoe's CUDA backend and its PyTorch GPU peer side by side on one GPU, in one run,
# alternating so that anything else on the machine hits both alike:
#   bench/compare_gpu.sh [CONFIG] [ROUNDS] [STEPS]     (default configs/gpu-1b.json 3 5)
# Each round runs `ultramoe bench --device cuda` (saving its windows) then bench/torch_peer_gpu.py
# on the same windows; the last line is `ratio: X` = median ultramoe tokens/s / median PyTorch
# tokens/s. The peer's compile time is reported but not timed (warm-up steps are untimed too).
# Environment: ULTRAMOE_BIN (default build/cuda/ultramoe), PYTHON (default python3),
# WARMUP (default 2), PEER_ARGS (extra peer flags, e.g. "--no-compile"), HARDWARE (a hardware
# file for ultramoe's MFU, e.g. configs/hardware/h200.json), KEEP=DIR (keep the
# JSON of every run and the peer's log there).
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=${1:-configs/gpu-1b.json}
ROUNDS=${2:-3}
STEPS=${3:-5}
WARMUP=${WARMUP:-2}
BIN=${ULTRAMOE_BIN:-build/cuda/ultramoe}
PY=${PYTHON:-python3}
[ -x "$BIN" ] || { echo "compare_gpu.sh: $BIN not found (build the CUDA preset first)" >&2; exit 1; }
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null ||
  { echo "compare_gpu.sh: $PY has no torch with a visible CUDA device" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
keep=${KEEP:-}
[ -z "$keep" ] || mkdir -p "$keep"
summary() {  # summary ROUND OURS_JSON THEIRS_JSON -> the round's lines; prints "a b" last
  "$PY" - "$@" <<'PY'
import json, sys
r, ours, theirs = sys.argv[1], sys.argv[2], sys.argv[3]
def last_json(path):
    return json.loads([l for l in open(path).read().splitlines() if l.startswith("{")][-1])
a, b = last_json(ours), last_json(theirs)
pct = lambda v: "?" if v is None else f"{100 * v:.1f}%"
gib = lambda v: "?" if v is None else f"{v / 2**30:.1f} GiB"
if r == "1":
    print(f"pytorch peer: torch {b['torch_version']} on {b['device']}, {b['precision']}, compiled={b['compiled']}")
    print(f"  attention: {b['attention']}")
    print(f"  experts:   {b['experts']}")
    if b.get("fallbacks"):
        print(f"  fallbacks: {b['fallbacks']}")
print(f"round {r}: ultramoe {a['tokens_per_s']:.0f} tokens/s (MFU {pct(a.get('mfu'))}), "
      f"pytorch {b['tokens_per_s']:.0f} tokens/s (MFU {pct(b.get('mfu'))}, peak {gib(b.get('peak_memory_bytes'))}, "
      f"compile {b['compile_s']:.0f} s untimed)")
print(a["tokens_per_s"], b["tokens_per_s"])
PY
}
ours=() theirs=()
for r in $(seq 1 "$ROUNDS"); do
  # shellcheck disable=SC2086
  "$BIN" bench --device cuda --config "$CONFIG" --steps "$STEPS" --warmup "$WARMUP" --json \
    ${HARDWARE:+--hardware "$HARDWARE"} --save-windows "$tmp/windows.bin" > "$tmp/ours.json"
  # shellcheck disable=SC2086
  if ! "$PY" bench/torch_peer_gpu.py --config "$CONFIG" --windows "$tmp/windows.bin" --steps "$STEPS" \
      --warmup "$WARMUP" ${PEER_ARGS:-} > "$tmp/theirs.json" 2> "$tmp/theirs.log"; then
    tail -n 30 "$tmp/theirs.log" >&2
    echo "compare_gpu.sh: the PyTorch peer failed (round $r)" >&2
    exit 1
  fi
  if [ -n "$keep" ]; then
    cp "$tmp/ours.json" "$keep/ultramoe.$r.json"
    cp "$tmp/theirs.json" "$keep/pytorch.$r.json"
    cp "$tmp/theirs.log" "$keep/pytorch.$r.log"
  fi
  summary "$r" "$tmp/ours.json" "$tmp/theirs.json" > "$tmp/summary.txt"
  head -n -1 "$tmp/summary.txt"
  read -r a b < <(tail -n 1 "$tmp/summary.txt")
  ours+=("$a") theirs+=("$b")
done
"$PY" - "${ours[*]}" "${theirs[*]}" <<'PY'
import statistics, sys
a = [float(x) for x in sys.argv[1].split()]
b = [float(x) for x in sys.argv[2].split()]
print(f"median: ultramoe {statistics.median(a):.0f} tokens/s, pytorch {statistics.median(b):.0f} tokens/s")
print(f"ratio: {statistics.median(a) / statistics.median(b):.2f}")
PY
