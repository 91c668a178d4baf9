"""Layers view: a set of examples through every layer (InterpreT's plots, computed on demand).

For one or two models over one example set it shows
  * a projection scatter (plotly scattergl) of the tracked tokens with a layer slider; colour by any
    label column, POS/DEP/entity, span, prediction or correct/wrong; hover shows the token in its
    sentence; the selected example's tokens are stars with their path through the layers; box/lasso
    selection (sent back to Python as the ``select_examples`` event);
  * a head summary heatmap (layers x heads) of one statistic, the mean over the selected examples (or
    all); a click opens that head for the selected example as a matrix (heatmap) and as lines (the head
    view's line panel);
  * distances per layer between span A and span B of each example, one line per group and their
    difference;
  * a summary table (example, gold, prediction, probability, correct).
Every plot follows the selection.

    >>> view = LayersView()                            # in a gr.Blocks; empty until given a value
    >>> btn.click(lambda: view.payload(data), None, view)   # data: a LayersData
    >>> view.select_examples(on_select, None, None)         # gr.EventData: {"examples": [...], "model": 0}

The view draws :class:`LayersData`, a plain container of numpy arrays (what the analysis of an example
set keeps); :func:`layers_payload` turns it into the component's value. Transport (never float JSON):
projection coordinates as uint16 quantised per layer and axis, head statistics and distances as
float32 base64, per-point categories as uint8/uint16 codes. Layers beyond ``prefetch_bytes`` and the
other statistics are fetched lazily through server functions. plotly.js comes from the ``plotly``
package through a server function (no CDN, no server path in the page) and is cached by the browser.
"""

from __future__ import annotations

import base64
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import gradio as gr
import numpy as np

from ..analysis import Analysis
from ..errors import ExbertError, InputError
from . import asset, common_head, theme_css
from .head_view import AnalysisStore, encode_float32, error_payload, line_panel_css, line_panel_js, sequences_payload

MAX_CATEGORIES = 24  # a colour column with more values shows the 23 most frequent and "other"
OTHER = "other"


# --------------------------------------------------------------------------------------------------
# what the view draws
# --------------------------------------------------------------------------------------------------
@dataclass
class PointSet:
    """The tracked tokens of one model (P points): which example and token each is, and its tags.

    example: int[P] example index; token: int[P] token index in that example's tokenization;
    text: P token strings; offsets: int[P, 2] character range in the example's text (pair text:
    offsets into ``text + "\\n" + pair``); tags: per-point categories, e.g. {"POS": [...], "DEP": [...],
    "entity": [...], "span": ["A", "B", "", ...]}.
    """

    example: np.ndarray
    token: np.ndarray
    text: list[str]
    offsets: np.ndarray
    tags: dict[str, list[str]] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(len(self.example))


@dataclass
class ModelLayers:
    """One model over the example set.

    coords: float32[layers + 1, P, 2] (row 0: the embeddings) or a callable layer -> float32[P, 2]
    (projections computed lazily) together with ``num_states`` = layers + 1.
    head_stats: statistic name -> float32[E, layers, heads] (per example, layer and head).
    distances: metric name -> float32[E, layers + 1], distance of span A to span B of each example at
    each hidden state (NaN where an example has no spans).
    predictions / probabilities: per example, the model's predicted label and its probability (or None).
    analyze: example index -> Analysis of that example alone (opens one head; None: heads cannot open).
    """

    name: str
    num_layers: int
    num_heads: int
    points: PointSet
    coords: np.ndarray | Callable[[int], np.ndarray]
    head_stats: dict[str, np.ndarray]
    distances: dict[str, np.ndarray] = field(default_factory=dict)
    predictions: list[str] | None = None
    probabilities: np.ndarray | None = None
    analyze: Callable[[int], Analysis] | None = None
    method: str = "pca"
    _cache: dict = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def num_states(self) -> int:
        return self.num_layers + 1

    def layer_coords(self, layer: int) -> np.ndarray:
        """float32[P, 2] projection of hidden state ``layer`` (0 = embeddings)."""
        if not 0 <= layer < self.num_states:
            raise InputError(f"layer {layer} is out of range: the model has hidden states 0 to {self.num_states - 1}")
        if not callable(self.coords):
            return np.asarray(self.coords[layer], dtype=np.float32)
        with self._lock:  # a projection is computed once per layer (UMAP/t-SNE are slow and not thread-safe)
            if layer not in self._cache:
                self._cache[layer] = np.asarray(self.coords(layer), dtype=np.float32)
            return self._cache[layer]


