"""What a tab of the app is: one module, one small protocol; ``app.py`` only composes tabs.

A tab is a subclass of :class:`Tab` in its own module ``exbert_hub/tabs/<id>.py``, listed in
``exbert_hub/tabs/__init__.py``. The app builds, for every tab in that list::

    with gr.Tab(tab.label, id=tab.id):
        component = tab.build(ctx)        # its components and its own events
    ...
    tab.wire(ctx)                         # events that need the whole app (after every tab is built)
    tab.api(ctx)                          # its gr.api endpoints

and when an analysis is shown while the tab is visible (or the tab is selected later), it sets
``component``'s value to ``tab.value(ctx, key, analysis, engine, view)``. Only the visible tab's value
is built (payloads are MBs at 1k tokens).

``view`` is the view state: ``layer`` (int), ``heads`` (list[int] | None), ``token`` (int | None),
``threshold`` (float), ``hide_special`` (bool), and ``query``: the page's deep-link parameters as
strings, where a tab finds its own (e.g. the Layers tab's ``examples``). Errors raised by ``value`` are
shown in the banner as one line (exbert_hub.errors.user_message); a tab does not catch them itself.
"""

from __future__ import annotations

import html
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import gradio as gr

from ..errors import ExbertError, user_message
from ..inputs import as_text

if TYPE_CHECKING:  # pragma: no cover - for annotations only
    from ..analysis import Analysis
    from ..engine import Engine
    from ..policy import Policy


@dataclass
class AppContext:
    """The shared parts of one app: what tabs may use, built once by ``app.build_app``."""

    default_model: str
    policy: "Policy"
    store: Any  # app.AnalysisStore: get(key) -> Analysis, request(key) -> Request, run(req, engine)
    corpus: Any  # the operator's corpus (name, folder or Corpus) or None
    engine_for: Callable[..., "Engine"]  # engine_for(name, request=None): a visitor's model, policy-checked
    # shared components (set by the app before any tab is built)
    model_box: gr.Textbox | None = None
    text_box: gr.Textbox | None = None
    pair_box: gr.Textbox | None = None
    message: gr.HTML | None = None  # the banner: set it to ctx.banner(text)
    key_state: gr.State | None = None  # the AnalysisStore key of the analysis shown
    view_state: gr.State | None = None
    # run(model, text, pair, mask, view, tab, request, shown_key) -> {component: value}: analyse and
    # show (what Analyze does); outputs are ctx.outputs
    run: Callable[..., dict] | None = None
    outputs: list = field(default_factory=list)
    banner: Callable[..., str] | None = None  # banner(text, level="warning") -> the banner's HTML

    def analysis(self, model, text, pair=None, mask=(), request=None) -> tuple["Engine", "Analysis"]:
        """(engine, analysis) for an API call: every argument checked, the model through the policy."""
        from ..service import Request

        name = (as_text(model, "model", optional=True) or self.default_model).strip()
        text = as_text(text, "text")
        pair = as_text(pair, "pair", optional=True)
        eng = self.engine_for(name, request)
        _, a = self.store.run(Request(name, text, pair, tuple(mask)), eng)
        return eng, a


class Tab:
    """One tab of the app. Subclasses set ``id`` and ``label`` and override what they need."""

    id: str = ""
    label: str = ""
    item: gr.Tab | None = None  # its gr.Tab, set by the app before build()

    def build(self, ctx: AppContext) -> gr.Component | None:
        """Create the tab's components (called inside its ``gr.Tab``) and its own events.

        Returns the component that shows an analysis (its value comes from :meth:`value`), or None
        for a tab that does not follow the shown analysis.
        """
        raise NotImplementedError

    def value(self, ctx: AppContext, key: str, analysis: "Analysis", engine: "Engine", view: dict) -> Any:
        """The shown component's value for analysis ``key``; None leaves it as it is."""
        return None

    def wire(self, ctx: AppContext) -> None:
        """Events that need the whole app (``ctx.run``, ``ctx.outputs``): called after every tab is built."""

    def api(self, ctx: AppContext) -> None:
        """Register the tab's HTTP endpoints (``gr.api``), documented in the README."""


log = logging.getLogger(__name__)


def api_error(err: Exception) -> gr.Error:
    """What an endpoint raises for ``err``: one line for the caller, the trace only in the server log."""
    log.warning("API call failed: %s", err, exc_info=not isinstance(err, ExbertError))
    return gr.Error(user_message(err), print_exception=False)


def banner(text: str | None, level: str = "warning") -> str:
    """The banner's HTML: the message as escaped text in one line (never Markdown, never markup)."""
    if not text:
        return ""
    icon = {"warning": "\u26a0", "info": "\u2139"}.get(level, "")
    line = " ".join(str(text).split())
    return (f'<div class="xh-banner xh-banner-{level}" role="status" title="{html.escape(line, quote=True)}">'
            f'<span aria-hidden="true">{icon}</span> {html.escape(line)}</div>')


# Lenient readers of deep-link parameters: a bad value in a link falls back to the default.
def link_int(value, default=None):
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def link_float(value, default=None):
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def link_int_list(value: str | None) -> list[int] | None:
    """"1,3" -> [1, 3]; "" or "all" -> None (all); "none" -> []."""
    if value is None or value.strip() in ("", "all"):
        return None
    if value.strip() == "none":
        return []
    return [x for x in (link_int(v) for v in value.split(",")) if x is not None]


def clamp_view(a: "Analysis", view: dict, stack: str | None = None) -> tuple[int, list[int] | None, int | None]:
    """(layer, heads, token) of the view state, kept inside the shape of ``stack`` (default the main one):
    its layers and heads, and its query tokens (the decoder's for "decoder" and "cross")."""
    st = a.main_stack if stack is None else a.stack(stack)
    layer = min(max(link_int(view.get("layer"), 0), 0), st.num_layers - 1)
    heads = view.get("heads")
    heads = None if heads is None else [h for h in heads if 0 <= h < st.num_heads] or None
    token = view.get("token")
    token = token if token is not None and 0 <= token < st.q_len else None
    return layer, heads, token
