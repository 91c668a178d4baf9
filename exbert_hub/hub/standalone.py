"""A view of the app outside the app: the same component (its own JS, CSS and payload) in a page of its
own or a notebook cell, with no server and no network.

A view's JavaScript is written for Gradio's ``gr.HTML`` (``js_on_load`` runs with ``element, trigger,
props, server, upload, watch``). :func:`view_fragment` runs that same code through ``export.js``
(``window.exbertHubExport.mount``): the payload inline, the lazy fetches answered from responses computed
here ahead of time (a "local server", bounded by ``budget`` characters), and the page address left alone
(the views' deep-link selection is the exported state instead). Everything is inline: no CDN, no
RequireJS, no request. Element ids are unique per fragment, so several views share one page.
"""

from __future__ import annotations

import functools
import html
import json
import math
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..analysis import Analysis
from ..errors import InputError
from ..views import asset

from . import VIEWS

# Characters of precomputed answers a fragment may carry beyond its payload (layers of other stacks,
# heads at full precision, neuron terms of other selections); what does not fit is answered with a note.
DEFAULT_BUDGET = 16_000_000
EXPORT_KEY = "export"  # the store key of an exported payload: the local server answers it

# request fields of each server function, in the order export.js joins them into a table key
SERVER_FIELDS = {
    "head_view_layer": ("stack", "layer"),
    "model_view_head": ("stack", "layer", "head"),
    "model_view_thumbs": ("stack",),
    "neuron_view_terms": ("stack", "layer", "head", "token"),
}


@dataclass(frozen=True)
class ViewState:
    """What an export keeps of a view: the selection the app writes into its address.

    layer: the layer shown. heads: the selected heads (None: all). token: the selected (explorer:
    frozen; head view: pinned; neuron view: query) token, or None. threshold: the explorer's
    threshold (0-1). hide_special: the explorer hides special tokens. stack: "self"/"encoder",
    "decoder" or "cross" (None: the encoder or only one). pair_filter: the head view's sentence filter.
    theme: the model view's "auto", "light" or "dark". head: the neuron view's head (default: the first
    of ``heads``, else 0).
    """

    layer: int = 0
    heads: tuple[int, ...] | None = None
    token: int | None = None
    threshold: float = 0.7
    hide_special: bool = False
    stack: str | None = None
    pair_filter: str = "all"
    theme: str = "auto"
    head: int | None = None

    @classmethod
    def of(cls, **state: Any) -> "ViewState":
        """From keyword arguments (``heads`` as a list or "0,3"); an unknown key is an InputError."""
        unknown = sorted(set(state) - set(cls.__dataclass_fields__))
        if unknown:
            raise InputError(f"unknown view state {', '.join(unknown)}: use "
                             f"{', '.join(cls.__dataclass_fields__)}")
        heads = state.get("heads")
        if isinstance(heads, str):
            heads = [int(x) for x in heads.split(",") if x.strip()]
        try:
            return cls(
                layer=int(state.get("layer", 0) or 0),
                heads=None if heads is None else tuple(sorted({int(h) for h in heads})),
                token=None if state.get("token") is None else int(state["token"]),
                threshold=float(state.get("threshold", 0.7)),
                hide_special=bool(state.get("hide_special", False)),
                stack=state.get("stack"),
                pair_filter=str(state.get("pair_filter", "all")),
                theme=str(state.get("theme", "auto")),
                head=None if state.get("head") is None else int(state["head"]),
            )
        except (TypeError, ValueError) as err:
            raise InputError(f"view state: {err}; layer, heads, token and head are whole numbers") from None

    def check(self, analysis: Analysis) -> "ViewState":
        """Raise InputError (one line) when the state names a layer, head or token the analysis lacks."""
        st = analysis.stack(self.stack) if self.stack else analysis.main_stack
        if not 0 <= self.layer < st.num_layers:
            raise InputError(f"layer {self.layer} is out of range: the model has {st.num_layers} layers (0..{st.num_layers - 1})")
        for h in (self.heads or ()) + (() if self.head is None else (self.head,)):
            if not 0 <= h < st.num_heads:
                raise InputError(f"head {h} is out of range: each layer has {st.num_heads} heads (0..{st.num_heads - 1})")
        n = int(st.attentions.shape[2])
        if self.token is not None and not 0 <= self.token < n:
            raise InputError(f"token {self.token} is out of range: the text has {n} tokens (0..{n - 1})")
        if not 0.0 <= self.threshold <= 1.0:
            raise InputError(f"threshold {self.threshold} is out of range: give a number from 0 to 1")
        return self

    @property
    def neuron_head(self) -> int:
        return self.head if self.head is not None else (self.heads[0] if self.heads else 0)

    def as_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["heads"] = None if self.heads is None else list(self.heads)
        return d


