"""The corpus search tab (exBERT): tokens of a corpus the model represents alike; its /search endpoint.

exbert_hub/search_ui.py has the tab's components, events and search functions; this module fits them
into the app.
"""

from __future__ import annotations

import gradio as gr

from .. import search_ui
from ..service import Request, get_engine
from .base import AppContext, Tab


class SearchTab(Tab):
    id = "search"
    label = "Corpus search"

    def build(self, ctx: AppContext) -> None:
        self.access = search_ui.CorpusAccess(policy=ctx.policy, operator_ref=ctx.corpus)
        search_ui.add_search_tab(key_state=ctx.key_state, get_analysis=ctx.store.get, corpus_ref=ctx.corpus,
                                 get_engine=get_engine, access=self.access,
                                 tab=self.item)
        return None  # the tab follows the shown analysis through key_state itself

    def api(self, ctx: AppContext) -> None:
        search_ui.register_search_api(
            ctx.default_model, ctx.corpus, access=self.access,
            analyze=lambda m, t, request=None: ctx.store.run(Request(m, t), ctx.engine_for(m, request))[1],
            get_engine=ctx.engine_for)
