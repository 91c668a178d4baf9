"""The exbert-hub Gradio app: one model, a text, and the views of its attention.

    >>> from exbert_hub.app import build_app, launch
    >>> launch("bert-base-uncased")                   # or: exbert-hub --model bert-base-uncased

Handlers stay thin: model logic is in plain functions (``summarize``, ``attention_matrix``, ...) that
the UI events and the HTTP API (``gr.api``, see the README) share. Big data is never in the initial page:
the first analysis runs in ``demo.load`` (which also reads deep-link query parameters).
"""

import hashlib
import html
import json
import logging
import re
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass

import gradio as gr
import numpy as np

from . import engine as _engine
from .analysis import CAUSAL_LM, ENCODER, MASKED_LM, Analysis, kind_phrase
from .budget import Budget, analysis_bytes, release_freed_memory
from .errors import ExbertError, InputError, user_message
from .inputs import as_int, as_text
from .policy import Policy, is_remote
from .resolve import DEFAULT_MODEL
from .views import common_head
from .views.explorer import DEFAULT_THRESHOLD, ExplorerView, explorer_payload, layer_payload

log = logging.getLogger(__name__)

# Gradio's queue sets pandas options that pandas 3 deprecates, once per call: not ours to fix, and it
# filled the server log. (Our own deprecations are fixed, not hidden.)
warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"gradio\.queueing")

DEFAULT_TEXT = "The cat sat on the mat because it was tired."
TABS = ("explorer", "head", "model", "neuron", "search")

# ---------------------------------------------------------------------------------------------------
# The BertViz-style views (built by another module owner). Imported guarded so the app works without
# them. Each entry: tab id, tab label, module, component class, payload function.
# ---------------------------------------------------------------------------------------------------
_OTHER_VIEWS = (
    ("head", "Head view", "head_view", "HeadView", "head_view_payload"),
    ("model", "Model view", "model_view", "ModelView", "model_view_payload"),
    ("neuron", "Neuron view", "neuron_view", "NeuronView", "neuron_view_payload"),
)


def _import_view(module: str, cls: str, fn: str):
    """(component class, payload function) of an optional view module, or None when it is missing."""
    import importlib

    try:
        mod = importlib.import_module(f"{__package__}.views.{module}")
        return getattr(mod, cls), getattr(mod, fn)
    except (ImportError, AttributeError) as err:
        log.info("view %s not available: %s", module, err)
        return None


def _search_ui():
    """The corpus search module (optional), or None."""
    try:
        from . import search_ui
    except ImportError as err:
        log.info("corpus search not available: %s", err)
        return None
    return search_ui


class StoreRef:
    """What a view component keeps of the app's AnalysisStore: ``get(key)`` and ``put(analysis)``.

    Gradio copies every constructor argument a component keeps as an attribute into the page config
    and deep-copies that config on each page request; a plain store there would deep-copy every cached
    analysis (GBs at 1k tokens: page loads took 20+ s). Copies of this reference are itself.
    """

    def __init__(self, store: "AnalysisStore"):
        self._store = store

    def get(self, key: str) -> Analysis:
        return self._store.get(key)

    def put(self, analysis: Analysis) -> str:
        raise NotImplementedError("the app builds view values with its own keys (AnalysisStore.run)")

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self

    def __repr__(self) -> str:
        return "StoreRef(AnalysisStore)"


def _make_view(found, tab: str, store):
    """The component of an optional view, or None (missing module, or it failed to build).

    The views' server functions find analyses through ``store.get(key)`` (the app's AnalysisStore).
    """
    if found is None:
        return None
    cls, _ = found
    try:
        return cls(None, store=StoreRef(store), elem_id=f"xh-{tab}-view")
    except Exception as err:  # noqa: BLE001 - a view in progress must not break the app
        log.warning("the %s view could not be built: %s", tab, err)
        return None


# ---------------------------------------------------------------------------------------------------
# Plain functions: model logic shared by the UI and the HTTP API
# ---------------------------------------------------------------------------------------------------
def get_engine(model, *, policy: Policy | None = None, remote: bool = False) -> "_engine.Engine":
    """The engine of ``model``; with a policy, a visitor's name is checked before anything is loaded."""
    if model is not None and not isinstance(model, str):
        raise InputError(f"the model must be a name (a Hub id such as bert-base-uncased), got {type(model).__name__}")
    model = (model or "").strip()
    if not model:
        raise InputError("enter a model name: a Hugging Face Hub id such as bert-base-uncased, or a local folder")
    if len(model) > 300:
        raise InputError(f"the model name has {len(model)} characters; a Hub id has at most 96")
    if policy is None:
        return _engine.load(model)
    return _engine.load(model, policy=policy, remote=remote)


