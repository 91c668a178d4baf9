"""Corpus search in the app. Wiring in exbert_hub/app.py ``build_app`` (``corpus`` = its argument), as done there:
    from . import search_ui                                   # (app.py imports it guarded: _search_ui())
    search_ui.add_search_tab(key_state=key_state, get_analysis=store.get, corpus_ref=corpus, get_engine=get_engine)
        # ^ as the last statement INSIDE `with gr.Tabs(...)`: it makes its own gr.Tab (id "search") and events
    search_ui.register_search_api(default_model, corpus, analyze=lambda m, t: store.run(Request(m, t))[1])  # after _register_api
"""

# --------------------------------------------------------------------------------------------------
# Design notes
#
# * Plain functions first (``search_results``, ``histogram_counts``, ``metadata_histograms``): the UI
#   events and the ``search`` HTTP API share them; neither takes Gradio event objects.
# * Attention of each hit: a corpus stores token vectors and spaCy features, not attention (it would be
#   T^2 * layers * heads floats per sentence). So the matched token's attention to every token of its
#   sentence is RECOMPUTED with the same engine: the hits' sentences run through the model in padded
#   batches (one forward pass per <= 16 sentences, padding masked out: the weights of real tokens are
#   those of ``engine.analyze`` up to float rounding; tests check it). Encoder-decoders go through
#   ``engine.analyze``; a sentence whose tokens differ from the corpus's (another tokenizer version)
#   gets no attention (``attention: None``) rather than misaligned weights. The attention shown is the mean over the selected heads (all heads when
#   none are selected) at the searched layer.
# * "Attends to most": the non-special token with the largest such attention (special tokens have no
#   spaCy features, and [SEP]-like sinks would win almost always); the matched token itself may win.
# * k is capped at MAX_K = 200 so a result stays well under a MB of JSON.
# --------------------------------------------------------------------------------------------------

from __future__ import annotations

import contextlib
import inspect
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .errors import ExbertError, InputError, user_message

log = logging.getLogger(__name__)

MAX_K = 200
DEFAULT_K = 50
DEFAULT_WINDOW = 6  # tokens shown (and matrix columns) on each side of the match
MAX_WINDOW = 30
BATCH_SENTENCES = 16
BATCH_ATTENTION_BYTES = 256_000_000  # the attention of every layer that one batched pass returns

# metadata a result can be coloured / counted by: key in the results -> label
FIELDS = {"pos": "POS", "dep": "DEP", "ent": "Entity", "tag": "Tag"}
SPECIAL = "[special]"  # category of special tokens ([CLS], [SEP] ...), which have no spaCy features
NO_ENTITY = "none"

# Universal POS colours: nouns blue, verbs green, modifiers warm, function words muted.
POS_COLORS = {
    "NOUN": "#2563eb", "PROPN": "#0891b2", "PRON": "#7c3aed", "VERB": "#16a34a", "AUX": "#65a30d",
    "ADJ": "#ea580c", "ADV": "#d97706", "NUM": "#db2777", "DET": "#a855f7", "ADP": "#64748b",
    "CCONJ": "#94a3b8", "SCONJ": "#78716c", "PART": "#a8a29e", "PUNCT": "#d6d3d1", "SYM": "#e11d48",
    "INTJ": "#f43f5e", "X": "#57534e", "SPACE": "#e7e5e4",
}
# Dependency relations (spaCy English labels) by family: subjects red, objects orange, clauses blue,
# modifiers green, function words purple, punctuation grey, ROOT yellow (visible on light and dark pages).
DEP_COLORS = {
    "ROOT": "#facc15",
    "nsubj": "#dc2626", "nsubjpass": "#f87171", "csubj": "#b91c1c", "csubjpass": "#fca5a5", "expl": "#9f1239",
    "agent": "#e11d48",
    "dobj": "#ea580c", "pobj": "#f59e0b", "iobj": "#c2410c", "dative": "#fb923c", "attr": "#d97706", "oprd": "#fdba74",
    "ccomp": "#2563eb", "xcomp": "#3b82f6", "advcl": "#1d4ed8", "acl": "#60a5fa", "relcl": "#1e40af", "conj": "#0ea5e9",
    "acomp": "#38bdf8", "pcomp": "#0284c7", "parataxis": "#7dd3fc",
    "amod": "#16a34a", "advmod": "#65a30d", "compound": "#059669", "nmod": "#22c55e", "nummod": "#84cc16",
    "npadvmod": "#4d7c0f", "appos": "#10b981", "poss": "#047857", "quantmod": "#a3e635", "meta": "#6ee7b7",
    "det": "#a855f7", "prep": "#7c3aed", "aux": "#c084fc", "auxpass": "#d8b4fe", "cc": "#8b5cf6", "mark": "#6d28d9",
    "case": "#9333ea", "neg": "#db2777", "prt": "#e879f9", "predet": "#c026d3", "preconj": "#a21caf", "intj": "#f472b6",
    "punct": "#d6d3d1", "dep": "#78716c",
}
FIXED_COLORS = {"pos": POS_COLORS, "dep": DEP_COLORS}
PALETTE = [
    "#2563eb", "#16a34a", "#ea580c", "#7c3aed", "#db2777", "#0891b2", "#ca8a04", "#dc2626", "#4f46e5",
    "#059669", "#9333ea", "#c2410c", "#0d9488", "#be185d", "#65a30d", "#1d4ed8", "#b45309", "#7e22ce",
    "#15803d", "#9f1239",
]
SPECIAL_COLOR = "#cbd5e1"
NONE_COLOR = "#f1f5f9"
MATCH_COLOR = "#2563eb"  # the matched token (view and histograms)
ATTENDED_COLOR = "#ea580c"  # the attention of the match / the token it attends to most