def check_view(view: str) -> str:
    if view not in VIEWS:
        raise InputError(f"unknown view {view!r}: use one of {', '.join(VIEWS)}")
    return view


@functools.lru_cache(maxsize=None)
def component_code(view: str) -> tuple[str, str, str]:
    """(html_template, css, js) of a view: read from the app's own component, so both stay one code."""
    from ..views.explorer import ExplorerView
    from ..views.head_view import HeadView
    from ..views.model_view import ModelView
    from ..views.neuron_view import NeuronView

    cls = {"explorer": ExplorerView, "head": HeadView, "model": ModelView, "neuron": NeuronView}[check_view(view)]
    # Inside an event handler (the app's export button) Gradio turns a new component into a bare
    # update without its templates: build it as outside one.
    from gradio.context import LocalContext

    token = LocalContext.in_event_listener.set(False)
    try:
        comp = cls()
    finally:
        LocalContext.in_event_listener.reset(token)
    return comp.html_template, comp.css_template, comp.js_on_load


# --------------------------------------------------------------------------------------------------
# payloads and the local server's answers
# --------------------------------------------------------------------------------------------------
class _Answers:
    """The local server's table {function: {key: answer}}, filled while the budget lasts."""

    def __init__(self, budget: int):
        self.left = int(budget)
        self.table: dict[str, dict[str, Any]] = {}
        self.full = False

    def add(self, fn: str, request: dict, make) -> bool:
        if self.full:
            return False
        answer = make()
        size = len(json.dumps(answer))
        if size > self.left:
            self.full = True
            return False
        self.left -= size
        key = "|".join(str(request[f]) for f in SERVER_FIELDS[fn])
        self.table.setdefault(fn, {})[key] = answer
        return True


def view_payload(analysis: Analysis, view: str, state: ViewState, *, budget: int = DEFAULT_BUDGET) -> tuple[dict, dict, dict]:
    """(payload, answers, selection) of ``view`` for a page of its own.

    payload: the component's value (as the app builds it, with :data:`EXPORT_KEY` as its store key where
    the view fetches lazily). answers: ``{server function: {request key: answer}}``. selection: the
    ``{layer, heads, token}`` the view reads from the address on its first draw.
    """
    from ..views.explorer import explorer_payload
    from ..views.head_view import head_view_layer_payload, head_view_payload, resolve_stack
    from ..views.model_view import model_view_head_payload, model_view_payload
    from ..views.neuron_view import neuron_terms_payload, neuron_view_payload

    check_view(view)
    state.check(analysis)
    answers = _Answers(budget)
    heads = None if state.heads is None else list(state.heads)
    selection = {"layer": state.layer, "heads": heads, "token": state.token}
    stack = resolve_stack(analysis, state.stack)
    if view == "explorer":
        # every layer inline: nothing to fetch; masking needs the model, so it is off in an export
        payload = explorer_payload(analysis, layer=state.layer, heads=heads, token=state.token,
                                   threshold=state.threshold, hide_special=state.hide_special,
                                   key=None, can_mask=False, all_layers=True, stack=stack)
    elif view == "head":
        payload = head_view_payload(analysis, layer=state.layer, heads=heads, stack=stack,
                                    pair_filter=state.pair_filter, key=EXPORT_KEY, prefetch_bytes=math.inf)
        for other in analysis.stacks:
            if other == stack:
                continue
            for layer in range(analysis.stack(other).num_layers):
                answers.add("head_view_layer", {"stack": other, "layer": layer},
                            lambda o=other, l=layer: head_view_layer_payload(analysis, o, l))
    elif view == "model":
        payload = model_view_payload(analysis, stack=stack, theme=state.theme, key=EXPORT_KEY)
        for other in analysis.stacks:
            if other != stack:
                answers.add("model_view_thumbs", {"stack": other},
                            lambda o=other: model_view_payload(analysis, stack=o, theme=state.theme, key=EXPORT_KEY))
        order = [stack] + [s for s in analysis.stacks if s != stack]
        for name in order:  # full-precision heads, the selected layer first
            st = analysis.stack(name)
            layers = [state.layer] + [x for x in range(st.num_layers) if x != state.layer] if name == stack else range(st.num_layers)
            for layer in layers:
                for head in range(st.num_heads):
                    answers.add("model_view_head", {"stack": name, "layer": layer, "head": head},
                                lambda n=name, l=layer, h=head: model_view_head_payload(analysis, n, l, h))
    else:
        head = state.neuron_head
        payload = neuron_view_payload(analysis, layer=state.layer, head=head, token=state.token, stack=stack,
                                      key=EXPORT_KEY)
        selection = {"layer": state.layer, "heads": [head], "token": payload["token"]}
        st = analysis.stack(stack)
        if st.has_query_key:
            n = len(st.queries[0][0]) if st.queries else 0
            # the exported head for every query token, then its layer's other heads, then other layers
            plan = [(state.layer, head)] + [(state.layer, h) for h in range(st.num_heads) if h != head]
            plan += [(l, h) for l in range(st.num_layers) if l != state.layer for h in range(st.num_heads)]
            for layer, h in plan:
                for tok in range(n):
                    answers.add("neuron_view_terms", {"stack": stack, "layer": layer, "head": h, "token": tok},
                                lambda l=layer, h=h, t=tok: neuron_terms_payload(analysis, stack, l, h, t))
    return payload, answers.table, selection


