#!/usr/bin/env bash
# The routing and stability study of docs/experiments.md: every run, then the report.
#   scripts/study.sh [RUNS_DIR]      (default runs/study; finished runs are skipped)
#   STUDY_EXTRA="--set train.steps=5" scripts/study.sh /tmp/s    a quick check of the pipeline
#   STUDY_PARTS="balance moge" scripts/study.sh                   some parts only (stability balance moge)
# Data: the Austen corpus (scripts/get-corpus.sh) with a 4096-piece tokenizer, and the King James
# Bible from Debian's bible-kjv (a second kind of English text, encoded with the same tokenizer)
# for the expert-specialisation measurement. Seeds are in the configs (train.seed = 1).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/study}
BIN=${ULTRAMOE:-build/release/ultramoe}   # ULTRAMOE=path runs another build
mkdir -p "$OUT"
MPI="mpirun --allow-run-as-root --oversubscribe --bind-to none"

# --- data -----------------------------------------------------------------------------------
scripts/get-corpus.sh data/austen-text
[ -f data/austen4k/train.bin ] || $BIN data prepare --input data/austen-text/*.txt --out data/austen4k --vocab-size 4096
if [ ! -f data/kjv4k/train.bin ]; then
  command -v bible >/dev/null || { echo "study.sh: needs bible-kjv (scripts/install-deps.sh --dev)" >&2; exit 1; }
  mkdir -p data/kjv-text
  # the whole text, verse labels ("Ge1:1 ") removed; one plain-text file is one document, so the
  # Bible is a single document (its validation part is its last lines, docs/data.md)
  bible -f "Gen1:1-Rev22:21" | sed -E 's/^[0-9]?[A-Za-z]+[0-9]+:[0-9]+ //' > data/kjv-text/kjv.txt
  $BIN data prepare --input data/kjv-text/kjv.txt --out data/kjv4k --tokenizer data/austen4k/tokenizer.model
fi

run() {  # name config [flags...]
  local name=$1 config=$2
  shift 2
  if [ -f "$OUT/$name/done" ]; then echo "== $name: done"; return; fi
  rm -rf "${OUT:?}/$name"
  echo "== $name"
  $BIN train --config "$config" --data data/austen4k --out "$OUT/$name" --log-every 50 "$@" ${STUDY_EXTRA:-} | tail -n 3
  touch "$OUT/$name/done"
}
run_mpi() {  # name np config [flags...]
  local name=$1 np=$2 config=$3
  shift 3
  if [ -f "$OUT/$name/done" ]; then echo "== $name: done"; return; fi
  rm -rf "${OUT:?}/$name"
  echo "== $name ($np ranks)"
  OMP_NUM_THREADS=1 $MPI -np "$np" $BIN train --config "$config" --data data/austen4k --out "$OUT/$name" --log-every 50 "$@" ${STUDY_EXTRA:-} | tail -n 3
  touch "$OUT/$name/done"
}

PARTS=${STUDY_PARTS:-stability balance moge}
part() { [[ " $PARTS " == *" $1 "* ]]; }

# --- 1. stability: Pre-LN vs DSSN, small init vs TinyInit, aggressive learning rate ------------
if part stability; then
run dssn_tiny   configs/study/deep.json
run dssn_small  configs/study/deep.json --set model.init=small
run preln_tiny  configs/study/deep.json --set model.sandwich_norm=false
run preln_small configs/study/deep.json --set model.sandwich_norm=false --set model.init=small
# the same four arms with a second seed (initial weights and data order)
run dssn_tiny_s2   configs/study/deep.json --set train.seed=2
run dssn_small_s2  configs/study/deep.json --set train.seed=2 --set model.init=small
run preln_tiny_s2  configs/study/deep.json --set train.seed=2 --set model.sandwich_norm=false
run preln_small_s2 configs/study/deep.json --set train.seed=2 --set model.sandwich_norm=false --set model.init=small
fi

# --- 2. balancing: none, micro-batch, EP-group (2 ranks, ep 2), aux-loss-free -----------------
if part balance; then
run     bal_none        configs/study/balance.json --set train.balance_alpha=0
run     bal_micro_batch configs/study/balance.json
run_mpi bal_ep_group 2  configs/study/balance.json --set train.balance_scope=ep_group --set parallel.ep=2
run     bal_aux_free    configs/study/balance.json --set train.balance_alpha=0 --set train.aux_free=true
for r in bal_none bal_micro_batch bal_ep_group bal_aux_free; do
  ck=$(ls -d "$OUT/$r"/checkpoints/step_* | tail -n 1)
  $BIN eval --ckpt "$ck" --data data/austen4k --expert-stats "$OUT/$r/experts_austen.json" > /dev/null
  $BIN eval --ckpt "$ck" --data data/kjv4k --batches 50 --expert-stats "$OUT/$r/experts_kjv.json" > /dev/null
done
fi

# --- 3. MoGE vs plain top-k: device imbalance over 4 (and 8) simulated devices ---------------
if part moge; then
run moge      configs/study/moge.json
run topk_soft configs/study/moge.json --set model.topk_method=greedy --set model.n_group=1 --set model.topk_group=1
fi

# the tables, and the numbers behind them for docs/study-metrics.json (commit it with the tables)
/usr/bin/python3 scripts/study_report.py "$OUT" --metrics "$OUT/study-metrics.json"