class SearchUIError(ExbertError, ValueError):
    """A search the UI or the API cannot run as asked (no corpus, no analysis, bad settings)."""


# --------------------------------------------------------------------------------------------------
# Plain functions
# --------------------------------------------------------------------------------------------------
def corpus_name(corpus_ref: Any) -> str:
    """The text for the corpus box: a Corpus object's folder, a path, or the string itself."""
    if corpus_ref is None:
        return ""
    folder = getattr(corpus_ref, "folder", None)
    return str(folder if folder is not None else corpus_ref).strip()


@dataclass
class CorpusAccess:
    """Which corpora a tab or the API opens for whom: the operator's corpus, and visitors' names under
    the policy (exbert_hub.policy; None: the operator, no checks).

    The corpus box shows the operator's corpus by its label (a Hub id or a folder's own name, never a
    server path); that label opens the operator's corpus.
    """

    policy: Any = None
    operator_ref: Any = None

    @property
    def label(self) -> str:
        ref = self.operator_ref
        if ref is None:
            return ""
        if getattr(ref, "label", None):
            return str(ref.label)
        text = str(ref).strip()
        from .policy import is_hub_id

        return text if is_hub_id(text) else (Path(text).name or text)

    def is_operator(self, text: Any) -> bool:
        """A blank box means no corpus (the API passes the operator's corpus for a missing argument)."""
        text = corpus_name(text)
        return bool(text) and text in (self.label, corpus_name(self.operator_ref))

    def open(self, text: Any, model: str | None = None, *, request=None, engine=None):
        from .corpus import Corpus, load_corpus
        from .policy import is_remote

        if isinstance(text, Corpus):
            corpus = text
        elif not corpus_name(text):
            raise SearchUIError(
                "no corpus loaded: enter a Hub dataset id (user/name) of a corpus. Build one with "
                f"`python -m corpus_builder build --model {model or 'MODEL'} --out my_corpus`")
        elif self.is_operator(text):
            if isinstance(self.operator_ref, Corpus):
                corpus = self.operator_ref
            else:
                ref = corpus_name(self.operator_ref)
                if not ref:
                    raise SearchUIError(
                        "no corpus loaded: enter a Hub dataset id (user/name) of a corpus. Build one with "
                        f"`python -m corpus_builder build --model {model or 'MODEL'} --out my_corpus`")
                corpus = _load(load_corpus, ref)
        else:
            policy = self.policy
            remote = is_remote(request) if policy is not None else False
            corpus = _load(load_corpus, corpus_name(text), policy=policy, remote=remote)
        if model is not None:
            corpus.check_model(model)
        if engine is not None:  # the model's weights against the corpus's probe fingerprint (memoized)
            corpus.check_engine(engine)
        return corpus


def _load(load_corpus, ref: str, **kwargs):
    try:
        return load_corpus(ref, **kwargs)
    except ExbertError:
        raise
    except Exception as err:  # noqa: BLE001 - a damaged folder: say so in one line
        raise SearchUIError(f"could not open the corpus {ref!r}: {user_message(err)}") from err


def open_corpus(corpus_ref: Any, model: str | None = None, *, access: CorpusAccess | None = None,
                request=None, engine=None):
    """A Corpus from a Corpus object, a folder or a Hub dataset id; with ``model``, check it matches
    (and with ``engine``, its weights). ``access``: the app's CorpusAccess (default: the operator's own
    call: ``corpus_ref`` opened as given).

    Raises ExbertError subclasses with messages written for users (never a trace).
    """
    access = access or CorpusAccess(operator_ref=corpus_ref)
    return access.open(corpus_ref, model, request=request, engine=engine)


def corpus_summary(corpus) -> dict:
    """JSON-safe description of a corpus (shown in the tab, returned by the API)."""
    layers = corpus.layers
    return {
        "ref": str(getattr(corpus, "label", None) or Path(str(corpus.folder)).name),  # never a server path
        "model": corpus.model,
        "sentences": int(corpus.num_sentences),
        "tokens": int(corpus.num_tokens),
        "layers": [int(x) for x in layers],
        "heads": int(corpus.num_heads),
        "source": (corpus.meta.get("source") or {}).get("name"),
    }


def _layers_text(layers: Sequence[int]) -> str:
    layers = list(layers)
    if layers and layers == list(range(layers[0], layers[-1] + 1)) and len(layers) > 2:
        return f"{layers[0]}-{layers[-1]}"
    return ", ".join(str(x) for x in layers)


def _clean_heads(heads: Sequence[int] | None, num_heads: int) -> list[int] | None:
    """Sorted unique head indices, None for "all heads". Raises for heads that do not exist."""
    if heads is None:
        return None
    out = sorted({int(h) for h in heads})
    bad = [h for h in out if not 0 <= h < num_heads]
    if bad:
        raise InputError(f"heads {bad} do not exist: each layer has {num_heads} heads (0 to {num_heads - 1})")
    return out


def _engine_lock(engine):
    loaded = getattr(engine, "_loaded", None)
    return getattr(loaded, "lock", None) or contextlib.nullcontext()


def _forward_args(engine) -> set[str]:
    try:
        return set(inspect.signature(engine.model.forward).parameters)
    except (TypeError, ValueError):
        return set()