def _analysis_nbytes(a: Analysis) -> int:
    total = a.hidden_states.nbytes + (0 if a.decoder_hidden_states is None else a.decoder_hidden_states.nbytes)
    for s in a.stacks.values():
        total += s.attentions.nbytes + (0 if s.contexts is None else s.contexts.nbytes)
        total += sum(x.nbytes for x in s.queries) + sum(x.nbytes for x in s.keys)
    return int(total)


@dataclass(frozen=True)
class Request:
    """What one analysis was asked for; enough to run it again."""

    model: str
    text: str
    pair: str | None = None
    mask: tuple[int, ...] = ()
    truncate: bool = False  # cut text longer than the model's limit (the UI) instead of failing (the API)

    @property
    def key(self) -> str:
        blob = json.dumps([self.model, self.text, self.pair, list(self.mask), self.truncate], ensure_ascii=False)
        return hashlib.sha1(blob.encode("utf-8")).hexdigest()[:16]


class AnalysisStore:
    """Recent analyses by key (LRU, bounded by count and bytes), shared by all sessions.

    The browser refers to an analysis by its key (lazy layers, masking); an evicted analysis is run
    again from its request, which is kept much longer than the arrays.
    """

    def __init__(self, max_items: int = 32, max_bytes: int = 3_000_000_000, max_requests: int = 2_000,
                 budget: Budget | None = None):
        self.max_items, self.max_bytes, self.max_requests = max_items, max_bytes, max_requests
        self.budget = budget  # work in progress is reserved here before it runs (None: not counted)
        self._items: OrderedDict[str, tuple[Analysis, int]] = OrderedDict()
        self._requests: OrderedDict[str, Request] = OrderedDict()
        self._lock = threading.Lock()

    def run(self, req: Request, eng: "_engine.Engine | None" = None) -> tuple[str, Analysis]:
        """(key, analysis) of ``req``: kept, or computed with ``eng`` (default: the engine of req.model)."""
        key = req.key
        with self._lock:
            self._requests[key] = req
            self._requests.move_to_end(key)
            while len(self._requests) > self.max_requests:
                self._requests.popitem(last=False)
            if key in self._items:
                self._items.move_to_end(key)
                return key, self._items[key][0]
        eng = eng or get_engine(req.model)
        pair = req.pair if req.pair and eng.kind in (MASKED_LM, ENCODER) else None
        if self.budget is None:
            analysis = eng.analyze(req.text, pair=pair, mask=list(req.mask) or None, top_k=5, truncate=req.truncate)
        else:
            # an upper bound of the tokens before tokenizing: every token covers at least one character
            tokens = min(eng.token_limit, len(req.text) + len(pair or "") + 4)
            with self.budget.reserve(analysis_bytes(eng, tokens)):
                analysis = eng.analyze(req.text, pair=pair, mask=list(req.mask) or None, top_k=5,
                                       truncate=req.truncate)
        with self._lock:
            self._items[key] = (analysis, _analysis_nbytes(analysis))
            self._evict(keep=key)
        release_freed_memory()  # the forward pass's buffers and any evicted analysis are free now
        return key, analysis

    def request(self, key: str) -> Request:
        with self._lock:
            if key not in self._requests:
                raise InputError("this analysis is no longer available: press Analyze again")
            return self._requests[key]

    def get(self, key: str) -> Analysis:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key][0]
        return self.run(self.request(key))[1]

    def model_of(self, key: str | None) -> str | None:
        """The model of the analysis ``key`` (None when unknown)."""
        with self._lock:
            req = self._requests.get(key) if key else None
        return req.model if req else None

    def _evict(self, keep: str) -> None:
        while len(self._items) > 1:
            total = sum(n for _, n in self._items.values())
            if len(self._items) <= self.max_items and total <= self.max_bytes:
                break
            oldest = next(k for k in self._items if k != keep)
            del self._items[oldest]

    def __len__(self) -> int:
        return len(self._items)


STORE = AnalysisStore()