# --------------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------------
def _script_json(obj: Any) -> str:
    """JSON safe inside <script type="application/json">: no "</" or "<!--" can close or comment it."""
    return json.dumps(obj, separators=(",", ":")).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _script_js(code: str) -> str:
    return code.replace("</script", "<\\/script").replace("<!--", "<\\!--")


def model_label(name: str) -> str:
    """A model's name for a caption: a Hub id as it is, a local folder by its own name (no server path)."""
    import os

    return os.path.basename(os.path.normpath(name)) if os.path.isabs(name) or os.sep in name and os.path.exists(name) else name


def new_uid() -> str:
    """An element id no other fragment of the page has (random, so two cells never collide)."""
    return "xh-x-" + secrets.token_hex(6)


def view_fragment(analysis: Analysis, view: str, state: ViewState, *, uid: str | None = None,
                  budget: int = DEFAULT_BUDGET, static: bool = False, caption: str | None = None) -> str:
    """The HTML of one view that draws itself wherever it is inserted (a page, a notebook output).

    ``<style>`` scoped to the fragment's id, the component's template, common.js and export.js (each
    defines its global once), the payload as JSON and one call of ``exbertHubExport.mount``. static:
    laid out for a picture (every row shown, no scrolling; SVG/PNG export).
    """
    template, css, js = component_code(view)
    payload, answers, selection = view_payload(analysis, view, state, budget=budget)
    uid = uid or new_uid()
    data = {"view": view, "payload": payload, "answers": answers, "fields": SERVER_FIELDS,
            "selection": selection, "open": view == "model" and state.heads is not None and len(state.heads) == 1,
            "static": bool(static)}
    static_css = ""
    if static:
        # a picture shows every row: the scrolling boxes grow to their content
        static_css = (f"#{uid} {{ --xh-height: 100000px; }} #{uid} .xb-scroll {{ height: auto !important; }}"
                      f" #{uid} .xh-hint, #{uid} .xb-hint {{ display: none; }}")
    title = "" if caption is None else f'<div class="xh-export-caption">{html.escape(caption)}</div>'
    return "\n".join([
        f'<div class="xh-export" id="{uid}-box">{title}',
        f"<style>#{uid} {{\n{css}\n}}\n{static_css}\n"
        f"#{uid}-box .xh-export-caption {{ font: 600 13px system-ui, sans-serif; color: #1f2328; margin: 0 0 6px; }}</style>",
        f'<div id="{uid}" class="xh-export-view" data-view="{view}" data-ready="0">{template}</div>',
        f"<script>\n{_script_js(asset('common.js'))}\n</script>",
        f"<script>\n{_script_js(asset('export.js'))}\n</script>",
        f'<script type="application/json" id="{uid}-data">{_script_json(data)}</script>',
        f"<script>\nwindow.exbertHubExport.mount({json.dumps(uid)}, function (element, trigger, props, server, upload, watch) {{\n"
        f"{_script_js(js)}\n}});\n</script>",
        "</div>",
    ])