def sentence_attention(engine, sentences: dict[int, tuple[str, list[str]]], layer: int,
                       heads: Sequence[int] | None = None) -> dict[int, np.ndarray]:
    """Mean attention over ``heads`` (None: all) at ``layer``, float32[T, T], for each corpus sentence.

    ``sentences``: sentence id -> (text, the corpus's tokens of it). Batched forward passes through the
    engine's model (padding masked out); encoder-decoders go through ``engine.analyze``. A sentence the
    tokenizer does not split into exactly the corpus's tokens (another tokenizer version) gets no
    attention (missing from the result) rather than attention at the wrong positions.
    """
    import torch

    from .analysis import ENCODER_DECODER

    tok = engine.tokenizer
    out: dict[int, np.ndarray] = {}
    batchable: list[tuple[int, list[int], list[int] | None]] = []
    slow: list[int] = []
    ids_list = types_list = None
    if engine.kind != ENCODER_DECODER and sentences:
        texts = [sentences[s][0] for s in sentences]
        enc = tok(texts)
        ids_list = enc["input_ids"]
        types_list = enc.get("token_type_ids")
    for i, sid in enumerate(sentences):
        if ids_list is None:
            slow.append(sid)
            continue
        ids = list(ids_list[i])
        if tok.convert_ids_to_tokens(ids) != list(sentences[sid][1]):
            log.info("sentence %s: the tokenizer's tokens differ from the corpus's; no attention shown", sid)
        else:
            batchable.append((sid, ids, None if types_list is None else list(types_list[i])))

    def mean_heads(att: np.ndarray) -> np.ndarray:  # [H, T, T] -> [T, T]
        sel = att if heads is None else att[list(heads)]
        return np.asarray(sel.mean(axis=0), dtype=np.float32)

    accepts_types = "token_type_ids" in _forward_args(engine)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    batchable.sort(key=lambda x: len(x[1]))
    # groups of similar length, bounded in sentences and in attention bytes (layers * heads * B * T^2 floats)
    per_token2 = 4 * max(engine.num_layers, 1) * max(engine.num_heads, 1)
    groups, group = [], []
    for item in batchable:
        longest = len(item[1])  # sorted: the newest item is the longest
        if group and (len(group) >= BATCH_SENTENCES or (len(group) + 1) * per_token2 * longest ** 2 > BATCH_ATTENTION_BYTES):
            groups.append(group)
            group = []
        group.append(item)
    if group:
        groups.append(group)
    for group in groups:
        lengths = [len(ids) for _, ids, _ in group]
        T = max(lengths)
        ids = np.full((len(group), T), int(pad), dtype=np.int64)
        mask = np.zeros((len(group), T), dtype=np.int64)
        types = np.zeros((len(group), T), dtype=np.int64)
        for j, (_, row, trow) in enumerate(group):
            ids[j, :len(row)] = row
            mask[j, :len(row)] = 1
            if trow is not None:
                types[j, :len(row)] = trow
        inputs = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}
        if accepts_types and group[0][2] is not None:
            inputs["token_type_ids"] = torch.from_numpy(types)
        try:
            with _engine_lock(engine), torch.inference_mode():
                res = engine.model(**inputs, output_attentions=True, return_dict=True)
            atts = getattr(res, "attentions", None)
            if not atts or len(atts) <= layer:
                raise RuntimeError("the model returned no attention")
            att = atts[layer].float().numpy()  # [B, H, T, T]
        except Exception as err:  # noqa: BLE001 - fall back to one analysis per sentence
            log.info("batched attention failed (%s); using engine.analyze", err)
            slow.extend(sid for sid, _, _ in group)
            continue
        for j, (sid, _, _) in enumerate(group):
            n = lengths[j]
            out[sid] = mean_heads(att[j, :, :n, :n])
    for sid in slow:
        try:
            a = engine.analyze(sentences[sid][0])
        except ExbertError as err:
            log.info("no attention for sentence %s: %s", sid, err)
            continue
        if list(a.tokens) == list(sentences[sid][1]):  # else positions may not line up: no attention
            out[sid] = mean_heads(a.attentions[layer])
    return out


def _token_columns(tokens) -> dict[str, list]:
    """Per-token lists (display text, spaCy features) of one corpus sentence."""
    text, space, special, pos, tag, dep, ent, iob, lemma, word, head, word_text = ([] for _ in range(12))
    prev_end = None
    for t in tokens:
        special.append(bool(t.special))
        text.append(str(t.text if t.text != "" else t.token))
        space.append(bool(t.special or prev_end is None or t.start > prev_end))
        if not t.special:
            prev_end = t.end
        pos.append(str(t.pos or ""))
        tag.append(str(t.tag or ""))
        dep.append(str(t.dep or ""))
        ent.append(str(t.ent_type or ""))
        iob.append(str(t.ent_iob or ""))
        lemma.append(str(t.lemma or ""))
        word.append(int(t.word))
        head.append(int(t.head))
        word_text.append(str(t.word_text or ""))
    return {"tokens": text, "space_before": space, "special": special, "pos": pos, "tag": tag, "dep": dep,
            "ent": ent, "iob": iob, "lemma": lemma, "word": word, "head": head, "word_text": word_text}


def category(hit: dict, field: str, index: int | None) -> str | None:
    """The category of token ``index`` of a result hit for ``field`` (pos, dep, ent, tag); None if no token."""
    if field not in FIELDS:
        raise InputError(f"field must be one of {', '.join(FIELDS)}, got {field!r}")
    if index is None or not 0 <= index < len(hit["tokens"]):
        return None
    if hit["special"][index]:
        return SPECIAL
    value = hit[field][index]
    if field == "ent":
        return value or NO_ENTITY
    return value or "?"


