"""The one batched forward path of the project: many texts through the engine's own model.

``engine.analyze(text)`` runs one text per forward pass. Here texts run in batches (sorted by length,
right-padded, padding masked out) through the same model object, the same tokenizer call, the same
eager attention and the same inputs (all real tokens attended, special tokens included). Padding only
adds keys whose attention weight is exactly 0 after softmax, so every real token's numbers are those of
``engine.analyze`` up to float32 rounding (measured: <= 3e-6 absolute on MiniLM, values up to ~10).
``check_against_engine`` verifies this on real texts; a runner falls back to ``engine.analyze`` per
text when it does not hold, when the attention function could not be wrapped, or for encoder-decoders
(whose decoder input this path does not build).

Users: the corpus builder (``corpus_builder.vectors``) and ``exbert_hub.examples.analyze_examples``.
Per-head contexts are the attention outputs before the output projection, recorded by
``exbert_hub.capture`` (its ``batch_context`` keeps every sequence of the batch). Attention matrices
are never kept: with ``on_attention`` each example's unpadded matrices are handed to a callback (a
reducer) while the batch is alive, and dropped after it.
"""

from __future__ import annotations

import contextlib
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from . import capture
from .linear_kernels import fast_linear
from .analysis import ENCODER_DECODER

DEFAULT_BATCH_TOKENS = 8192  # padded tokens per forward pass (rows x longest row)
MAX_STREAMS = 8  # Streams: at most this many batches at once (beyond, each stream gets several torch threads)


@dataclass
class Encoded:
    """Tokenization of one text (and optional pair), exactly as ``engine.analyze`` makes it.

    ``offsets`` are character offsets into the text (segment 0) or the pair (segment 1), (0, 0) for
    special tokens; ``segments[i]`` is 1 from the first token of the pair on (as in ``TokenSequence``).
    """

    ids: list[int]
    tokens: list[str]
    offsets: list[tuple[int, int]]
    special: list[bool]
    type_ids: list[int] | None
    segments: list[int] | None = None

    def __len__(self) -> int:
        return len(self.ids)


def encode(engine, texts: Sequence[str], pairs: Sequence[str] | None = None) -> list[Encoded]:
    """Tokenize ``texts`` (with ``pairs`` as sentence B when given) the way ``engine.analyze`` does."""
    tok = engine.tokenizer
    texts = list(texts)
    args = (texts, list(pairs)) if pairs is not None else (texts,)
    enc = tok(*args, return_offsets_mapping=bool(tok.is_fast), return_special_tokens_mask=True)
    out = []
    for i in range(len(texts)):
        ids = list(enc["input_ids"][i])
        special = [bool(s) for s in enc["special_tokens_mask"][i]]
        if "offset_mapping" in enc:
            offsets = [(0, 0) if special[j] else (int(s), int(e)) for j, (s, e) in enumerate(enc["offset_mapping"][i])]
        else:
            offsets = [(0, 0)] * len(ids)
        type_ids = list(enc["token_type_ids"][i]) if "token_type_ids" in enc else None
        segments = None
        if pairs is not None:
            seq_ids = enc.sequence_ids(i) if tok.is_fast else [0] * len(ids)
            first_b = next((j for j, s in enumerate(seq_ids) if s == 1), len(ids))
            segments = [0] * first_b + [1] * (len(ids) - first_b)
        out.append(Encoded(ids, tok.convert_ids_to_tokens(ids), offsets, special, type_ids, segments))
    return out


def plan_batches(lengths: Sequence[int], batch_tokens: int = DEFAULT_BATCH_TOKENS,
                 max_rows: int | None = None) -> list[list[int]]:
    """Indexes of ``lengths`` grouped into batches: sorted by length, each batch's rows x longest row
    at most ``batch_tokens`` (a longer single text gets a batch of its own), at most ``max_rows`` rows."""
    if batch_tokens < 1:
        raise ValueError(f"batch_tokens must be at least 1, got {batch_tokens}")
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        longest = lengths[i]  # sorted: the newcomer is the longest so far
        if current and ((len(current) + 1) * longest > batch_tokens or (max_rows and len(current) >= max_rows)):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


@dataclass
class ExampleOutput:
    """What one text's forward pass gave. T = its tokens (no padding).

    hidden: float32[len(hidden_layers), T, hidden] (hidden_states indexes: 0 = embeddings, l + 1 = layer l)
    contexts: float32[len(context_layers), T, heads * head_dim] or None
    logits: float32[T, vocab or labels] (token-level heads) or float32[labels] (sequence classification), or None
    top: (int64[T] id, float32[T] softmax probability) of the most probable output at each position
      (``logits="top"``: an LM's vocabulary never leaves torch), or None
    """

    hidden: np.ndarray
    contexts: np.ndarray | None
    logits: np.ndarray | None = None
    top: tuple[np.ndarray, np.ndarray] | None = None


# on_attention(position in the list passed to run, float32[layers, heads, T, T] of that text)
AttentionReducer = Callable[[int, np.ndarray], None]


