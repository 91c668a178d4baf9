"""BertViz-style head view: several heads of one layer at once, tokens in two columns joined by lines.

Also home of what the three BertViz-style views (head, model and neuron view) share on the Python side:
:class:`AnalysisStore` (where a view's server functions find the analysis a payload came from) and
:func:`encode_float32` (full-precision arrays for lazy fetches).

    >>> view = HeadView()                                  # in a gr.Blocks; empty until given a value
    >>> btn.click(lambda text: view.payload(engine.analyze(text)), text_box, view)

Transport: attention goes to the browser as uint8 base64 (:mod:`exbert_hub.views.transport`), one layer
at a time once the whole stack would exceed ``prefetch_bytes``; the browser fetches other layers lazily
through the ``head_view_layer`` server function. Token text is always set with ``textContent``.
"""

from __future__ import annotations

import base64
import secrets
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import gradio as gr
import numpy as np

from ..analysis import Analysis
from ..errors import ExbertError
from ..generation import generated_flags
from . import asset, common_head, sequence_continuations, theme_css
from .rows import BLOCK_ROWS, block_payload, is_long
from .transport import decode_attention, encode_attention

PAIR_FILTERS = ("all", "a->a", "b->b", "a->b", "b->a")
FLOAT32 = "float32"


# --------------------------------------------------------------------------------------------------
# shared by the three views
# --------------------------------------------------------------------------------------------------
class AnalysisStore:
    """Thread-safe LRU of analyses by random key, so a view's server functions can find its analysis.

    ``put`` returns the key already given to the same object if it is still stored. Keys are 128-bit
    random strings: a browser can only read analyses whose payload it was sent. Bounded by count and
    by the bytes of the attention arrays; evicted analyses make lazy fetches answer with an error the
    view shows ("run the analysis again").
    """

    def __init__(self, max_items: int = 8, max_bytes: int = 3_000_000_000):
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, Analysis] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _nbytes(analysis: Analysis) -> int:
        return analysis.nbytes  # what it holds (attention is computed on demand)

    # Gradio deep-copies what a component keeps into the page config on every page load: a store
    # must be shared, never copied (copying cached analyses made page loads take 20+ s at 1k tokens).
    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self

    def put(self, analysis: Analysis) -> str:
        with self._lock:
            for key, stored in self._items.items():
                if stored is analysis:
                    self._items.move_to_end(key)
                    return key
            key = secrets.token_urlsafe(16)
            self._items[key] = analysis
            total = sum(self._nbytes(a) for a in self._items.values())
            for old in list(self._items):
                if len(self._items) <= self.max_items and total <= self.max_bytes:
                    break
                if old != key:
                    total -= self._nbytes(self._items.pop(old))
            return key

    def get(self, key: str) -> Analysis:
        with self._lock:
            if not isinstance(key, str) or key not in self._items:
                raise KeyError("this analysis is no longer held by the server: run it again")
            self._items.move_to_end(key)
            return self._items[key]

    def __len__(self) -> int:
        return len(self._items)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


DEFAULT_STORE = AnalysisStore()


def encode_float32(arr: np.ndarray) -> dict:
    """Full precision for lazy fetches: ``{"shape", "b64" (little-endian float32), "encoding": "float32"}``.

    Non-finite values are kept (a causal mask's -3.4e38 stays what the model added)."""
    a = np.ascontiguousarray(np.asarray(arr, dtype="<f4"))
    return {"shape": [int(s) for s in a.shape], "b64": base64.b64encode(a.tobytes()).decode("ascii"), "encoding": FLOAT32}


def decode_float32(payload: dict) -> np.ndarray:
    """Inverse of :func:`encode_float32` (tests and Python clients)."""
    data = np.frombuffer(base64.b64decode(payload["b64"]), dtype="<f4")
    return data.reshape([int(s) for s in payload["shape"]]).astype(np.float32)


CSR = "csr-uint8"


def _visible_byte(scale: float) -> int:
    """Smallest sqrt-quantised byte whose weight is drawn (weight * 255 >= 0.5, as in the browser)."""
    lut = (np.float64(scale) * (np.arange(256) / 255.0) * (np.arange(256) / 255.0)).astype(np.float32)
    idx = np.flatnonzero(lut.astype(np.float64) * 255 >= 0.5)
    return int(idx[0]) if idx.size else 256


