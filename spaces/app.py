"""exbert-hub as a Hugging Face Space (sdk: gradio).

Settings (Space variables): EXBERT_HUB_MODEL (default bert-base-uncased, a masked LM so that
double-click masking works), EXBERT_HUB_CORPUS (optional corpus for the search tab: a Hub dataset id or
folder built by corpus_builder).

The package comes from requirements.txt, or from a copy of the ``exbert_hub`` folder next to this file.
"""

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
for folder in (HERE, HERE.parent):  # a copy in the Space repo, or this file run from a checkout
    if (folder / "exbert_hub" / "__init__.py").exists():
        sys.path.insert(0, str(folder))
        break

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

from exbert_hub.app import build_app, launch_options  # noqa: E402

MODEL = os.environ.get("EXBERT_HUB_MODEL", "bert-base-uncased")
CORPUS = os.environ.get("EXBERT_HUB_CORPUS") or None

demo = build_app(MODEL, corpus=CORPUS)

if __name__ == "__main__":
    # two analyses at once at most on a CPU Space; the rest wait in the queue
    demo.queue(default_concurrency_limit=2, max_size=32).launch(**launch_options())
