"""exbert-hub: look inside transformer language models (attention, queries and keys, predictions, corpus search)."""

from .analysis import CAUSAL_LM, ENCODER, ENCODER_DECODER, MASKED_LM, Analysis, AttentionStack, TokenSequence
from .analysis import SEQUENCE_CLASSIFICATION, TOKEN_CLASSIFICATION, Classification  # noqa: F401 (H11a)
from .engine import Engine, ModelCache, load
from .examples import ExampleSet, ExamplesAnalysis, analyze_examples, load_examples  # noqa: F401 (H9a)
from .errors import ExbertError, InputError, ModelNotFoundError, UnsupportedModelError
from .resolve import DEFAULT_MODEL, MINILM, SMOLLM2

__version__ = "0.1.0"

__all__ = [
    "Analysis", "AttentionStack", "TokenSequence", "Engine", "ModelCache", "load", "load_corpus", "launch",
    "export", "show",
    "ExbertError", "InputError", "ModelNotFoundError", "UnsupportedModelError",
    "MASKED_LM", "CAUSAL_LM", "ENCODER", "ENCODER_DECODER", "DEFAULT_MODEL", "MINILM", "SMOLLM2",
]


def load_corpus(name_or_folder: str, model: str | None = None, **kwargs):
    """Open a corpus built by corpus_builder (a folder or a Hub dataset id); see exbert_hub.corpus.load_corpus."""
    from .corpus import load_corpus as _load_corpus

    return _load_corpus(name_or_folder, model, **kwargs)


def launch(model: str = DEFAULT_MODEL, **kwargs):
    """Open the exbert-hub Gradio app for ``model`` (see exbert_hub.app.launch)."""
    from .app import launch as _launch

    return _launch(model, **kwargs)


def export(analysis, view: str, path, **state):
    """Save a view of ``analysis`` as .html, .svg, .png, .npz or .json (see exbert_hub.hub.export.export)."""
    from .hub.export import export as _export

    return _export(analysis, view, path, **state)


def show(analysis, view: str = "head", **state):
    """A view of ``analysis`` that notebooks display inline (see exbert_hub.hub.notebook.show)."""
    from .hub.notebook import show as _show

    return _show(analysis, view, **state)
