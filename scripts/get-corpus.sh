#!/usr/bin/env bash
# Extracts the default offline corpus (design.md 3): Jane Austen's six novels from Debian's
# r-cran-janeaustenr (public domain), one plain-text file per novel, so `ultramoe data prepare`
# treats each novel as one document.
#   scripts/get-corpus.sh OUTDIR
# Idempotent: a novel whose .txt already exists (and is non-empty) is skipped. It does not
# download anything and does not install R; `scripts/install-deps.sh --demo` does that.
#
# The package stores each novel as a character vector of the printed lines (wrapped at about 70
# columns, "" between paragraphs), so writeLines gives back the plain text line for line.
# useBytes=TRUE writes the UTF-8 bytes as they are (the odd non-ASCII character, e.g. a pound
# sign in Mansfield Park) instead of re-encoding them for the current locale.
set -euo pipefail

if [ $# -ne 1 ] || [ "${1:-}" = "-h" ] || [ "${1:-}" = "--help" ]; then
  echo "usage: scripts/get-corpus.sh OUTDIR   (writes OUTDIR/<novel>.txt for Jane Austen's six novels)" >&2
  exit 2
fi
out=$1
novels=(emma mansfieldpark northangerabbey persuasion prideprejudice sensesensibility)

if ! command -v Rscript >/dev/null 2>&1; then
  echo "get-corpus: Rscript not found; install R and the corpus with: scripts/install-deps.sh --demo" >&2
  exit 1
fi
if ! Rscript -e 'quit(status = if (requireNamespace("janeaustenr", quietly = TRUE)) 0 else 1)' \
     >/dev/null 2>&1; then
  echo "get-corpus: the R package janeaustenr is missing; install it with: scripts/install-deps.sh --demo" >&2
  exit 1
fi
if [ -e "$out" ] && [ ! -d "$out" ]; then
  echo "get-corpus: $out exists and is not a directory" >&2
  exit 1
fi
mkdir -p "$out"

written=0
for novel in "${novels[@]}"; do
  dest="$out/$novel.txt"
  [ -s "$dest" ] && continue
  # write to a temporary name and rename, so an interrupted run never leaves a half novel that a
  # later run would skip
  tmp="$dest.tmp.$$"
  if ! Rscript -e "args <- commandArgs(TRUE); x <- get(data(list = args[1], package = 'janeaustenr'));" \
               -e "writeLines(x, args[2], useBytes = TRUE)" "$novel" "$tmp"; then
    rm -f "$tmp"
    echo "get-corpus: extracting $novel from janeaustenr failed" >&2
    exit 1
  fi
  mv "$tmp" "$dest"
  written=$((written + 1))
done
total=0
for novel in "${novels[@]}"; do total=$((total + $(wc -c < "$out/$novel.txt"))); done
echo "get-corpus: $out holds ${#novels[@]} novels ($written extracted now, $total bytes)"
