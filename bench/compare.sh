#!/usr/bin/env bash
# ultramoe and its PyTorch peer side by side on one machine, in one run, alternating so that
# background load hits both alike:
#   bench/compare.sh [CONFIG] [ROUNDS] [STEPS]     (default configs/bench-cpu.json 3 3)
# Each round runs `ultramoe bench` then bench/torch_peer.py on the same windows; the last line
# is `ratio: X` = median ultramoe tokens/s / median PyTorch tokens/s.
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=${1:-configs/bench-cpu.json}
ROUNDS=${2:-3}
STEPS=${3:-3}
WARMUP=1
BIN=build/release/ultramoe
[ -x "$BIN" ] || { echo "compare.sh: build first (make build)" >&2; exit 1; }
/usr/bin/python3 -c "import torch" 2>/dev/null || { echo "compare.sh: needs python3-torch (scripts/install-deps.sh --dev)" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
ours=() theirs=()
for r in $(seq 1 "$ROUNDS"); do
  $BIN bench --config "$CONFIG" --steps "$STEPS" --warmup "$WARMUP" --json --save-windows "$tmp/windows.bin" > "$tmp/ours.json"
  /usr/bin/python3 bench/torch_peer.py --config "$CONFIG" --windows "$tmp/windows.bin" --steps "$STEPS" --warmup "$WARMUP" > "$tmp/theirs.json"
  a=$(/usr/bin/python3 -c "import json; print(json.load(open('$tmp/ours.json'))['tokens_per_s'])")
  b=$(/usr/bin/python3 -c "import json; print(json.load(open('$tmp/theirs.json'))['tokens_per_s'])")
  mfu=$(/usr/bin/python3 -c "import json; print(round(100 * json.load(open('$tmp/ours.json'))['mfu'], 1))")
  echo "round $r: ultramoe $(printf %.0f "$a") tokens/s (MFU $mfu%), pytorch $(printf %.0f "$b") tokens/s"
  ours+=("$a") theirs+=("$b")
done
/usr/bin/python3 - "${ours[*]}" "${theirs[*]}" <<'PY'
import statistics, sys
a = [float(x) for x in sys.argv[1].split()]
b = [float(x) for x in sys.argv[2].split()]
print(f"median: ultramoe {statistics.median(a):.0f} tokens/s, pytorch {statistics.median(b):.0f} tokens/s")
print(f"ratio: {statistics.median(a) / statistics.median(b):.2f}")
PY