def _predictions_json(preds) -> list | None:
    if preds is None:
        return None
    return [[{"token": str(w), "prob": float(p)} for w, p in row] for row in preds]


def summarize(eng: "_engine.Engine", a: Analysis) -> dict:
    """The JSON returned by /analyze: tokens, shapes, kind and top predictions of one analysis."""
    out = {
        "model": a.model_name,
        "kind": a.kind,
        "tokens": list(a.tokens),
        "display_tokens": list(a.display_tokens),
        "special": [bool(x) for x in a.special],
        "segments": [int(x) for x in a.segments],
        "layers": int(a.num_layers),
        "heads": int(a.num_heads),
        "stacks": list(a.stacks),
        "masked": [int(x) for x in a.masked],
        "can_mask": bool(eng.can_mask),
        "token_limit": int(eng.token_limit),
        "truncated": bool(a.truncated),
        "predictions": _predictions_json(a.predictions),
        "prediction_note": a.prediction_note,
    }
    if a.decoder_input is not None:
        out["decoder_tokens"] = list(a.decoder_input.tokens)
        out["decoder_display_tokens"] = list(a.decoder_input.display)
    return out


def model_info(model) -> dict:
    """/model_info's dict for a model name or an Engine."""
    eng = model if isinstance(model, _engine.Engine) else get_engine(model)
    return {
        "model": eng.name,
        "kind": eng.kind,
        "origin": eng.origin,
        "layers": eng.num_layers,
        "heads": eng.num_heads,
        "token_limit": eng.token_limit,
        "can_mask": eng.can_mask,
    }


def _check_layer_head(a: Analysis, layer: int, head: int, stack: str | None = None) -> None:
    s = a.stack(stack)
    if not 0 <= int(layer) < s.num_layers:
        raise InputError(f"layer {layer} is out of range: the model has {s.num_layers} layers (0 to {s.num_layers - 1})")
    if not -1 <= int(head) < s.num_heads:
        raise InputError(f"head {head} is out of range: each layer has {s.num_heads} heads (0 to {s.num_heads - 1}, or -1 for their mean)")


def attention_matrix(a: Analysis, layer: int, head: int, stack: str | None = None) -> np.ndarray:
    """float32[T, T] attention of one head (head = -1: the mean of all heads) at full precision."""
    _check_layer_head(a, layer, head, stack)
    att = a.stack(stack).attentions[int(layer)]
    return att.mean(axis=0) if int(head) == -1 else att[int(head)]


def _none_if_blank(s: str | None) -> str | None:
    return s if s and s.strip() else None


# ---------------------------------------------------------------------------------------------------
# The app
# ---------------------------------------------------------------------------------------------------
def _header(eng) -> str:
    can = " · double-click a token to mask it" if eng.can_mask else ""
    return (
        f'<h3 class="xh-title">exbert-hub · <code>{html.escape(eng.name)}</code></h3>'
        f'<p class="xh-sub"><b>{html.escape(eng.kind)}</b> · {eng.num_layers} layers × {eng.num_heads} heads · '
        f"up to {eng.token_limit:,} tokens{can}</p>"
    )


def _message(text: str | None, level: str = "warning") -> str:
    """The banner's HTML: the message as escaped text in one line (never Markdown, never markup)."""
    if not text:
        return ""
    icon = {"warning": "⚠", "info": "ℹ"}.get(level, "")
    line = " ".join(str(text).split())
    return (f'<div class="xh-banner xh-banner-{level}" role="status" title="{html.escape(line, quote=True)}">'
            f'<span aria-hidden="true">{icon}</span> {html.escape(line)}</div>')


def _analysis_notes(a: Analysis) -> list[str]:
    """What the banner says about an analysis while it is shown (e.g. that its text was cut)."""
    if a.truncated:
        return [f"The text was cut to the first {len(a.tokens):,} tokens ({a.dropped_tokens:,} dropped)."]
    return []


def _strip_banner(banner: str) -> str:
    """The plain text of a banner made by _message (for composing a second message from it)."""
    text = re.sub(r"<[^>]+>", "", banner or "")
    return " ".join(html.unescape(text).replace("⚠", "").replace("ℹ", "").split())


def _int(value, default=None):
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _float(value, default=None):
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def _int_list(value: str | None) -> list[int] | None:
    if value is None:
        return None
    if value.strip() in ("", "all"):
        return None
    if value.strip() == "none":
        return []
    out = [_int(x) for x in value.split(",")]
    return [x for x in out if x is not None]


