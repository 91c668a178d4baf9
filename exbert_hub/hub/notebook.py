"""Views in notebooks: ``exbert_hub.show(analysis, view="head", **state)``.

The returned object displays inline in Jupyter (Notebook and Lab), VS Code and Colab through
``_repr_html_``: the same component as the app, its JS, CSS and data inline in the cell's output (no
CDN, no RequireJS, no server), with element ids unique to each output, so one notebook can show many
views. It also saves itself: ``.save("view.html")`` (or any suffix :func:`exbert_hub.export` takes).
"""

from __future__ import annotations

import os
from typing import Any

from ..analysis import Analysis
from .standalone import DEFAULT_BUDGET, ViewState, check_view, new_uid, view_fragment


class ViewDisplay:
    """One view of one analysis, for a notebook. ``_repr_html_`` draws it; each call gets new ids."""

    def __init__(self, analysis: Analysis, view: str = "head", *, budget: int = DEFAULT_BUDGET, **state: Any):
        self.analysis = analysis
        self.view = check_view(view)
        self.state = ViewState.of(**state).check(analysis)
        self.budget = int(budget)

    def _repr_html_(self) -> str:
        return view_fragment(self.analysis, self.view, self.state, uid=new_uid(), budget=self.budget)

    def save(self, path: str | os.PathLike, **kwargs: Any):
        """Export this view with its state (see :func:`exbert_hub.hub.export.export`)."""
        from .export import export

        return export(self.analysis, self.view, path, budget=self.budget, **self.state.as_dict(), **kwargs)

    def __repr__(self) -> str:
        return f"<exbert-hub {self.view} view of {self.analysis.text[:40]!r}>"


def show(analysis: Analysis, view: str = "head", **state: Any) -> ViewDisplay:
    """A notebook display of ``view`` ("explorer", "head", "model", "neuron") for ``analysis``.

    state: layer, heads, token, threshold, hide_special, stack, pair_filter, theme, head (see
    :class:`exbert_hub.hub.standalone.ViewState`).

        >>> exbert_hub.show(engine.analyze("The cat sat on the mat."), "head", layer=2, heads=[0, 3])
    """
    return ViewDisplay(analysis, view, **state)
