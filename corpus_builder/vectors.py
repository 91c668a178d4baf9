"""Token vectors of many sentences from the SAME engine that answers live queries.

``engine.analyze(sentence)`` runs one sentence per forward pass. The builder runs sentences in batches
(sorted by length, right-padded, padding masked out), through the same model object, the same
tokenizer call, the same eager attention and the same inputs (all real tokens attended, special tokens
included: exBERT's corpus masked specials out while its live queries did not, so they disagreed).
Padding only adds keys whose attention weight is exactly 0 after softmax, so every real token's
numbers are those of ``engine.analyze`` up to float32 rounding (measured: <= 3e-6 absolute on MiniLM,
values up to ~10; float16 storage rounds at ~5e-3). ``check_against_engine`` verifies this on real
sentences at the start of every build and the builder falls back to ``engine.analyze`` per sentence
when it does not hold (or for encoder-decoders, whose decoder input the batch path does not build).

Per-head contexts are the attention outputs before the output projection, recorded by the engine's own
``exbert_hub.capture`` wrapper (its ``batch_context`` keeps every sequence of the batch).
The batched pass is ``exbert_hub.batching`` (shared with ``exbert_hub.examples``); this module keeps the
builder's view of it (vectors of the indexed layers) and the normalisations of the stored vectors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# the batched path itself lives in the engine package (one batching code for the builder and
# exbert_hub.examples); these names stay importable from here
from exbert_hub.batching import BatchRunner, Encoded, check_against_engine, encode

__all__ = ["Encoded", "encode", "BatchVectors", "VectorRunner", "check_against_engine", "normalise_embedding",
           "normalise_heads"]


@dataclass
class BatchVectors:
    """float32 arrays for one sentence: hidden [layers, T, hidden] (outputs of the indexed layers), contexts [layers, T, H*d]."""

    hidden: np.ndarray
    contexts: np.ndarray


class VectorRunner(BatchRunner):
    """Runs sentences through the engine's model, batched, and returns per-sentence vectors of ``layers``."""

    def __init__(self, engine, layers: list[int]):
        self.layers = list(layers)
        super().__init__(engine, hidden_layers=[l + 1 for l in self.layers], context_layers=self.layers)

    def run(self, encoded: list[Encoded], texts: list[str]) -> list[BatchVectors]:
        return [BatchVectors(hidden=o.hidden, contexts=o.contexts) for o in super().run(encoded, texts)]


def normalise_embedding(hidden: np.ndarray) -> np.ndarray:
    """[..., D] -> unit vectors (zero vectors stay zero)."""
    norm = np.linalg.norm(hidden, axis=-1, keepdims=True)
    return hidden / np.maximum(norm, 1e-12)


def normalise_heads(contexts: np.ndarray, num_heads: int) -> np.ndarray:
    """[..., H*d] -> each head's slice a unit vector."""
    shape = contexts.shape
    per_head = contexts.reshape(*shape[:-1], num_heads, shape[-1] // num_heads)
    norm = np.linalg.norm(per_head, axis=-1, keepdims=True)
    return (per_head / np.maximum(norm, 1e-12)).reshape(shape)
