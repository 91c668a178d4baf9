"""The app's export button: one per view tab, built by :func:`export_controls` inside the tab.

The file keeps what the visitor sees: the views keep their selection (layer, heads, token, threshold,
hidden specials) in the page address, which the button's JS sends along (the server-side view state is
only the link's or the last mask's).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from ..errors import ExbertError, InputError
from .export import FORMATS, export

log = logging.getLogger(__name__)

FORMAT_LABELS = {".html": "HTML page (interactive, offline)", ".svg": "SVG (vector)", ".png": "PNG (2x)",
                 ".npz": "numbers (.npz)", ".json": "numbers (.json)"}


def state_from_query(query: str, analysis) -> dict[str, Any]:
    """The view state in a page address (``?layer=1&heads=0,3&token=2&threshold=0.5&hide=1``), checked
    against ``analysis``: values out of range or not numbers are left out (the export's defaults)."""
    q = {k: v[-1] for k, v in parse_qs(query.lstrip("?")).items()}
    st = analysis.main_stack
    out: dict[str, Any] = {}

    def index(key, n):
        try:
            x = int(q[key])
        except (KeyError, ValueError):
            return None
        return x if 0 <= x < n else None

    if (layer := index("layer", st.num_layers)) is not None:
        out["layer"] = layer
    if (token := index("token", int(st.attentions.shape[2]))) is not None:
        out["token"] = token
    heads = q.get("heads")
    if heads == "none":
        out["heads"] = []
    elif heads and heads != "all":
        try:
            hs = sorted({int(h) for h in heads.split(",")})
        except ValueError:
            hs = []
        if hs and all(0 <= h < st.num_heads for h in hs):
            out["heads"] = hs
    try:
        t = float(q["threshold"])
        if 0.0 <= t <= 1.0:
            out["threshold"] = t
    except (KeyError, ValueError):
        pass
    if q.get("hide") == "1":
        out["hide_special"] = True
    return out


def export_for(store, key: str, view: str, fmt: str, query: str = "", folder: str | Path | None = None) -> Path:
    """Export the analysis ``key`` of ``store`` as ``view`` in format ``fmt`` (".html"...) with the state of
    the page address ``query``; returns the file (in a new temporary folder unless ``folder`` is given)."""
    if fmt not in FORMATS:
        raise InputError(f"export format {fmt!r}: use one of {', '.join(FORMATS)}")
    try:
        analysis = store.get(key)
    except KeyError:
        raise InputError("nothing to export yet: analyze a text first (or run it again: it is no longer held)") from None
    folder = Path(folder or tempfile.mkdtemp(prefix="exbert-export-"))
    return export(analysis, view, folder / f"exbert-hub-{view}{fmt}", **state_from_query(query, analysis))


def export_controls(ctx, view: str):
    """A format menu, an Export button and the file to download, for ``view``'s tab (call inside the tab's
    ``build``). Returns the button."""
    import gradio as gr

    from ..errors import user_message

    # one compact line under the view (equal heights stretched the button to the file box's height)
    with gr.Row(equal_height=False, elem_classes=["xh-export-row"]):
        fmt = gr.Dropdown(choices=[(label, ext) for ext, label in FORMAT_LABELS.items()], value=".html",
                          label="Export this view as", scale=3, min_width=200, elem_id=f"xh-export-format-{view}")
        with gr.Column(scale=1, min_width=100):
            btn = gr.Button("Export", size="md", elem_id=f"xh-export-{view}")
        query = gr.Textbox(visible=False)
        out = gr.File(label="Exported file", interactive=False, scale=4, height=80, elem_id=f"xh-export-file-{view}")

    def run(fmt_value, key, search):
        # errors go to the app's banner, one line, like every other message (no toasts)
        try:
            return str(export_for(ctx.store, key, view, fmt_value, search or "")), ""
        except Exception as err:  # noqa: BLE001 - one line for the visitor, never a trace
            log.warning("export of the %s view failed: %s", view, err, exc_info=not isinstance(err, ExbertError))
            return None, ctx.banner(user_message(err))

    btn.click(run, [fmt, ctx.key_state, query], [out, ctx.message], js="(f, k, q) => [f, k, window.location.search]",
              api_visibility="private")
    return btn