def build_app(model: str = DEFAULT_MODEL, *, corpus=None, store: AnalysisStore | None = None,
              policy: Policy | None = None) -> gr.Blocks:
    """The Gradio Blocks of exbert-hub for ``model`` (any name the engine resolves).

    corpus: the corpus the search tab opens by default (folder, Hub dataset id or Corpus; see
    exbert_hub.search_ui), or None (the user can name one in the tab).
    policy: what visitors may load (models, corpora, sizes, one memory budget; see exbert_hub.policy);
    default: ``Policy.from_env()`` (Space variables). The launch model and corpus are always allowed.
    Launch it with :func:`launch` (which adds the page-level head, CSS and theme), or call
    ``demo.launch(**launch_options())``.
    """
    policy = (policy or Policy.from_env()).with_operator(
        [model], [corpus] if isinstance(corpus, str) else [])
    # one budget: every cache of the process takes its share (exbert_hub.policy)
    _engine.MODEL_CACHE.max_bytes = min(_engine.MODEL_CACHE.max_bytes, policy.model_cache_bytes)
    from .corpus import CORPUS_CACHE

    CORPUS_CACHE.configure(max_bytes=min(CORPUS_CACHE.max_bytes, policy.corpus_cache_bytes))
    store = store or AnalysisStore(max_bytes=policy.analysis_cache_bytes)
    if store.budget is None:
        store.budget = Budget(policy.in_flight_bytes)
    default_model = model

    def engine_for(name: str, request=None):
        """A visitor's model, checked against the policy (the operator's launch model always passes)."""
        return get_engine(name, policy=policy, remote=is_remote(request))
    others = {tab: _import_view(mod, cls, fn) for tab, _, mod, cls, fn in _OTHER_VIEWS}

    def explorer_layer(data, request: gr.Request = None) -> dict:
        """Server function of the explorer: one layer of attention (uint8 base64) for {key, layer}."""
        try:
            if isinstance(data, (list, tuple)):
                key, layer = data[0], data[1]
            else:
                key, layer = data["key"], data["layer"]
            return {"key": key, "layer": int(layer), "attention": layer_payload(store.get(str(key)), int(layer))}
        except Exception as err:  # noqa: BLE001 - reported in the view, never as a trace
            log.warning("explorer_layer failed: %s", err, exc_info=not isinstance(err, ExbertError))
            return {"error": user_message(err)}

    # --- what every handler produces for a new analysis -----------------------------------------
    # Only the visible tab's view gets its payload at once (they are MBs at 1k tokens); the others are
    # built when their tab is selected (``shown`` remembers which analysis each tab shows).
    def tab_value(tab: str, key: str, a: Analysis, eng, view: dict | None = None):
        view = view or {}
        if tab == "explorer":
            value = explorer_payload(
                a,
                key=key,
                can_mask=eng.can_mask,
                layer=_int(view.get("layer"), 0),
                heads=view.get("heads"),
                token=view.get("token"),
                threshold=_float(view.get("threshold"), DEFAULT_THRESHOLD),
                hide_special=bool(view.get("hide_special")),
                weights=view.get("weights"),
            )
            if view.get("keep_view"):
                value["initial"]["keep_view"] = True
            return value
        if tab not in other_components:
            return None
        layer = min(max(_int(view.get("layer"), 0), 0), a.num_layers - 1)
        heads = view.get("heads")
        heads = None if heads is None else [h for h in heads if 0 <= h < a.num_heads] or None
        token = view.get("token")
        token = token if token is not None and 0 <= token < len(a.tokens) else None
        options = {
            "head": {"layer": layer, "heads": heads},
            "model": {},
            "neuron": {"layer": layer, "head": heads[0] if heads else 0, "token": token},
        }
        _, payload_fn = others[tab]
        try:
            return payload_fn(a, key=key, **options.get(tab, {}))
        except Exception as err:  # noqa: BLE001 - one broken view must not break the app
            log.warning("%s view payload failed: %s", tab, err, exc_info=True)
            return None

    def run(model_name: str, text: str, pair: str | None, mask=(), view: dict | None = None,
            tab: str = "explorer", request=None, shown_key: str | None = None) -> dict:
        """Outputs for a successful analysis, or the banner (and nothing else changed) on failure.

        On failure the model box goes back to the model the views show (``shown_key``'s), so what the
        page says and what it draws agree.
        """
        tab = tab if tab in view_components else "explorer"
        note: list[str] = []
        try:
            name = (model_name or "").strip() if isinstance(model_name, str) else model_name
            eng = engine_for(name, request)
            if mask and not eng.can_mask:
                note.append(f"This link masks token{'s' if len(mask) > 1 else ''} {', '.join(map(str, mask))}, but "
                            f"{eng.name} is {kind_phrase(eng.kind)} and cannot mask: showing the text unmasked.")
                mask = ()
            req = Request(model=name, text=text or "", pair=_none_if_blank(pair), mask=tuple(mask), truncate=True)
            key, a = store.run(req, eng)
        except Exception as err:  # noqa: BLE001 - users see a message, never a trace
            msg = user_message(err)
            log.warning("analysis failed: %s", err, exc_info=not isinstance(err, ExbertError))
            out = {message: _message(msg)}
            shown_model = store.model_of(shown_key)
            if shown_model is not None:
                out[model_box] = shown_model
            return out
        note += _analysis_notes(a)
        out = {
            header: _header(eng),
            message: _message(" ".join(note), "info") if note else "",
            model_box: req.model,
            key_state: key,
            pair_box: gr.update(visible=eng.kind in (MASKED_LM, ENCODER)),
            view_state: {k: v for k, v in (view or {}).items() if k != "keep_view"},
            shown_state: {tab: key},
            tab_state: tab,
        }
        value = tab_value(tab, key, a, eng, view)
        if value is not None:
            out[view_components[tab]] = value
        return out

    def on_tab(tab: str):
        def select(key, shown, view):
            out = {tab_state: tab}
            if not key or (shown or {}).get(tab) == key or tab not in view_components:
                return out
            try:
                a = store.get(key)
                eng = get_engine(store.request(key).model)
            except Exception as err:  # noqa: BLE001
                out[message] = _message(user_message(err))
                return out
            value = tab_value(tab, key, a, eng, view)
            if value is not None:
                out[view_components[tab]] = value
                out[shown_state] = {**(shown or {}), tab: key}
            out[message] = _message(" ".join(_analysis_notes(a)), "info")  # an earlier error is over
            return out

        return select

    with gr.Blocks(title="exbert-hub") as demo:
        header = gr.HTML('<h3 class="xh-title">exbert-hub</h3>', elem_id="xh-header", padding=False)
        with gr.Row(equal_height=False):
            with gr.Column(scale=3, min_width=260):
                model_box = gr.Textbox(value=model, label="Model", info="Hugging Face Hub id or local folder",
                                       max_lines=1, elem_id="xh-model")
            with gr.Column(scale=7):
                text_box = gr.Textbox(value=DEFAULT_TEXT, label="Text", lines=2, max_lines=8, elem_id="xh-text")
                pair_box = gr.Textbox(value="", label="Sentence B (optional, encoders)", lines=1, max_lines=4,
                                      elem_id="xh-pair")
            with gr.Column(scale=1, min_width=120):
                analyze_btn = gr.Button("Analyze", variant="primary", elem_id="xh-analyze")
        message = gr.HTML("", elem_id="xh-message", padding=False)
        key_state = gr.State(None)  # the AnalysisStore key of the analysis shown
        view_state = gr.State({})  # layer/heads/token... from the link or the last mask (for views built later)
        shown_state = gr.State({})  # tab -> key of the analysis its view shows
        tab_state = gr.State("explorer")

        other_components: dict[str, gr.Component] = {}
        with gr.Tabs(selected="explorer", elem_id="xh-tabs") as tabs:
            with gr.Tab("Attention explorer", id="explorer", elem_id="xh-tab-explorer") as tab_explorer:
                explorer = ExplorerView(None, fetch_layer=explorer_layer, elem_id="xh-explorer")
            tab_items = {"explorer": tab_explorer}
            for tab, label, _, _, _ in _OTHER_VIEWS:
                with gr.Tab(label, id=tab, elem_id=f"xh-tab-{tab}") as item:
                    tab_items[tab] = item
                    # === wiring point for the BertViz-style views (views/head_view.py, ...) ===
                    component = _make_view(others[tab], tab, store)
                    if component is not None:
                        other_components[tab] = component
                    else:
                        others[tab] = None
                        gr.Markdown(f"The {label.lower()} is not available in this build.")
            # === corpus search (exbert_hub/search_ui.py owns the tab, its events and its API) ===
            search = _search_ui()
            corpus_access = search.CorpusAccess(policy=policy, operator_ref=corpus) if search is not None else None
            if search is not None:
                try:
                    tab_items["search"] = search.add_search_tab(
                        key_state=key_state, get_analysis=store.get, corpus_ref=corpus, get_engine=get_engine,
                        access=corpus_access).tab
                except Exception as err:  # noqa: BLE001 - the rest of the app works without it
                    log.warning("the corpus search tab could not be built: %s", err, exc_info=True)
                    search = None

        view_components = {"explorer": explorer, **other_components}
        outputs = [header, message, key_state, pair_box, view_state, shown_state, tab_state, model_box,
                   *view_components.values()]

        # --- deep links: read the URL once the page is up ----------------------------------------
        def on_load(request: gr.Request):
            q = dict(request.query_params) if request is not None else {}
            name = q.get("model") or default_model
            text = q.get("text") or DEFAULT_TEXT
            pair = q.get("pair") or ""
            mask = _int_list(q.get("mask")) or []
            view = {
                "layer": _int(q.get("layer"), 0),
                "heads": _int_list(q.get("heads")),
                "token": _int(q.get("token")),
                "threshold": _float(q.get("threshold"), DEFAULT_THRESHOLD),
                "hide_special": q.get("hide") in ("1", "true", "yes"),
            }
            tab = q.get("tab") if q.get("tab") in TABS else "explorer"
            out = run(name, text, pair, mask, view, tab, request)
            if key_state not in out and mask:  # the model refused the link's mask (a special token, past the end)
                refused = out.get(message, "")
                out = run(name, text, pair, (), view, tab, request)
                if key_state in out:
                    out[message] = _message(f"{_strip_banner(refused)} Showing the text unmasked.", "info")
            if key_state not in out and name != default_model:  # a bad model in the link: fall back
                first = out.get(message, "")
                out = run(default_model, text, pair, (), view, tab, request)
                if key_state in out:
                    out[message] = _message(f"{_strip_banner(first)} Showing {default_model} instead.")
                name = default_model
            out[model_box] = name
            out[text_box] = text
            out[pair_box] = gr.update(value=pair, **({"visible": out[pair_box]["visible"]} if pair_box in out else {}))
            if tab != "explorer":
                out[tabs] = gr.Tabs(selected=tab)
            return out

        demo.load(on_load, inputs=None, outputs=[*outputs, text_box, tabs], api_visibility="private").then(
            None, None, None, js="() => { if (window.exbertHub) window.exbertHub.ready = true; }")

        def on_analyze(model_name, text, pair, tab, key, request: gr.Request):
            return run(model_name, text, pair, (), {"keep_view": True}, tab, request, shown_key=key)

        analyze_evt = dict(fn=on_analyze, inputs=[model_box, text_box, pair_box, tab_state, key_state], outputs=outputs,
                           api_visibility="private")
        analyze_btn.click(**analyze_evt)
        text_box.submit(**analyze_evt)
        model_box.submit(**analyze_evt)

        # --- double-click a token in the explorer: mask it (masked LMs) and run again -------------
        def on_mask(key, evt: gr.EventData, request: gr.Request):
            data = evt._data or {}
            try:
                req = store.request(str(data.get("key") or key))
                eng = get_engine(req.model)
                if not eng.can_mask:
                    raise InputError(
                        f"masking needs a masked language model; {eng.name} is {kind_phrase(eng.kind)}"
                        + (" (it predicts the next token instead: select a token to see them)" if eng.kind == CAUSAL_LM else "")
                    )
                pos = _int(data.get("position"))
                if pos is None:
                    raise InputError("the token to mask was not given as a position")
                mask = set(req.mask)
                mask.symmetric_difference_update({pos})  # double-click a masked token to unmask it
            except Exception as err:  # noqa: BLE001
                return {message: _message(user_message(err))}
            view = {k: data.get(k) for k in ("layer", "heads", "token", "weights")}
            view["threshold"] = _float(data.get("threshold"), DEFAULT_THRESHOLD)
            view["hide_special"] = bool(data.get("hide_special"))
            view["layer"] = _int(view["layer"], 0)
            view["token"] = pos
            return run(req.model, req.text, req.pair, sorted(mask), view, "explorer", request, shown_key=key)

        explorer.mask(on_mask, inputs=[key_state], outputs=outputs, api_visibility="private")

        # --- a tab's view is built when it is first shown for an analysis; the tab is in the link --
        for tab, item in tab_items.items():
            item.select(on_tab(tab), inputs=[key_state, shown_state, view_state],
                        outputs=[tab_state, shown_state, message, *view_components.values()], api_visibility="private")
            # (not before the first analysis arrived: the tab selected at mount must not overwrite the link)
            item.select(None, None, None, js=f"() => {{ const x = window.exbertHub; if (x && x.ready) x.setUrlParams({{tab: '{tab}'}}); }}")

        # --- HTTP API (gradio_client); documented in README.md --------------------------------------
        _register_api(default_model, store, engine_for)
        if search is not None:
            search.register_search_api(
                default_model, corpus, access=corpus_access,
                analyze=lambda m, t, request=None: store.run(Request(m, t), engine_for(m, request))[1],
                get_engine=engine_for)

    return demo


