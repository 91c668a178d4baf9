"""The layer lens view: positions x layers, the top token of each layer at each position.

Each cell shows the logit lens' top word (:mod:`exbert_hub.analyses.lens`); its colour is that word's
probability. Click a cell for its top-k; pick a target token (a word of the top-k, or typed) to plot its
rank and probability over the layers. Rows are sent in blocks of ``ROW_BLOCK`` positions and the
browser asks for the blocks it scrolls to (``lens_rows`` server function), so a 1k-token text costs
only the rows looked at; only the visible rows are in the page (virtualised).

    >>> view = LensView(None, store=store, engine_of=lambda key: engine)
    >>> btn.click(lambda: lens_view_payload(a, engine, key=store.put(a)), None, view)
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Callable

import gradio as gr
import numpy as np

from ..analyses.lens import Lens, lens_head, lens_positions, logit_lens, num_hidden_states, target_id, target_trace
from ..analysis import CAUSAL_LM, Analysis
from ..errors import ExbertError, InputError
from ..generation import generated_flags
from . import asset, common_head, sequence_continuations

ROW_BLOCK = 64  # positions per block of rows
SPAN_ROWS = 256  # positions the lens computes at once (a multiple of ROW_BLOCK; 1.25 s for SmolLM2 on 2 cores,
# against 3.9 s for 1,024: the first rows show sooner); blocks are slices of it
TOP_K = 5
_CACHE_BLOCKS = 256  # blocks of lens rows kept (each ~ROW_BLOCK x layers x TOP_K words)


class LensCache:
    """LRU of computed row blocks by (analysis key, block index): a block is computed once."""

    def __init__(self, max_blocks: int = _CACHE_BLOCKS):
        self.max_blocks = max_blocks
        self._items: OrderedDict[tuple, dict] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, k: tuple, make: Callable[[], dict]) -> dict:
        with self._lock:
            if k in self._items:
                self._items.move_to_end(k)
                return self._items[k]
        value = make()
        with self._lock:
            self._items[k] = value
            while len(self._items) > self.max_blocks:
                self._items.popitem(last=False)
        return value

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self


CACHE = LensCache()


def _span_lens(analysis: Analysis, engine, span: int, top_k: int) -> Lens:
    """The fast lens (exact top-k, bounded probabilities: analyses.lens.logit_lens(fast=True)) of
    SPAN_ROWS positions at once; every block of rows is a slice of it."""
    n = lens_positions(analysis)
    return logit_lens(analysis, engine, top_k=top_k, positions=range(span * SPAN_ROWS, min(n, (span + 1) * SPAN_ROWS)),
                      fast=True)


def _block_rows(analysis: Analysis, engine, block: int, top_k: int, key: str | None = None) -> dict:
    """``{"start", "end", "words": [row][state][k], "probs": [row][state][k]}`` for one block."""
    n = lens_positions(analysis)
    start = int(block) * ROW_BLOCK
    if not 0 <= start < n:
        raise InputError(f"row block {block} is out of range: this text has {n} positions")
    end = min(start + ROW_BLOCK, n)
    span = start // SPAN_ROWS
    if key is None:
        lens = _span_lens(analysis, engine, span, top_k)
    else:
        lens = CACHE.get((key, "span", span, int(top_k)), lambda: _span_lens(analysis, engine, span, top_k))
    rows = slice(start - span * SPAN_ROWS, end - span * SPAN_ROWS)
    top_ids, top_probs = lens.top_ids[:, rows], lens.top_probs[:, rows]
    flat = top_ids.reshape(-1).tolist()
    words_flat = engine.tokenizer.batch_decode([[i] for i in flat])
    n_s, n_r, k = top_ids.shape
    probs = np.round(top_probs.astype(np.float64), 5)
    return {
        "start": start,
        "end": end,
        "words": [[words_flat[(s * n_r + r) * k:(s * n_r + r + 1) * k] for s in range(n_s)] for r in range(n_r)],
        "probs": [[probs[s, r].tolist() for s in range(n_s)] for r in range(n_r)],
        "ids": [[top_ids[s, r].tolist() for s in range(n_s)] for r in range(n_r)],
    }


def lens_rows_payload(analysis: Analysis, engine, block: int, *, key: str | None = None, top_k: int = TOP_K) -> dict:
    """One block of rows (cached by ``key`` when given)."""
    if key is None:
        return _block_rows(analysis, engine, block, top_k)
    return CACHE.get((key, int(block), int(top_k)), lambda: _block_rows(analysis, engine, block, top_k, key))


def lens_target_payload(analysis: Analysis, engine, position: int, token: str | int) -> dict:
    """``{"position", "token_id", "token", "ranks": [L+1], "probs": [L+1]}``: a target's trace (exact)."""
    tid = int(token) if isinstance(token, (int, np.integer)) and not isinstance(token, bool) else target_id(engine, str(token))
    trace = target_trace(analysis, engine, int(position), tid)
    return {
        "position": trace.position,
        "token_id": tid,
        "token": engine.tokenizer.decode([tid]),
        "ranks": trace.ranks.tolist(),
        "probs": [round(float(p), 6) for p in trace.probs],
    }


