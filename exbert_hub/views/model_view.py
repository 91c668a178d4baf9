"""BertViz-style model view: every layer x head as a thumbnail, drawn on one canvas.

Thumbnails are heatmaps (query rows x key columns) max-pooled to at most ``thumb_size`` x ``thumb_size``
cells and sent as uint8 base64 (:mod:`exbert_hub.views.transport`): 12 x 12 heads at 1,024 tokens and
``thumb_size=64`` is 590 KB of bytes (786 KB in base64) instead of BertViz's gigabytes of float JSON.
Clicking a thumbnail opens that head large with its tokens; the browser then fetches it at full
precision through the ``model_view_head`` server function. Light and dark themes.

    >>> view = ModelView()
    >>> btn.click(lambda text: view.payload(engine.analyze(text)), text_box, view)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gradio as gr
import numpy as np

from ..analysis import Analysis
from ..errors import ExbertError
from . import asset, common_head
from .head_view import (
    DEFAULT_STORE,
    AnalysisStore,
    _check_index,
    encode_float32,
    error_payload,
    line_panel_css,
    line_panel_js,
    resolve_stack,
    sequences_payload,
    stacks_payload,
)
from .transport import encode_attention

THEMES = ("auto", "light", "dark")


def _pool_axis(x: np.ndarray, axis: int, block: int) -> np.ndarray:
    """Max over consecutive blocks of ``block`` entries along ``axis`` (the last block may be shorter)."""
    n = x.shape[axis]
    full = n // block
    x = np.moveaxis(x, axis, -2) if axis != -2 and axis != x.ndim - 2 else x
    parts = []
    if full:
        head = x[..., : full * block, :]
        parts.append(head.reshape(*head.shape[:-2], full, block, head.shape[-1]).max(axis=-2))
    if full * block < n:
        parts.append(x[..., full * block :, :].max(axis=-2, keepdims=True))
    out = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=-2)
    return np.moveaxis(out, -2, axis) if axis != -2 and axis != x.ndim - 2 else out


def pool_attention(att: np.ndarray, size: int) -> np.ndarray:
    """Max-pool the last two axes (queries, keys) of ``att`` to at most ``size`` cells each.

    An axis of n > size entries is cut into blocks of ceil(n / size) consecutive tokens (the last one
    may be shorter); a cell is the largest weight of its block of queries x block of keys, so a thin
    diagonal or a single strong column stays visible in a thumbnail.
    """
    if size < 1:
        raise ValueError(f"thumb_size must be at least 1, got {size}")
    out = att
    q, k = att.shape[-2:]
    if q > size:
        out = _pool_axis(out, -2, -(-q // size))
    if k > size:
        # pool the keys through a transposed view so the reduction runs over the second-to-last axis
        out = np.swapaxes(_pool_axis(np.swapaxes(out, -1, -2), -2, -(-k // size)), -1, -2)
    return np.ascontiguousarray(out)


def _thumbs(analysis: Analysis, stack: str, layers: list[int], heads: list[int], thumb_size: int) -> tuple[dict, bool]:
    att = analysis.stack(stack).attentions
    sub = att[np.asarray(layers)][:, np.asarray(heads)] if (len(layers) != att.shape[0] or len(heads) != att.shape[1]) else att
    pooled = pool_attention(sub, thumb_size)
    return encode_attention(pooled), pooled.shape[-2:] != att.shape[-2:]


def model_view_payload(
    analysis: Analysis,
    *,
    stack: str | None = None,
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    thumb_size: int = 64,
    theme: str = "auto",
    key: str | None = None,
) -> dict:
    """The value of a :class:`ModelView` for ``analysis``: JSON-safe, thumbnails as uint8 base64.

    Arguments (mirrored by the payload's keys):
        stack: "self"/"encoder", "decoder" or "cross" (default the encoder or only stack). layers,
        heads: which rows and columns of the grid (BertViz's include_layers / include_heads; default
        all). thumb_size: thumbnails are max-pooled to at most this many query and key cells. theme:
        "auto" (follow the page), "light" or "dark". key: the :class:`AnalysisStore` key that lets a
        click fetch the head at full precision (None: the enlarged head uses the thumbnail bytes).

    Returns ``{"view": "model", "key", "model", "sequences", "stacks", "stack", "layers": [l...],
    "heads": [h...], "thumb_size", "theme", "pooled": bool, "thumbs": payload of
    float[len(layers), len(heads), tq, tk] from encode_attention}`` with tq, tk <= thumb_size.
    """
    stack = resolve_stack(analysis, stack)
    st = analysis.stack(stack)
    layers = list(range(st.num_layers)) if layers is None else [_check_index(x, st.num_layers, "layer") for x in layers]
    heads = list(range(st.num_heads)) if heads is None else [_check_index(x, st.num_heads, "head") for x in heads]
    if not layers or not heads:
        raise ValueError("the model view needs at least one layer and one head")
    if theme not in THEMES:
        raise ValueError(f"theme must be one of {', '.join(THEMES)}, got {theme!r}")
    thumbs, pooled = _thumbs(analysis, stack, layers, heads, int(thumb_size))
    return {
        "view": "model",
        "key": key,
        "model": analysis.model_name,
        "sequences": sequences_payload(analysis),
        "stacks": stacks_payload(analysis),
        "stack": stack,
        "layers": layers,
        "heads": heads,
        "thumb_size": int(thumb_size),
        "theme": theme,
        "pooled": bool(pooled),
        "thumbs": thumbs,
    }


def model_view_head_payload(analysis: Analysis, stack: str, layer: int, head: int) -> dict:
    """One head at full precision: ``{"stack", "layer", "head", "attention": float32 payload [q, k]}``."""
    st = analysis.stack(stack)
    layer = _check_index(layer, st.num_layers, "layer")
    head = _check_index(head, st.num_heads, "head")
    return {"stack": stack, "layer": layer, "head": head, "attention": encode_float32(st.attentions[layer, head])}


class ModelView(gr.HTML):
    """Model view as a Gradio component. Its value is :func:`model_view_payload`'s dict (or None: empty).

    Server functions: ``model_view_head({"key", "stack", "layer", "head"})`` (a head at full precision)
    and ``model_view_thumbs({"key", "stack", "thumb_size"})`` (the grid of another stack).
    """

    def __init__(self, value: dict | None = None, *, store: AnalysisStore | Any = None, height: int = 720, **kwargs: Any):
        self.store = store if store is not None else DEFAULT_STORE  # an empty store is falsy (len 0)
        store_ref = self.store

        def model_view_head(request: dict) -> dict:
            """Server function: one head at full precision (see model_view_head_payload)."""
            try:
                return model_view_head_payload(store_ref.get(request.get("key")), str(request.get("stack")),
                                               int(request.get("layer")), int(request.get("head")))
            except (KeyError, ValueError, TypeError, ExbertError) as err:
                return error_payload(err)

        def model_view_thumbs(request: dict) -> dict:
            """Server function: the whole grid of another stack (every layer and head)."""
            try:
                a = store_ref.get(request.get("key"))
                return model_view_payload(a, stack=str(request.get("stack")), key=request.get("key"),
                                          thumb_size=int(request.get("thumb_size") or 64),
                                          theme=str(request.get("theme") or "auto"))
            except (KeyError, ValueError, TypeError, ExbertError) as err:
                return error_payload(err)

        kwargs.setdefault("head", common_head())
        kwargs.setdefault("apply_default_css", False)
        css = line_panel_css() + asset("model_view.css").replace("--xh-height: 720px", f"--xh-height: {int(height)}px")
        super().__init__(
            value,
            html_template='<div class="xh-mv" data-view="model"></div>',
            css_template=css,
            js_on_load=line_panel_js() + asset("model_view.js"),
            server_functions=[model_view_head, model_view_thumbs],
            **kwargs,
        )

    def payload(self, analysis: Analysis, **kwargs: Any) -> dict:
        """Store ``analysis`` and return :func:`model_view_payload` for it with the store key."""
        return model_view_payload(analysis, key=self.store.put(analysis), **kwargs)