def _colors(hits: list[dict]) -> dict[str, dict[str, str]]:
    """Category -> colour for every field, shared by the view's matrix and the histograms."""
    out = {}
    for field in FIELDS:
        counts = Counter(c for h in hits for i in range(len(h["tokens"])) if (c := category(h, field, i)) is not None)
        colors, k = {}, 0
        for cat, _ in counts.most_common():
            if cat == SPECIAL:
                colors[cat] = SPECIAL_COLOR
            elif cat == NO_ENTITY and field == "ent":
                colors[cat] = NONE_COLOR
            elif cat in FIXED_COLORS.get(field, {}):
                colors[cat] = FIXED_COLORS[field][cat]
            else:
                colors[cat] = PALETTE[k % len(PALETTE)] if k < len(PALETTE) else f"hsl({(k * 137.508) % 360:.0f}, 55%, 48%)"
                k += 1
        out[field] = colors
    return out


def search_results(corpus, analysis, token: int, layer: int, by: str = "embedding",
                   heads: Sequence[int] | None = None, k: int = DEFAULT_K, *, engine=None,
                   access: CorpusAccess | None = None, request=None) -> dict:
    """Search ``corpus`` for the tokens most like ``analysis`` token ``token`` at ``layer``; a JSON-safe dict.

    corpus: a Corpus, a folder or a Hub dataset id. by: "embedding" (the layer's output hidden state) or
    "heads" (the selected heads' attention outputs; ``heads=None``: all). ``heads`` also chooses whose
    mean attention is shown for each hit (all heads when None). k: 1..200.

    Returns ``{"query": {...}, "corpus": {...}, "attention": {...}, "fields": {...}, "colors": {field:
    {category: colour}}, "hits": [...]}``; each hit: rank, score, sentence, sentence_id, document,
    ``match`` (index of the matched token), ``max_att`` (index of the non-special token the match attends
    to most, None without attention), ``attention`` (its attention to each token, or None) and per-token
    lists: tokens (display text), space_before, special, pos, tag, dep, ent, iob, lemma, word, head,
    word_text.
    """
    if by not in ("embedding", "heads"):
        raise InputError(f"by must be 'embedding' or 'heads', got {by!r}")
    try:
        k = int(k)
    except (TypeError, ValueError):
        raise InputError(f"k must be a whole number between 1 and {MAX_K}, got {k!r}") from None
    if not 1 <= k <= MAX_K:
        raise InputError(f"k must be between 1 and {MAX_K}, got {k}")
    if analysis is None:
        raise SearchUIError("analyze a text first: the search looks for tokens like one of its tokens")
    if engine is None:
        from . import engine as _engine

        engine = _engine.load(analysis.model_name)
    # with the live engine the corpus also checks the model's weights (its probe fingerprint)
    corpus = open_corpus(corpus, analysis.model_name, access=access, request=request, engine=engine)
    T = len(analysis.tokens)
    if not isinstance(token, (int, np.integer)) or isinstance(token, bool) or not 0 <= int(token) < T:
        raise InputError(f"token {token!r} is out of range: the text has {T} tokens (0 to {T - 1})")
    token, layer = int(token), int(layer)
    if layer not in corpus.layers:
        L = analysis.num_layers
        if not 0 <= layer < L:
            raise InputError(f"layer {layer} is out of range: the model has layers 0 to {L - 1}")
        raise InputError(f"layer {layer} is not indexed in this corpus; it has layers {_layers_text(corpus.layers)}")
    heads = _clean_heads(heads, analysis.num_heads)
    if by == "heads" and heads == []:
        raise InputError("select at least one head for a search by heads")
    hits = corpus.search(analysis, token=token, layer=layer, by=by, k=k,
                         heads=(heads if by == "heads" else None))
    shown_heads = heads or None  # attention shown: the selected heads, or all of them

    if engine is None:
        from . import engine as _engine

        engine = _engine.load(analysis.model_name)
    sentences = {h.sentence_id: (h.sentence, [t.token for t in h.tokens]) for h in hits}
    try:
        att = sentence_attention(engine, sentences, layer, shown_heads)
    except Exception as err:  # noqa: BLE001 - results without attention are still results
        log.warning("attention of the hits could not be computed: %s", err, exc_info=True)
        att = {}

    out_hits = []
    for rank, h in enumerate(hits, start=1):
        cols = _token_columns(h.tokens)
        m = int(h.token_index)
        row = att.get(h.sentence_id)
        attention, max_att = None, None
        if row is not None and row.shape[0] == len(h.tokens):
            vec = row[m]
            attention = [round(float(x), 5) for x in vec]
            masked = np.where(np.asarray(cols["special"], dtype=bool), -1.0, vec)
            if masked.max() > 0:
                max_att = int(np.argmax(masked))
        out_hits.append({
            "rank": rank, "score": round(float(h.score), 5), "sentence": h.sentence,
            "sentence_id": int(h.sentence_id), "document": int(h.document), "match": m,
            "max_att": max_att, "attention": attention, **cols,
        })
    special = bool(analysis.special[token])
    return {
        "query": {
            "text": analysis.text, "model": analysis.model_name, "token": token,
            "token_text": str(analysis.display_tokens[token]), "special": special,
            "layer": layer, "by": by, "heads": heads if by == "heads" else None, "k": k,
        },
        "corpus": corpus_summary(corpus),
        "attention": {
            "source": "recomputed", "layer": layer, "heads": shown_heads,
            "note": "mean attention of the matched token over "
                    + ("all heads" if shown_heads is None else "heads " + ", ".join(map(str, shown_heads)))
                    + f" at layer {layer}, recomputed with the model on each hit's sentence",
        },
        "fields": dict(FIELDS),
        "colors": _colors(out_hits),
        "hits": out_hits,
    }


