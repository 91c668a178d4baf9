"""Corpus-search results as a Gradio component: matched sentences and a metadata colour matrix.

The value is the dict of :func:`exbert_hub.search_ui.view_payload` (the results of
:func:`exbert_hub.search_ui.search_results` plus ``view: {left, right, field}``). The browser
(search_view.js) draws, per hit, one row: rank and score, the colour matrix of the tokens at offsets
-left..+right around the match (coloured by POS, DEP, entity or tag, chosen in the view's own
dropdown, with a legend), and the sentence cropped to that window with the match highlighted and the
match's attention to every token as an orange underline. Hovering a word or a cell shows its POS,
tag, DEP (and head word), entity, lemma and the match's attention to it. Token text is only ever set
with textContent.

Custom event: ``field`` (data: ``{"field": "pos"|"dep"|"ent"|"tag"}``) when the colouring changes.
The context window can be changed without a round trip: dispatch ``new CustomEvent('xs-window',
{detail: {left, right}})`` on the ``.xs-root`` element.
"""

from __future__ import annotations

import gradio as gr

from . import asset

_TEMPLATE = """<div class="xs-root" data-ready="0">
  <div class="xs-empty">Choose a token and press Search to find similar tokens in the corpus.</div>
</div>"""


class SearchView(gr.HTML):
    """Corpus-search results (see the module docstring). Custom event: ``field``."""

    def __init__(self, value: dict | None = None, **kwargs):
        super().__init__(
            value=value,
            html_template=_TEMPLATE,
            css_template=asset("search_view.css"),
            js_on_load=asset("search_view.js"),
            **kwargs,
        )

    def api_info(self) -> dict:
        return {"type": "object", "description": "corpus search results (see exbert_hub.search_ui.view_payload)"}