@dataclass
class LayersData:
    """One example set seen by one or two models.

    texts: E example texts; pairs: E second texts (or None); columns: per-example label columns
    (name -> E values, shown as text); gold: the column holding the gold label (or None);
    models: one or two :class:`ModelLayers` (two: compared side by side).
    """

    texts: list[str]
    models: list[ModelLayers]
    columns: dict[str, list[Any]] = field(default_factory=dict)
    gold: str | None = None
    pairs: list[str | None] | None = None
    title: str = ""

    def __post_init__(self):
        n = len(self.texts)
        if not self.models or len(self.models) > 2:
            raise InputError("the layers view shows one or two models")
        for name, col in self.columns.items():
            if len(col) != n:
                raise InputError(f"column {name!r} has {len(col)} values for {n} examples")
        if self.gold is not None and self.gold not in self.columns:
            raise InputError(f"the gold column {self.gold!r} is not one of the columns ({', '.join(self.columns) or 'none'})")
        for m in self.models:
            for stat, arr in m.head_stats.items():
                if arr.shape != (n, m.num_layers, m.num_heads):
                    raise InputError(f"{m.name}: statistic {stat!r} has shape {arr.shape}, expected {(n, m.num_layers, m.num_heads)}")

    @property
    def num_examples(self) -> int:
        return len(self.texts)

    def nbytes(self) -> int:
        total = 0
        for m in self.models:
            total += sum(int(a.nbytes) for a in m.head_stats.values())
            total += sum(int(a.nbytes) for a in m.distances.values())
            if not callable(m.coords):
                total += int(np.asarray(m.coords).nbytes)
            total += sum(int(a.nbytes) for a in m._cache.values())
        return total

    def model(self, index: int) -> ModelLayers:
        if not 0 <= int(index) < len(self.models):
            raise InputError(f"model {index} is out of range: this view has {len(self.models)} model(s)")
        return self.models[int(index)]

    def correct(self, model: int = 0) -> list[bool | None] | None:
        """Per example: prediction == gold (None where either is missing), or None without both."""
        m = self.model(model)
        if self.gold is None or m.predictions is None:
            return None
        gold = self.columns[self.gold]
        return [None if g is None or p is None else str(g) == str(p) for g, p in zip(gold, m.predictions)]


class LayersStore(AnalysisStore):
    """The store of the layers view: LayersData by random key, bounded by count and array bytes."""

    @staticmethod
    def _nbytes(data: LayersData) -> int:  # type: ignore[override]
        return data.nbytes()


DEFAULT_STORE = LayersStore(max_items=8, max_bytes=1_000_000_000)


# --------------------------------------------------------------------------------------------------
# the computations the plots show (Python side: the API and the tests use the same functions)
# --------------------------------------------------------------------------------------------------
def selected_examples(data: LayersData, examples: Sequence[int] | None) -> np.ndarray:
    """int[k] sorted unique example indices (None or empty: all examples)."""
    n = data.num_examples
    if examples is None or len(examples) == 0:
        return np.arange(n)
    idx = np.unique(np.asarray([int(e) for e in examples], dtype=np.int64))
    if idx[0] < 0 or idx[-1] >= n:
        raise InputError(f"examples must be indices from 0 to {n - 1}")
    return idx


