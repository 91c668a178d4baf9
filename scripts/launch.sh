#!/usr/bin/env bash
# Set everything up, then open the app on the packaged MiniLM (works offline). Extra arguments go to
# the exbert-hub command, e.g. `--model bert-base-uncased` (needs the Hub) or `--port 7861`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export GRADIO_ANALYTICS_ENABLED=False
exec .venv/bin/exbert-hub "$@"
