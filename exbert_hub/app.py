"""The exbert-hub Gradio app: one model, a text, and the tabs that show what the model does with it.

    >>> from exbert_hub.app import build_app, launch
    >>> launch("bert-base-uncased")                   # or: exbert-hub --model bert-base-uncased

The app only composes tabs (exbert_hub/tabs: one module per tab, one small protocol) around the shared
parts: the model and text boxes, the banner, deep links and the one AnalysisStore (exbert_hub.service).
Big data is never in the initial page: the first analysis runs in ``demo.load`` (which also reads the
deep-link query parameters).
"""

import html
import logging
import re
import warnings

import gradio as gr

from . import engine as _engine
from .analysis import ENCODER_DECODER, Analysis, kind_phrase
from .budget import Budget
from .errors import ExbertError, user_message
from .inputs import as_text
from .policy import Policy, is_remote
from .resolve import DEFAULT_MODEL
from .service import (PAIR_KINDS, STORE, AnalysisStore, Request, attention_matrix, get_engine, model_info,  # noqa: F401
                      summarize)
from .tabs import TABS, AppContext, Tab
from .tabs.base import api_error, banner, link_float, link_int, link_int_list
from .hub.embed import embed_head  # ?embed=1: one view, no page chrome (H10)
from .views import common_head
from .views.explorer import DEFAULT_THRESHOLD

log = logging.getLogger(__name__)

# Gradio's queue sets pandas options that pandas 3 deprecates, once per call: not ours to fix, and it
# filled the server log. (Our own deprecations are fixed, not hidden.)
warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"gradio\.queueing")

DEFAULT_TEXT = "The cat sat on the mat because it was tired."
PAIR_LABEL = "Sentence B (optional, encoders)"
DECODER_LABEL = "Decoder text (encoder-decoders; empty: the text itself)"
TAB_IDS = tuple(t.id for t in TABS)


def _header(eng) -> str:
    can = " · double-click a token to mask it" if eng.can_mask else ""
    return (
        f'<h3 class="xh-title">exbert-hub · <code>{html.escape(eng.name)}</code></h3>'
        f'<p class="xh-sub"><b>{html.escape(eng.kind)}</b> · {eng.num_layers} layers × {eng.num_heads} heads · '
        f"up to {eng.token_limit:,} tokens{can}</p>"
    )


def _analysis_notes(a: Analysis) -> list[str]:
    """What the banner says about an analysis while it is shown (e.g. that its text was cut)."""
    if a.truncated:
        return [f"The text was cut to the first {len(a.tokens):,} tokens ({a.dropped_tokens:,} dropped)."]
    return []


def _strip_banner(html_banner: str) -> str:
    """The plain text of a banner (for composing a second message from it)."""
    text = re.sub(r"<[^>]+>", "", html_banner or "")
    return " ".join(html.unescape(text).replace("\u26a0", "").replace("\u2139", "").split())


def _none_if_blank(s: str | None) -> str | None:
    return s if s and s.strip() else None


def link_view(query: dict) -> dict:
    """The view state a deep link asks for (see tabs.base); tabs find their own keys in ``query``."""
    return {
        "layer": link_int(query.get("layer"), 0),
        "heads": link_int_list(query.get("heads")),
        "token": link_int(query.get("token")),
        "threshold": link_float(query.get("threshold"), DEFAULT_THRESHOLD),
        "hide_special": query.get("hide") in ("1", "true", "yes"),
        "query": dict(query),
    }