def histogram_counts(results: dict, field: str = "pos") -> dict:
    """Counts behind :func:`metadata_histograms`.

    ``{"field", "categories": [...] (most frequent first), "matched": [counts], "attended": [counts],
    "positions": {position: count} (index of the matched token in its sentence), "offsets": {offset:
    count} (position of the most-attended token minus the match's)}``.
    """
    if field not in FIELDS:
        raise InputError(f"field must be one of {', '.join(FIELDS)}, got {field!r}")
    hits = (results or {}).get("hits") or []
    matched = Counter(category(h, field, h["match"]) for h in hits)
    attended = Counter(c for h in hits if (c := category(h, field, h.get("max_att"))) is not None)
    cats = [c for c, _ in (matched + attended).most_common()]
    positions = Counter(int(h["match"]) for h in hits)
    offsets = Counter(int(h["max_att"]) - int(h["match"]) for h in hits if h.get("max_att") is not None)
    return {
        "field": field,
        "categories": cats,
        "matched": [matched.get(c, 0) for c in cats],
        "attended": [attended.get(c, 0) for c in cats],
        "positions": dict(sorted(positions.items())),
        "offsets": dict(sorted(offsets.items())),
    }


def metadata_histograms(results: dict, field: str = "pos"):
    """A plotly Figure with three histograms of the hits.

    Left: ``field`` (pos, dep, ent or tag) of the matched token and of the token it attends to most,
    side by side per category. Middle: the matched token's position in its sentence. Right: where the
    most-attended token is, relative to the match.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    c = histogram_counts(results, field)
    label = FIELDS[field]
    n = len((results or {}).get("hits") or [])
    fig = make_subplots(
        rows=1, cols=3, column_widths=[0.52, 0.24, 0.24], horizontal_spacing=0.07,
        subplot_titles=(f"{label} of the match and of the token it attends to most",
                        "Position of the match in its sentence", "Most-attended token, offset from the match"),
    )
    fig.add_trace(go.Bar(x=c["categories"], y=c["matched"], name="matched token", marker_color=MATCH_COLOR,
                         hovertemplate="%{x}: %{y} matches<extra>matched token</extra>"), row=1, col=1)
    fig.add_trace(go.Bar(x=c["categories"], y=c["attended"], name="token it attends to most",
                         marker_color=ATTENDED_COLOR,
                         hovertemplate="%{x}: %{y} hits<extra>attended most</extra>"), row=1, col=1)
    fig.add_trace(go.Bar(x=list(c["positions"]), y=list(c["positions"].values()), name="match position",
                         marker_color=MATCH_COLOR, showlegend=False,
                         hovertemplate="token %{x}: %{y} matches<extra></extra>"), row=1, col=2)
    fig.add_trace(go.Bar(x=list(c["offsets"]), y=list(c["offsets"].values()), name="offset",
                         marker_color=ATTENDED_COLOR, showlegend=False,
                         hovertemplate="offset %{x}: %{y} hits<extra></extra>"), row=1, col=3)
    fig.update_layout(
        barmode="group", bargap=0.18, height=340, margin=dict(l=44, r=16, t=40, b=40),
        template="plotly_white", legend=dict(orientation="h", x=0, y=-0.3), font=dict(size=12),
    )
    fig.update_annotations(font_size=12.5)
    fig.update_xaxes(type="category", tickangle=-40, row=1, col=1)
    fig.update_xaxes(title_text="token index", tickangle=0, nticks=10, row=1, col=2)
    fig.update_xaxes(title_text="tokens (negative: before)", tickangle=0, nticks=10, zeroline=True, row=1, col=3)
    fig.update_yaxes(title_text=f"hits (of {n})", rangemode="tozero", row=1, col=1)
    fig.update_yaxes(rangemode="tozero")
    return fig


# --------------------------------------------------------------------------------------------------
# The tab
# --------------------------------------------------------------------------------------------------
def view_payload(results: dict | None, *, left: int = DEFAULT_WINDOW, right: int = DEFAULT_WINDOW,
                 field: str = "pos") -> dict | None:
    """The SearchView's value: the results plus the context window and the colouring field."""
    if results is None:
        return None
    return {**results, "view": {"left": int(left), "right": int(right), "field": field if field in FIELDS else "pos"}}


def token_choices(analysis) -> list[tuple[str, int]]:
    """(label, index) of every token of an analysis, for the token selector."""
    out = []
    for i, (t, sp) in enumerate(zip(analysis.display_tokens, analysis.special)):
        text = str(t).replace("\n", "\u21b5") or "\u2205"
        out.append((f"{i}: {text}" + (" (special)" if sp else ""), i))
    return out


def link_query(request) -> dict:
    """The search tab's part of the page address (``?tab=search&token=3&layer=2&heads=0,5&by=heads``)."""
    q = dict(getattr(request, "query_params", None) or {}) if request is not None else {}
    out: dict = {"tab": q.get("tab")}
    if q.get("by") in ("embedding", "heads"):
        out["by"] = q["by"]
    for name in ("token", "layer"):
        try:
            out[name] = int(q[name])
        except (KeyError, TypeError, ValueError):
            pass
    if q.get("heads") and q["heads"] != "none":
        try:
            out["heads"] = [int(h) for h in str(q["heads"]).split(",") if h.strip()]
        except ValueError:
            pass
    return out


def default_token(analysis, current: int | None = None) -> int:
    """Keep ``current`` when it is a token of ``analysis``; else its first non-special token."""
    T = len(analysis.tokens)
    if isinstance(current, (int, np.integer)) and 0 <= int(current) < T and not analysis.special[int(current)]:
        return int(current)
    idx = np.flatnonzero(~np.asarray(analysis.special, dtype=bool))
    return int(idx[0]) if idx.size else 0