def _register_api(default_model: str, store: AnalysisStore, engine_for) -> None:
    """The HTTP endpoints; every argument a visitor sends is checked (exbert_hub.inputs) before use."""

    def _fail(err: Exception):
        msg = user_message(err)
        log.warning("API call failed: %s", err, exc_info=not isinstance(err, ExbertError))
        raise gr.Error(msg, print_exception=False) from None

    def _analysis(model, text, pair=None, mask=(), request=None) -> tuple:
        name = as_text(model, "model", optional=True) or default_model
        text = as_text(text, "text")
        pair = as_text(pair, "pair", optional=True)
        eng = engine_for(name.strip(), request)
        _, a = store.run(Request(name.strip(), text, pair, tuple(mask)), eng)
        return eng, a

    def _stack(stack) -> str | None:
        return as_text(stack, "stack", optional=True, max_chars=20)

    def _layer_head(a: Analysis, layer, head, stack, one_head: bool = False) -> tuple[int, int]:
        layer, head = as_int(layer, "layer"), as_int(head, "head")
        _check_layer_head(a, layer, head, stack)
        if one_head and head < 0:
            raise InputError("this endpoint needs one head (0 or more), not -1")
        return layer, head

    def analyze(text: str, pair: str | None = None, model: str | None = None, request: gr.Request = None) -> dict:
        """Analyze a text (and optional sentence B for encoders): tokens, layers, heads, kind, top-5 predictions."""
        try:
            return summarize(*_analysis(model, text, pair, request=request))
        except Exception as err:  # noqa: BLE001
            _fail(err)

    def attention(text: str, layer: int, head: int, model: str | None = None, pair: str | None = None,
                  stack: str | None = None, request: gr.Request = None) -> list[list[float]]:
        """Attention of one head (head=-1: mean of the layer's heads) as a T x T list, rows = from, columns = to."""
        try:
            _, a = _analysis(model, text, pair, request=request)
            layer, head = _layer_head(a, layer, head, _stack(stack))
            return attention_matrix(a, layer, head, _stack(stack)).tolist()
        except Exception as err:  # noqa: BLE001
            _fail(err)

    def mask(text: str, position: int, model: str | None = None, pair: str | None = None,
             request: gr.Request = None) -> dict:
        """Replace token `position` by the mask token, run again: the /analyze result plus `mask_predictions`."""
        try:
            position = as_int(position, "position", lo=0)
            eng, a = _analysis(model, text, pair, (position,), request=request)
            out = summarize(eng, a)
            out["mask_predictions"] = (out["predictions"] or [[]])[position] if out["predictions"] else []
            return out
        except Exception as err:  # noqa: BLE001
            _fail(err)

    def query_key(text: str, layer: int, head: int, model: str | None = None, pair: str | None = None,
                  stack: str | None = None, request: gr.Request = None) -> dict:
        """Query and key vectors of one head (float lists [T][head_dim]), their scale and the tokens."""
        try:
            _, a = _analysis(model, text, pair, request=request)
            layer, head = _layer_head(a, layer, head, _stack(stack), one_head=True)
            s = a.stack(_stack(stack))
            q, k = s.query_key(layer, head)
            return {"tokens": list(a.tokens), "queries": q.tolist(), "keys": k.tolist(),
                    "scale": float(s.scales[layer]), "layer": layer, "head": head}
        except Exception as err:  # noqa: BLE001
            _fail(err)

    def neuron(text: str, layer: int, head: int, token: int, model: str | None = None, pair: str | None = None,
               stack: str | None = None, request: gr.Request = None) -> dict:
        """Every term of one query token's attention in one head: query, keys, products, dot, scaled, softmax."""
        try:
            _, a = _analysis(model, text, pair, request=request)
            layer, head = _layer_head(a, layer, head, _stack(stack), one_head=True)
            terms = a.score_terms(layer, head, as_int(token, "token"), _stack(stack))
            out = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in terms.items()}
            out["scale"] = float(out["scale"])
            out["tokens"] = list(a.tokens)
            return out
        except Exception as err:  # noqa: BLE001
            _fail(err)

    def info(model: str | None = None, request: gr.Request = None) -> dict:
        """The model's kind, layers, heads, token limit and whether it can mask."""
        try:
            name = as_text(model, "model", optional=True) or default_model
            return model_info(engine_for(name.strip(), request))
        except Exception as err:  # noqa: BLE001
            _fail(err)

    gr.api(analyze, api_name="analyze")
    gr.api(attention, api_name="attention")
    gr.api(mask, api_name="mask")
    gr.api(query_key, api_name="query_key")
    gr.api(neuron, api_name="neuron")
    gr.api(info, api_name="model_info")


