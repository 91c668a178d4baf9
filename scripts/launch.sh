#!/usr/bin/env bash
# Set everything up, then open the app. With no arguments: the packaged MiniLM (works offline) with a
# searchable corpus of English prose that ships with Python, built once into the cache (resumable,
# about two minutes). Arguments go to the exbert-hub command instead, e.g. `--model bert-base-uncased`
# (needs the Hub), `--corpus DIR_OR_DATASET`, `--port 7861`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export GRADIO_ANALYTICS_ENABLED=False
if [ $# -eq 0 ]; then
  corpus="${EXBERT_HUB_CACHE:-$HOME/.cache/exbert_hub}/corpora/all-MiniLM-L6-v2-python-docs"
  if [ ! -f "$corpus/README.md" ] || [ -d "$corpus/.build" ]; then
    echo "building the default searchable corpus in $corpus (once)..."
    .venv/bin/python -m corpus_builder build --model sentence-transformers/all-MiniLM-L6-v2 \
      --source builtin:python-docs --out "$corpus" --max-sentences 2000
  fi
  set -- --corpus "$corpus"
fi
exec .venv/bin/exbert-hub "$@"
