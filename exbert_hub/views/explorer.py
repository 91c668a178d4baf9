"""exBERT's attention explorer as a Gradio component: two token columns joined by attention lines.

The component's value is the dict :func:`explorer_payload` returns (tokens, predictions and the
attention of one or all layers as uint8 base64, see :mod:`exbert_hub.views.transport`). Everything
interactive (threshold, head selection and weights, hover/freeze, hiding special tokens) runs in the
browser (explorer.js); only masking a token (double-click) comes back to Python, as the custom
``mask`` event, and layers not in the payload are fetched lazily through a server function.
"""

from __future__ import annotations

from typing import Callable, Sequence

import gradio as gr
import numpy as np

from ..analysis import MASKED_LM, Analysis, AttentionStack
from ..errors import InputError
from . import asset, common_head, sequence_continuations
from ..generation import generated_flags
from ..service import stack_of
from .head_view import stack_sequences
from .neuron_view import is_causal
from .rows import BLOCK_ROWS, block_payload, is_long, row_payload
from .transport import encode_attention

# Below this many attention bytes (layers * heads * tokens^2) every layer is sent at once; above it
# only the shown layer is, and the browser asks for the others when the user picks them.
ALL_LAYERS_BYTES = 4_000_000

DEFAULT_THRESHOLD = 0.7
MAX_ROLLOUT_TOKENS = 2048  # the rollout multiplies T x T matrices per layer: T^3 work

_TEMPLATE = """<div class="xb-root" data-ready="0">
  <div class="xb-empty">Analyze a text to see its attention.</div>
</div>"""


def _clean_heads(heads: Sequence[int] | None, num_heads: int) -> list[int] | None:
    if heads is None:
        return None
    return sorted({int(h) for h in heads if 0 <= int(h) < num_heads})


STACK_LABELS = {"self": "Self", "encoder": "Encoder", "decoder": "Decoder", "cross": "Cross (decoder \u2192 encoder)"}


def _sequence_json(analysis: Analysis, name: str) -> dict:
    """The tokens of one sequence ("input" or "decoder") as the explorer draws them in a column."""
    seq = analysis.input if name == "input" else analysis.decoder_input
    out = {
        "tokens": [str(x) for x in seq.display],
        "raw_tokens": [str(x) for x in seq.tokens],
        "special": [bool(x) for x in np.asarray(seq.special)],
        "continues": sequence_continuations(seq),  # word pieces that continue the previous word
        "segments": [int(x) for x in np.asarray(seq.segments)],
    }
    if name == "input":  # masking and generation are about the input text
        out["original_tokens"] = [str(x) for x in (analysis.original_tokens or analysis.tokens)]
        out["masked"] = [int(x) for x in analysis.masked]
        out["generated"] = [bool(x) for x in generated_flags(analysis)]  # tokens the model generated (generation.py)
    return out


def _stacks_json(analysis: Analysis, key: str | None) -> list[dict]:
    """Per stack: ``{name, label, layers, heads, query_seq, key_seq, causal, rollout, long}``."""
    out = []
    for name, st in analysis.stacks.items():
        q_seq, k_seq = stack_sequences(name)
        out.append({"name": name, "label": STACK_LABELS.get(name, name), "layers": st.num_layers,
                    "heads": st.num_heads, "query_seq": q_seq, "key_seq": k_seq,
                    "causal": is_causal(analysis, name), "rollout": _rollout_ok(st, key is not None and is_long(st)),
                    "long": key is not None and is_long(st)})
    return out


def _rollout_ok(st: AttentionStack, long: bool) -> bool:
    """Whether a stack offers the rollout as the layer after its last: square self-attention, not too long."""
    return st.name != "cross" and st.q_len == st.k_len <= MAX_ROLLOUT_TOKENS and not long