def _md_escape(s: str) -> str:
    """Text for a Markdown component, shown as typed: no tags, no emphasis, no links or images."""
    out = str(s).replace("\\", "\\\\").replace("<", "&lt;").replace(">", "&gt;").replace("`", "'")
    for ch in "*_[]()!#|~":
        out = out.replace(ch, "\\" + ch)
    return " ".join(out.split())


def corpus_status(corpus_ref: Any, model: str | None = None, *, access: CorpusAccess | None = None,
                  request=None) -> str:
    """Markdown line about the corpus in the box: what it holds, or why it cannot be searched."""
    try:
        corpus = open_corpus(corpus_ref, model, access=access, request=request)
    except Exception as err:  # noqa: BLE001 - shown to users
        return "\u26a0\ufe0f " + _md_escape(user_message(err))
    s = corpus_summary(corpus)
    src = f" from {_md_escape(s['source'])}" if s.get("source") else ""
    return (f"Corpus **{_md_escape(Path(s['ref']).name or s['ref'])}**: {s['sentences']:,} sentences, "
            f"{s['tokens']:,} tokens{src} · model {_md_escape(s['model'])} · layers {_layers_text(s['layers'])}")


@dataclass
class SearchTab:
    """The components :func:`add_search_tab` made (tests and callers may chain more events on them)."""

    tab: Any
    token: Any
    layer: Any
    by: Any
    heads: Any
    k: Any
    left: Any
    right: Any
    corpus: Any
    button: Any
    status: Any
    message: Any
    view: Any
    plot: Any
    results: Any
    field: Any


