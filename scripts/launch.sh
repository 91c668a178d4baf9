#!/usr/bin/env bash
# Set everything up, then open the app. With no arguments: the packaged MiniLM (works offline) with a
# searchable corpus of everyday English (5,000 usage examples of WordNet, from Debian's wordnet-base,
# which setup.sh installs), built once into the cache (resumable, about 75 s on 2 cores). Arguments go to
# the exbert-hub command instead, e.g. `--model bert-base-uncased` (needs the Hub), `--corpus
# DIR_OR_DATASET`, `--port 7861`. EXBERT_HUB_CORPUS_SOURCE=builtin:python-docs builds the older default
# (Python's documentation) instead.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export GRADIO_ANALYTICS_ENABLED=False
if [ $# -eq 0 ]; then
  src="${EXBERT_HUB_CORPUS_SOURCE:-builtin:wordnet}"
  corpus="${EXBERT_HUB_CACHE:-$HOME/.cache/exbert_hub}/corpora/all-MiniLM-L6-v2-${src#builtin:}"
  if [ ! -f "$corpus/README.md" ] || [ -d "$corpus/.build" ]; then
    echo "building the default searchable corpus ($src) in $corpus (once)..."
    .venv/bin/python -m corpus_builder build --model sentence-transformers/all-MiniLM-L6-v2 \
      --source "$src" --out "$corpus" --max-sentences 5000
  fi
  set -- --corpus "$corpus"
fi
exec .venv/bin/exbert-hub "$@"