PAGE_CSS = """
#xh-header .xh-title { margin: 0 0 0.1em 0; font-size: 1.25em; }
#xh-header .xh-sub { margin: 0; color: #374151; }
/* The banner has a slot of its own, one line high, whether or not it shows a message: appearing or
   going away, it never moves the rows under the pointer. The whole message is in its title. */
#xh-message { height: 34px; min-height: 34px; overflow: hidden; }
#xh-message > * { margin: 0 !important; padding: 0 !important; }
#xh-message .xh-banner { box-sizing: border-box; height: 32px; padding: 0 0.7em !important; border-radius: 6px;
  white-space: nowrap; overflow: hidden; text-overflow: ellipsis; line-height: 30px; }
#xh-message .xh-banner-warning { background: #fef3c7; color: #78350f; border: 1px solid #f59e0b; }
#xh-message .xh-banner-info { background: #e0f2fe; color: #0c4a6e; border: 1px solid #38bdf8; }
"""


def launch_options() -> dict:
    """Page-level options Gradio 6 takes in launch(): the shared JS of the views, CSS and theme."""
    # Gradio's own hint grey (#bbbbc2, 1.9:1 on white) is below WCAG AA: the views' grey instead
    theme = gr.themes.Default(primary_hue="blue").set(body_text_color_subdued="#4b5563",
                                                      body_text_color_subdued_dark="#a8b0bd")
    return {"head": common_head(), "css": PAGE_CSS, "theme": theme}