def add_search_tab(*, key_state, get_analysis: Callable[[str], Any], corpus_ref: Any = None,
                   label: str = "Corpus search", tab_id: str = "search", get_engine: Callable | None = None,
                   access: CorpusAccess | None = None, tab: Any = None) -> SearchTab:
    """Build the corpus-search tab INSIDE the caller's ``gr.Tabs`` context and wire its events.

    key_state: the app's ``gr.State`` holding the key of the current analysis; get_analysis(key) ->
    Analysis (the app's ``store.get``). corpus_ref: the corpus the app was launched with (folder, Hub
    dataset id or Corpus), the default of the corpus box. get_engine(name) -> Engine (default
    ``exbert_hub.engine.load``) recomputes the hits' attention. access: which corpora visitors may type
    into the box (the app's CorpusAccess with its policy; default: ``corpus_ref``, no checks). The box
    shows the app's corpus by its label, never a server path.
    """
    import gradio as gr

    from .views import sequence_continuations
    from .views.search_view import SearchView

    access = access or CorpusAccess(operator_ref=corpus_ref)

    def engine_of(name: str):
        if get_engine is not None:
            return get_engine(name)
        from . import engine as _engine

        return _engine.load(name)

    def analysis_of(key):
        if not key:
            return None
        try:
            return get_analysis(key)
        except Exception as err:  # noqa: BLE001
            log.info("search tab: analysis %s unavailable: %s", key, err)
            return None

    def choices_of(a):
        """token_choices with word pieces that continue a word marked "##" (as the views draw them)."""
        cont = sequence_continuations(a.input)
        out = []
        for (lab, i), c in zip(token_choices(a), cont):
            if c:
                num, _, text = lab.partition(": ")
                lab = f"{num}: ##{text}"
            out.append((lab, i))
        return out

    # tab given: the caller made the gr.Tab and builds inside it (the app composes tabs: exbert_hub/tabs)
    with (contextlib.nullcontext(tab) if tab is not None else gr.Tab(label, id=tab_id, elem_id=f"xh-tab-{tab_id}")) as tab:
        with gr.Row(equal_height=False):
            with gr.Column(scale=4, min_width=300):
                token = gr.Dropdown(choices=[], value=None, label="Token", info="a token of the analyzed text",
                                    elem_id="xs-token", allow_custom_value=False, filterable=True)
                by = gr.Radio(choices=[("Embedding", "embedding"), ("Heads", "heads")], value="embedding",
                              label="Search by", elem_id="xs-by",
                              info="embedding: the layer's output; heads: the selected heads' attention outputs")
            with gr.Column(scale=4, min_width=300):
                layer = gr.Slider(0, 1, value=0, step=1, label="Layer", elem_id="xs-layer")
                k = gr.Slider(1, MAX_K, value=DEFAULT_K, step=1, label="Results (k)", elem_id="xs-k")
            with gr.Column(scale=4, min_width=300):
                corpus_box = gr.Textbox(value=access.label, label="Corpus", max_lines=1,
                                        placeholder="corpus folder, or user/name on the Hub", elem_id="xs-corpus",
                                        info="built with python -m corpus_builder build")
                with gr.Row():
                    left = gr.Slider(0, MAX_WINDOW, value=DEFAULT_WINDOW, step=1, label="Context left",
                                     elem_id="xs-left", min_width=120)
                    right = gr.Slider(0, MAX_WINDOW, value=DEFAULT_WINDOW, step=1, label="Context right",
                                      elem_id="xs-right", min_width=120)
        with gr.Row(equal_height=False):  # (equal heights stretched the buttons to ~90 px on narrow pages)
            heads = gr.CheckboxGroup(choices=[], value=[], label="Heads", elem_id="xs-heads", scale=8,
                                     info="compared in a search by heads; their mean attention is shown "
                                          "(none ticked: all heads)")
            with gr.Column(scale=1, min_width=150):
                all_btn = gr.Button("All heads", size="sm", elem_id="xs-heads-all")
                none_btn = gr.Button("No heads", size="sm", elem_id="xs-heads-none")
                button = gr.Button("Search", variant="primary", elem_id="xs-search")
        status = gr.Markdown("", elem_id="xs-status")
        message = gr.Markdown("", elem_id="xs-message")
        view = SearchView(None, elem_id="xs-view")
        plot = gr.Plot(label="Histograms of the hits", visible=False, elem_id="xs-plot")
        results = gr.State(None)
        field = gr.State("pos")
        # "run" when the explorer's "Search this token in the corpus" selected this tab (set in the browser)
        run_request = gr.Textbox(value="", visible=False, elem_id="xs-run-request")

    # --- a new analysis: its tokens, layers and heads ------------------------------------------------
    def on_analysis(key, current_token, current_layer, current_heads, corpus_text, request=None):
        if key is None:
            # no analysis in this page yet: change nothing. A new page's state also fires a change with None,
            # and when that event's answer arrived after the first analysis's, it emptied the token list it
            # had just filled (seen in Chromium: the token box stayed empty and a search was refused).
            return gr.update(), gr.update(), gr.update(), gr.update(), gr.update()
        a = analysis_of(key)
        if a is None:
            return (gr.update(choices=[], value=None), gr.update(), gr.update(choices=[], value=[]),
                    corpus_status(corpus_text, access=access, request=request) if corpus_text
                    else "Analyze a text first, then search the corpus.",
                    gr.update())
        H, L = a.num_heads, a.num_layers
        by_update = gr.update()
        if current_token is None:  # the page's first analysis: a link's token, layer, heads and "by"
            link = link_query(request)
            current_token, current_layer = link.get("token", current_token), link.get("layer", current_layer)
            current_heads = link.get("heads", current_heads)
            if link.get("by"):
                by_update = gr.update(value=link["by"])
        kept_heads = [h for h in (current_heads or []) if 0 <= int(h) < H]
        layer_value = min(max(int(current_layer or 0), 0), L - 1)
        return (
            gr.update(choices=choices_of(a), value=default_token(a, current_token)),
            gr.update(minimum=0, maximum=max(L - 1, 1), value=layer_value, interactive=L > 1),
            gr.update(choices=[(str(h), h) for h in range(H)], value=kept_heads),
            corpus_status(corpus_text, a.model_name, access=access, request=request),
            by_update,
        )

    on_analysis.__annotations__["request"] = gr.Request  # a real class (this module has postponed annotations)
    refresh = dict(fn=on_analysis, inputs=[key_state, token, layer, heads, corpus_box],
                   outputs=[token, layer, heads, status, by], api_visibility="private")
    first_search = gr.State(True)  # a link that opens this tab also runs its search, once
    search_inputs = [key_state, token, layer, by, heads, k, corpus_box, left, right, field]
    search_outputs = [message, view, plot, results]

    def on_link_search(first, key, token_value, layer_value, by_value, heads_value, k_value, corpus_text,
                       l_value, r_value, field_value, request=None):
        if not first or link_query(request).get("tab") != tab_id or not corpus_text:
            return {first_search: False}
        return {first_search: False, **on_search(key, token_value, layer_value, by_value, heads_value, k_value,
                                                 corpus_text, l_value, r_value, field_value, request)}

    on_link_search.__annotations__["request"] = gr.Request
    key_state.change(**refresh).then(on_link_search, [first_search, *search_inputs], [first_search, *search_outputs],
                                     api_visibility="private")

    # --- the tab is opened: it takes the selection the other views left in the address ---------------
    # (token, layer and heads: the explorer writes them there); after the explorer's "Search this token
    # in the corpus" (window.exbertHub.requestSearch), it also runs the search.
    def on_select(run_flag, key, current_token, current_layer, current_heads, corpus_text, by_value, k_value,
                  l_value, r_value, field_value, request=None):
        link = link_query(request)
        token_v = link.get("token", current_token)
        layer_v = link.get("layer", current_layer)
        heads_v = current_heads
        if "layer" in link:  # a view's selection is in the address: its heads (absent = all = none ticked)
            heads_v = link.get("heads", [])
        tok_u, layer_u, heads_u, status_u, by_u = on_analysis(key, token_v, layer_v, heads_v, corpus_text, request)
        out = {token: tok_u, layer: layer_u, heads: heads_u, status: status_u, by: by_u}
        a = analysis_of(key)
        if run_flag == "run" and a is not None:
            kept = [int(h) for h in (heads_v or []) if 0 <= int(h) < a.num_heads]
            layer_n = min(max(int(layer_v or 0), 0), a.num_layers - 1)
            out.update(on_search(key, default_token(a, token_v), layer_n, link.get("by") or by_value, kept, k_value,
                                 corpus_text, l_value, r_value, field_value, request))
        return out

    on_select.__annotations__["request"] = gr.Request
    tab.select(None, None, [run_request],
               js="() => { const x = window.exbertHub; return x && x.takeSearchRequest ? x.takeSearchRequest() : ''; }",
               api_visibility="private").then(
        on_select, [run_request, key_state, token, layer, heads, corpus_box, by, k, left, right, field],
        [token, layer, heads, status, by, *search_outputs], api_visibility="private")

    def on_corpus(key, corpus_text, request=None):
        a = analysis_of(key)
        return corpus_status(corpus_text, None if a is None else a.model_name, access=access, request=request)

    on_corpus.__annotations__["request"] = gr.Request

    corpus_box.submit(on_corpus, [key_state, corpus_box], [status], api_visibility="private").then(
        lambda: "", None, [message], api_visibility="private")
    corpus_box.blur(on_corpus, [key_state, corpus_box], [status], api_visibility="private")

    def set_heads(all_heads: bool):
        def fn(key):
            a = analysis_of(key)
            return gr.update(value=list(range(a.num_heads)) if (a is not None and all_heads) else [])
        return fn

    all_btn.click(set_heads(True), [key_state], [heads], api_visibility="private")
    none_btn.click(set_heads(False), [key_state], [heads], api_visibility="private")

    # --- search --------------------------------------------------------------------------------------
    def on_search(key, token_value, layer_value, by_value, heads_value, k_value, corpus_text, l_value, r_value,
                  field_value, request=None):
        try:
            a = analysis_of(key)
            if a is None:
                raise SearchUIError("analyze a text first: the search looks for tokens like one of its tokens")
            if token_value is None:
                raise InputError("choose a token of the text to search for")
            res = search_results(corpus_text, a, int(token_value), int(layer_value), by_value,
                                 heads=[int(h) for h in heads_value or []] or None, k=int(k_value),
                                 engine=engine_of(a.model_name), access=access, request=request)
            # a word piece that continues a word: the view marks it "##" like the other views
            res["query"]["continues"] = bool(sequence_continuations(a.input)[int(token_value)])
        except Exception as err:  # noqa: BLE001 - users see a message, never a trace
            msg = user_message(err)
            log.warning("search failed: %s", msg, exc_info=not isinstance(err, ExbertError))
            return {message: "\u26a0\ufe0f " + _md_escape(msg)}
        fld = field_value if field_value in FIELDS else "pos"
        return {
            message: "No token of the corpus was returned." if not res["hits"] else "",
            view: view_payload(res, left=int(l_value), right=int(r_value), field=fld),
            plot: gr.Plot(value=metadata_histograms(res, fld), visible=True),
            results: res,
        }

    on_search.__annotations__["request"] = gr.Request
    button.click(on_search, [key_state, token, layer, by, heads, k, corpus_box, left, right, field],
                 [message, view, plot, results], api_visibility="private")

    # --- the view's colouring field (its own dropdown) re-draws the histograms ------------------------
    def on_field(res, evt: gr.EventData):
        fld = (getattr(evt, "_data", None) or {}).get("field")
        fld = fld if fld in FIELDS else "pos"
        if not res:
            return fld, gr.update()
        return fld, gr.Plot(value=metadata_histograms(res, fld), visible=True)

    on_field.__annotations__["evt"] = gr.EventData  # a real class (this module has postponed annotations)
    view.field(on_field, [results], [field, plot], api_visibility="private")

    # --- the context window is applied in the browser (no round trip) --------------------------------
    window_js = ("(l, r) => { const v = document.getElementById('xs-view'); const root = v && v.querySelector('.xs-root');"
                 " if (root) root.dispatchEvent(new CustomEvent('xs-window', {bubbles: true, detail: {left: l, right: r}})); }")
    left.change(None, [left, right], None, js=window_js)
    right.change(None, [left, right], None, js=window_js)

    return SearchTab(tab=tab, token=token, layer=layer, by=by, heads=heads, k=k, left=left, right=right,
                     corpus=corpus_box, button=button, status=status, message=message, view=view, plot=plot,
                     results=results, field=field)


