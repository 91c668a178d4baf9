"""BertViz's model view tab: a thumbnail of every head of every layer."""

from __future__ import annotations

import gradio as gr

from ..service import StoreRef, link_stack
from ..views.model_view import ModelView, model_view_payload
from ..hub.app_export import export_controls
from .base import AppContext, Tab


class ModelTab(Tab):
    id = "model"
    label = "Model view"

    def build(self, ctx: AppContext) -> gr.Component:
        view = ModelView(None, store=StoreRef(ctx.store), elem_id="xh-model-view")
        export_controls(ctx, self.id)
        return view

    def value(self, ctx, key, analysis, engine, view):
        stack, _ = link_stack(analysis, view)  # a stack the analysis lacks: the main one (the head view says why)
        return model_view_payload(analysis, key=key, stack=stack)