# No request of any kind: only the page's own inline scripts and styles, and data: images.
CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data: blob:; "
       "font-src data:; connect-src 'none'; base-uri 'none'; form-action 'none'")


def standalone_page(analysis: Analysis, view: str, state: ViewState, *, budget: int = DEFAULT_BUDGET,
                    static: bool = False, uid: str | None = None) -> str:
    """A whole HTML document with one view: opens from file:// offline and makes no request."""
    caption = f"{model_label(analysis.model_name)} \u00b7 {view} view"
    body = view_fragment(analysis, view, state, uid=uid, budget=budget, static=static, caption=caption)
    title = html.escape(f"{analysis.text[:60]} \u2014 exbert-hub {view} view")
    return (
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{title}</title>\n"
        "<style>body { margin: 16px; background: #ffffff; color: #1f2328; font-family: system-ui, sans-serif; }</style>\n"
        f"</head>\n<body>\n{body}\n</body>\n</html>\n"
    )


# --------------------------------------------------------------------------------------------------
# the numbers a view shows
# --------------------------------------------------------------------------------------------------
def view_numbers(analysis: Analysis, view: str, state: ViewState) -> dict[str, Any]:
    """The numbers ``view`` shows for ``state``, as numpy arrays (float32 at full precision) and plain values.

    Every view: ``model``, ``view``, ``text``, ``tokens`` (str[T]), ``state`` (dict). explorer and head:
    ``attention`` float32[heads, q, k] of the layer (every head; ``heads`` lists the selected ones) and
    ``selected_mean`` float32[q, k] (their mean). model: ``attention`` float32[layers, heads, q, k] of the
    stack. neuron: the terms of one query token in one head (score_terms): ``query`` [d], ``keys``
    [k, d], ``products`` [k, d], ``dot``/``scaled``/``logits``/``softmax`` [k], ``bias``/``mask`` [k]
    where the model has them, ``scale``.
    """
    from ..views.head_view import resolve_stack, stack_sequences

    check_view(view)
    state.check(analysis)
    stack = resolve_stack(analysis, state.stack)
    st = analysis.stack(stack)
    q_seq, k_seq = stack_sequences(stack)
    seq = {"input": analysis.input, "decoder": analysis.decoder_input}
    out: dict[str, Any] = {
        "model": analysis.model_name, "view": view, "text": analysis.text, "stack": stack,
        "tokens": np.array([str(t) for t in seq[q_seq].display]),
        "key_tokens": np.array([str(t) for t in seq[k_seq].display]),
        "state": state.as_dict(),
    }
    heads = list(range(st.num_heads)) if state.heads is None else list(state.heads)
    if view in ("explorer", "head"):
        att = np.asarray(st.attentions[state.layer], dtype=np.float32)
        out["attention"] = att
        out["heads"] = np.asarray(heads, dtype=np.int64)
        out["selected_mean"] = att[heads].mean(axis=0) if heads else np.zeros(att.shape[1:], np.float32)
    elif view == "model":
        out["attention"] = np.asarray(st.attentions, dtype=np.float32)
    else:
        head = state.neuron_head
        from ..views.neuron_view import default_token

        token = default_token(analysis, stack) if state.token is None else state.token
        terms = analysis.score_terms(state.layer, head, token, stack=stack)
        out.update({"layer": state.layer, "head": head, "token": token, "scale": float(terms["scale"])})
        for name in ("query", "keys", "products", "dot", "scaled", "bias", "mask", "logits", "softmax"):
            if terms[name] is not None:
                out[name] = np.asarray(terms[name], dtype=np.float32)
    return out


def numbers_json(numbers: dict[str, Any]) -> dict:
    """:func:`view_numbers` as JSON-safe values (arrays as nested lists; -inf masks as null)."""
    def conv(v):
        if isinstance(v, np.ndarray):
            if v.dtype.kind == "f":
                return [conv(x) for x in v] if v.ndim > 1 else [float(x) if np.isfinite(x) else None for x in v.tolist()]
            return v.tolist()
        return v
    return {k: conv(v) for k, v in numbers.items()}


def token_list(tokens: Sequence[str]) -> list[str]:
    return [str(t) for t in tokens]
