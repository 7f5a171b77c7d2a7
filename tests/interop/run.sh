#!/usr/bin/env bash
# ctest entry of the Hugging Face interop test: runs hf_interop.py in the environment that
# `scripts/install-deps.sh --hf` makes (`make test` makes it first).
#   run.sh VENV ULTRAMOE SOURCE_DIR
set -euo pipefail
venv="$1" ultramoe="$2" src="$3"
if [ ! -x "$venv/bin/python" ]; then
  echo "hf_interop: no Python environment at $venv; run scripts/install-deps.sh --hf (make test does)" >&2
  exit 1
fi
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec "$venv/bin/python" "$src/tests/interop/hf_interop.py" --ultramoe "$ultramoe" --corpus "$src"/docs/*.md