def head_summary(data: LayersData, statistic: str, examples: Sequence[int] | None = None, *,
                 model: int | str = 0) -> np.ndarray:
    """float32[layers, heads]: the mean of ``statistic`` over the selected examples (None: all).

    model: 0 or 1, or "diff" (model 0 minus model 1, when both have the same layers and heads).
    Examples where a statistic is NaN (e.g. span intensity without spans) are left out of its mean.
    """
    idx = selected_examples(data, examples)
    if model == "diff":
        a, b = (head_summary(data, statistic, idx, model=i) for i in (0, 1))
        if a.shape != b.shape:
            raise InputError(f"the two models' heads differ ({a.shape[0]}x{a.shape[1]} and {b.shape[0]}x{b.shape[1]}): "
                             "show one model's summary instead of their difference")
        return a - b
    m = data.model(int(model))
    if statistic not in m.head_stats:
        raise InputError(f"statistic {statistic!r} is not one of {', '.join(m.head_stats)}")
    arr = m.head_stats[statistic][idx]
    with np.errstate(invalid="ignore"):
        return np.nanmean(arr, axis=0).astype(np.float32) if np.isnan(arr).any() else arr.mean(axis=0, dtype=np.float64).astype(np.float32)


def distance_groups(data: LayersData, metric: str, examples: Sequence[int] | None = None, *,
                    group_by: str | None = None, model: int = 0) -> dict[str, np.ndarray]:
    """Mean distance per layer of each group: group value -> float32[layers + 1] (NaN-free examples only).

    group_by: a label column (None: the gold column, or one group "all"). With exactly two groups the
    result also holds "difference" (first minus second, in sorted order of the group names).
    """
    m = data.model(model)
    if metric not in m.distances:
        raise InputError(f"distance {metric!r} is not one of {', '.join(m.distances) or 'none'}")
    idx = selected_examples(data, examples)
    group_by = group_by if group_by is not None else data.gold
    if group_by is not None and group_by not in data.columns:
        raise InputError(f"group_by {group_by!r} is not one of the columns ({', '.join(data.columns)})")
    values = ["all"] * data.num_examples if group_by is None else [str(v) for v in data.columns[group_by]]
    d = m.distances[metric]
    out: dict[str, np.ndarray] = {}
    for g in sorted({values[i] for i in idx}):
        rows = [i for i in idx if values[i] == g and not np.isnan(d[i]).all()]
        if rows:
            out[g] = d[rows].mean(axis=0, dtype=np.float64).astype(np.float32)
    groups = list(out)
    if len(groups) == 2:
        out["difference"] = out[groups[0]] - out[groups[1]]
    return out


# --------------------------------------------------------------------------------------------------
# two models: words in common (different tokenizers) and layers in common (different depths)
# --------------------------------------------------------------------------------------------------
WORD = re.compile(r"\w+|[^\w\s]")  # a word: a run of letters/digits/underscore, or one punctuation mark


def example_text(data: LayersData, e: int) -> str:
    """The string the points' offsets index for example ``e``: its text, or ``text + "\\n" + pair``."""
    pair = data.pairs[e] if data.pairs is not None else None
    return data.texts[e] + "\n" + pair if pair else data.texts[e]


def token_words(text: str, offsets: np.ndarray) -> np.ndarray:
    """int[T, 2]: for each character range ``[s, f)`` of ``offsets`` (int[T, 2]), the first and last
    index of the words of ``text`` (``WORD`` matches, in order) it overlaps; (0, -1) when it overlaps
    none (whitespace, or an empty range)."""
    spans = np.asarray([m.span() for m in WORD.finditer(text)], dtype=np.int64).reshape(-1, 2)
    offsets = np.asarray(offsets, dtype=np.int64).reshape(-1, 2)
    first = np.searchsorted(spans[:, 1], offsets[:, 0], side="right")  # first word ending after s
    last = np.searchsorted(spans[:, 0], offsets[:, 1], side="left") - 1  # last word starting before f
    empty = (first > last) | (offsets[:, 1] <= offsets[:, 0])
    out = np.stack([first, last], axis=1)
    out[empty] = (0, -1)
    return out


