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
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch

from exbert_hub import capture
from exbert_hub.analysis import ENCODER_DECODER


@dataclass
class Encoded:
    """Tokenization of one sentence, exactly as ``engine.analyze`` makes it."""

    ids: list[int]
    tokens: list[str]
    offsets: list[tuple[int, int]]  # (0, 0) for special tokens
    special: list[bool]
    type_ids: list[int] | None


def encode(engine, texts: list[str]) -> list[Encoded]:
    tok = engine.tokenizer
    enc = tok(texts, return_offsets_mapping=bool(tok.is_fast), return_special_tokens_mask=True)
    out = []
    for i in range(len(texts)):
        ids = list(enc["input_ids"][i])
        special = [bool(s) for s in enc["special_tokens_mask"][i]]
        if "offset_mapping" in enc:
            offsets = [(0, 0) if special[j] else (int(s), int(e)) for j, (s, e) in enumerate(enc["offset_mapping"][i])]
        else:
            offsets = [(0, 0)] * len(ids)
        type_ids = list(enc["token_type_ids"][i]) if "token_type_ids" in enc else None
        out.append(Encoded(ids, tok.convert_ids_to_tokens(ids), offsets, special, type_ids))
    return out


@dataclass
class BatchVectors:
    """float32 arrays for one sentence: hidden [layers, T, hidden] (outputs of the indexed layers), contexts [layers, T, H*d]."""

    hidden: np.ndarray
    contexts: np.ndarray


class VectorRunner:
    """Runs sentences through the engine's model, batched, and returns per-sentence vectors."""

    def __init__(self, engine, layers: list[int]):
        self.engine = engine
        self.layers = list(layers)
        self.batched = engine.kind != ENCODER_DECODER and capture.instrument(engine.model)
        self.fallback_reason = None if self.batched else (
            "encoder-decoder models run through engine.analyze one sentence at a time"
            if engine.kind == ENCODER_DECODER else "the model's attention function was not found")
        loaded = getattr(engine, "_loaded", None)
        self._lock = getattr(loaded, "lock", None) or contextlib.nullcontext()
        self._forward_args = getattr(loaded, "forward_args", None)
        pad = engine.tokenizer.pad_token_id
        self.pad_id = int(pad) if pad is not None else 0

    def run(self, encoded: list[Encoded], texts: list[str]) -> list[BatchVectors]:
        if not self.batched:
            return [self._via_engine(t) for t in texts]
        return self._batch(encoded)

    def _via_engine(self, text: str) -> BatchVectors:
        a = self.engine.analyze(text)
        return BatchVectors(hidden=a.hidden_states[[l + 1 for l in self.layers]], contexts=a.contexts[self.layers])

    def _inputs(self, encoded: list[Encoded]) -> tuple[dict, list[int]]:
        lengths = [len(e.ids) for e in encoded]
        T = max(lengths)
        ids = np.full((len(encoded), T), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(encoded), T), dtype=np.int64)
        types = np.zeros((len(encoded), T), dtype=np.int64)
        for i, e in enumerate(encoded):
            ids[i, : lengths[i]] = e.ids
            mask[i, : lengths[i]] = 1
            if e.type_ids is not None:
                types[i, : lengths[i]] = e.type_ids
        inputs = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}
        if encoded[0].type_ids is not None and (self._forward_args is None or "token_type_ids" in self._forward_args):
            inputs["token_type_ids"] = torch.from_numpy(types)
        return inputs, lengths

    def _batch(self, encoded: list[Encoded]) -> list[BatchVectors]:
        inputs, lengths = self._inputs(encoded)
        with self._lock, torch.inference_mode(), capture.recording() as rec:
            out = self.engine.model(**inputs, output_hidden_states=True, return_dict=True)
        calls = [c.batch_context for c in rec.calls]  # [batch, tokens, heads, head_dim] per layer
        hidden_states = getattr(out, "hidden_states", None) or getattr(out, "encoder_hidden_states", None)
        if hidden_states is None or len(calls) != self.engine.num_layers:
            raise RuntimeError(f"batched pass captured {len(calls)} attention calls for {self.engine.num_layers} layers")
        hidden = torch.stack([hidden_states[l + 1] for l in self.layers]).float().numpy()  # [L, B, T, D]
        contexts = torch.stack([calls[l].reshape(calls[l].shape[0], calls[l].shape[1], -1) for l in self.layers]).float().numpy()
        return [BatchVectors(hidden=hidden[:, i, :n], contexts=contexts[:, i, :n]) for i, n in enumerate(lengths)]


def check_against_engine(runner: VectorRunner, texts: list[str], atol: float = 1e-3) -> float:
    """Largest |batched - engine.analyze| over hidden states and contexts of ``texts`` (run as one batch).

    Switches the runner to the per-sentence engine path when it exceeds ``atol`` (relative to the
    largest value). Returns the difference measured.
    """
    if not runner.batched or not texts:
        return 0.0
    encoded = encode(runner.engine, texts)
    batch = runner._batch(encoded)
    worst = 0.0
    for text, got in zip(texts, batch):
        ref = runner._via_engine(text)
        for x, y in ((got.hidden, ref.hidden), (got.contexts, ref.contexts)):
            if x.shape != y.shape:
                worst = float("inf")
                continue
            scale = max(float(np.abs(y).max()), 1.0)
            worst = max(worst, float(np.abs(x - y).max()) / scale)
    if worst > atol:
        runner.batched = False
        runner.fallback_reason = f"batched vectors differ from engine.analyze by {worst:.2e} (relative)"
    return worst


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