def encode_layer(att: np.ndarray, sparse_ratio: float = 0.7) -> dict:
    """One layer ``float[heads, queries, keys]`` for the head view: uint8 (sqrt) from encode_attention,
    sent sparse when that is smaller.

    The head view never draws a weight under 0.5/255 (its line opacity would be 0), so only bytes at or
    above that threshold are needed. When they make up a small part of the layer (long inputs: each row
    sums to 1 over ~1,000 keys) the payload is CSR instead of dense: ``{"shape", "encoding":
    "csr-uint8", "transform", "scale", "indptr": base64 uint32[heads*queries + 1], "indices": base64
    uint16[nnz], "values": base64 uint8[nnz]}``; otherwise the dense payload of encode_attention. Both
    decode to the same drawing. Use :func:`decode_layer` to get the (thresholded) weights back.
    """
    dense = encode_attention(att)
    h, nq, nk = att.shape
    if nk > 65535:
        return dense
    q = np.frombuffer(base64.b64decode(dense["b64"]), dtype=np.uint8).reshape(h * nq, nk)
    keep = q >= _visible_byte(dense["scale"])
    nnz = int(keep.sum())
    if nnz * 3 + (h * nq + 1) * 4 >= sparse_ratio * q.size:
        return dense
    indptr = np.zeros(h * nq + 1, dtype="<u4")
    np.cumsum(keep.sum(axis=1), out=indptr[1:])
    indices = np.nonzero(keep)[1].astype("<u2")
    values = q[keep]
    b64 = lambda a: base64.b64encode(np.ascontiguousarray(a).tobytes()).decode("ascii")  # noqa: E731
    return {"shape": [h, nq, nk], "encoding": CSR, "transform": dense["transform"], "scale": dense["scale"],
            "indptr": b64(indptr), "indices": b64(indices), "values": b64(values)}


def decode_layer(payload: dict) -> np.ndarray:
    """float32[heads, queries, keys] of a head-view layer payload (dense or CSR; CSR has zeros where
    the weight is too small to draw)."""
    if payload.get("encoding") != CSR:
        return decode_attention(payload)
    h, nq, nk = payload["shape"]
    indptr = np.frombuffer(base64.b64decode(payload["indptr"]), dtype="<u4")
    indices = np.frombuffer(base64.b64decode(payload["indices"]), dtype="<u2")
    values = np.frombuffer(base64.b64decode(payload["values"]), dtype=np.uint8)
    q = np.zeros((h * nq, nk), dtype=np.uint8)
    rows = np.repeat(np.arange(h * nq), np.diff(indptr.astype(np.int64)))
    q[rows, indices] = values
    dense = {"shape": [h, nq, nk], "b64": base64.b64encode(q.tobytes()).decode("ascii"), "encoding": "uint8",
             "transform": payload["transform"], "scale": payload["scale"]}
    return decode_attention(dense)


def stack_sequences(stack: str) -> tuple[str, str]:
    """(query sequence, key sequence) of a stack: "input" (encoder / only stack) or "decoder"."""
    return {"self": ("input", "input"), "encoder": ("input", "input"),
            "decoder": ("decoder", "decoder"), "cross": ("decoder", "input")}.get(stack, ("input", "input"))


def sequences_payload(analysis: Analysis) -> dict:
    """Token lists of an analysis: ``{"input": {tokens, special, segments, continues}, "decoder": {...}?}``.

    ``continues[i]``: token i continues the word of token i - 1 (drawn with a faint leading "##")."""
    out = {}
    for name, seq in (("input", analysis.input), ("decoder", analysis.decoder_input)):
        if seq is None:
            continue
        out[name] = {
            "tokens": [str(t) for t in seq.display],
            "special": [bool(x) for x in np.asarray(seq.special)],
            "segments": [int(x) for x in np.asarray(seq.segments)],
            "continues": sequence_continuations(seq),  # word pieces that continue the previous word
        }
        if name == "input":  # tokens the model generated (generation.py): marked in the views
            out[name]["generated"] = [bool(x) for x in generated_flags(analysis)]
    return out


# the attention rollout multiplies T x T matrices per layer (T^3 work): offered up to this many tokens
MAX_ROLLOUT_TOKENS = 2048


def has_rollout(st) -> bool:
    """Whether a stack offers the attention rollout as the layer after its last (square, not long)."""
    return st.name != "cross" and st.q_len == st.k_len <= MAX_ROLLOUT_TOKENS and not is_long(st)


