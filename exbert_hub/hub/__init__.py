"""exbert-hub on the Hugging Face Hub and off the app: Space deployment (:mod:`.deploy`), model-card
snippets (:mod:`.card`), export of every view to HTML/SVG/PNG/data (:mod:`.export`) and notebook
display (:mod:`.notebook`).

Kept import-light: each submodule imports what it needs (huggingface_hub, playwright) itself.
"""

from __future__ import annotations

VIEWS = ("explorer", "head", "model", "neuron")