def align_points(data: LayersData, source: int = 0, target: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Which points of model ``target`` show the same words as each point of model ``source``.

    Tokens of two tokenizers are matched by word through their character offsets: point i of
    ``source`` and point j of ``target`` are aligned when they belong to the same example and the
    words (``WORD``) their character ranges overlap have one in common (so "un" + "##ha" + "##pp" +
    "##iness" and "Ġun" + "ha" + "pp" + "ine" + "ss" of "unhappiness" all align with each other).
    Returns CSR arrays ``(indptr int64[P_source + 1], indices int64[K])``: the target points of source
    point i are ``indices[indptr[i]:indptr[i + 1]]``, in increasing order."""
    a, b = data.model(source).points, data.model(target).points
    ea, eb = np.asarray(a.example, dtype=np.int64), np.asarray(b.example, dtype=np.int64)
    words_a = np.zeros((len(a), 2), dtype=np.int64)
    words_b = np.zeros((len(b), 2), dtype=np.int64)
    rows_b = {}
    for e in np.unique(np.concatenate([ea, eb])):
        text = example_text(data, int(e))
        ia, ib = np.flatnonzero(ea == e), np.flatnonzero(eb == e)
        words_a[ia] = token_words(text, np.asarray(a.offsets)[ia])
        words_b[ib] = token_words(text, np.asarray(b.offsets)[ib])
        rows_b[int(e)] = ib
    counts = np.zeros(len(a) + 1, dtype=np.int64)
    parts = []
    for e, ib in rows_b.items():
        ia = np.flatnonzero(ea == e)
        if not ia.size or not ib.size:
            continue
        fa, la = words_a[ia, :1], words_a[ia, 1:]
        fb, lb = words_b[ib, 0][None, :], words_b[ib, 1][None, :]
        hit = (fb <= la) & (fa <= lb)  # [|ia|, |ib|]: the word intervals intersect (empty ones never do)
        counts[ia + 1] = hit.sum(axis=1)
        parts.append((ia, [ib[row] for row in hit]))
    indptr = np.cumsum(counts)
    indices = np.zeros(int(indptr[-1]), dtype=np.int64)
    for ia, lists in parts:
        for i, js in zip(ia, lists):
            indices[indptr[i]:indptr[i + 1]] = js
    return indptr, indices


def matched_layer(layer: int, states_a: int, states_b: int) -> int:
    """The hidden state of model B at the same relative depth as hidden state ``layer`` of model A.

    ``states_*`` count the hidden states (embeddings + layers); embeddings match embeddings and the
    last layer the last: ``round(layer * (states_b - 1) / (states_a - 1))`` (halves round up)."""
    if states_a <= 1:
        return 0
    return int(np.floor(layer * (states_b - 1) / (states_a - 1) + 0.5))


# --------------------------------------------------------------------------------------------------
# encodings
# --------------------------------------------------------------------------------------------------
def _b64(arr: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(arr).tobytes()).decode("ascii")


def encode_coords(xy: np.ndarray) -> dict:
    """float[P, 2] -> ``{"n", "lo": [x, y], "hi": [x, y], "b64": uint16[P, 2] little-endian}``.

    Linear per axis between its min and max: the error is at most (hi - lo) / 131070, far below a pixel.
    Non-finite coordinates are stored as 65535 with ``"nan": true`` never set by this encoder (a
    projection is finite)."""
    xy = np.asarray(xy, dtype=np.float64)
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise ValueError(f"coordinates must be [P, 2], got {xy.shape}")
    if xy.shape[0] == 0:
        return {"n": 0, "lo": [0.0, 0.0], "hi": [1.0, 1.0], "b64": ""}
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    q = np.rint((xy - lo) / span * 65535).clip(0, 65535).astype("<u2")
    return {"n": int(xy.shape[0]), "lo": [float(v) for v in lo], "hi": [float(v) for v in lo + span], "b64": _b64(q)}


def decode_coords(payload: dict) -> np.ndarray:
    """float32[P, 2] of :func:`encode_coords` (what the browser draws)."""
    q = np.frombuffer(base64.b64decode(payload["b64"]), dtype="<u2").reshape(-1, 2).astype(np.float64)
    lo, hi = np.asarray(payload["lo"]), np.asarray(payload["hi"])
    return (lo + q / 65535 * (hi - lo)).astype(np.float32)


def encode_categories(values: Sequence[Any]) -> dict:
    """Per-item categories as codes: ``{"categories": [names], "codes": b64 uint8 (or uint16), "dtype"}``.

    Names in order of frequency (ties by name); beyond MAX_CATEGORIES - 1 names, the rest share "other".
    Missing values (None, "") are the category "" (drawn grey)."""
    names = ["" if v is None else str(v) for v in values]
    counts: dict[str, int] = {}
    for s in names:
        counts[s] = counts.get(s, 0) + 1
    order = sorted(counts, key=lambda s: (-counts[s], s))
    if len(order) > MAX_CATEGORIES:
        keep = [s for s in order if s != ""][: MAX_CATEGORIES - 2]
        order = keep + [OTHER] + ([""] if "" in counts else [])
    index = {s: i for i, s in enumerate(order)}
    other = index.get(OTHER)
    codes = np.asarray([index.get(s, other) for s in names], dtype=np.int64)
    dtype = "uint8" if len(order) <= 256 else "uint16"
    return {"categories": order, "codes": _b64(codes.astype("<u1" if dtype == "uint8" else "<u2")), "dtype": dtype}


def _float32(arr: np.ndarray) -> dict:
    return encode_float32(np.asarray(arr, dtype=np.float32))


# --------------------------------------------------------------------------------------------------
# payload
# --------------------------------------------------------------------------------------------------
def _points_payload(data: LayersData, m: ModelLayers, model_index: int) -> dict:
    p = m.points
    colors: dict[str, dict] = {}
    ex = np.asarray(p.example, dtype=np.int64)
    for name, col in data.columns.items():
        colors[name] = encode_categories([col[i] for i in ex])
    for name, col in p.tags.items():
        if len(col) != len(p):
            raise InputError(f"{m.name}: tag {name!r} has {len(col)} values for {len(p)} points")
        colors[name] = encode_categories(col)
    if m.predictions is not None:
        colors["prediction"] = encode_categories([m.predictions[i] for i in ex])
    correct = data.correct(model_index)
    if correct is not None:
        colors["correct"] = encode_categories(["" if correct[i] is None else ("correct" if correct[i] else "wrong") for i in ex])
    return {
        "n": len(p),
        "example": _b64(np.asarray(p.example, dtype="<u4")),
        "token": _b64(np.asarray(p.token, dtype="<u2" if len(p) and int(np.max(p.token)) < 65536 else "<u4")),
        "token_dtype": "uint16" if len(p) and int(np.max(p.token)) < 65536 else "uint32",
        "offsets": _b64(np.asarray(p.offsets, dtype="<u4").reshape(-1)),
        "text": [str(t) for t in p.text],
        "colors": colors,
    }


def layers_payload(
    data: LayersData,
    *,
    key: str | None = None,
    layer: int | None = None,
    statistic: str | None = None,
    example: int | None = None,
    color: str | None = None,
    head: tuple[int, int] | None = None,
    selection: Sequence[int] | None = None,
    prefetch_bytes: int = 2_000_000,
    link: dict | None = None,
) -> dict:
    """The value of a :class:`LayersView` for ``data``: JSON-safe, arrays in base64.

    Arguments: layer: hidden state shown first (0 = embeddings; default the last). statistic: head
    statistic shown first (default the first). example: the tracked example (default 0). color: the
    colour column (default the gold column, else "span", else the first). head: (layer, head) opened at
    start (needs ``key``). selection: examples selected at start (None: all). key: the store key for
    lazy fetches (None: every layer and statistic is sent). prefetch_bytes: every layer's coordinates
    are sent when they fit in this many bytes, else only ``layer``. link: address parameters that
    name the example set (the browser writes them into the page address for deep links).

    Returns ``{"view": "layers", "key", "title", "examples": {"n", "texts", "pairs", "columns", "gold"},
    "models": [{"name", "layers", "heads", "states", "method", "points": {n, example (b64 uint32[P]),
    token (b64 uint16/uint32[P]), offsets (b64 uint32[P*2]), text[P], colors: {name: encode_categories}},
    "coords": {str(layer): encode_coords}, "statistics": [names], "stats": {name: float32 [E, L, H]},
    "distances": {metric: float32 [E, L + 1]}, "predictions", "probabilities", with two models "align":
    {"indptr", "indices"} (b64 uint32, :func:`align_points` to the other model)}], "layer", "statistic",
    "example", "color", "head", "selection", "diff_ok"}``.
    """
    n = data.num_examples
    m0 = data.models[0]
    states = m0.num_states
    layer = states - 1 if layer is None else int(layer)
    if not 0 <= layer < states:
        raise InputError(f"layer {layer} is out of range: hidden states 0 to {states - 1}")
    statistic = statistic or next(iter(m0.head_stats), None)
    if statistic is not None and statistic not in m0.head_stats:
        raise InputError(f"statistic {statistic!r} is not one of {', '.join(m0.head_stats)}")
    example = 0 if example is None else int(example)
    if not 0 <= example < max(n, 1):
        raise InputError(f"example {example} is out of range 0 to {n - 1}")
    models = []
    for i, m in enumerate(data.models):
        per_layer = len(m.points) * 4
        send_all = key is None or per_layer * m.num_states <= prefetch_bytes
        layers = range(m.num_states) if send_all else [min(layer, m.num_states - 1)]
        stats = m.head_stats if key is None else {s: a for s, a in m.head_stats.items() if s == statistic}
        models.append({
            "name": m.name,
            "layers": m.num_layers,
            "heads": m.num_heads,
            "states": m.num_states,
            "method": m.method,
            "points": _points_payload(data, m, i),
            "coords": {str(j): encode_coords(m.layer_coords(j)) for j in layers},
            "statistics": list(m.head_stats),
            "stats": {s: _float32(a) for s, a in stats.items()},
            "distances": {d: _float32(a) for d, a in m.distances.items()},
            "predictions": None if m.predictions is None else [None if p is None else str(p) for p in m.predictions],
            "probabilities": None if m.probabilities is None else [None if not np.isfinite(p) else float(p) for p in np.asarray(m.probabilities, dtype=np.float64)],
            "can_open": m.analyze is not None and key is not None,
        })
    if len(data.models) == 2:  # hovering or tracking a token in one model marks the same words in the other
        for i in (0, 1):
            indptr, indices = align_points(data, i, 1 - i)
            models[i]["align"] = {"indptr": _b64(indptr.astype("<u4")), "indices": _b64(indices.astype("<u4"))}
    colors = models[0]["points"]["colors"]
    if color is None or color not in colors:
        color = data.gold if data.gold in colors else ("span" if "span" in colors else next(iter(colors), None))
    diff_ok = len(data.models) == 2 and (data.models[0].num_layers, data.models[0].num_heads) == (data.models[1].num_layers, data.models[1].num_heads)
    return {
        "view": "layers",
        "key": key,
        "title": data.title,
        "examples": {"n": n, "texts": list(data.texts), "pairs": None if data.pairs is None else list(data.pairs),
                     "columns": {k: ["" if v is None else str(v) for v in col] for k, col in data.columns.items()},
                     "gold": data.gold},
        "models": models,
        "layer": layer,
        "statistic": statistic,
        "example": example,
        "color": color,
        "head": None if head is None else [int(head[0]), int(head[1])],
        "selection": None if selection is None else [int(e) for e in selected_examples(data, selection)],
        "diff_ok": diff_ok,
        "plotly": plotly_version(),
        "link": {str(k): (None if v is None else str(v)) for k, v in (link or {}).items()},
    }


def head_payload(data: LayersData, model: int, example: int, layer: int, head: int) -> dict:
    """One head of one example (re-analysed alone): ``{"model", "example", "layer", "head",
    "sequences": head_view.sequences_payload, "attention": float32 [T, T] (encode_float32)}``."""
    m = data.model(model)
    if m.analyze is None:
        raise InputError("this view cannot open heads (no engine for its model)")
    if not 0 <= int(example) < data.num_examples:
        raise InputError(f"example {example} is out of range 0 to {data.num_examples - 1}")
    if not 0 <= int(layer) < m.num_layers or not 0 <= int(head) < m.num_heads:
        raise InputError(f"layer {layer}, head {head} is out of range: {m.num_layers} layers of {m.num_heads} heads")
    a = m.analyze(int(example))
    att = a.main_stack.attentions[int(layer), int(head)]
    return {"model": int(model), "example": int(example), "layer": int(layer), "head": int(head),
            "sequences": sequences_payload(a), "attention": encode_float32(att)}


def plotly_js() -> str:
    """plotly.js as shipped inside the ``plotly`` Python package (offline; no CDN)."""
    return resources.files("plotly").joinpath("package_data", "plotly.min.js").read_text(encoding="utf-8")


def plotly_version() -> str:
    import plotly

    return str(plotly.__version__)


# --------------------------------------------------------------------------------------------------
# the component
# --------------------------------------------------------------------------------------------------
class LayersView(gr.HTML):
    """The layers view as a Gradio component. Its value is :func:`layers_payload`'s dict (or None).

    Event: ``select_examples`` (a box/lasso selection, or "Select all": ``{"examples": [int], "all":
    bool, "model": int}``), its payload in ``gr.EventData._data``. ``payload(data, ...)`` stores ``data`` in ``store``
    and returns the value to send.
    """

    def __init__(self, value: dict | None = None, *, store: LayersStore | Any = None, **kwargs: Any):
        self.store = store or DEFAULT_STORE
        store_ref = self.store

        def _get(request: Any) -> tuple[LayersData, dict]:
            if not isinstance(request, dict):
                raise InputError("request must be an object")
            return store_ref.get(request.get("key")), request

        def layers_coords(request: dict) -> dict:
            """Server function: ``{"key", "model", "layer"}`` -> ``{"model", "layer", "coords": encode_coords}``."""
            try:
                data, r = _get(request)
                m, layer = int(r.get("model", 0)), int(r.get("layer"))
                return {"model": m, "layer": layer, "coords": encode_coords(data.model(m).layer_coords(layer))}
            except (KeyError, ValueError, TypeError, ExbertError) as err:
                return error_payload(err)

        def layers_stat(request: dict) -> dict:
            """Server function: ``{"key", "model", "statistic"}`` -> ``{"model", "statistic", "stat": float32 [E, L, H]}``."""
            try:
                data, r = _get(request)
                m, stat = int(r.get("model", 0)), str(r.get("statistic"))
                stats = data.model(m).head_stats
                if stat not in stats:
                    raise InputError(f"statistic {stat!r} is not one of {', '.join(stats)}")
                return {"model": m, "statistic": stat, "stat": _float32(stats[stat])}
            except (KeyError, ValueError, TypeError, ExbertError) as err:
                return error_payload(err)

        def layers_head(request: dict) -> dict:
            """Server function: ``{"key", "model", "example", "layer", "head"}`` -> :func:`head_payload`."""
            try:
                data, r = _get(request)
                return head_payload(data, int(r.get("model", 0)), int(r.get("example")), int(r.get("layer")), int(r.get("head")))
            except (KeyError, ValueError, TypeError, ExbertError) as err:
                return error_payload(err)

        def layers_plotly(version: Any = None) -> dict:
            """Server function: plotly.js from the plotly package (the browser caches it by version)."""
            return {"version": plotly_version(), "js": plotly_js()}

        kwargs.setdefault("head", common_head())
        kwargs.setdefault("apply_default_css", False)
        super().__init__(
            value,
            html_template='<div class="xl-root" data-view="layers"></div>',
            css_template=theme_css() + line_panel_css() + asset("layers_view.css"),
            js_on_load=line_panel_js() + asset("layers_view.js"),
            server_functions=[layers_coords, layers_stat, layers_head, layers_plotly],
            **kwargs,
        )

    def payload(self, data: LayersData, **kwargs: Any) -> dict:
        """Store ``data`` and return :func:`layers_payload` for it with the store key."""
        return layers_payload(data, key=self.store.put(data), **kwargs)

    def __getattr__(self, name: str):
        # gr.HTML answers any name quoted in its JS with an event trigger; Gradio's config reads
        # getattr(component, "self") (see HeadView.__getattr__): never a trigger for that name.
        if name == "self":
            raise AttributeError(name)
        return super().__getattr__(name)
