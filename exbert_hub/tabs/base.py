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

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import gradio as gr

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


class Tab:
    """One tab of the app. Subclasses set ``id`` and ``label`` and override what they need."""

    id: str = ""
    label: str = ""

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