# Gradio runs one call of an event at a time unless told otherwise: with that, one visitor's slow model
# load held up every other visitor's /analyze. Calls of one model still take turns on its lock in the
# engine (a forward pass already uses every core); other models, cached analyses and the JSON work overlap.
CONCURRENCY = 4
MAX_QUEUE = 32  # waiting calls beyond this get "queue full" at once instead of piling up in memory


def queue(demo: gr.Blocks, *, concurrency: int = CONCURRENCY, max_size: int = MAX_QUEUE) -> gr.Blocks:
    """The app's queue settings (the CLI, launch() and the Space use the same)."""
    return demo.queue(default_concurrency_limit=concurrency, max_size=max_size)


def launch(model: str = DEFAULT_MODEL, *, corpus=None, policy: Policy | None = None,
           concurrency: int = CONCURRENCY, max_queue: int = MAX_QUEUE, **launch_kwargs):
    """Build the app for ``model`` and launch it; ``launch_kwargs`` go to ``gr.Blocks.launch``.

    policy: what visitors may load (default: Policy.from_env(), i.e. Space variables or defaults).
    """
    demo = queue(build_app(model, corpus=corpus, policy=policy), concurrency=concurrency, max_size=max_queue)
    options = launch_options()
    extra_head = launch_kwargs.pop("head", None)
    if extra_head:
        options["head"] += "\n" + extra_head
    options.update(launch_kwargs)
    return demo.launch(**options)