def explorer_payload(
    analysis: Analysis,
    *,
    layer: int = 0,
    heads: Sequence[int] | None = None,
    token: int | None = None,
    threshold: float = DEFAULT_THRESHOLD,
    hide_special: bool = False,
    weights: Sequence[float] | None = None,
    key: str | None = None,
    can_mask: bool | None = None,
    all_layers: bool | None = None,
    stack: str | None = None,
) -> dict:
    """The explorer's value for ``analysis``: JSON-safe, attention as uint8 base64.

    layer, heads, token, threshold, hide_special, weights: the view to open (deep links); ``token`` is a
    position of the stack's query (left) tokens. stack: the attention shown, one of ``analysis.stacks``
    ("self"; encoder-decoders: "encoder", "decoder", "cross"); default the encoder or only stack;
    anything else raises InputError. key: the id under which the app keeps this analysis (the browser
    sends it back to fetch layers and to mask tokens). all_layers: send every layer (default: when they
    fit in ALL_LAYERS_BYTES; the other stacks' layers too when all of them fit).

    The left column is the stack's queries, the right its keys: ``stacks[i]["query_seq"]`` and
    ``["key_seq"]`` name their tokens, "input" (the top-level token lists: the input's, the encoder's) or
    "decoder" (``sequences["decoder"]``); for "cross", decoder tokens on the left, the encoder's on the right.

    Long inputs (one dense layer over rows.LONG_LAYER_BYTES) with a key: no attention in the payload
    (``"long": True``); the browser fetches sparse blocks of the rows in view (:func:`rows_payload`).
    """
    stack = stack_of(analysis, stack)
    st = analysis.stack(stack)
    att = st.attentions  # float32[L, H, q, k]
    num_layers, num_heads, t = int(att.shape[0]), int(att.shape[1]), int(att.shape[2])
    layer = int(min(max(int(layer), 0), num_layers - 1))
    long = key is not None and is_long(st)
    sizes = {name: s.attentions.size for name, s in analysis.stacks.items()}
    if all_layers is None:
        all_layers = sizes[stack] <= ALL_LAYERS_BYTES
    all_layers = bool(all_layers) and not long
    every_stack = all_layers and sum(sizes.values()) <= ALL_LAYERS_BYTES
    layers = [] if long else range(num_layers) if all_layers else [layer]
    rollout = _rollout_ok(st, long)
    preds = None
    if analysis.predictions is not None:
        preds = [[[str(w), round(float(p), 6)] for w, p in row] for row in analysis.predictions]
    if token is not None and not 0 <= int(token) < t:
        token = None
    weights_list = None
    if weights is not None and len(weights) == num_heads:
        weights_list = [float(max(w, 0.0)) for w in weights]
    inp = _sequence_json(analysis, "input")  # the top-level token lists (not repeated in `sequences`)
    sequences = {"decoder": _sequence_json(analysis, "decoder")} if analysis.decoder_input is not None else {}
    shown = {str(i): encode_attention(att[i]) for i in layers}
    if rollout and all_layers:
        shown[str(num_layers)] = rollout_layer(analysis, stack)
    others = {}
    if every_stack:  # small encoder-decoders: every stack in the page, switching needs no server
        for name, other in analysis.stacks.items():
            if name != stack:
                others[name] = {str(i): encode_attention(other.attentions[i]) for i in range(other.num_layers)}
                if _rollout_ok(other, False):
                    others[name][str(other.num_layers)] = rollout_layer(analysis, name)
    return {
        "view": "explorer",
        "key": key,
        "model": analysis.model_name,
        "model_kind": analysis.kind,
        "text": analysis.text,
        "pair": analysis.pair,
        "target": analysis.target,
        "tokens": [str(x) for x in analysis.display_tokens],
        "raw_tokens": inp["raw_tokens"],
        "original_tokens": inp["original_tokens"],
        "special": inp["special"],
        "continues": inp["continues"],
        "segments": inp["segments"],
        "masked": inp["masked"],
        "generated": inp["generated"],
        "sequences": sequences,
        "stacks": _stacks_json(analysis, key),
        "stack": stack,
        "main_stack": analysis.main_stack.name,
        "num_layers": num_layers,
        "num_heads": num_heads,
        "causal": is_causal(analysis, stack),
        "can_mask": bool(analysis.kind == MASKED_LM if can_mask is None else can_mask),
        "attention": shown,
        "stack_attention": others,  # {stack: {layer: payload}} of the other stacks (small analyses only)
        "rollout": rollout,  # layer index num_layers is the attention rollout (analyses/rollout.py)
        "long": long,
        "block_rows": BLOCK_ROWS,
        "all_layers": bool(all_layers),
        # predictions are per position of this sequence: the decoder's for encoder-decoders
        "prediction_seq": "decoder" if analysis.decoder_input is not None else "input",
        "predictions": preds,
        "prediction_note": analysis.prediction_note,
        "truncated": bool(analysis.truncated),
        "dropped_tokens": int(analysis.dropped_tokens),
        "initial": {
            "layer": layer,
            "heads": _clean_heads(heads, num_heads),
            "token": None if token is None else int(token),
            "threshold": float(min(max(threshold, 0.0), 1.0)),
            "hide_special": bool(hide_special),
            "weights": weights_list,
        },
    }


