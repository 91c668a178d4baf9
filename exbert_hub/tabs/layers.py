"""The Layers tab: a set of examples through every layer of one or two models (the layers view).

The visitor chooses the example set (typed lines, a Hub dataset id, a local file for the operator, or
the sentences of the app's corpus) and its columns, the projection and optionally a second model;
``analyze_examples`` runs with a progress bar, and the view shows the result.

Endpoints (documented in the README): ``/layers_head_summary``, ``/layers_projection`` and
``/layers_distances``: each takes the same example-set arguments as the tab and answers from the same
cached analysis.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import gradio as gr
import numpy as np

from ..errors import InputError, user_message
from ..examples import DEFAULT_LIMIT, MAX_TEXT_CHARS, ExamplesAnalysis, analyze_examples, load_examples
from ..inputs import as_int, as_int_list, as_text
from ..policy import is_remote
from ..resolve import cache_dir
from ..views.layers_view import (
    LayersData,
    LayersStore,
    LayersView,
    ModelLayers,
    PointSet,
    distance_groups,
    head_summary,
)
from .base import AppContext, Tab, api_error, link_int

SOURCES = ("lines", "dataset", "corpus")
METHODS = ("pca", "umap", "tsne")
MAX_LINES_CHARS = 200_000  # the typed-lines box
MAX_COLUMNS = 16  # label or span columns named at once
MAX_API_POINTS = 50_000  # points one /layers_projection answer may hold


@dataclass(frozen=True)
class ExamplesRequest:
    """What the visitor asked for: checked and bounded; ``key`` identifies the analysis in the cache."""

    source: str
    value: str
    text: str = "text"
    pair: str | None = None
    labels: tuple[str, ...] = ()
    spans: tuple[str, ...] = ()
    split: str | None = None
    limit: int = DEFAULT_LIMIT

    @property
    def key(self) -> tuple:
        return (self.source, self.value, self.text, self.pair, self.labels, self.spans, self.split, self.limit)


def _columns(value, name: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, (list, tuple)):
        items = [as_text(v, name) for v in value]
    else:
        items = (as_text(value, name, max_chars=2_000) or "").split(",")
    cols = tuple(c.strip() for c in items if c and c.strip())
    if len(cols) > MAX_COLUMNS:
        raise InputError(f"{name} names {len(cols)} columns; at most {MAX_COLUMNS}")
    return cols


def examples_request(source, value, text="text", pair=None, labels=None, spans=None, split=None,
                     limit=DEFAULT_LIMIT) -> ExamplesRequest:
    """An :class:`ExamplesRequest` from visitor input (the tab's boxes, an API call or a deep link)."""
    source = (as_text(source, "source", optional=True) or "lines").strip().lower()
    if source not in SOURCES:
        raise InputError(f"source must be one of {', '.join(SOURCES)}, got {source[:40]!r}")
    value = as_text(value, "examples", optional=True, max_chars=MAX_LINES_CHARS) or ""
    if source != "corpus" and not value.strip():
        raise InputError("examples is empty: type one example per line, or give a Hub dataset id or a file")
    return ExamplesRequest(
        source, value.strip() if source != "lines" else value,
        (as_text(text, "text column", optional=True) or "text").strip(),
        (as_text(pair, "pair column", optional=True) or "").strip() or None,
        _columns(labels, "label columns"), _columns(spans, "span columns"),
        (as_text(split, "split", optional=True) or "").strip() or None,
        as_int(limit, "number of examples", lo=1, hi=DEFAULT_LIMIT),
    )


def load_request(req: ExamplesRequest, *, remote: bool, local_paths: bool, corpus=None):
    """The ExampleSet of a request. Visitors (``remote``) may name Hub datasets but not local files
    unless the policy allows local paths; "corpus" is the app's own corpus (its first ``limit`` sentences)."""
    if req.source == "lines":
        lines = [ln.strip() for ln in req.value.splitlines() if ln.strip()]
        too_long = next((i for i, ln in enumerate(lines) if len(ln) > MAX_TEXT_CHARS), None)
        if too_long is not None:
            raise InputError(f"line {too_long + 1} has {len(lines[too_long]):,} characters; the limit is {MAX_TEXT_CHARS:,}")
        return load_examples(lines, limit=req.limit)
    if req.source == "corpus":
        if corpus is None:
            raise InputError("this app has no corpus: type the examples or give a Hub dataset id")
        n = min(len(corpus), req.limit)
        return load_examples([corpus.sentence(i) for i in range(n)], limit=req.limit)
    name = req.value
    looks_local = name.startswith(("/", ".", "~")) or name.endswith((".jsonl", ".json", ".csv", ".parquet")) or "\\" in name
    if looks_local and remote and not local_paths:
        raise InputError("files on the server cannot be opened from this page: give a Hub dataset id (owner/name)")
    return load_examples(name, text=req.text, pair=req.pair, labels=list(req.labels), spans=list(req.spans),
                         limit=req.limit, split=req.split)


# --------------------------------------------------------------------------------------------------
# from an ExamplesAnalysis to what the view draws
# --------------------------------------------------------------------------------------------------
def _model_layers(r: ExamplesAnalysis, method: str, engine=None) -> ModelLayers:
    ex = r.examples
    keep = np.asarray([not bool(r.special[e][t]) for e, t in zip(r.row_example, r.row_token)], dtype=bool)
    rows = np.flatnonzero(keep)
    offsets = np.zeros((rows.size, 2), dtype=np.int64)
    text = []
    for k, i in enumerate(rows):
        e, t = int(r.row_example[i]), int(r.row_token[i])
        s, f = (int(v) for v in r.offsets[e][t])
        base = ex.texts[e]
        if int(r.segments[e][t]) == 1 and ex.pairs is not None:  # offsets into the pair: shift past text + "\n"
            text.append(ex.pairs[e][s:f])
            s, f = s + len(base) + 1, f + len(base) + 1
        else:
            text.append(base[s:f])
        offsets[k] = (s, f)
    tags: dict[str, list[str]] = {}
    if any(r.pos):
        tags.update({"POS": [r.pos[i] for i in rows], "DEP": [r.dep[i] for i in rows], "entity": [r.ent[i] or "" for i in rows]})
    names = ex.span_names
    if names:
        bits = r.row_spans[rows]
        tags["span"] = [" + ".join(n for s, n in enumerate(names) if (b >> s) & 1) for b in bits]
    if r.token_prediction is not None:
        tags["token prediction"] = [str(r.token_prediction[i]) for i in rows]
    distances = {}
    if len(names) >= 2:
        for metric in ("cosine", "euclidean"):
            distances[metric] = np.ascontiguousarray(r.span_distance_values(metric, "hidden").T)
        distances[f"{method.upper()} 2-D (display)"] = np.ascontiguousarray(r.span_distance_values("euclidean", method).T)

    def coords(layer: int) -> np.ndarray:
        return r.projection(method)[layer][rows]

    def analyze(e: int):
        eng = engine or r._engine
        if eng is None:
            raise InputError("this analysis was opened without its model")
        return eng.analyze(ex.texts[e], pair=None if ex.pairs is None else ex.pairs[e])

    return ModelLayers(
        name=r.model_name, num_layers=r.num_layers, num_heads=r.num_heads,
        points=PointSet(r.row_example[rows], r.row_token[rows], text, offsets, tags),
        coords=coords, head_stats=dict(r.head_stats), distances=distances,
        predictions=None if r.prediction is None else list(r.prediction),
        probabilities=None if r.probability is None else np.asarray(r.probability),
        analyze=analyze if (engine or r._engine) is not None else None, method=method,
    )


def layers_data(results: list[ExamplesAnalysis], method: str = "pca", engines=None, gold: str | None = None) -> LayersData:
    """The :class:`LayersData` of one or two ExamplesAnalysis of the same example set.

    gold: the label column holding the gold label (default: "label" when there is one, else the first)."""
    if method not in METHODS:
        raise InputError(f"projection must be one of {', '.join(METHODS)}, got {str(method)[:40]!r}")
    ex = results[0].examples
    for r in results[1:]:
        if r.examples.fingerprint != ex.fingerprint:
            raise InputError("the two models must be analysed on the same example set")
    engines = list(engines or [None] * len(results))
    labels = dict(ex.labels)
    if gold is None and labels:
        gold = "label" if "label" in labels else next(iter(labels))
    title = f"{len(ex):,} examples from {ex.source}" + (f" \u00b7 span A = {ex.span_names[0]}, span B = {ex.span_names[1]}"
                                                        if len(ex.span_names) >= 2 else "")
    return LayersData(list(ex.texts), [_model_layers(r, method, e) for r, e in zip(results, engines)],
                      labels, gold=gold, pairs=None if ex.pairs is None else list(ex.pairs), title=title)


class ExamplesCache:
    """The analyses of example sets this app made, by (model, request): a small LRU (disk cache below)."""

    def __init__(self, max_items: int = 6):
        self.max_items = max_items
        self._items: OrderedDict[tuple, ExamplesAnalysis] = OrderedDict()
        self._lock = threading.Lock()

    def __copy__(self):
        return self

    def __deepcopy__(self, memo):
        return self

    def get(self, key: tuple, make) -> ExamplesAnalysis:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = make()
        with self._lock:
            self._items[key] = value
            while len(self._items) > self.max_items:
                self._items.popitem(last=False)
        return value


# --------------------------------------------------------------------------------------------------
# the tab
# --------------------------------------------------------------------------------------------------
class LayersTab(Tab):
    id = "layers"
    label = "Layers"

    def __init__(self):
        self.cache = ExamplesCache()
        self.store = LayersStore(max_items=8)

    # one place that turns visitor input into analyses (the tab, the endpoints, deep links)
    def analyses(self, ctx: AppContext, req: ExamplesRequest, models: list[str], request=None, progress=None):
        engines = [ctx.engine_for(m, request) for m in models]
        remote = is_remote(request)
        corpus = None
        if req.source == "corpus":
            corpus = self._corpus(ctx)
        examples = None
        out = []
        for eng in engines:
            def make(eng=eng):
                nonlocal examples
                if examples is None:
                    examples = load_request(req, remote=remote, local_paths=bool(ctx.policy.local_paths), corpus=corpus)
                if progress is not None:
                    progress(0, desc=f"{eng.name}: {len(examples):,} examples")
                return analyze_examples(eng, examples, progress=progress is not None, cache_dir=cache_dir() / "examples")
            out.append(self.cache.get((eng.name, req.key), make))
        return engines, out

    @staticmethod
    def _corpus(ctx: AppContext):
        from ..corpus import Corpus
        from ..search_ui import open_corpus

        ref = ctx.corpus
        if ref is None:
            return None
        return ref if isinstance(ref, Corpus) else open_corpus(ref, ctx.default_model)

    def build(self, ctx: AppContext) -> gr.Component:
        with gr.Row(equal_height=False):
            with gr.Column(scale=3):
                self.source = gr.Radio([("Typed lines", "lines"), ("Hub dataset or file", "dataset"),
                                        ("The corpus's sentences", "corpus")], value="lines", label="Examples from",
                                       elem_id="xl-source")
                self.examples_box = gr.Textbox(label="Examples: one per line, or a Hub dataset id (owner/name)",
                                               lines=4, max_lines=12, elem_id="xl-examples-box",
                                               placeholder="The trophy did not fit into the suitcase because it was too big.")
            with gr.Column(scale=2):
                with gr.Row():
                    self.text_col = gr.Textbox(value="text", label="Text column", elem_id="xl-text-col", min_width=100)
                    self.pair_col = gr.Textbox(label="Pair column", elem_id="xl-pair-col", min_width=100)
                    self.split = gr.Textbox(label="Split", placeholder="train", elem_id="xl-split", min_width=90)
                with gr.Row():
                    self.label_cols = gr.Textbox(label="Label columns (comma-separated)", elem_id="xl-label-cols", min_width=140)
                    self.span_cols = gr.Textbox(label="Span columns (A, B)", elem_id="xl-span-cols", min_width=140)
            with gr.Column(scale=2):
                with gr.Row():
                    self.limit = gr.Number(value=500, minimum=1, maximum=DEFAULT_LIMIT, precision=0,
                                           label=f"Examples (at most {DEFAULT_LIMIT:,})", elem_id="xl-limit", min_width=100)
                    self.method = gr.Dropdown([("PCA", "pca"), ("UMAP", "umap"), ("t-SNE", "tsne")], value="pca",
                                              label="Projection", elem_id="xl-method", min_width=100)
                self.second_model = gr.Textbox(label="Second model (optional, to compare)", elem_id="xl-second-model")
                self.run_btn = gr.Button("Analyze examples", variant="primary", elem_id="xl-run")
        self.status = gr.HTML("", elem_id="xl-status")
        self.view = LayersView(None, store=self.store, elem_id="xl-layers-view")
        self.selection = gr.State(None)
        self.view.select_examples(self._on_select, None, self.selection, api_visibility="private")
        return self.view

    def value(self, ctx, key, analysis, engine, view):
        """A deep link naming an example set (``ly_examples``...) opens it with the shown model; else None."""
        q = (view or {}).get("query") or {}
        link = request_from_link(q)
        if link is None:
            return None
        req, method, second = link
        models = [engine.name] + ([second] if second else [])
        engines, results = self.analyses(ctx, req, models)
        data = layers_data(results, method, engines)
        return self.view.payload(data, layer=_link_layer(q, data), statistic=_link_stat(q, data),
                                 example=_link_example(q, data), color=q.get("ly_color"), link=_link_of(req, method, second))

    @staticmethod
    def _on_select(evt: gr.EventData):
        data = getattr(evt, "_data", None) or {}
        return None if data.get("all") else [int(e) for e in data.get("examples", [])][:DEFAULT_LIMIT]

    def wire(self, ctx: AppContext) -> None:
        def on_run(model, second, source, value, text, pair, labels, spans, split, limit, method, view,
                   request: gr.Request, progress=gr.Progress(track_tqdm=True)):
            try:
                req = examples_request(source, value, text, pair, labels, spans, split, limit)
                method = method if method in METHODS else "pca"
                models = [(as_text(model, "model", optional=True) or ctx.default_model).strip()]
                second = (as_text(second, "second model", optional=True) or "").strip()
                if second:
                    models.append(second)
                progress(0, desc="loading the examples")
                engines, results = self.analyses(ctx, req, models, request, progress)
                progress(0.9, desc=f"{method.upper()} projection")
                data = layers_data(results, method, engines)
                q = (view or {}).get("query") or {}
                payload = self.view.payload(data, layer=_link_layer(q, data), statistic=_link_stat(q, data),
                                            example=_link_example(q, data), color=q.get("ly_color"),
                                            link=_link_of(req, method, second))
            except Exception as err:  # noqa: BLE001 - one line in the banner
                return gr.update(), ctx.banner(user_message(err)), ""
            return payload, "", _status(data)

        self.run_btn.click(
            on_run,
            inputs=[ctx.model_box, self.second_model, self.source, self.examples_box, self.text_col, self.pair_col,
                    self.label_cols, self.span_cols, self.split, self.limit, self.method, ctx.view_state],
            outputs=[self.view, ctx.message, self.status],
            api_visibility="private",
        )

    def api(self, ctx: AppContext) -> None:
        def _data(model, examples, source, text, pair, labels, spans, split, limit, method, second_model, request):
            req = examples_request(source, examples, text, pair, labels, spans, split, limit)
            models = [(as_text(model, "model", optional=True) or ctx.default_model).strip()]
            if as_text(second_model, "second_model", optional=True):
                models.append(second_model.strip())
            engines, results = self.analyses(ctx, req, models, request)
            return layers_data(results, method or "pca", engines)

        def layers_head_summary(examples: str, statistic: str = "std", model: str | None = None,
                                source: str = "lines", text: str = "text", pair: str | None = None,
                                labels: str | None = None, spans: str | None = None, split: str | None = None,
                                limit: int = DEFAULT_LIMIT, select: list[int] | None = None,
                                second_model: str | None = None, which: str = "0",
                                request: gr.Request = None) -> dict:
            """Head summary of an example set: the mean of a head statistic (std, entropy, ...) per layer and
            head over the selected examples (all by default); which = "0", "1" (second model) or "diff"."""
            try:
                data = _data(model, examples, source, text, pair, labels, spans, split, limit, "pca", second_model, request)
                sel = as_int_list(select, "select")
                w = "diff" if which == "diff" else as_int(which, "which", lo=0, hi=len(data.models) - 1)
                z = head_summary(data, as_text(statistic, "statistic"), sel, model=w)
                return {"statistic": statistic, "models": [m.name for m in data.models], "which": which,
                        "examples": len(sel) if sel else data.num_examples, "statistics": list(data.models[0].head_stats),
                        "summary": [[None if not np.isfinite(v) else round(float(v), 7) for v in row] for row in z]}
            except Exception as err:  # noqa: BLE001
                raise api_error(err) from None

        def layers_projection(examples: str, layer: int = -1, method: str = "pca", model: str | None = None,
                              source: str = "lines", text: str = "text", pair: str | None = None,
                              labels: str | None = None, spans: str | None = None, split: str | None = None,
                              limit: int = DEFAULT_LIMIT, request: gr.Request = None) -> dict:
            """2-D projection (pca, umap or tsne, aligned across layers) of the tracked tokens at one hidden
            state (0 = embeddings, -1 = the last): per point its example, token index, token text and x, y."""
            try:
                if method not in METHODS:
                    raise InputError(f"method must be one of {', '.join(METHODS)}")
                data = _data(model, examples, source, text, pair, labels, spans, split, limit, method, None, request)
                m = data.models[0]
                lay = as_int(layer, "layer", lo=-1, hi=m.num_states - 1)
                lay = m.num_states - 1 if lay == -1 else lay
                if len(m.points) > MAX_API_POINTS:
                    raise InputError(f"{len(m.points):,} points; this endpoint answers at most {MAX_API_POINTS:,}: ask for fewer examples")
                xy = m.layer_coords(lay)
                return {"model": m.name, "method": method, "layer": lay, "states": m.num_states,
                        "example": m.points.example.tolist(), "token": m.points.token.tolist(), "text": m.points.text,
                        "x": [round(float(v), 5) for v in xy[:, 0]], "y": [round(float(v), 5) for v in xy[:, 1]]}
            except Exception as err:  # noqa: BLE001
                raise api_error(err) from None

        def layers_distances(examples: str, metric: str = "cosine", group_by: str | None = None,
                             model: str | None = None, source: str = "lines", text: str = "text",
                             pair: str | None = None, labels: str | None = None, spans: str | None = None,
                             split: str | None = None, limit: int = DEFAULT_LIMIT, select: list[int] | None = None,
                             request: gr.Request = None) -> dict:
            """Mean distance per layer (0 = embeddings) between span A and span B of each example, per group of
            the label column group_by (default the gold column), and their difference for two groups;
            metric = cosine or euclidean (full hidden space) or the projection's 2-D distance."""
            try:
                data = _data(model, examples, source, text, pair, labels, spans, split, limit, "pca", None, request)
                out = distance_groups(data, as_text(metric, "metric"), as_int_list(select, "select"),
                                      group_by=as_text(group_by, "group_by", optional=True))
                return {"model": data.models[0].name, "metric": metric, "metrics": list(data.models[0].distances),
                        "groups": {g: [round(float(v), 7) for v in arr] for g, arr in out.items()}}
            except Exception as err:  # noqa: BLE001
                raise api_error(err) from None

        gr.api(layers_head_summary, api_name="layers_head_summary")
        gr.api(layers_projection, api_name="layers_projection")
        gr.api(layers_distances, api_name="layers_distances")


def _status(data: LayersData) -> str:
    import html

    m = data.models
    names = " and ".join(html.escape(x.name) for x in m)
    return (f'<div class="xh-hint">{data.num_examples:,} examples, {len(m[0].points):,} tracked tokens, '
            f'{m[0].num_layers} layers x {m[0].num_heads} heads \u00b7 {names}</div>')


LINK_MAX_CHARS = 1_500  # typed lines longer than this are not put into the address


def _link_of(req: ExamplesRequest, method: str, second: str | None) -> dict:
    """The example set's deep-link parameters (the view writes them into the address)."""
    if req.source == "lines" and len(req.value) > LINK_MAX_CHARS:
        return {}
    return {"ly_source": req.source, "ly_examples": req.value or None, "ly_text": None if req.text == "text" else req.text,
            "ly_pair": req.pair, "ly_labels": ",".join(req.labels) or None, "ly_spans": ",".join(req.spans) or None,
            "ly_split": req.split, "ly_limit": None if req.limit == DEFAULT_LIMIT else str(req.limit),
            "ly_method": None if method == "pca" else method, "ly_model2": second or None}


def request_from_link(q: dict) -> tuple[ExamplesRequest, str, str | None] | None:
    """(request, method, second model) from deep-link parameters, or None without ``ly_examples``/corpus."""
    source = q.get("ly_source") or "lines"
    if not q.get("ly_examples") and source != "corpus":
        return None
    req = examples_request(source, q.get("ly_examples") or "", q.get("ly_text") or "text", q.get("ly_pair"),
                           q.get("ly_labels"), q.get("ly_spans"), q.get("ly_split"), link_int(q.get("ly_limit"), DEFAULT_LIMIT))
    method = q.get("ly_method") if q.get("ly_method") in METHODS else "pca"
    return req, method, (q.get("ly_model2") or "").strip() or None


def _link_layer(q: dict, data: LayersData) -> int | None:
    v = link_int(q.get("ly_layer"))
    return v if v is not None and 0 <= v < data.models[0].num_states else None


def _link_stat(q: dict, data: LayersData) -> str | None:
    v = q.get("ly_stat")
    return v if v in data.models[0].head_stats else None


def _link_example(q: dict, data: LayersData) -> int | None:
    v = link_int(q.get("ly_example"))
    return v if v is not None and 0 <= v < data.num_examples else None
