"""BertViz's neuron view tab: how one query's attention is computed from queries and keys, term by term,
and its /query_key and /neuron endpoints."""

from __future__ import annotations

import gradio as gr
import numpy as np

from ..inputs import as_int
from ..service import StoreRef, link_stack
from ..views.neuron_view import NeuronView, neuron_view_payload
from ..hub.app_export import export_controls
from .base import AppContext, Tab, api_error, clamp_view
from .head import layer_head_args


class NeuronTab(Tab):
    id = "neuron"
    label = "Neuron view"

    def build(self, ctx: AppContext) -> gr.Component:
        view = NeuronView(None, store=StoreRef(ctx.store), elem_id="xh-neuron-view")
        export_controls(ctx, self.id)
        return view

    def value(self, ctx, key, analysis, engine, view):
        stack, _ = link_stack(analysis, view)  # a stack the analysis lacks: the main one (the head view says why)
        layer, heads, token = clamp_view(analysis, view, stack)
        return neuron_view_payload(analysis, key=key, layer=layer, head=heads[0] if heads else 0, token=token,
                                   stack=stack)

    def api(self, ctx: AppContext) -> None:
        def query_key(text: str, layer: int, head: int, model: str | None = None, pair: str | None = None,
                      stack: str | None = None, request: gr.Request = None) -> dict:
            """Query and key vectors of one head (float lists [T][head_dim]), their scale and the tokens."""
            try:
                _, a = ctx.analysis(model, text, pair, request=request)
                layer, head, stack = layer_head_args(a, layer, head, stack, one_head=True)
                s = a.stack(stack)
                q, k = s.query_key(layer, head)
                return {"tokens": list(a.tokens), "queries": q.tolist(), "keys": k.tolist(),
                        "scale": float(s.scales[layer]), "layer": layer, "head": head}
            except Exception as err:  # noqa: BLE001
                raise api_error(err) from None

        def neuron(text: str, layer: int, head: int, token: int, model: str | None = None, pair: str | None = None,
                   stack: str | None = None, request: gr.Request = None) -> dict:
            """Every term of one query token's attention in one head: query, keys, products, dot, scaled, softmax."""
            try:
                _, a = ctx.analysis(model, text, pair, request=request)
                layer, head, stack = layer_head_args(a, layer, head, stack, one_head=True)
                terms = a.score_terms(layer, head, as_int(token, "token"), stack)
                out = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in terms.items()}
                out["scale"] = float(out["scale"])
                out["tokens"] = list(a.tokens)
                return out
            except Exception as err:  # noqa: BLE001
                raise api_error(err) from None

        gr.api(query_key, api_name="query_key")
        gr.api(neuron, api_name="neuron")