# --------------------------------------------------------------------------------------------------
# HTTP API
# --------------------------------------------------------------------------------------------------
def register_search_api(default_model: str, default_corpus: Any = None, *,
                        analyze: Callable[..., Any] | None = None, api_name: str = "search",
                        access: CorpusAccess | None = None, get_engine: Callable | None = None) -> Callable:
    """Register the ``search`` endpoint (gr.api; call inside the app's ``gr.Blocks``). Returns the function.

    analyze(model, text[, request=]) -> Analysis (default: ``exbert_hub.engine.load(model).analyze(text)``);
    get_engine(name, request) -> Engine (the app's policy-checked engines; default: engine.load).
    access: which corpora visitors may name (default: the operator's ``default_corpus``, no checks).
    """
    import gradio as gr

    from . import engine as _engine
    from .inputs import as_int, as_int_list, as_text

    access = access or CorpusAccess(operator_ref=default_corpus)
    takes_request = analyze is not None and "request" in inspect.signature(analyze).parameters

    def search(text: str, token: int, layer: int, by: str = "embedding", heads: list[int] | None = None,
               k: int = DEFAULT_K, model: str | None = None, corpus: str | None = None,
               request: gr.Request = None) -> dict:
        """Corpus tokens most like token `token` of `text` at `layer`, by "embedding" or "heads" (k <= 200).

        Returns the results dict of exbert_hub.search_ui.search_results: query, corpus, attention note,
        colours and hits (sentence tokens, matched index, score, POS/DEP/entity, attention of the match).
        """
        try:
            name = (as_text(model, "model", optional=True) or default_model).strip()
            text = as_text(text, "text")
            token, layer, k = as_int(token, "token"), as_int(layer, "layer"), as_int(k, "k", lo=1, hi=MAX_K)
            heads = as_int_list(heads, "heads")
            by = as_text(by, "by", optional=True, max_chars=20) or "embedding"
            ref = as_text(corpus, "corpus", optional=True, max_chars=300) or access.operator_ref
            if analyze is not None:
                a = analyze(name, text, request=request) if takes_request else analyze(name, text)
            else:
                a = _engine.load(name).analyze(text)
            eng = get_engine(a.model_name, request) if get_engine is not None else _engine.load(a.model_name)
            return search_results(ref, a, token, layer, by, heads=heads or None, k=k, engine=eng,
                                  access=access, request=request)
        except Exception as err:  # noqa: BLE001
            msg = user_message(err)
            log.warning("search API call failed: %s", err, exc_info=not isinstance(err, ExbertError))
            raise gr.Error(msg, print_exception=False) from None

    search.__annotations__["request"] = gr.Request  # a real class (this module has postponed annotations)
    gr.api(search, api_name=api_name)
    return search
