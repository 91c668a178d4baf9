"""The exbert-hub Gradio app: one model, a text, and the views of its attention.

    >>> from exbert_hub.app import build_app, launch
    >>> launch("bert-base-uncased")                   # or: exbert-hub --model bert-base-uncased

Handlers stay thin: model logic is in plain functions (``summarize``, ``attention_matrix``, ...) that
the UI events and the HTTP API (``gr.api``, see the README) share. Big data is never in the initial page:
the first analysis runs in ``demo.load`` (which also reads deep-link query parameters).
"""

import hashlib
import json
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass

import gradio as gr
import numpy as np

from . import engine as _engine
from .analysis import CAUSAL_LM, ENCODER, ENCODER_DECODER, MASKED_LM, Analysis
from .errors import ExbertError, InputError
from .resolve import DEFAULT_MODEL
from .views import common_head
from .views.explorer import DEFAULT_THRESHOLD, ExplorerView, explorer_payload, layer_payload

log = logging.getLogger(__name__)

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
def user_message(err: BaseException) -> str:
    """A one-line, user-facing message for any error (ExbertError messages are written for users)."""
    if isinstance(err, ExbertError):
        return str(err)
    first = (str(err).strip().splitlines() or [""])[0]
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


def get_engine(model: str) -> "_engine.Engine":
    model = (model or "").strip()
    if not model:
        raise InputError("enter a model name: a Hugging Face Hub id such as bert-base-uncased, or a local folder")
    return _engine.load(model)


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

    def __init__(self, max_items: int = 6, max_bytes: int = 3_000_000_000, max_requests: int = 10_000):
        self.max_items, self.max_bytes, self.max_requests = max_items, max_bytes, max_requests
        self._items: OrderedDict[str, tuple[Analysis, int]] = OrderedDict()
        self._requests: OrderedDict[str, Request] = OrderedDict()
        self._lock = threading.Lock()

    def run(self, req: Request) -> tuple[str, Analysis]:
        key = req.key
        with self._lock:
            self._requests[key] = req
            self._requests.move_to_end(key)
            while len(self._requests) > self.max_requests:
                self._requests.popitem(last=False)
            if key in self._items:
                self._items.move_to_end(key)
                return key, self._items[key][0]
        eng = get_engine(req.model)
        pair = req.pair if req.pair and eng.kind in (MASKED_LM, ENCODER) else None
        analysis = eng.analyze(req.text, pair=pair, mask=list(req.mask) or None, top_k=5, truncate=req.truncate)
        with self._lock:
            self._items[key] = (analysis, _analysis_nbytes(analysis))
            self._evict(keep=key)
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


def model_info(model: str) -> dict:
    eng = get_engine(model)
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
        f"### exbert-hub &nbsp;·&nbsp; `{eng.name}`\n"
        f"**{eng.kind}** · {eng.num_layers} layers × {eng.num_heads} heads · up to {eng.token_limit:,} tokens{can}"
    )


def _message(text: str | None, level: str = "warning") -> str:
    if not text:
        return ""
    icon = {"warning": "⚠️", "info": "ℹ️"}.get(level, "")
    # user-facing messages may contain model names or text: shown as Markdown code-free plain text
    safe = text.replace("<", "&lt;").replace(">", "&gt;")
    return f"{icon} {safe}"


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