def lens_view_payload(analysis: Analysis, engine, *, key: str | None = None, position: int | None = None,
                      top_k: int = TOP_K) -> dict:
    """The value of a :class:`LensView`: tokens, layer labels and the first block of rows (or, with
    ``position``, the block holding it); other blocks come through the ``lens_rows`` server function.

    Returns ``{"view": "lens", "key", "model", "head", "stack", "note", "tokens": [T], "special": [T],
    "continues": [T], "generated": [T], "states": ["emb", "1", ...], "n", "top_k", "block",
    "blocks": {str(i): lens_rows_payload}, "initial": {"position"}, "causal"}``.
    """
    n = lens_positions(analysis)
    head = lens_head(engine.model, analysis.kind)
    seq = analysis.decoder_input if analysis.decoder_input is not None else analysis.input
    n_states = num_hidden_states(analysis)
    if position is not None and not 0 <= int(position) < n:
        position = None
    if position is None:  # causal LMs: open on the last position (the next token of the text)
        position = n - 1 if analysis.kind == CAUSAL_LM else 0
    block = int(position) // ROW_BLOCK
    generated = generated_flags(analysis) if seq is analysis.input else np.zeros(n, dtype=bool)
    note = {
        CAUSAL_LM: "each cell: the token the layer predicts to come next",
    }.get(analysis.kind, "each cell: the token the layer predicts at this position" if analysis.decoder_input is None
          else "each cell: the token the decoder's layer predicts to come next")
    return {
        "view": "lens",
        "key": key,
        "model": analysis.model_name,
        "head": head.describe,
        "stack": "decoder" if analysis.decoder_input is not None else "self",
        "note": note,
        "tokens": [str(t) for t in seq.display],
        "special": [bool(x) for x in np.asarray(seq.special)],
        "continues": sequence_continuations(seq),
        "generated": [bool(x) for x in generated],
        "states": ["emb"] + [str(i) for i in range(1, n_states)],
        "n": n,
        "top_k": int(top_k),
        "row_block": ROW_BLOCK,
        "causal": analysis.kind == CAUSAL_LM,
        "blocks": {str(block): lens_rows_payload(analysis, engine, block, key=key, top_k=top_k)},
        "initial": {"position": int(position)},
    }


def _error(err: Exception) -> dict:
    msg = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    return {"error": " ".join(msg.split())[:300]}


class LensView(gr.HTML):
    """The lens view as a Gradio component; its value is :func:`lens_view_payload`'s dict (or None).

    ``store.get(key) -> Analysis`` and ``engine_of(key) -> Engine`` serve the browser's lazy fetches:
    ``lens_rows({"key", "block"})`` and ``lens_target({"key", "position", "token"})`` (a word or an id).
    """

    def __init__(self, value: dict | None = None, *, store: Any, engine_of: Callable[[str], Any],
                 height: int = 560, **kwargs: Any):
        def lens_rows(request: dict) -> dict:
            """Server function: one block of rows."""
            try:
                key = request.get("key")
                a = store.get(key)
                return lens_rows_payload(a, engine_of(key), int(request.get("block")), key=key)
            except (KeyError, ValueError, TypeError, ExbertError) as err:
                return _error(err)

        def lens_target(request: dict) -> dict:
            """Server function: a target token's rank and probability over the layers."""
            try:
                key = request.get("key")
                a = store.get(key)
                token = request.get("token")
                if isinstance(token, str) and token.strip().lstrip("#").isdigit() and token.strip().startswith("#"):
                    token = int(token.strip()[1:])  # "#123": a token id
                return lens_target_payload(a, engine_of(key), int(request.get("position")), token)
            except (KeyError, ValueError, TypeError, ExbertError) as err:
                return _error(err)

        kwargs.setdefault("head", common_head())
        kwargs.setdefault("apply_default_css", False)
        super().__init__(
            value,
            html_template='<div class="xl-root" data-view="lens"><div class="xl-empty">Analyze a text with a language model '
                          'to see what each layer predicts.</div></div>',
            css_template=asset("lens_view.css").replace("--xl-height: 560px", f"--xl-height: {int(height)}px"),
            js_on_load=asset("lens_view.js"),
            server_functions=[lens_rows, lens_target],
            **kwargs,
        )

    def api_info(self) -> dict:
        return {"type": "object", "description": "lens payload (see exbert_hub.views.lens_view.lens_view_payload)"}


__all__ = ["LensView", "lens_view_payload", "lens_rows_payload", "lens_target_payload", "ROW_BLOCK", "CACHE"]
