#!/usr/bin/env bash
# The main job of `make demo`: Jane Austen's novels -> SentencePiece tokenizer + token shards ->
# a small DSSN + TinyInit + MLA + MoE + MTP model trained for a few minutes on the CPU ->
# checkpoint, validation loss, samples, and plots. Re-running starts a fresh run.
#   scripts/demo.sh [extra `ultramoe train` flags, e.g. --set train.steps=100]
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=build/release/ultramoe
CONFIG=configs/demo.json
TEXT=data/austen-text
DATA=data/austen
RUN=runs/demo

echo "== corpus: Jane Austen's six novels (r-cran-janeaustenr) -> $TEXT"
scripts/get-corpus.sh "$TEXT"

if [ ! -f "$DATA/train.bin" ]; then
  echo "== tokenizer + shards -> $DATA"
  $BIN data prepare --input "$TEXT"/*.txt --out "$DATA" --vocab-size 4096
fi

echo "== training $CONFIG -> $RUN"
rm -rf "$RUN"
start=$(date +%s)
$BIN train --config "$CONFIG" --data "$DATA" --out "$RUN" --log-every 10 "$@"
end=$(date +%s)

ckpt=$(ls -d "$RUN"/checkpoints/step_* | tail -n 1)
echo "== validation ($ckpt)"
$BIN eval --ckpt "$ckpt" --data "$DATA"

echo "== samples"
for prompt in "It is a truth universally acknowledged" "Elizabeth looked at" "The weather was"; do
  echo "--- prompt: $prompt"
  $BIN sample --ckpt "$ckpt" --prompt "$prompt" --max-new-tokens 60 --temperature 0.8 --top-p 0.95 --seed 1
done

echo "== plots"
/usr/bin/python3 scripts/plot_metrics.py "$RUN/metrics.jsonl" "$RUN"
echo "== done in $((end - start)) s of training; outputs in $RUN (metrics.jsonl, loss.png, expert_load.png, checkpoints/)"
