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

__all__ = ["Encoded", "encode", "BatchVectors", "KeptVectors", "VectorRunner", "check_against_engine",
           "normalise_embedding", "normalise_heads"]


@dataclass
class BatchVectors:
    """float32 arrays for one sentence: hidden [layers, T, hidden] (outputs of the indexed layers), contexts [layers, T, H*d]."""

    hidden: np.ndarray
    contexts: np.ndarray


@dataclass
class KeptVectors:
    """What the corpus stores of one sentence: float16 [layers, n, dim] of its n non-special tokens, in order;
    ``embedding`` unit vectors (``normalise_embedding``), ``heads`` per-head unit slices (``normalise_heads``)."""

    embedding: np.ndarray
    heads: np.ndarray


class VectorRunner(BatchRunner):
    """Runs sentences through the engine's model, batched, and returns per-sentence vectors of ``layers``."""

    def __init__(self, engine, layers: list[int], concurrent: bool = False):
        self.layers = list(layers)
        super().__init__(engine, hidden_layers=[l + 1 for l in self.layers], context_layers=self.layers,
                         concurrent=concurrent)

    def run(self, encoded: list[Encoded], texts: list[str]) -> list[BatchVectors]:
        return [BatchVectors(hidden=o.hidden, contexts=o.contexts) for o in super().run(encoded, texts)]

    def kept(self, encoded: list[Encoded], texts: list[str]) -> list[KeptVectors]:
        """One batch, as the corpus keeps it: the builder's path.

        Batched, only the non-special tokens of the indexed layers leave torch: gathered from the padded
        hidden states and recorded contexts, normalised and rounded to float16 there (the model's threads,
        while the batch is in memory), instead of float32 copies of every padded position of every layer
        normalised afterwards in numpy. The numbers are ``run``'s, normalised (float32 rounding of the
        norm aside). Not batched (``engine.analyze`` per sentence): ``run``'s vectors, normalised in numpy."""
        if not self.batched:
            out = []
            for e, v in zip(encoded, self.run(encoded, texts)):
                real = ~np.asarray(e.special, dtype=bool)
                out.append(KeptVectors(normalise_embedding(v.hidden[:, real]).astype(np.float16),
                                       normalise_heads(v.contexts[:, real], self.engine.num_heads).astype(np.float16)))
            return out
        import torch

        inputs, lengths = self.inputs(encoded)
        out, rec = self.forward(inputs)
        hidden_states = getattr(out, "hidden_states", None)
        calls = [c.batch_context for c in rec.calls]  # [batch, tokens, heads, head_dim] per layer
        if hidden_states is None or len(calls) != self.engine.num_layers:
            raise RuntimeError(f"batched pass captured {len(calls)} attention calls for {self.engine.num_layers} layers")
        B, T = inputs["input_ids"].shape
        keep = np.zeros((B, T), dtype=bool)
        for i, e in enumerate(encoded):
            keep[i, : lengths[i]] = ~np.asarray(e.special, dtype=bool)
        rows = torch.from_numpy(np.flatnonzero(keep))  # kept positions of the flattened [batch * tokens]
        n = int(rows.numel())
        with torch.inference_mode():
            emb = torch.empty((len(self.layers), n, hidden_states[0].shape[-1]), dtype=torch.float16)
            heads = None
            for p, layer in enumerate(self.layers):
                h = hidden_states[layer + 1].reshape(B * T, -1).index_select(0, rows).float()
                emb[p] = h / torch.linalg.vector_norm(h, dim=-1, keepdim=True).clamp_min(1e-12)
                c = calls[layer]
                c = c.reshape(B * T, c.shape[2], c.shape[3]).index_select(0, rows).float()
                c = c / torch.linalg.vector_norm(c, dim=-1, keepdim=True).clamp_min(1e-12)
                if heads is None:
                    heads = torch.empty((len(self.layers), n, c.shape[1] * c.shape[2]), dtype=torch.float16)
                heads[p] = c.reshape(n, -1)
        emb_np, heads_np = emb.numpy(), heads.numpy()
        res, start = [], 0
        for row in keep:
            m = int(row.sum())
            res.append(KeptVectors(emb_np[:, start:start + m], heads_np[:, start:start + m]))
            start += m
        return res


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
