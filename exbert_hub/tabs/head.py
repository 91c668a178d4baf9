"""BertViz's head view tab: lines from each token to the tokens it attends to, and its /attention endpoint."""

from __future__ import annotations

import gradio as gr

from ..inputs import as_int, as_text
from ..service import StoreRef, attention_matrix, check_layer_head, link_stack
from ..views.head_view import HeadView, head_view_payload
from ..hub.app_export import export_controls
from .base import AppContext, Tab, api_error, clamp_view


def layer_head_args(a, layer, head, stack, one_head: bool = False) -> tuple[int, int, str | None]:
    """A visitor's (layer, head, stack), checked against the analysis (head -1: the layer's mean)."""
    from ..errors import InputError

    layer, head = as_int(layer, "layer"), as_int(head, "head")
    stack = as_text(stack, "stack", optional=True, max_chars=20)
    check_layer_head(a, layer, head, stack)
    if one_head and head < 0:
        raise InputError("this endpoint needs one head (0 or more), not -1")
    return layer, head, stack


class HeadTab(Tab):
    id = "head"
    label = "Head view"

    def build(self, ctx: AppContext) -> gr.Component:
        view = HeadView(None, store=StoreRef(ctx.store), elem_id="xh-head-view")
        export_controls(ctx, self.id)
        return view

    def value(self, ctx, key, analysis, engine, view):
        stack, note = link_stack(analysis, view)
        layer, heads, _ = clamp_view(analysis, view, stack)
        value = head_view_payload(analysis, key=key, layer=layer, heads=heads, stack=stack)
        if note:
            value["stack_note"] = note
        return value

    def api(self, ctx: AppContext) -> None:
        def attention(text: str, layer: int, head: int, model: str | None = None, pair: str | None = None,
                      stack: str | None = None, request: gr.Request = None) -> list[list[float]]:
            """Attention of one head (head=-1: mean of the layer's heads) as a list of rows, rows = from
            (queries), columns = to (keys). Encoder-decoders: `stack` encoder, decoder or cross (decoder
            rows, encoder columns); `pair` is the decoder's text (default: the text itself)."""
            try:
                _, a = ctx.analysis(model, text, pair, request=request)
                layer, head, stack = layer_head_args(a, layer, head, stack)
                return attention_matrix(a, layer, head, stack).tolist()
            except Exception as err:  # noqa: BLE001
                raise api_error(err) from None

        gr.api(attention, api_name="attention")
