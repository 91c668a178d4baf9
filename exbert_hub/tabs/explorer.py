"""The attention explorer tab (exBERT): lines between tokens, masking, and its /analyze and /mask endpoints."""

from __future__ import annotations

import logging

import gradio as gr

from ..analysis import CAUSAL_LM, kind_phrase
from ..errors import ExbertError, InputError, user_message
from ..inputs import as_int
from ..service import link_stack, stack_of, summarize
from ..views.explorer import DEFAULT_THRESHOLD, ExplorerView, explorer_payload, layer_payload, rows_payload
from ..hub.app_export import export_controls
from .base import AppContext, Tab, api_error, link_float, link_int

log = logging.getLogger(__name__)


def fetch_layer(store, data) -> dict:
    """What the explorer's server function answers: one layer of attention (uint8 base64) for
    ``{key, layer, stack?}`` (stack: default the main one); with ``block`` a sparse block of rows, with
    ``row`` one query row in full (long inputs, views/rows.py). Errors come back as ``{"error": line}``."""
    try:
        key, layer = (data[0], data[1]) if isinstance(data, (list, tuple)) else (data["key"], data["layer"])
        block = data.get("block") if isinstance(data, dict) else None
        row = data.get("row") if isinstance(data, dict) else None
        a = store.get(str(key))
        stack = stack_of(a, data.get("stack") if isinstance(data, dict) else None)
        if block is not None or row is not None:  # long inputs: a sparse block of rows, or one row
            return {"key": key, "layer": int(layer), "stack": stack,
                    "rows": rows_payload(a, int(layer), None if block is None else int(block),
                                         None if row is None else int(row), stack=stack)}
        return {"key": key, "layer": int(layer), "stack": stack, "attention": layer_payload(a, int(layer), stack=stack)}
    except Exception as err:  # noqa: BLE001 - reported in the view, never as a trace
        log.warning("explorer layer fetch failed: %s", err, exc_info=not isinstance(err, ExbertError))
        return {"error": user_message(err)}


class ExplorerTab(Tab):
    id = "explorer"
    label = "Attention explorer"

    def build(self, ctx: AppContext) -> gr.Component:
        store = ctx.store

        def explorer_layer(data, request: gr.Request = None) -> dict:
            """Server function of the view (explorer.js calls it by this name): see fetch_layer."""
            return fetch_layer(store, data)

        self.view = ExplorerView(None, fetch_layer=explorer_layer, elem_id="xh-explorer")
        export_controls(ctx, self.id)
        return self.view

    def value(self, ctx, key, analysis, engine, view):
        stack, note = link_stack(analysis, view)
        value = explorer_payload(
            analysis,
            key=key,
            can_mask=engine.can_mask,
            layer=link_int(view.get("layer"), 0),
            heads=view.get("heads"),
            token=view.get("token"),
            threshold=link_float(view.get("threshold"), DEFAULT_THRESHOLD),
            hide_special=bool(view.get("hide_special")),
            weights=view.get("weights"),
            stack=stack,
        )
        if view.get("keep_view"):
            value["initial"]["keep_view"] = True
        if note:
            value["stack_note"] = note
        return value

    def wire(self, ctx: AppContext) -> None:
        # double-click a token: mask it (masked LMs) and run again
        def on_mask(key, evt: gr.EventData, request: gr.Request):
            data = evt._data or {}
            try:
                req = ctx.store.request(str(data.get("key") or key))
                eng = ctx.engine_for(req.model, None)  # already loaded for this analysis
                if not eng.can_mask:
                    raise InputError(
                        f"masking needs a masked language model; {eng.name} is {kind_phrase(eng.kind)}"
                        + (" (it predicts the next token instead: select a token to see them)"
                           if eng.kind == CAUSAL_LM else ""))
                pos = link_int(data.get("position"))
                if pos is None:
                    raise InputError("the token to mask was not given as a position")
                mask = set(req.mask)
                mask.symmetric_difference_update({pos})  # double-click a masked token to unmask it
            except Exception as err:  # noqa: BLE001
                return {ctx.message: ctx.banner(user_message(err))}
            view = {k: data.get(k) for k in ("layer", "heads", "token", "weights", "stack")}
            view["threshold"] = link_float(data.get("threshold"), DEFAULT_THRESHOLD)
            view["hide_special"] = bool(data.get("hide_special"))
            view["layer"] = link_int(view["layer"], 0)
            view["token"] = pos
            return ctx.run(req.model, req.text, req.pair, sorted(mask), view, self.id, request, shown_key=key)

        self.view.mask(on_mask, inputs=[ctx.key_state], outputs=ctx.outputs, api_visibility="private")

    def api(self, ctx: AppContext) -> None:
        def analyze(text: str, pair: str | None = None, model: str | None = None, request: gr.Request = None) -> dict:
            """Analyze a text (and optional sentence B for encoders; for encoder-decoders `pair` is the
            decoder's text, default the text itself): tokens, layers, heads, kind, top-5 predictions, the
            attention stacks and the decoder's tokens."""
            try:
                return summarize(*ctx.analysis(model, text, pair, request=request))
            except Exception as err:  # noqa: BLE001
                raise api_error(err) from None

        def mask(text: str, position: int, model: str | None = None, pair: str | None = None,
                 request: gr.Request = None) -> dict:
            """Replace token `position` by the mask token, run again: the /analyze result plus `mask_predictions`."""
            try:
                position = as_int(position, "position", lo=0)
                eng, a = ctx.analysis(model, text, pair, (position,), request=request)
                out = summarize(eng, a)
                out["mask_predictions"] = (out["predictions"] or [[]])[position] if out["predictions"] else []
                return out
            except Exception as err:  # noqa: BLE001
                raise api_error(err) from None

        gr.api(analyze, api_name="analyze")
        gr.api(mask, api_name="mask")