def build_app(model: str = DEFAULT_MODEL, *, corpus=None, store: AnalysisStore | None = None) -> gr.Blocks:
    """The Gradio Blocks of exbert-hub for ``model`` (any name the engine resolves).

    corpus: the corpus the search tab opens by default (folder, Hub dataset id or Corpus; see
    exbert_hub.search_ui), or None (the user can name one in the tab).
    Launch it with :func:`launch` (which adds the page-level head, CSS and theme), or call
    ``demo.launch(**launch_options())``.
    """
    store = store or STORE
    default_model = model
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
            tab: str = "explorer") -> dict:
        """Outputs for a successful analysis, or a warning (and nothing else changed) on failure."""
        tab = tab if tab in view_components else "explorer"
        try:
            req = Request(model=(model_name or "").strip(), text=text or "", pair=_none_if_blank(pair), mask=tuple(mask),
                          truncate=True)
            eng = get_engine(req.model)
            key, a = store.run(req)
        except Exception as err:  # noqa: BLE001 - users see a message, never a trace
            msg = user_message(err)
            log.warning("analysis failed: %s", msg, exc_info=not isinstance(err, ExbertError))
            gr.Warning(msg)
            return {message: _message(msg)}
        note = []
        if a.truncated:
            note.append(f"The text was cut to the first {len(a.tokens):,} tokens ({a.dropped_tokens:,} dropped).")
        out = {
            header: _header(eng),
            message: _message(" ".join(note), "info") if note else "",
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
                msg = user_message(err)
                gr.Warning(msg)
                out[message] = _message(msg)
                return out
            value = tab_value(tab, key, a, eng, view)
            if value is not None:
                out[view_components[tab]] = value
                out[shown_state] = {**(shown or {}), tab: key}
            return out

        return select

    with gr.Blocks(title="exbert-hub") as demo:
        header = gr.Markdown("### exbert-hub", elem_id="xh-header")
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
        message = gr.Markdown("", elem_id="xh-message")
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
            if search is not None:
                try:
                    tab_items["search"] = search.add_search_tab(
                        key_state=key_state, get_analysis=store.get, corpus_ref=corpus, get_engine=get_engine).tab
                except Exception as err:  # noqa: BLE001 - the rest of the app works without it
                    log.warning("the corpus search tab could not be built: %s", err, exc_info=True)
                    search = None

        view_components = {"explorer": explorer, **other_components}
        outputs = [header, message, key_state, pair_box, view_state, shown_state, tab_state, *view_components.values()]

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
            out = run(name, text, pair, mask, view, tab)
            if key_state not in out and name != default_model:  # a bad model in the link: fall back
                first = out.get(message, "")
                out = run(default_model, text, pair, (), view, tab)
                out[message] = first
                name = default_model
            out[model_box] = name
            out[text_box] = text
            out[pair_box] = gr.update(value=pair, **({"visible": out[pair_box]["visible"]} if pair_box in out else {}))
            if tab != "explorer":
                out[tabs] = gr.Tabs(selected=tab)
            return out

        demo.load(on_load, inputs=None, outputs=[*outputs, model_box, text_box, tabs], api_visibility="private").then(
            None, None, None, js="() => { if (window.exbertHub) window.exbertHub.ready = true; }")

        def on_analyze(model_name, text, pair, tab):
            return run(model_name, text, pair, (), {"keep_view": True}, tab)

        analyze_evt = dict(fn=on_analyze, inputs=[model_box, text_box, pair_box, tab_state], outputs=outputs,
                           api_visibility="private")
        analyze_btn.click(**analyze_evt)
        text_box.submit(**analyze_evt)
        model_box.submit(**analyze_evt)

        # --- double-click a token in the explorer: mask it (masked LMs) and run again -------------
        def on_mask(key, evt: gr.EventData):
            data = evt._data or {}
            try:
                req = store.request(str(data.get("key") or key))
                eng = get_engine(req.model)
                if not eng.can_mask:
                    raise InputError(
                        f"masking needs a masked language model; {eng.name} is a {eng.kind} model"
                        + (" (it predicts the next token instead: select a token to see them)" if eng.kind == CAUSAL_LM else "")
                    )
                pos = int(data["position"])
                mask = set(req.mask)
                mask.symmetric_difference_update({pos})  # double-click a masked token to unmask it
            except Exception as err:  # noqa: BLE001
                msg = user_message(err)
                gr.Warning(msg)
                return {message: _message(msg)}
            view = {k: data.get(k) for k in ("layer", "heads", "token", "weights")}
            view["threshold"] = _float(data.get("threshold"), DEFAULT_THRESHOLD)
            view["hide_special"] = bool(data.get("hide_special"))
            view["layer"] = _int(view["layer"], 0)
            view["token"] = pos
            return run(req.model, req.text, req.pair, sorted(mask), view, "explorer")

        explorer.mask(on_mask, inputs=[key_state], outputs=outputs, api_visibility="private")

        # --- a tab's view is built when it is first shown for an analysis; the tab is in the link --
        for tab, item in tab_items.items():
            item.select(on_tab(tab), inputs=[key_state, shown_state, view_state],
                        outputs=[tab_state, shown_state, message, *view_components.values()], api_visibility="private")
            # (not before the first analysis arrived: the tab selected at mount must not overwrite the link)
            item.select(None, None, None, js=f"() => {{ const x = window.exbertHub; if (x && x.ready) x.setUrlParams({{tab: '{tab}'}}); }}")

        # --- HTTP API (gradio_client); documented in README.md --------------------------------------
        _register_api(default_model, store)
        if search is not None:
            search.register_search_api(default_model, corpus,
                                       analyze=lambda m, t: store.run(Request(m, t))[1])

    return demo


def _register_api(default_model: str, store: AnalysisStore) -> None:
    def _fail(err: Exception):
        msg = user_message(err)
        log.warning("API call failed: %s", msg, exc_info=not isinstance(err, ExbertError))
        raise gr.Error(msg) from None

    def _analysis(model: str | None, text: str, pair: str | None = None, mask=()) -> tuple:
        name = (model or "").strip() or default_model
        eng = get_engine(name)
        _, a = store.run(Request(name, text, _none_if_blank(pair), tuple(mask)))
        return eng, a

    def analyze(text: str, pair: str | None = None, model: str | None = None) -> dict:
        """Analyze a text (and optional sentence B for encoders): tokens, layers, heads, kind, top-5 predictions."""
        try:
            return summarize(*_analysis(model, text, pair))
        except Exception as err:  # noqa: BLE001
            _fail(err)

    def attention(text: str, layer: int, head: int, model: str | None = None, pair: str | None = None,
                  stack: str | None = None) -> list[list[float]]:
        """Attention of one head (head=-1: mean of the layer's heads) as a T x T list, rows = from, columns = to."""
        try:
            _, a = _analysis(model, text, pair)
            return attention_matrix(a, int(layer), int(head), _none_if_blank(stack)).tolist()
        except Exception as err:  # noqa: BLE001
            _fail(err)

    def mask(text: str, position: int, model: str | None = None, pair: str | None = None) -> dict:
        """Replace token `position` by the mask token, run again: the /analyze result plus `mask_predictions`."""
        try:
            eng, a = _analysis(model, text, pair, (int(position),))
            out = summarize(eng, a)
            out["mask_predictions"] = (out["predictions"] or [[]])[int(position)] if out["predictions"] else []
            return out
        except Exception as err:  # noqa: BLE001
            _fail(err)

    def query_key(text: str, layer: int, head: int, model: str | None = None, pair: str | None = None,
                  stack: str | None = None) -> dict:
        """Query and key vectors of one head (float lists [T][head_dim]), their scale and the tokens."""
        try:
            _, a = _analysis(model, text, pair)
            _check_layer_head(a, int(layer), int(head), _none_if_blank(stack))
            if int(head) < 0:
                raise InputError("query_key needs one head (0 or more)")
            s = a.stack(_none_if_blank(stack))
            q, k = s.query_key(int(layer), int(head))
            return {"tokens": list(a.tokens), "queries": q.tolist(), "keys": k.tolist(),
                    "scale": float(s.scales[int(layer)]), "layer": int(layer), "head": int(head)}
        except Exception as err:  # noqa: BLE001
            _fail(err)

    def neuron(text: str, layer: int, head: int, token: int, model: str | None = None, pair: str | None = None,
               stack: str | None = None) -> dict:
        """Every term of one query token's attention in one head: query, keys, products, dot, scaled, softmax."""
        try:
            _, a = _analysis(model, text, pair)
            _check_layer_head(a, int(layer), int(head), _none_if_blank(stack))
            terms = a.score_terms(int(layer), int(head), int(token), _none_if_blank(stack))
            out = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in terms.items()}
            out["scale"] = float(out["scale"])
            out["tokens"] = list(a.tokens)
            return out
        except Exception as err:  # noqa: BLE001
            _fail(err)

    def info(model: str | None = None) -> dict:
        """The model's kind, layers, heads, token limit and whether it can mask."""
        try:
            return model_info((model or "").strip() or default_model)
        except Exception as err:  # noqa: BLE001
            _fail(err)

    gr.api(analyze, api_name="analyze")
    gr.api(attention, api_name="attention")
    gr.api(mask, api_name="mask")
    gr.api(query_key, api_name="query_key")
    gr.api(neuron, api_name="neuron")
    gr.api(info, api_name="model_info")


PAGE_CSS = """
#xh-header h3 { margin-bottom: 0.1em; }
#xh-message:empty { display: none; }
"""


def launch_options() -> dict:
    """Page-level options Gradio 6 takes in launch(): the shared JS of the views, CSS and theme."""
    return {"head": common_head(), "css": PAGE_CSS, "theme": gr.themes.Default(primary_hue="blue")}


def launch(model: str = DEFAULT_MODEL, *, corpus=None, **launch_kwargs):
    """Build the app for ``model`` and launch it; ``launch_kwargs`` go to ``gr.Blocks.launch``."""
    demo = build_app(model, corpus=corpus)
    options = launch_options()
    extra_head = launch_kwargs.pop("head", None)
    if extra_head:
        options["head"] += "\n" + extra_head
    options.update(launch_kwargs)
    return demo.launch(**options)
