"""exbert-hub as a Hugging Face Space (sdk: gradio).

Settings (Space variables): EXBERT_HUB_MODEL (default bert-base-uncased, a masked LM so that
double-click masking works), EXBERT_HUB_CORPUS (optional corpus for the search tab: a Hub dataset id or
folder built by corpus_builder), and what visitors may load: EXBERT_HUB_ALLOWED_MODELS,
EXBERT_HUB_ALLOWED_CORPORA, EXBERT_HUB_MAX_PARAMS, EXBERT_HUB_MEMORY_BUDGET... (see exbert_hub/policy.py).
On a Space every visitor counts as remote: server folders are never opened for them.

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

from exbert_hub.app import build_app, launch_options, queue  # noqa: E402
from exbert_hub.policy import Policy  # noqa: E402

MODEL = os.environ.get("EXBERT_HUB_MODEL", "bert-base-uncased")
CORPUS = os.environ.get("EXBERT_HUB_CORPUS") or None

demo = queue(build_app(MODEL, corpus=CORPUS, policy=Policy.from_env()))

if __name__ == "__main__":
    demo.launch(**launch_options())