class BatchRunner:
    """Runs encoded texts through ``engine``'s model in padded batches.

    hidden_layers: indexes into hidden_states to keep (default all: 0 .. layers).
    context_layers: layers whose per-head contexts to keep (default none).
    logits: True keeps each text's output logits (the model's head: LM vocabulary or classification
      labels); "top" keeps only the best id and its probability per position (LMs: no [T, vocab] copies).
    concurrent: forward passes may run at once in several threads (``Streams``): the loaded model's lock
      is not taken.
    """

    def __init__(self, engine, *, hidden_layers: Sequence[int] | None = None, context_layers: Sequence[int] = (),
                 logits: bool | str = False, concurrent: bool = False):
        self.engine = engine
        self.hidden_layers = list(range(engine.num_layers + 1)) if hidden_layers is None else list(hidden_layers)
        self.context_layers = list(context_layers)
        self.logits = logits
        self.batched = engine.kind != ENCODER_DECODER and capture.instrument(engine.model)
        self.fallback_reason = None if self.batched else (
            "encoder-decoder models run through engine.analyze one text at a time"
            if engine.kind == ENCODER_DECODER else "the model's attention function was not found")
        loaded = getattr(engine, "_loaded", None)
        # the loaded model's lock (one forward pass of a shared model at a time), unless this runner's
        # passes are meant to run at once on Streams (a corpus build: nobody else uses its model)
        self._lock = (None if concurrent else getattr(loaded, "lock", None)) or contextlib.nullcontext()
        self._forward_args = getattr(loaded, "forward_args", None)
        pad = engine.tokenizer.pad_token_id
        self.pad_id = int(pad) if pad is not None else 0

    # --- public --------------------------------------------------------------------------------
    def run(self, encoded: list[Encoded], texts: list[str], pairs: list[str] | None = None,
            on_attention: AttentionReducer | None = None) -> list[ExampleOutput]:
        """One batch (callers plan batches with ``plan_batches``): per text its outputs, in order."""
        if not self.batched:
            out = []
            for i, text in enumerate(texts):
                a = self.engine.analyze(text, pair=None if pairs is None else pairs[i])
                if on_attention is not None:
                    on_attention(i, a.attentions)
                out.append(self._from_analysis(a))
            return out
        return self._batch(encoded, on_attention)

    # --- the two paths ------------------------------------------------------------------------
    def _from_analysis(self, a) -> ExampleOutput:
        contexts = a.contexts[self.context_layers] if self.context_layers and a.contexts is not None else None
        return ExampleOutput(hidden=a.hidden_states[self.hidden_layers], contexts=contexts)

    def inputs(self, encoded: list[Encoded]) -> tuple[dict, list[int]]:
        """The padded tensors of one batch and each row's length."""
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

    def forward(self, inputs: dict, attentions: bool = False):
        """The bare batched forward pass (also what bench/bench_examples.py times as the reference); its
        float32 products on oneDNN where that is the fast kernel (``linear_kernels``)."""
        with self._lock, torch.inference_mode(), fast_linear(), capture.recording() as rec:
            out = self.engine.model(**inputs, output_hidden_states=True, output_attentions=attentions, return_dict=True)
        return out, rec

    def _batch(self, encoded: list[Encoded], on_attention: AttentionReducer | None = None) -> list[ExampleOutput]:
        inputs, lengths = self.inputs(encoded)
        out, rec = self.forward(inputs, attentions=on_attention is not None)
        hidden_states = getattr(out, "hidden_states", None) or getattr(out, "encoder_hidden_states", None)
        calls = [c.batch_context for c in rec.calls]  # [batch, tokens, heads, head_dim] per layer
        if hidden_states is None or (self.context_layers and len(calls) != self.engine.num_layers):
            raise RuntimeError(f"batched pass captured {len(calls)} attention calls for {self.engine.num_layers} layers")
        hidden = torch.stack([hidden_states[l] for l in self.hidden_layers]).float().numpy()  # [L, B, T, D]
        contexts = None
        if self.context_layers:
            contexts = torch.stack([calls[l].reshape(calls[l].shape[0], calls[l].shape[1], -1)
                                    for l in self.context_layers]).float().numpy()
        logits = top_ids = top_probs = None
        raw = getattr(out, "logits", None)
        if self.logits == "top" and raw is not None and raw.ndim == 3:
            best = torch.softmax(raw.float(), dim=-1).max(dim=-1)  # [B, T]
            top_ids, top_probs = best.indices.numpy(), best.values.numpy()
        elif self.logits and raw is not None:
            logits = raw.float().numpy()  # [B, T, V] or [B, labels]
        if on_attention is not None:
            attn = torch.stack(list(out.attentions), dim=1).float().numpy()  # [B, layers, heads, T, T]
            for i, n in enumerate(lengths):
                on_attention(i, attn[i, :, :, :n, :n])
        res = []
        for i, n in enumerate(lengths):
            lg = None
            if logits is not None:
                lg = logits[i, :n] if logits.ndim == 3 else logits[i]
            top = None if top_ids is None else (top_ids[i, :n], top_probs[i, :n])
            res.append(ExampleOutput(hidden=hidden[:, i, :n], contexts=None if contexts is None else contexts[:, i, :n],
                                     logits=lg, top=top))
        return res