def build_app(model: str = DEFAULT_MODEL, *, corpus=None, store: AnalysisStore | None = None,
              policy: Policy | None = None, tabs: tuple[type[Tab], ...] = TABS) -> gr.Blocks:
    """The Gradio Blocks of exbert-hub for ``model`` (any name the engine resolves).

    corpus: the corpus the search tab opens by default (folder, Hub dataset id or Corpus; see
    exbert_hub.search_ui), or None (the user can name one in the tab).
    policy: what visitors may load (models, corpora, sizes, one memory budget; see exbert_hub.policy);
    default: ``Policy.from_env()`` (Space variables). The launch model and corpus are always allowed.
    tabs: the tab classes to show, in order (default: exbert_hub.tabs.TABS).
    Launch it with :func:`launch` (which adds the page-level head, CSS and theme), or call
    ``demo.launch(**launch_options())``.
    """
    policy = (policy or Policy.from_env()).with_operator(
        [model], [corpus] if isinstance(corpus, str) else [])
    # one budget: every cache of the process takes its share (exbert_hub.policy)
    _engine.MODEL_CACHE.max_bytes = min(_engine.MODEL_CACHE.max_bytes, policy.model_cache_bytes)
    from .corpus import CORPUS_CACHE

    CORPUS_CACHE.configure(max_bytes=min(CORPUS_CACHE.max_bytes, policy.corpus_cache_bytes))
    if store is None:  # (an empty store is falsy: it has a length)
        store = AnalysisStore(max_bytes=policy.analysis_cache_bytes)
    if store.budget is None:
        store.budget = Budget(policy.in_flight_bytes)

    def engine_for(name: str, request=None):
        """A visitor's model, checked against the policy (the operator's launch model always passes)."""
        return get_engine(name, policy=policy, remote=is_remote(request))

    ctx = AppContext(default_model=model, policy=policy, store=store, corpus=corpus, engine_for=engine_for,
                     banner=banner)
    tab_list = [cls() for cls in tabs]
    components: dict[str, gr.Component] = {}  # tab id -> the component that shows an analysis

    def tab_value(tab_id: str, key: str, a: Analysis, eng, view: dict | None):
        """The value of a tab's component for an analysis (only the visible tab's is built: MBs at 1k tokens)."""
        tab = next(t for t in tab_list if t.id == tab_id)
        return tab.value(ctx, key, a, eng, view or {})

    def run(model_name: str, text: str, pair: str | None, mask=(), view: dict | None = None,
            tab: str = "explorer", request=None, shown_key: str | None = None) -> dict:
        """Outputs for a successful analysis, or the banner (and nothing else changed) on failure.

        On failure the model box goes back to the model the views show (``shown_key``'s), so what the
        page says and what it draws agree.
        """
        tab = tab if tab in TAB_IDS else tab_list[0].id
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
            value = tab_value(tab, key, a, eng, view) if tab in components else None
        except Exception as err:  # noqa: BLE001 - users see a message, never a trace
            log.warning("analysis failed: %s", err, exc_info=not isinstance(err, ExbertError))
            out = {message: banner(user_message(err))}
            shown_model = store.model_of(shown_key)
            if shown_model is not None:
                out[model_box] = shown_model
            return out
        note += _analysis_notes(a)
        out = {
            header: _header(eng),
            message: banner(" ".join(note), "info") if note else "",
            model_box: req.model,
            key_state: key,
            pair_box: gr.update(visible=eng.kind in PAIR_KINDS or eng.kind == ENCODER_DECODER,
                                label=DECODER_LABEL if eng.kind == ENCODER_DECODER else PAIR_LABEL),
            view_state: {k: v for k, v in (view or {}).items() if k != "keep_view"},
            shown_state: {tab: key},
            tab_state: tab,
        }
        if value is not None:
            out[components[tab]] = value
        return out

    def on_tab(tab_id: str):
        def select(key, shown, view):
            out = {tab_state: tab_id}
            if not key or (shown or {}).get(tab_id) == key or tab_id not in components:
                return out
            try:
                a = store.get(key)
                eng = engine_for(store.request(key).model, None)
                value = tab_value(tab_id, key, a, eng, view)
            except Exception as err:  # noqa: BLE001
                log.warning("the %s tab failed: %s", tab_id, err, exc_info=not isinstance(err, ExbertError))
                out[message] = banner(user_message(err))
                return out
            if value is not None:
                out[components[tab_id]] = value
                out[shown_state] = {**(shown or {}), tab_id: key}
            out[message] = banner(" ".join(_analysis_notes(a)), "info")  # an earlier error is over
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
                pair_box = gr.Textbox(value="", label=PAIR_LABEL, lines=1, max_lines=4,
                                      elem_id="xh-pair")
            with gr.Column(scale=1, min_width=120):
                analyze_btn = gr.Button("Analyze", variant="primary", elem_id="xh-analyze")
        message = gr.HTML("", elem_id="xh-message", padding=False)
        key_state = gr.State(None)  # the AnalysisStore key of the analysis shown
        view_state = gr.State({})  # layer/heads/token... from the link or the last mask (for views built later)
        shown_state = gr.State({})  # tab -> key of the analysis its view shows
        tab_state = gr.State(tab_list[0].id)
        ctx.model_box, ctx.text_box, ctx.pair_box, ctx.message = model_box, text_box, pair_box, message
        ctx.key_state, ctx.view_state = key_state, view_state

        items: dict[str, gr.Tab] = {}
        with gr.Tabs(selected=tab_list[0].id, elem_id="xh-tabs") as tabs_box:
            for tab in tab_list:
                with gr.Tab(tab.label, id=tab.id, elem_id=f"xh-tab-{tab.id}") as item:
                    tab.item = item
                    component = tab.build(ctx)
                items[tab.id] = item
                if component is not None:
                    components[tab.id] = component

        outputs = [header, message, key_state, pair_box, view_state, shown_state, tab_state, model_box,
                   *components.values()]
        ctx.run, ctx.outputs = run, outputs

        # --- deep links: read the URL once the page is up ----------------------------------------
        def on_load(request: gr.Request):
            q = dict(request.query_params) if request is not None else {}
            name = q.get("model") or model
            text = q.get("text") or DEFAULT_TEXT
            pair = q.get("pair") or ""
            mask = link_int_list(q.get("mask")) or []
            view = link_view(q)
            tab = q.get("tab") if q.get("tab") in TAB_IDS else tab_list[0].id
            out = run(name, text, pair, mask, view, tab, request)
            if key_state not in out and mask:  # the model refused the link's mask (a special token, past the end)
                refused = out.get(message, "")
                out = run(name, text, pair, (), view, tab, request)
                if key_state in out:
                    out[message] = banner(f"{_strip_banner(refused)} Showing the text unmasked.", "info")
            if key_state not in out and name != model:  # a bad model in the link: fall back
                first = out.get(message, "")
                out = run(model, text, pair, (), view, tab, request)
                if key_state in out:
                    out[message] = banner(f"{_strip_banner(first)} Showing {model} instead.")
                name = model
            out[model_box] = name
            out[text_box] = text
            out[pair_box] = {**out.get(pair_box, gr.update()), "value": pair}  # (label and visibility from run)
            if tab != tab_list[0].id:
                out[tabs_box] = gr.Tabs(selected=tab)
            return out

        demo.load(on_load, inputs=None, outputs=[*outputs, text_box, tabs_box], api_visibility="private").then(
            None, None, None, js="() => { if (window.exbertHub) window.exbertHub.ready = true; }")

        def on_analyze(model_name, text, pair, tab, key, request: gr.Request):
            return run(model_name, text, pair, (), {"keep_view": True}, tab, request, shown_key=key)

        analyze_evt = dict(fn=on_analyze, inputs=[model_box, text_box, pair_box, tab_state, key_state], outputs=outputs,
                           api_visibility="private")
        analyze_btn.click(**analyze_evt)
        text_box.submit(**analyze_evt)
        model_box.submit(**analyze_evt)

        # --- a tab's view is built when it is first shown for an analysis; the tab is in the link --
        for tab_id, item in items.items():
            item.select(on_tab(tab_id), inputs=[key_state, shown_state, view_state],
                        outputs=[tab_state, shown_state, message, *components.values()], api_visibility="private")
            # (not before the first analysis arrived: the tab selected at mount must not overwrite the link)
            item.select(None, None, None, js=f"() => {{ const x = window.exbertHub; if (x && x.ready) x.setUrlParams({{tab: '{tab_id}'}}); }}")

        for tab in tab_list:
            tab.wire(ctx)
        # --- HTTP API (gradio_client); documented in README.md --------------------------------------
        for tab in tab_list:
            tab.api(ctx)

        def info(model: str | None = None, request: gr.Request = None) -> dict:
            """The model's kind, layers, heads, token limit and whether it can mask."""
            try:
                name = as_text(model, "model", optional=True) or ctx.default_model
                return model_info(engine_for(name.strip(), request))
            except Exception as err:  # noqa: BLE001
                raise api_error(err) from None

        gr.api(info, api_name="model_info")

    return demo


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
    return {"head": common_head() + embed_head(), "css": PAGE_CSS, "theme": theme}


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