def stacks_payload(analysis: Analysis) -> list[dict]:
    """``[{"name", "layers", "heads", "query_seq", "key_seq", "rollout"}]`` in the analysis' order; with
    ``rollout`` the layer index ``layers`` is the stack's attention rollout (analyses/rollout.py)."""
    out = []
    for name, st in analysis.stacks.items():
        q, k = stack_sequences(name)
        out.append({"name": name, "layers": st.num_layers, "heads": st.num_heads, "query_seq": q, "key_seq": k,
                    "rollout": has_rollout(st)})
    return out


def rollout_layer(analysis: Analysis, stack: str) -> np.ndarray:
    """float32[heads, T, T]: the rollout of the whole stack, the same for every head (any head selection
    shows the rollout itself)."""
    from ..analyses.rollout import attention_rollout

    st = analysis.stack(stack)
    r = attention_rollout(analysis, stack)[-1]
    return np.broadcast_to(r, (st.num_heads,) + r.shape)


def _layer_weights(analysis: Analysis, stack: str, layer: int) -> np.ndarray:
    st = analysis.stack(stack)
    return rollout_layer(analysis, stack) if layer == st.num_layers else st.attentions[layer]


def resolve_stack(analysis: Analysis, stack: str | None) -> str:
    name = stack or ("encoder" if "encoder" in analysis.stacks else next(iter(analysis.stacks)))
    analysis.stack(name)  # raises InputError listing the stacks it has
    return name


def error_payload(err: Exception) -> dict:
    msg = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    return {"error": msg}


def _check_index(value: int, n: int, what: str) -> int:
    value = int(value)
    if not 0 <= value < n:
        raise ValueError(f"{what} {value} is out of range 0..{n - 1}")
    return value


def _section(text: str, name: str) -> str:
    start, end = f"/* <{name}>", f"/* </{name}> */"
    i, j = text.index(start), text.index(end)
    return text[i : j + len(end)] + "\n"


def controls_css() -> str:
    """The select controls' CSS (head_view.css between the controls markers; the neuron view uses it too)."""
    return _section(asset("head_view.css"), "controls")


def line_panel_js() -> str:
    """The token-columns-and-lines panel of head_view.js (also used by the model view's enlarged head)."""
    return _section(asset("head_view.js"), "line-panel")


def line_panel_css() -> str:
    """The CSS of that panel (head_view.css between the line-panel markers)."""
    return _section(asset("head_view.css"), "line-panel")


# --------------------------------------------------------------------------------------------------
# head view
# --------------------------------------------------------------------------------------------------
def head_view_payload(
    analysis: Analysis,
    *,
    layer: int = 0,
    heads: Sequence[int] | None = None,
    stack: str | None = None,
    pair_filter: str = "all",
    key: str | None = None,
    prefetch_bytes: int = 1_500_000,
    line_budget: int = 40_000,
) -> dict:
    """The value of a :class:`HeadView` for ``analysis``: JSON-safe, attention as uint8 base64.

    Arguments (mirrored by the payload's keys):
        layer: layer shown first. heads: heads selected first (default all). stack: "self"/"encoder",
        "decoder" or "cross" (default the encoder or only stack). pair_filter: "all", "a->a", "b->b",
        "a->b", "b->a" (used when the analysis has a sentence pair). key: the :class:`AnalysisStore`
        key that lets the browser fetch other layers (None: no lazy fetches, so every layer is sent).
        prefetch_bytes: every layer of the shown stack is sent at once when it fits in this many
        attention bytes (uint8); otherwise only ``layer``. line_budget: when more lines than this
        have a visible weight (>= 0.5/255), only the strongest are drawn and the view says so, with
        a button to draw them all (0: always all).

    Returns ``{"view": "head", "key", "model", "sequences": {"input": {tokens[T], special[T],
    segments[T]}, "decoder"?: ...}, "stacks": [{name, layers, heads, query_seq, key_seq}], "stack",
    "layer", "heads", "pair_filter", "line_budget", "pair_start", "attention": {stack: {str(layer): payload of
    float[heads, queries, keys] from encode_layer (uint8, dense or CSR)}}}``.
    """
    stack = resolve_stack(analysis, stack)
    st = analysis.stack(stack)
    layer = _check_index(layer, st.num_layers + has_rollout(st), "layer")
    heads = list(range(st.num_heads)) if heads is None else [_check_index(h, st.num_heads, "head") for h in heads]
    pair_filter = str(pair_filter).lower().replace(" ", "")
    if pair_filter not in PAIR_FILTERS:
        raise ValueError(f"pair_filter must be one of {', '.join(PAIR_FILTERS)}, got {pair_filter!r}")
    per_layer = int(np.prod(st.attentions.shape[1:]))
    # without a key the browser cannot fetch layers later: send them all
    fits = per_layer * st.num_layers <= prefetch_bytes
    # long inputs: no layer is sent, the browser fetches sparse blocks of the rows in view (rows.py)
    long = key is not None and any(is_long(s) for s in analysis.stacks.values())
    layers = [] if long else range(st.num_layers) if fits or key is None else [layer] if layer < st.num_layers else []
    return {
        "view": "head",
        "key": key,
        "model": analysis.model_name,
        "sequences": sequences_payload(analysis),
        "stacks": stacks_payload(analysis),
        "stack": stack,
        "layer": layer,
        "heads": heads,
        "pair_filter": pair_filter,
        "line_budget": int(line_budget),
        "pair_start": analysis.pair_start if stack in ("self", "encoder") else None,
        "attention": {stack: {str(i): encode_layer(st.attentions[i]) for i in layers}
                      | ({str(layer): encode_layer(rollout_layer(analysis, stack))} if layer == st.num_layers else {})},
        "long": long,
        "block_rows": BLOCK_ROWS,
    }