def check_against_engine(runner: BatchRunner, texts: list[str], atol: float = 1e-3) -> float:
    """Largest |batched - engine.analyze| over the runner's hidden states and contexts of ``texts``
    (run as one batch), relative to the largest value.

    Switches the runner to the per-text engine path when it exceeds ``atol``. Returns the difference.
    """
    if not runner.batched or not texts:
        return 0.0
    batch = runner._batch(encode(runner.engine, texts))
    worst = 0.0
    for text, got in zip(texts, batch):
        ref = runner._from_analysis(runner.engine.analyze(text))
        pairs = [(got.hidden, ref.hidden)] + ([(got.contexts, ref.contexts)] if runner.context_layers else [])
        for x, y in pairs:
            if x is None or y is None or x.shape != y.shape:
                worst = float("inf")
                continue
            scale = max(float(np.abs(y).max()), 1.0)
            worst = max(worst, float(np.abs(x - y).max()) / scale)
    if worst > atol:
        runner.batched = False
        runner.fallback_reason = f"batched vectors differ from engine.analyze by {worst:.2e} (relative)"
    return worst


def on_accelerator(engine) -> bool:
    """Whether the engine's model takes its inputs on a GPU (or another non-CPU device)."""
    loaded = getattr(engine, "_loaded", None)
    device = getattr(loaded, "input_device", None) if loaded is not None else None
    return device is not None and device.type != "cpu"


class Streams:
    """Independent batches at once, on ``streams`` threads of ``threads // streams`` torch threads each.

    A CPU forward pass on every core is one OpenMP team: each op ends when its slowest thread does, so a
    core that other work shares (a spaCy worker, an index writer, another process) holds the whole team
    to its pace while the other cores wait. Streams of one thread each run separate batches: a shared core
    slows its own stream only. BERT-base size, 2 cores (bench/RESULTS.md, S19): alone, 2 streams run the
    batches of 300 sentences as fast as one 2-thread team (7.7 against 7.9 s); a build of them, spaCy's
    worker beside the model, took 11.5-11.7 s against 13.4-15.2 s. Forward passes of a runner made with
    ``concurrent=True`` only (the model's lock is not taken). A GPU model needs no streams (``for_engine``
    gives None)."""

    def __init__(self, threads: int, streams: int | None = None):
        threads = max(1, int(threads))
        self.streams = max(1, min(threads, streams or MAX_STREAMS))
        self.threads_each = max(1, threads // self.streams)
        each = self.threads_each
        # torch's thread count is per OS thread (OpenMP's and MKL's settings of the calling thread)
        self._pool = ThreadPoolExecutor(max_workers=self.streams, thread_name_prefix="forward-stream",
                                        initializer=lambda: torch.set_num_threads(each))

    @classmethod
    def for_engine(cls, engine, threads: int | None = None) -> "Streams | None":
        """Streams over this process's torch threads for a CPU model; None for a model on an accelerator."""
        if on_accelerator(engine):
            return None
        n = torch.get_num_threads() if threads is None else threads
        return cls(n) if n > 1 else None

    @property
    def threads(self) -> int:
        return self.streams * self.threads_each

    def submit(self, fn: Callable, *args) -> Future:
        return self._pool.submit(fn, *args)

    def close(self, cancel: bool = False) -> None:
        """Wait for the running batches; ``cancel``: drop those not yet begun."""
        self._pool.shutdown(wait=True, cancel_futures=cancel)


class PendingBatches:
    """The results of a list of batches, some maybe still running on ``Streams``. ``result()`` waits for them
    and returns ``assemble(outputs in batch order)`` (default: that list).

    ``seconds``: the batches' own running time summed and divided by the streams that ran them (the model's
    share of the wall clock), known once ``result()`` returned."""

    def __init__(self, parts: list, streams: int = 1, assemble: Callable[[list], object] | None = None):
        self._parts, self._streams, self._assemble = parts, max(1, streams), assemble
        self.seconds = 0.0

    @classmethod
    def run(cls, fn: Callable, batches: list[tuple], streams: Streams | None = None,
            assemble: Callable[[list], object] | None = None) -> "PendingBatches":
        """``fn(*batch)`` for every batch: submitted to ``streams``, or run here and now (None)."""
        def timed(*args):
            t0 = time.perf_counter()
            out = fn(*args)
            return out, time.perf_counter() - t0

        if streams is None:
            return cls([timed(*b) for b in batches], 1, assemble)
        return cls([streams.submit(timed, *b) for b in batches], streams.streams, assemble)

    @classmethod
    def done(cls, result, seconds: float = 0.0) -> "PendingBatches":
        """Results computed elsewhere (a Ray actor's): ``result()`` returns ``result``."""
        p = cls([], 1, lambda _: result)
        p.seconds = seconds
        return p

    def result(self):
        outs, busy = [], 0.0
        for part in self._parts:
            out, seconds = part.result() if isinstance(part, Future) else part
            outs.append(out)
            busy += seconds
        if self._parts:
            self.seconds = busy / self._streams
        return self._assemble(outs) if self._assemble is not None else outs