def rollout_layer(analysis: Analysis, stack: str | None = None) -> dict:
    """The attention rollout of a whole self-attention stack (default the main one) as a pseudo-layer:
    float32[T, T] repeated for every head (so any head selection or weighting shows the rollout
    itself), encoded for the browser."""
    from ..analyses.rollout import attention_rollout

    st = analysis.stack(stack_of(analysis, stack))
    t = st.q_len
    if t > MAX_ROLLOUT_TOKENS:
        raise InputError(f"attention rollout is limited to {MAX_ROLLOUT_TOKENS:,} tokens (T^3 work per layer); "
                         f"this text has {t:,}")
    r = attention_rollout(analysis, st.name)[-1]
    return encode_attention(np.broadcast_to(r, (st.num_heads, t, t)))


def layer_payload(analysis: Analysis, layer: int, stack: str | None = None) -> dict:
    """One layer's attention float32[H, q, k] of ``stack`` (default the main one) encoded for the browser
    (the lazy fetch); layer ``num_layers`` is the attention rollout (:func:`rollout_layer`)."""
    st = analysis.stack(stack_of(analysis, stack))
    att = st.attentions
    if int(layer) == att.shape[0] and st.name != "cross":
        return rollout_layer(analysis, st.name)
    if not 0 <= int(layer) < att.shape[0]:
        raise IndexError(f"layer {layer} is out of range: the {st.name!r} attention has {att.shape[0]} layers")
    return encode_attention(np.asarray(att[int(layer)]))


def rows_payload(analysis: Analysis, layer: int, block: int | None = None, row: int | None = None,
                 stack: str | None = None) -> dict:
    """Rows ``block * BLOCK_ROWS ...`` of one layer of ``stack`` (default the main one), sparse (see
    :mod:`.rows`), or with ``row`` that one query row of every head in full (rows.row_payload): the lazy
    fetches of long inputs."""
    name = stack_of(analysis, stack)
    if row is not None:
        return row_payload(analysis, name, layer, row)
    return block_payload(analysis, name, layer, block)


class ExplorerView(gr.HTML):
    """exBERT's attention explorer. ``fetch_layer({key, layer, stack?, block?, row?}) -> payload`` serves lazy
    layers (the app's: exbert_hub.tabs.explorer.fetch_layer).

    Custom events: ``mask`` (data: position, key and the current view: stack, layer, heads, token,
    threshold, hide_special, weights).
    """

    def __init__(self, value: dict | None = None, *, fetch_layer: Callable | None = None, **kwargs):
        functions = [fetch_layer] if fetch_layer is not None else []
        kwargs.setdefault("head", common_head())
        kwargs.setdefault("apply_default_css", False)  # no prose margins on buttons and lists
        super().__init__(
            value=value,
            html_template=_TEMPLATE,
            css_template=asset("explorer.css"),
            js_on_load=asset("explorer.js"),
            server_functions=functions,
            **kwargs,
        )

    def api_info(self) -> dict:
        return {"type": "object", "description": "explorer payload (see exbert_hub.views.explorer.explorer_payload)"}

    def __getattr__(self, name: str):
        # gr.HTML answers any name quoted in its JS with an event trigger; the JS quotes the stack name
        # "self", and Gradio's config would read getattr(component, "self") for the constructor's `self`
        # (an event trigger holding a lock: every page load then failed to deep-copy the config)
        if name == "self":
            raise AttributeError(name)
        return super().__getattr__(name)