def head_view_layer_payload(analysis: Analysis, stack: str, layer: int) -> dict:
    """One layer for the head view's lazy fetch: ``{"stack", "layer", "attention": encode_layer payload [H, q, k]}``."""
    st = analysis.stack(stack)
    layer = _check_index(layer, st.num_layers + has_rollout(st), "layer")
    return {"stack": stack, "layer": layer, "attention": encode_layer(_layer_weights(analysis, stack, layer))}


class HeadView(gr.HTML):
    """Head view as a Gradio component. Its value is :func:`head_view_payload`'s dict (or None: empty).

    Keep the initial value empty and set it from an event (big initial values break ``launch()``).
    ``payload(analysis, ...)`` stores the analysis in ``store`` and returns the value to send.

    ``store`` is any object with ``get(key) -> Analysis`` (what the server functions call; an app can
    pass its own store and build values with :func:`head_view_payload` and its own keys) and, for
    ``payload()``, ``put(analysis) -> key``. Default: the module's :data:`DEFAULT_STORE`.
    """

    def __init__(self, value: dict | None = None, *, store: AnalysisStore | Any = None, height: int = 640, **kwargs: Any):
        self.store = store if store is not None else DEFAULT_STORE  # an empty store is falsy (len 0)
        store_ref = self.store

        def head_view_layer(request: dict) -> dict:
            """Server function: ``{"key", "stack", "layer"}`` -> one layer (see head_view_layer_payload);
            with ``"block"``: that block of rows, sparse (long inputs, rows.block_payload)."""
            try:
                if request.get("block") is not None:
                    return {"stack": str(request.get("stack")), "layer": int(request.get("layer")),
                            "block": int(request.get("block")),
                            "rows": block_payload(store_ref.get(request.get("key")), str(request.get("stack")),
                                                  int(request.get("layer")), int(request.get("block")))}
                return head_view_layer_payload(store_ref.get(request.get("key")), str(request.get("stack")),
                                               int(request.get("layer")))
            except (KeyError, ValueError, TypeError, ExbertError) as err:
                return error_payload(err)

        kwargs.setdefault("head", common_head())
        kwargs.setdefault("apply_default_css", False)
        super().__init__(
            value,
            html_template='<div class="xh-hv" data-view="head"></div>',
            css_template=theme_css() + asset("head_view.css").replace("--xh-height: 640px", f"--xh-height: {int(height)}px"),
            js_on_load=asset("head_view.js"),
            server_functions=[head_view_layer],
            **kwargs,
        )

    def payload(self, analysis: Analysis, **kwargs: Any) -> dict:
        """Store ``analysis`` and return :func:`head_view_payload` for it with the store key."""
        return head_view_payload(analysis, key=self.store.put(analysis), **kwargs)

    def __getattr__(self, name: str):
        # gr.HTML answers any name quoted in its JS with an event trigger; the JS quotes the stack name
        # "self", and Gradio's config reads getattr(component, "self") for the constructor's `self`,
        # which put an event trigger (holding an asyncio Future) into the page config: every page load
        # then failed to deep-copy it and logged "Exception ignored ... _closed" traces.
        if name == "self":
            raise AttributeError(name)
        return super().__getattr__(name)
