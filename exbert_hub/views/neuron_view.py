"""BertViz-style neuron view: how one query token's attention in one head is computed.

For a layer, head and query token it shows, per key token: the key vector k, the elementwise product
q x k, the dot product q . k, times the scale, plus the model's bias (T5 relative positions, ALiBi...) and
mask (causal / padding: masked keys greyed), and the softmax. Blue is positive, orange negative. The
terms come from :meth:`exbert_hub.Analysis.score_terms`, so rotary models (queries and keys after RoPE)
and grouped-query attention (a key head shared by several query heads, named in the view) work.

The browser fetches the terms of each new selection lazily through the ``neuron_view_terms`` server
function, as little-endian float32 in base64 (full precision, never float JSON).
"""

from __future__ import annotations

from typing import Any

import gradio as gr
import numpy as np

from ..analysis import CAUSAL_LM, Analysis
from ..errors import ExbertError
from . import asset, common_head, theme_css
from .head_view import (
    DEFAULT_STORE,
    AnalysisStore,
    _check_index,
    controls_css,
    encode_float32,
    error_payload,
    resolve_stack,
    sequences_payload,
    stack_sequences,
)


def is_causal(analysis: Analysis, stack: str | None = None) -> bool:
    """Whether ``stack`` (default: the main one) is causal self-attention, from the mask the model used
    (``mask_specs``): a Llama sequence classifier is causal although it is no causal LM. Stacks whose
    weights the model materialised carry no description: decoders, and causal LMs' self-attention."""
    st = analysis.stack(stack)
    if st.mask_specs:
        return all(m.kind == "causal" for m in st.mask_specs)
    return st.name == "decoder" or (st.name == "self" and analysis.kind == CAUSAL_LM)


def _stack_meta(analysis: Analysis) -> list[dict]:
    out = []
    for name, st in analysis.stacks.items():
        q_seq, k_seq = stack_sequences(name)
        meta = {"name": name, "layers": st.num_layers, "heads": st.num_heads, "query_seq": q_seq, "key_seq": k_seq,
                "has_query_key": st.has_query_key, "kv_heads": None, "head_dim": None,
                "causal": is_causal(analysis, name)}
        if st.has_query_key:
            meta["kv_heads"] = [int(k.shape[0]) for k in st.keys]
            meta["head_dim"] = int(st.queries[0].shape[-1])
        out.append(meta)
    return out


def neuron_terms_payload(analysis: Analysis, stack: str, layer: int, head: int, token: int) -> dict:
    """The terms of one (stack, layer, head, query token), arrays as float32 payloads.

    ``{"stack", "layer", "head", "token", "kv_head", "kv_heads", "group", "scale", "query": [d],
    "keys": [k, d], "dot": [k], "scaled": [k], "bias": [k] | None, "mask": [k] | None, "logits": [k],
    "softmax": [k], "model": [k]}`` (``model`` is the attention the model itself returned, to compare
    with the recomputed softmax). q x k products are computed in the browser from query and keys
    (float32, the same products as ``score_terms``).
    """
    st = analysis.stack(stack)
    layer = _check_index(layer, st.num_layers, "layer")
    head = _check_index(head, st.num_heads, "head")
    t = analysis.score_terms(layer, head, int(token), stack=stack)
    token = int(token)
    kv_heads = int(st.keys[layer].shape[0])
    group = st.num_heads // kv_heads
    out: dict[str, Any] = {
        "stack": stack, "layer": layer, "head": head, "token": token,
        "kv_head": head // group, "kv_heads": kv_heads, "group": group, "scale": float(t["scale"]),
    }
    for name in ("query", "keys", "dot", "scaled", "bias", "mask", "logits", "softmax"):
        out[name] = None if t[name] is None else encode_float32(t[name])
    out["model"] = encode_float32(st.attentions[layer, head, token])
    return out


def default_token(analysis: Analysis, stack: str) -> int:
    """The query token a view opens on: the first non-special one; for causal attention the LAST
    non-special one, which sees every key (the first sees only itself). 0 if all are special."""
    seq = analysis.decoder_input if stack_sequences(stack)[0] == "decoder" else analysis.input
    idx = np.flatnonzero(~np.asarray(seq.special, dtype=bool))
    if not idx.size:
        return 0
    return int(idx[-1] if is_causal(analysis, stack) else idx[0])


def neuron_view_payload(
    analysis: Analysis,
    *,
    layer: int = 0,
    head: int = 0,
    token: int | None = None,
    stack: str | None = None,
    key: str | None = None,
) -> dict:
    """The value of a :class:`NeuronView` for ``analysis`` with the terms of the first selection.

    Arguments (mirrored by the payload's keys): layer, head, token (query position; default the first
    non-special token, the last one for causal attention: see :func:`default_token`), stack
    ("self"/"encoder", "decoder", "cross"; default the encoder or only stack), key (the
    :class:`AnalysisStore` key the browser needs to fetch other selections).

    Returns ``{"view": "neuron", "key", "model", "sequences", "stacks": [{name, layers, heads,
    query_seq, key_seq, has_query_key, kv_heads: [per layer] | None, head_dim, causal}], "stack",
    "layer", "head", "token", "terms": neuron_terms_payload(...) | {"error": ...}}``.
    """
    stack = resolve_stack(analysis, stack)
    st = analysis.stack(stack)
    layer = _check_index(layer, st.num_layers, "layer")
    head = _check_index(head, st.num_heads, "head")
    token = default_token(analysis, stack) if token is None else int(token)
    try:
        terms = neuron_terms_payload(analysis, stack, layer, head, token)
    except ExbertError as err:
        terms = error_payload(err)
    return {
        "view": "neuron",
        "key": key,
        "model": analysis.model_name,
        "sequences": sequences_payload(analysis),
        "stacks": _stack_meta(analysis),
        "stack": stack,
        "layer": layer,
        "head": head,
        "token": token,
        "terms": terms,
    }


class NeuronView(gr.HTML):
    """Neuron view as a Gradio component. Its value is :func:`neuron_view_payload`'s dict (or None).

    Server function: ``neuron_view_terms({"key", "stack", "layer", "head", "token"})``.
    """

    def __init__(self, value: dict | None = None, *, store: AnalysisStore | Any = None, height: int = 640, **kwargs: Any):
        self.store = store if store is not None else DEFAULT_STORE  # an empty store is falsy (len 0)
        store_ref = self.store

        def neuron_view_terms(request: dict) -> dict:
            """Server function: the terms of one selection (see neuron_terms_payload)."""
            try:
                return neuron_terms_payload(store_ref.get(request.get("key")), str(request.get("stack")),
                                            int(request.get("layer")), int(request.get("head")), int(request.get("token")))
            except (KeyError, ValueError, TypeError, ExbertError) as err:
                return error_payload(err)

        kwargs.setdefault("head", common_head())
        kwargs.setdefault("apply_default_css", False)
        super().__init__(
            value,
            html_template='<div class="xh-nv" data-view="neuron"></div>',
            css_template=theme_css() + asset("neuron_view.css").replace("--xh-height: 640px", f"--xh-height: {int(height)}px")
            + controls_css(),
            js_on_load=asset("neuron_view.js"),
            server_functions=[neuron_view_terms],
            **kwargs,
        )

    def payload(self, analysis: Analysis, **kwargs: Any) -> dict:
        """Store ``analysis`` and return :func:`neuron_view_payload` for it with the store key."""
        return neuron_view_payload(analysis, key=self.store.put(analysis), **kwargs)
