"""Sets of labelled examples, and what a model does over a whole set (InterpreT's input, computed on demand).

    examples = load_examples("tests/fixtures/examples/winograd.jsonl", labels=["label", "pair"],
                             spans=["pronoun", "candidate"])
    result = analyze_examples(engine, examples, cache_dir="~/.cache/exbert_hub/examples")
    result.hidden            # float32[layers + 1, N, hidden]: the N tracked tokens at every layer
    result.head_stats["std"] # float32[E, layers, heads]: one number per example and head
    result.attention(0, 3, 5)  # float32[T, T]: example 0, layer 3, head 5, recomputed on demand

Examples come from a Hub dataset (``datasets.load_dataset``), a local .jsonl/.json/.csv/.parquet file,
a list of strings (or of dicts), or the sentences of a loaded corpus. Label columns are any columns;
a span is a character range, word indexes or a word of the text (see ``parse_span``).
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import batching
from .analyses import heads as head_stats
from .analysis import CAUSAL_LM, CLASSIFIERS, ENCODER, MASKED_LM, SEQUENCE_CLASSIFICATION
from .errors import InputError

DEFAULT_LIMIT = 2000
MAX_EXAMPLES = 20_000  # the most any example set may hold (limit= cannot go above it)
MAX_TEXT_CHARS = 5_000  # per example text (and pair)
MAX_FILE_BYTES = 200_000_000  # a local example file
TRACKS = ("all", "spans")
CACHE_VERSION = 1
LOCAL_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
_WORD = re.compile(r"\w+|[^\w\s]")  # the words span indexes count: runs of letters/digits, or one punctuation mark
_SCALAR = (str, int, float, bool, type(None))


# --------------------------------------------------------------------------------------------------
# Example sets
# --------------------------------------------------------------------------------------------------
@dataclass
class ExampleSet:
    """E examples: texts (and optional pairs), label columns and spans.

    ``labels[column][e]``: a JSON scalar (str, int, float, bool or None).
    ``spans[name][e]``: (start, end) character range (end exclusive), or None: in ``texts[e]``, or in
    ``pairs[e]`` where ``span_segments[name][e]`` is 1 (no entry for a span column: all in the text).
    ``span_names``: the span columns in the order given (span A, span B for intensities and distances).
    """

    texts: list[str]
    pairs: list[str] | None = None
    labels: dict[str, list] = field(default_factory=dict)
    spans: dict[str, list[tuple[int, int] | None]] = field(default_factory=dict)
    source: str = "list"  # what it was loaded from, for display (a file's name, never its folder)
    span_segments: dict[str, list[int]] = field(default_factory=dict)  # 0: in the text, 1: in the pair

    def __post_init__(self):
        self.fingerprint = self._fingerprint()

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def span_names(self) -> list[str]:
        return list(self.spans)

    def span_segment(self, name: str, e: int) -> int:
        """0 when span ``name`` of example ``e`` is in the text, 1 when it is in the pair."""
        segs = self.span_segments.get(name)
        return int(segs[e]) if segs else 0

    def _fingerprint(self) -> str:
        """sha256 (first 16 hex digits) of the content: texts, pairs, labels and spans, not the source."""
        content = {"texts": self.texts, "pairs": self.pairs, "labels": self.labels,
                   "spans": {k: [list(s) if s else None for s in v] for k, v in self.spans.items()}}
        pair_spans = {k: v for k, v in self.span_segments.items() if any(v)}
        if pair_spans:  # only then: sets without pair spans keep their fingerprints (and caches)
            content["span_segments"] = pair_spans
        blob = json.dumps(content, sort_keys=True, ensure_ascii=False, default=str)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]

    def to_rows(self) -> list[dict]:
        rows = []
        for e, text in enumerate(self.texts):
            row: dict[str, Any] = {"text": text}
            if self.pairs is not None:
                row["pair"] = self.pairs[e]
            row.update({k: v[e] for k, v in self.labels.items()})
            for k, v in self.spans.items():
                span = {"start": v[e][0], "end": v[e][1], "pair": True} if v[e] and self.span_segment(k, e) else v[e]
                row[k] = list(span) if isinstance(span, tuple) else span
            rows.append(row)
        return rows


def words_of(text: str) -> list[tuple[int, int]]:
    """(start, end) of each word span indexes count: runs of letters/digits, or single punctuation marks."""
    return [m.span() for m in _WORD.finditer(text)]


def parse_span(value, text: str, *, what: str = "span") -> tuple[int, int] | None:
    """A span value -> (start, end) character range in ``text`` (end exclusive), or None for no span.

    Accepted values:
      [start, end] / (start, end) / {"start": s, "end": e}: a character range;
      {"words": [i, j, ...]} or {"word": i} or a bare int i: word indexes (``words_of``), the range from
      the first to the last word given;
      "it" (a string): the first whole-word occurrence of that text ({"text": "it", "occurrence": 1}
      for the second).
    """
    n = len(text)
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, str) and value.strip().startswith(("[", "{")):  # CSV cells hold JSON
        try:
            value = json.loads(value)
        except ValueError:
            raise InputError(f"{what}: {value[:40]!r} is not valid JSON; write [start, end] or {{\"words\": [i]}}") from None
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if isinstance(value, bool):
        raise InputError(f"{what}: {value!r} is not a span; use [start, end], word indexes or a word")
    if isinstance(value, (int, np.integer)):
        value = {"words": [int(value)]}
    if isinstance(value, str):
        value = {"text": value}
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value):
            raise InputError(f"{what}: {str(value)[:40]} is not a character range; write [start, end] with two whole numbers")
        value = {"start": int(value[0]), "end": int(value[1])}
    if not isinstance(value, dict):
        raise InputError(f"{what}: a {type(value).__name__} is not a span; use [start, end], word indexes or a word")
    if "start" in value or "end" in value:
        s, e = value.get("start"), value.get("end")
        if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in (s, e)):
            raise InputError(f"{what}: start and end must be whole numbers, got {s!r} and {e!r}")
        s, e = int(s), int(e)
        if not 0 <= s < e <= n:
            raise InputError(f"{what}: characters {s} to {e} are outside the text ({n} characters): "
                             "give 0 <= start < end <= its length")
        return s, e
    if "words" in value or "word" in value:
        idx = value.get("words", [value.get("word")])
        idx = [idx] if isinstance(idx, (int, np.integer)) else list(idx)
        if not idx or not all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in idx):
            raise InputError(f"{what}: word indexes must be whole numbers, got {str(idx)[:40]}")
        words = words_of(text)
        bad = [int(i) for i in idx if not 0 <= int(i) < len(words)]
        if bad:
            raise InputError(f"{what}: word {bad[0]} is outside the text ({len(words)} words, 0 to {len(words) - 1})")
        return words[min(idx)][0], words[max(idx)][1]
    if "text" in value:
        needle = value["text"]
        if not isinstance(needle, str) or not needle:
            raise InputError(f"{what}: the text to find must be a non-empty string")
        k = int(value.get("occurrence", 0))
        hits = [m.span() for m in re.finditer(r"(?<!\w)" + re.escape(needle) + r"(?!\w)", text)]
        if len(hits) <= k:
            raise InputError(f"{what}: {needle[:40]!r} is not in the text {text[:60]!r}"
                             + (f" {k + 1} times" if k else ""))
        return hits[k]
    raise InputError(f"{what}: a dict span needs start/end, words or text keys, got {', '.join(map(str, value))[:60]}")


def _shown_source(source) -> str:
    if isinstance(source, (str, os.PathLike)) and Path(str(source)).suffix.lower() in LOCAL_SUFFIXES:
        return Path(str(source)).name
    return str(source)[:100]


def _read_file(path: Path, cap: int) -> tuple[list[dict], int | None]:
    """Up to ``cap`` rows of a local file, and the total number of rows when known (None: more than cap)."""
    if not path.is_file():
        raise InputError(f"the example file {path.name!r} was not found: give an existing .jsonl, .json, .csv or .parquet file")
    if path.stat().st_size > MAX_FILE_BYTES:
        raise InputError(f"the example file {path.name!r} is over {MAX_FILE_BYTES // 1_000_000} MB: take a part of it")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        total = pf.metadata.num_rows
        rows = pf.read().slice(0, cap).to_pylist() if total else []
        return rows, total
    rows: list[dict] = []
    if suffix == ".csv":
        import csv

        with path.open(newline="", encoding="utf-8") as f:
            for row in csv.DictReader(f):
                if len(rows) >= cap:
                    return rows, None
                rows.append(dict(row))
        return rows, len(rows)
    with path.open(encoding="utf-8") as f:
        if suffix == ".json":
            data = json.load(f)
            if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
                data = next(iter(data.values()))
            if not isinstance(data, list):
                raise InputError(f"{path.name!r} must hold a JSON list of objects (or .jsonl, one object a line)")
            return data[:cap], len(data)
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            if len(rows) >= cap:
                return rows, None
            try:
                rows.append(json.loads(line))
            except ValueError:
                raise InputError(f"{path.name!r} line {number} is not valid JSON") from None
    return rows, len(rows)


_SPLIT = re.compile(r"([\w.-]+)(?:\[(\d*):(\d*)\])?")  # "train", "train[:500]", "validation[100:300]"


def _hub_rows(source: str, config: str | None, split: str, cap: int) -> tuple[list, int | None, str]:
    """Up to ``cap`` rows of a Hub dataset's split, reading no more of it than that.

    A split name with an optional row range (``train``, ``train[:500]``, ``train[100:300]``) is streamed
    (``streaming=True``: only the files and row groups holding the first rows are read), so a split
    over the limit is refused after ``cap`` rows instead of after downloading all of it. Other splits
    (percentages, "train+test") and datasets that cannot stream load with ``split`` cut to ``cap`` rows
    where its form allows (``train[:cap]``: datasets then reads only that slice into memory).
    Returns (rows, total or None when above cap, description)."""
    import itertools

    import datasets

    shown = f"{source}" + (f"/{config}" if config else "") + f" [{split}]"

    def failed(err: Exception) -> InputError:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        return InputError(f"could not load the dataset {source!r} (config {config!r}, split {split!r}): {first}")

    m = _SPLIT.fullmatch(split.replace(" ", ""))
    if m:
        name, start, stop = m.group(1), int(m.group(2) or 0), int(m.group(3)) if m.group(3) else None
        want = cap if stop is None else max(0, min(cap, stop - start))
        try:
            stream = datasets.load_dataset(source, config, split=name, streaming=True)
            rows = list(itertools.islice(stream, start, start + want))
        except Exception:  # noqa: BLE001 - some datasets do not stream: load the slice below
            rows = None
        if rows is not None:
            asked = cap if stop is None else stop - start
            return rows, (None if len(rows) == cap and asked >= cap else len(rows)), shown
        split = f"{name}[{start}:{start + want}]"
    try:
        ds = datasets.load_dataset(source, config, split=split)
    except Exception as err:  # noqa: BLE001 - one line for every failure of the Hub or the loader
        raise failed(err) from None
    total = len(ds)
    if m and total == cap:
        total = None  # cut to cap rows: there may be more
    return ds.select(range(min(total or cap, cap))).to_list(), total, shown


def _rows(source, cap: int, split: str | None, config: str | None) -> tuple[list, int | None, str]:
    """(rows, total rows or None when above cap, description) of any accepted source."""
    from .corpus import Corpus

    if isinstance(source, Corpus):
        total = source.num_sentences
        label = str(source.label)
        if os.path.isabs(label) or label.startswith((".", "~")):  # a folder: its name only, never the server's path
            label = Path(label).name
        return [{"text": source.sentence(i)} for i in range(min(total, cap))], total, f"corpus {label}"[:100]
    if isinstance(source, (list, tuple)):
        return list(source[:cap]), len(source), "list"
    if isinstance(source, os.PathLike) or (isinstance(source, str) and Path(source).suffix.lower() in LOCAL_SUFFIXES):
        rows, total = _read_file(Path(os.fspath(source)).expanduser(), cap)
        return rows, total, Path(os.fspath(source)).name
    if isinstance(source, str):
        from .policy import is_hub_id

        if not is_hub_id(source):
            raise InputError(f"{source[:80]!r} is neither a Hub dataset id nor a .jsonl/.json/.csv/.parquet file")
        return _hub_rows(source, config, split or "train", cap)
    raise InputError(f"examples must be a Hub dataset id, a file, a list of strings or a corpus, not a {type(source).__name__}")


def load_examples(source, text: str = "text", pair: str | None = None, labels: Sequence[str] = (),
                  spans: Sequence[str] = (), limit: int = DEFAULT_LIMIT, split: str | None = None,
                  config: str | None = None) -> ExampleSet:
    """Read an example set.

    source: a Hub dataset id (``datasets.load_dataset(source, config, split=split or "train")``, read
      no further than limit + 1 rows: see ``_hub_rows``), a local .jsonl/.json/.csv/.parquet file, a
      list of strings (column "text") or of dicts, or a loaded Corpus.
    text / pair: the columns of the text and of an optional second sentence (sentence B).
    labels: any columns to colour or group by (gold label, domain, ...), kept as they are.
    spans: columns holding spans of the text (``parse_span``); the first two are span A and span B.
      A span in the pair: name the column "pair:<column>" (every span of that column is in the pair),
      or give the value as a dict with "pair": true ({"pair": true, "text": "it"}, {"pair": true,
      "start": 0, "end": 3}, {"pair": true, "words": [2]}): it is counted in the pair's characters/words.
    limit: the most examples accepted (1 to MAX_EXAMPLES); a bigger set is refused, not cut: pick a
      smaller split (e.g. ``split="train[:2000]"``) or raise the limit.

    Raises InputError (one line) for unknown columns (naming the ones there are), spans outside the
    text, too many or no examples, and values of the wrong type.
    """
    if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or not 1 <= int(limit) <= MAX_EXAMPLES:
        raise InputError(f"limit must be a whole number from 1 to {MAX_EXAMPLES:,}, got {str(limit)[:40]}")
    limit = int(limit)
    for name, cols in (("labels", labels), ("spans", spans)):
        if isinstance(cols, str):
            raise InputError(f"{name} must be a list of column names, e.g. {name}=[{cols!r}]")
    labels, spans = list(labels), list(spans)
    rows, total, description = _rows(source, limit + 1, split, config)
    if total is None or total > limit:
        count = "more than" if total is None else f"{total:,}, more than"
        part = f"take a part (e.g. split='train[:{limit}]')" if isinstance(source, str) and "[" in description \
            else "take fewer rows"
        raise InputError(f"the example set {description!r} has {count} limit={limit:,} examples: "
                         f"{part} or raise limit (at most {MAX_EXAMPLES:,})")
    if not rows:
        raise InputError(f"the example set {description!r} has no examples")
    rows = [{"text": r} if isinstance(r, str) else r for r in rows]
    for i, r in enumerate(rows):
        if not isinstance(r, dict):
            raise InputError(f"example {i} is a {type(r).__name__}; each example must be a string or an object of columns")
    columns = list(rows[0])
    # "pair:<column>" names a column whose spans are all in the pair (unless a column has that very name)
    span_columns = {c: (c[5:], 1) if isinstance(c, str) and c.startswith("pair:") and c not in columns else (c, 0)
                    for c in spans}
    wanted = [text] + ([pair] if pair else []) + labels + [col for col, _ in span_columns.values()]
    for col in wanted:
        if col not in columns:
            raise InputError(f"the column {str(col)[:40]!r} is not in {description!r}; its columns are: "
                             + ", ".join(map(str, columns))[:300])
    texts, pairs = [], [] if pair else None
    label_cols: dict[str, list] = {c: [] for c in labels}
    span_cols: dict[str, list] = {span_columns[c][0]: [] for c in spans}
    span_segs: dict[str, list[int]] = {span_columns[c][0]: [] for c in spans}
    if len(span_cols) < len(spans):
        raise InputError(f"span columns must differ: {', '.join(map(str, spans))[:100]} name a column twice")
    for i, r in enumerate(rows):
        missing = [c for c in wanted if c not in r]
        if missing:
            raise InputError(f"example {i} has no column {missing[0]!r}")
        for col, out in ((text, texts), (pair, pairs)):
            if col is None:
                continue
            value = r[col]
            if not isinstance(value, str):
                raise InputError(f"example {i}: the {col!r} column must be text, got {type(value).__name__}")
            if not value.strip():
                raise InputError(f"example {i}: the {col!r} column is empty")
            if len(value) > MAX_TEXT_CHARS:
                raise InputError(f"example {i}: the {col!r} column has {len(value):,} characters; at most {MAX_TEXT_CHARS:,}")
            out.append(value)
        for col in labels:
            value = r[col]
            if isinstance(value, np.generic):
                value = value.item()
            if not isinstance(value, _SCALAR):
                raise InputError(f"example {i}: the label column {col!r} holds a {type(value).__name__}; labels must be "
                                 "text, numbers, true/false or empty")
            label_cols[col].append(value)
        for col, segment in span_columns.values():
            value, in_pair = _pair_flag(r[col])
            segment = segment or in_pair
            what = f"example {i}, span {col!r}" + (" (in the pair)" if segment else "")
            if segment and pairs is None:
                raise InputError(f"{what} is in the pair, but no pair column was given: pass pair=<its column>")
            span_cols[col].append(parse_span(value, pairs[-1] if segment else texts[-1], what=what))
            span_segs[col].append(segment)
    return ExampleSet(texts=texts, pairs=pairs, labels=label_cols, spans=span_cols, source=description,
                      span_segments={k: v for k, v in span_segs.items() if any(v)})


def _pair_flag(value) -> tuple[Any, int]:
    """(the span value without its "pair" key, 1 when it had "pair": true else 0); CSV cells hold JSON."""
    if isinstance(value, str) and value.strip().startswith("{"):
        try:
            value = json.loads(value)
        except ValueError:
            return value, 0  # parse_span names the bad JSON
    if isinstance(value, dict) and "pair" in value:
        flag = value["pair"]
        if not isinstance(flag, bool):
            raise InputError(f'a span\'s "pair" must be true or false, got {str(flag)[:20]}')
        return {k: v for k, v in value.items() if k != "pair"}, int(flag)
    return value, 0


# --------------------------------------------------------------------------------------------------
# The analysis of a set
# --------------------------------------------------------------------------------------------------
@dataclass
class ExamplesAnalysis:
    """What one model does over an ExampleSet. E examples, N tracked tokens (rows), L layers, H heads.

    Per example e (lists of length E): ``tokens[e]`` (raw tokenizer tokens), ``offsets[e]`` int32[T_e, 2]
    (into the text, or the pair for segment-1 tokens; (0, 0) for specials), ``special[e]`` bool[T_e],
    ``segments[e]`` int8[T_e].
    Tracked rows: ``row_example`` int32[N], ``row_token`` int32[N] (index in tokens[e]), ``row_spans``
    uint8[N] (bit s set when the token overlaps span ``examples.span_names[s]``), ``hidden``
    float32[L + 1, N, d] (row 0: embeddings), ``pos``/``dep``/``ent`` list[str] of N (spaCy, "" for
    specials or without spaCy).
    ``head_stats[name]`` float32[E, L, H] for every name of ``exbert_hub.analyses.heads.STATISTICS``.
    Predictions: sequence classifiers fill ``prediction`` (E label names), ``probability`` float32[E]
    and ``probabilities`` float32[E, labels] with ``class_labels``; token classifiers and LMs fill
    ``token_prediction`` (N label names / tokens: an LM's top token at (masked LM) or after (causal LM)
    the row) and ``token_probability`` float32[N]. Unused fields are None.
    """

    model_name: str
    kind: str
    track: str
    examples: ExampleSet
    num_layers: int
    num_heads: int
    tokens: list[list[str]]
    offsets: list[np.ndarray]
    special: list[np.ndarray]
    segments: list[np.ndarray]
    row_example: np.ndarray
    row_token: np.ndarray
    row_spans: np.ndarray
    hidden: np.ndarray
    head_stats: dict[str, np.ndarray]
    pos: list[str]
    dep: list[str]
    ent: list[str]
    class_labels: list[str] | None = None
    prediction: list[str] | None = None
    probability: np.ndarray | None = None
    probabilities: np.ndarray | None = None
    token_prediction: list[str] | None = None
    token_probability: np.ndarray | None = None
    model_identity: dict = field(default_factory=dict)
    cache_path: Path | None = None
    from_cache: bool = False
    _engine: Any = field(default=None, repr=False)
    _projections: dict = field(default_factory=dict, repr=False)

    def __len__(self) -> int:
        return len(self.examples)

    @property
    def num_rows(self) -> int:
        return int(self.row_example.shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes of the numeric arrays kept (hidden states dominate)."""
        arrays = [self.hidden, self.row_example, self.row_token, self.row_spans, *self.head_stats.values(),
                  *self.offsets, *self.special, *self.segments]
        arrays += [a for a in (self.probability, self.probabilities, self.token_probability) if a is not None]
        return int(sum(a.nbytes for a in arrays))

    # --- rows ------------------------------------------------------------------------------------
    def rows_of(self, example: int) -> np.ndarray:
        """int[]: the tracked rows of one example, in token order."""
        self._check_example(example)
        return np.flatnonzero(self.row_example == example)

    def span_rows(self, span: int | str, example: int | None = None) -> np.ndarray:
        """int[]: tracked rows in span ``span`` (index or name in ``examples.span_names``), of one example or all."""
        s = self._span_index(span)
        hit = (self.row_spans >> s) & 1 == 1
        if example is not None:
            self._check_example(example)
            hit &= self.row_example == example
        return np.flatnonzero(hit)

    def correct(self, gold: str) -> list[bool | None]:
        """Per example: the sequence classifier's prediction equals the label column ``gold`` (None: no prediction or gold)."""
        if gold not in self.examples.labels:
            raise InputError(f"{gold!r} is not a label column; the label columns are: {', '.join(self.examples.labels) or 'none'}")
        if self.prediction is None:
            return [None] * len(self)
        return [None if g is None else str(p) == str(g) for p, g in zip(self.prediction, self.examples.labels[gold])]

    # --- head summary ----------------------------------------------------------------------------
    def head_summary(self, statistic: str = "std", select: Sequence[int] | None = None) -> np.ndarray:
        """float32[L, H]: the mean of ``head_stats[statistic]`` over the ``select``ed examples (all by default),
        examples where it is undefined (NaN, e.g. no span) left out; NaN where no example defines it."""
        if statistic not in self.head_stats:
            raise InputError(f"unknown head statistic {str(statistic)[:40]!r}; use one of {', '.join(self.head_stats)}")
        values = self.head_stats[statistic]
        if select is not None:
            idx = np.asarray(list(select), dtype=np.int64)
            if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
                raise InputError(f"selected examples must be between 0 and {len(self) - 1}")
            values = values[idx]
        ok = ~np.isnan(values)
        count = ok.sum(axis=0)
        total = np.where(ok, values, 0).sum(axis=0, dtype=np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(count > 0, total / np.maximum(count, 1), np.nan).astype(np.float32)

    # --- distances ------------------------------------------------------------------------------
    def span_distance_values(self, metric: str = "cosine", space: str = "hidden", **projection) -> np.ndarray:
        """float32[L + 1, E]: per layer and example, the distance between span A's and span B's mean vector.

        space: "hidden" (the full hidden states) or a projection method ("pca", "umap", "tsne") whose
        2-D points are used (``projection`` params go to ``projection()``). NaN for examples missing a span.
        """
        from .analyses import distances

        if len(self.examples.span_names) < 2:
            raise InputError("distances need two span columns (span A and span B): pass spans=[a, b] to load_examples")
        points = self.hidden if space == "hidden" else self.projection(space, **projection)
        a = distances.span_points(points, [self.span_rows(0, e) for e in range(len(self))])
        b = distances.span_points(points, [self.span_rows(1, e) for e in range(len(self))])
        return distances.pair_distances(a, b, metric)

    def span_distances(self, metric: str = "cosine", group_by: str | None = None, select: Sequence[int] | None = None,
                       space: str = "hidden", **projection) -> dict[str, np.ndarray]:
        """{group: float32[L + 1]}: mean span A-B distance per layer over the examples of each value of the
        label column ``group_by`` (one group "all" without it), restricted to ``select``."""
        from .analyses import distances

        if group_by is not None and group_by not in self.examples.labels:
            raise InputError(f"{group_by!r} is not a label column; the label columns are: {', '.join(self.examples.labels) or 'none'}")
        groups = self.examples.labels[group_by] if group_by else ["all"] * len(self)
        return distances.mean_by_group(self.span_distance_values(metric, space, **projection), groups, select)

    # --- projections ---------------------------------------------------------------------------
    def projection(self, method: str = "pca", *, aligned: bool = True, seed: int = 0, **params) -> np.ndarray:
        """float32[L + 1, N, 2]: the tracked rows projected per layer (``exbert_hub.analyses.projections``),
        cached in memory and next to the analysis on disk per (method, aligned, seed, params)."""
        from .analyses import projections

        if method not in projections.METHODS:
            raise InputError(f"unknown projection {str(method)[:40]!r}: use one of {', '.join(projections.METHODS)}")
        key = json.dumps({"method": method, "aligned": bool(aligned), "seed": int(seed), **params}, sort_keys=True, default=str)
        if key in self._projections:
            return self._projections[key]
        path = None
        if self.cache_path is not None:
            path = self.cache_path / f"projection-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npy"
            if path.exists():
                self._projections[key] = np.load(path)
                return self._projections[key]
        proj = projections.project_layers(np.asarray(self.hidden), method, aligned=aligned, seed=seed, **params)
        if path is not None:
            _atomic_save(path, proj)
        self._projections[key] = proj
        return proj

    def query_key_projection(self, layer: int, head: int, method: str = "pca", select: Sequence[int] | None = None,
                             engine=None, seed: int = 0, **params) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """AttentionViz's joint view of one head: (float32[n, 2] queries, float32[n, 2] keys, int[n] rows).

        The query and the key of every tracked row of the ``select``ed examples (all by default) in head
        (``layer``, ``head``), recomputed per example by ``engine.analyze`` (queries and keys are never
        stored), laid out and projected together by ``analyses.projections.project_query_key``.
        Cached in memory per (layer, head, method, selection, seed, params)."""
        from .analyses import projections

        if method not in projections.METHODS:
            raise InputError(f"unknown projection {str(method)[:40]!r}: use one of {', '.join(projections.METHODS)}")
        if not 0 <= layer < self.num_layers:
            raise InputError(f"layer {layer} is out of range: the model has layers 0 to {self.num_layers - 1}")
        if not 0 <= head < self.num_heads:
            raise InputError(f"head {head} is out of range: each layer has heads 0 to {self.num_heads - 1}")
        chosen = list(range(len(self))) if select is None else sorted({int(e) for e in select})
        for e in chosen:
            self._check_example(e)
        key = json.dumps({"qk": [layer, head], "method": method, "select": chosen, "seed": seed, **params},
                         sort_keys=True, default=str)
        if key in self._projections:
            return self._projections[key]
        engine = engine or self._engine
        if engine is None:
            raise InputError("this analysis was opened without its model: pass engine= (the same model)")
        qs, ks, rows = [], [], []
        for e in chosen:
            r = self.rows_of(e)
            if not r.size:
                continue
            pair = None if self.examples.pairs is None else self.examples.pairs[e]
            q, k = engine.analyze(self.examples.texts[e], pair=pair).query_key(layer, head)
            t = self.row_token[r]
            qs.append(q[t])
            ks.append(k[t])
            rows.append(r)
        if not rows:
            raise InputError("the selected examples have no tracked tokens")
        q2, k2 = projections.project_query_key(np.concatenate(qs), np.concatenate(ks), method, seed=seed, **params)
        self._projections[key] = (q2, k2, np.concatenate(rows))
        return self._projections[key]

    # --- one example's attention, on demand -------------------------------------------------------
    def attention(self, example: int, layer: int, head: int, engine=None) -> np.ndarray:
        """float32[T, T]: one head of one example, recomputed by ``engine.analyze`` (never stored)."""
        self._check_example(example)
        if not 0 <= layer < self.num_layers:
            raise InputError(f"layer {layer} is out of range: the model has layers 0 to {self.num_layers - 1}")
        if not 0 <= head < self.num_heads:
            raise InputError(f"head {head} is out of range: each layer has heads 0 to {self.num_heads - 1}")
        engine = engine or self._engine
        if engine is None:
            raise InputError("this analysis was opened without its model: pass engine= (the same model) to attention()")
        pair = None if self.examples.pairs is None else self.examples.pairs[example]
        a = engine.analyze(self.examples.texts[example], pair=pair)
        return a.attentions[layer, head]

    # --- checks ---------------------------------------------------------------------------------
    def _check_example(self, example: int) -> None:
        if isinstance(example, bool) or not isinstance(example, (int, np.integer)) or not 0 <= example < len(self):
            raise InputError(f"example {str(example)[:20]} is out of range: the set has examples 0 to {len(self) - 1}")

    def _span_index(self, span: int | str) -> int:
        names = self.examples.span_names
        if isinstance(span, str):
            if span not in names:
                raise InputError(f"{span!r} is not a span column; the spans are: {', '.join(names) or 'none'}")
            return names.index(span)
        if not 0 <= int(span) < len(names):
            raise InputError(f"span {span} does not exist: the set has {len(names)} span columns")
        return int(span)


def _atomic_save(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        np.save(f, array)
    os.replace(tmp, path)


def model_identity(engine) -> dict:
    """What names the model's numbers in a cache key: name, Hub commit if known, and a hash of some weights
    (the input embeddings' first rows and the last parameter: the head), so a changed local folder misses."""
    import torch

    h = hashlib.sha256()
    with torch.no_grad():
        emb = engine.model.get_input_embeddings().weight
        h.update(str(tuple(emb.shape)).encode())
        h.update(emb[: min(64, emb.shape[0])].float().numpy().tobytes())
        last = list(engine.model.parameters())[-1]
        h.update(last.reshape(-1)[:4096].float().numpy().tobytes())
    return {"name": engine.name, "kind": engine.kind, "revision": getattr(engine.config, "_commit_hash", None),
            "weights": h.hexdigest()[:16]}


@dataclass
class _Parse:
    """spaCy words of one example mapped onto its tokens."""

    token_words: np.ndarray  # int[T]: word index (text words then pair words), -1 for none
    word_heads: np.ndarray  # int[words]
    pos: list[str]
    dep: list[str]
    ent: list[str]


@dataclass
class _DocWords:
    """spaCy's non-space words of one text: character ranges in it, head word index, POS, DEP, entity type."""

    starts: list[int]
    ends: list[int]
    heads: list[int]
    pos: list[str]
    dep: list[str]
    ent: list[str]


def _doc_words(doc) -> _DocWords:
    """A spaCy Doc -> _DocWords (space tokens dropped; a head that is a space token points to itself)."""
    words = [t for t in doc if not t.is_space]
    index = {t.i: j for j, t in enumerate(words)}
    return _DocWords([t.idx for t in words], [t.idx + len(t.text) for t in words],
                     [index.get(t.head.i, j) for j, t in enumerate(words)],
                     [t.pos_ for t in words], [t.dep_ for t in words], [t.ent_type_ for t in words])


def _from_sentences(text: str, sentences: list) -> _DocWords | None:
    """The corpus builder's sentences of one whole text (``corpus_builder.annotate.Sentence``, offsets into
    each stripped sentence) -> _DocWords of the text, or None when they do not cover every non-space
    character of it (the annotator's prose filter dropped a sentence, e.g. one of mostly digits)."""
    out = _DocWords([], [], [], [], [], [])
    cursor = covered = 0
    for s in sentences:
        base = text.find(s.text, cursor)
        if base < 0:
            return None
        first = len(out.starts)
        out.starts += [base + x for x in s.starts]
        out.ends += [base + x for x in s.ends]
        out.heads += [first + h for h in s.heads]  # spaCy's heads stay inside their sentence
        out.pos += s.pos
        out.dep += s.deps
        out.ent += s.ent_types
        cursor = base + len(s.text)
        covered += sum(not c.isspace() for c in s.text)
    return out if covered == sum(not c.isspace() for c in text) else None


def _align(enc: batching.Encoded, docs: Sequence[tuple[str, _DocWords] | None]) -> _Parse:
    """One example's words (text, then pair) onto its tokens with the corpus builder's align_words."""
    from corpus_builder.builder import align_words  # the one subword/word alignment of the project

    segs = enc.segments or [0] * len(enc)
    token_words = np.full(len(enc), -1, dtype=np.int64)
    heads, pos, dep, ent = [], [], [], []
    for seg, item in enumerate(docs):
        if item is None:
            continue
        text, w = item
        base = len(heads)
        other = [sp or s != seg for sp, s in zip(enc.special, segs)]
        aligned = align_words(enc.offsets, other, w.starts, w.ends, len(text))
        for i, k in enumerate(aligned):
            if k >= 0 and not other[i]:
                token_words[i] = base + k
        heads += [base + h for h in w.heads]
        pos += w.pos
        dep += w.dep
        ent += w.ent
    return _Parse(token_words, np.asarray(heads, dtype=np.int64), pos, dep, ent)


def _parse(nlp, examples: ExampleSet, encoded: list[batching.Encoded]) -> list[_Parse]:
    """spaCy in this process over every text (and pair), aligned to the model's tokens."""
    docs = [_doc_words(d) for d in nlp.pipe(examples.texts, batch_size=256)]
    pair_docs = [_doc_words(d) for d in nlp.pipe(examples.pairs, batch_size=256)] if examples.pairs is not None else None
    return [_align(enc, [(examples.texts[e], docs[e]),
                         None if pair_docs is None else (examples.pairs[e], pair_docs[e])])
            for e, enc in enumerate(encoded)]


# spaCy worker processes kept between calls (one idle worker per pipeline), like load_pipeline's cache
_IDLE_WORKERS: dict[str, Any] = {}
_WORKERS_LOCK = threading.Lock()


def _take_worker(pipeline: str):
    from corpus_builder.annotate import Worker

    with _WORKERS_LOCK:
        w = _IDLE_WORKERS.pop(pipeline, None)
    if w is not None and w.proc.poll() is None and w.pending == 0:
        return w
    return Worker(pipeline)


def _give_back_worker(pipeline: str, worker) -> None:
    with _WORKERS_LOCK:
        keep = worker.pending == 0 and worker.proc.poll() is None and pipeline not in _IDLE_WORKERS
        if keep:
            _IDLE_WORKERS[pipeline] = worker
    if not keep:
        worker.close()


@atexit.register
def _close_workers() -> None:
    with _WORKERS_LOCK:
        workers = list(_IDLE_WORKERS.values())
        _IDLE_WORKERS.clear()
    for w in workers:
        w.close()


class _WorkerParses:
    """spaCy in its own process (``corpus_builder.annotate.Worker``) while the model runs here.

    The texts go to the worker in the order the batches will run, one request per batch, so the worker
    parses batch i + 1 while the model computes batch i; ``get(e)`` waits only when the parse of example
    e has not come back yet. A text whose sentences the annotator's prose filter dropped in part (see
    ``_from_sentences``) is parsed again here, so the result is the in-process parse in every case.
    """

    def __init__(self, pipeline: str, examples: ExampleSet, encoded: list[batching.Encoded], plan: list[list[int]]):
        self.pipeline, self.examples, self.encoded = pipeline, examples, encoded
        self.worker = _take_worker(pipeline)
        self.requests: list[list[int]] = []
        self.parses: dict[int, _Parse] = {}
        self.failed = False
        pairs = examples.pairs
        for batch in plan:
            docs = [(i, examples.texts[e]) for i, e in enumerate(batch)]
            if pairs is not None:
                docs += [(len(batch) + i, pairs[e]) for i, e in enumerate(batch)]
            self.worker.submit(docs, 0, MAX_TEXT_CHARS)  # no minimum of words; no text is longer
            self.requests.append(batch)

    def busy(self) -> bool:
        return not self.worker.idle()

    def get(self, e: int) -> _Parse:
        while e not in self.parses:
            batch = self.requests.pop(0)
            try:
                sentences = self.worker.result()
            except Exception:
                self.failed = True  # e.g. the pipeline did not load: that process is done
                raise
            per_doc: dict[int, list] = {}
            for s in sentences:
                per_doc.setdefault(s.document, []).append(s)
            for i, x in enumerate(batch):
                docs = []
                for number, text in ((i, self.examples.texts[x]),
                                     (len(batch) + i, None if self.examples.pairs is None else self.examples.pairs[x])):
                    if text is None:
                        docs.append(None)
                        continue
                    words = _from_sentences(text, per_doc.get(number, []))
                    if words is None:
                        from corpus_builder.annotate import load_pipeline

                        words = _doc_words(load_pipeline(self.pipeline)(text))
                    docs.append((text, words))
                self.parses[x] = _align(self.encoded[x], docs)
        return self.parses[e]

    def close(self) -> None:
        """Hand the worker back for the next call; stop it after an error or with requests left unread."""
        if self.failed:
            self.worker.close()
        else:
            _give_back_worker(self.pipeline, self.worker)


def _span_tokens(examples: ExampleSet, e: int, enc: batching.Encoded) -> np.ndarray:
    """uint8[T]: bit s set when token overlaps span s (tokens of the span's segment: text or pair; specials never)."""
    bits = np.zeros(len(enc), dtype=np.uint8)
    segs = enc.segments or [0] * len(enc)
    for s, name in enumerate(examples.span_names[:8]):
        span = examples.spans[name][e]
        if span is None:
            continue
        a, b = span
        want = examples.span_segment(name, e)
        for i, ((ts, te), sp, seg) in enumerate(zip(enc.offsets, enc.special, segs)):
            if not sp and seg == want and ts < b and te > a:
                bits[i] |= np.uint8(1 << s)
    return bits


def cache_key(identity: dict, examples: ExampleSet, track: str, spacy: str | None) -> str:
    blob = json.dumps({"version": CACHE_VERSION, "model": identity, "examples": examples.fingerprint, "track": track,
                       "spacy": spacy}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def analyze_examples(engine, examples: ExampleSet, *, track: str = "all", batch_tokens: int = 4096,
                     progress: bool = True, cache_dir: str | os.PathLike | None = None,
                     spacy: str | None = "en_core_web_sm", spacy_process: bool = True) -> ExamplesAnalysis:
    """Run every example through ``engine``'s model in padded batches (``exbert_hub.batching``, the corpus
    builder's path) and keep what the Layers plots need; never every attention matrix.

    track: "all" keeps the hidden states of every token (specials included, marked in ``special``);
      "spans" only of the tokens overlapping a span.
    batch_tokens: padded tokens per forward pass. progress: a tqdm bar over the examples.
    cache_dir: a folder; the result is stored there under a key of (model name, Hub commit, a hash of
      weights, the example set's fingerprint, track, spaCy pipeline) and reopened instantly next time.
    spacy: the spaCy pipeline for POS / DEP / entity and the grammar correlation (None: skip them).
    spacy_process: parse in a spaCy worker process (the corpus builder's ``annotate.Worker``, kept for
      the next call) while the model runs here, batch by batch; False parses everything here first.
      Both give the same annotations.
    """
    if not isinstance(examples, ExampleSet):
        raise InputError(f"examples must be an ExampleSet (see load_examples), got {type(examples).__name__}")
    if track not in TRACKS:
        raise InputError(f"track must be one of {', '.join(TRACKS)}, got {str(track)[:40]!r}")
    if track == "spans" and not examples.span_names:
        raise InputError("track='spans' needs span columns: pass spans=[...] to load_examples, or use track='all'")
    if examples.pairs is not None and engine.kind not in (MASKED_LM, ENCODER, *CLASSIFIERS):
        raise InputError(f"sentence pairs are for encoders; {engine.name} is a {engine.kind} model")
    identity = model_identity(engine)
    folder = None
    if cache_dir is not None:
        folder = Path(cache_dir).expanduser() / cache_key(identity, examples, track, spacy)
        if (folder / "meta.json").exists():
            result = _load(folder, examples)
            result._engine = engine
            return result

    from tqdm.auto import tqdm

    encoded = batching.encode(engine, examples.texts, examples.pairs)
    limit = engine.token_limit
    for e, enc in enumerate(encoded):
        if len(enc) > limit:
            raise InputError(f"example {e} has {len(enc):,} tokens; {engine.name} takes at most {limit:,}: shorten it")
    plan = batching.plan_batches([len(x) for x in encoded], batch_tokens)
    parses: list[_Parse] | None = None  # per example, once every parse is in
    if spacy and not spacy_process:
        from corpus_builder.annotate import load_pipeline

        parses = _parse(load_pipeline(spacy), examples, encoded)
    span_bits = [_span_tokens(examples, e, enc) for e, enc in enumerate(encoded)]
    keep_rows = [np.ones(len(enc), dtype=bool) if track == "all" else bits > 0 for enc, bits in zip(encoded, span_bits)]

    wants = "top" if engine.kind in (MASKED_LM, CAUSAL_LM) else engine.kind in CLASSIFIERS
    runner = batching.BatchRunner(engine, logits=wants)
    L, H = engine.num_layers, engine.num_heads
    E = len(examples)
    stats = {name: np.full((E, L, H), np.nan, dtype=np.float32) for name in head_stats.STATISTICS}
    hidden_parts: list[np.ndarray | None] = [None] * E
    outputs: list[batching.ExampleOutput | None] = [None] * E
    import torch

    # CPU sharing (as the corpus builder does): while the spaCy worker is busy the model runs on one
    # thread fewer, since oversubscribed OpenMP threads spin and slow both; then it gets them all back
    threads = torch.get_num_threads()
    worker = _WorkerParses(spacy, examples, encoded, plan) if spacy and spacy_process else None
    bar = tqdm(total=E, desc="examples", unit=" ex", disable=not progress, dynamic_ncols=True)
    try:
        for batch in plan:
            if worker is not None:
                torch.set_num_threads(max(1, threads - 1) if worker.busy() else threads)

            def reduce(i: int, attn: np.ndarray, batch=batch) -> None:
                e = batch[i]
                special = np.asarray(encoded[e].special, dtype=bool)
                p = worker.get(e) if worker is not None else None if parses is None else parses[e]
                a = span_bits[e] & 1 > 0 if len(examples.span_names) >= 2 else None
                b = span_bits[e] & 2 > 0 if len(examples.span_names) >= 2 else None
                got = head_stats.head_statistics(attn, special, None if p is None else p.token_words,
                                                 None if p is None else p.word_heads, a, b)
                for name, value in got.items():
                    stats[name][e] = value

            texts = [examples.texts[e] for e in batch]
            pairs = None if examples.pairs is None else [examples.pairs[e] for e in batch]
            for e, out in zip(batch, runner.run([encoded[e] for e in batch], texts, pairs, on_attention=reduce)):
                hidden_parts[e] = np.ascontiguousarray(out.hidden[:, keep_rows[e]])
                out.hidden = None  # the rows we keep are copied; let the batch go
                outputs[e] = out
            bar.update(len(batch))
        if worker is not None:
            parses = [worker.get(e) for e in range(E)]  # every answer read: the worker is idle again
    finally:
        bar.close()
        torch.set_num_threads(threads)
        if worker is not None:
            worker.close()

    row_example = np.concatenate([np.full(int(k.sum()), e, dtype=np.int32) for e, k in enumerate(keep_rows)])
    row_token = np.concatenate([np.flatnonzero(k).astype(np.int32) for k in keep_rows])
    row_spans = np.concatenate([bits[k] for bits, k in zip(span_bits, keep_rows)]).astype(np.uint8)
    hidden = np.concatenate(hidden_parts, axis=1) if E else np.zeros((L + 1, 0, 0), np.float32)
    pos, dep, ent = [], [], []
    for e, t in zip(row_example.tolist(), row_token.tolist()):
        w = -1 if parses is None else int(parses[e].token_words[t])
        pos.append(parses[e].pos[w] if w >= 0 else "")
        dep.append(parses[e].dep[w] if w >= 0 else "")
        ent.append(parses[e].ent[w] if w >= 0 else "")
    result = ExamplesAnalysis(
        model_name=engine.name, kind=engine.kind, track=track, examples=examples, num_layers=L, num_heads=H,
        tokens=[x.tokens for x in encoded],
        offsets=[np.asarray(x.offsets, dtype=np.int32).reshape(-1, 2) for x in encoded],
        special=[np.asarray(x.special, dtype=bool) for x in encoded],
        segments=[np.asarray(x.segments or [0] * len(x), dtype=np.int8) for x in encoded],
        row_example=row_example, row_token=row_token, row_spans=row_spans, hidden=hidden, head_stats=stats,
        pos=pos, dep=dep, ent=ent, model_identity=identity, _engine=engine)
    _predictions(engine, result, outputs)
    if folder is not None:
        _save(folder, result)
        result.cache_path = folder
    return result


def _predictions(engine, result: ExamplesAnalysis, outputs: list[batching.ExampleOutput]) -> None:
    """Fill the prediction fields from each example's logits (classifiers) or top ids (LMs)."""
    rows_by_example = [result.row_token[result.row_example == e] for e in range(len(outputs))]
    if engine.kind in CLASSIFIERS and all(o.logits is not None for o in outputs):
        per = [engine.classify(o.logits) for o in outputs]
        result.class_labels = per[0].labels if per else []
        if engine.kind == SEQUENCE_CLASSIFICATION:
            result.probabilities = np.stack([c.probabilities for c in per]).astype(np.float32)
            best = result.probabilities.argmax(axis=1)
            result.prediction = [result.class_labels[i] for i in best.tolist()]
            result.probability = result.probabilities[np.arange(len(per)), best].astype(np.float32)
        else:  # token classification
            preds, probs = [], []
            for c, rows in zip(per, rows_by_example):
                best = c.probabilities[rows].argmax(axis=1)
                preds += [c.labels[i] for i in best.tolist()]
                probs.append(c.probabilities[rows, best])
            result.token_prediction = preds
            result.token_probability = np.concatenate(probs).astype(np.float32) if probs else np.zeros(0, np.float32)
    elif engine.kind in (MASKED_LM, CAUSAL_LM) and all(o.top is not None for o in outputs):
        ids = np.concatenate([o.top[0][rows] for o, rows in zip(outputs, rows_by_example)])
        result.token_prediction = engine.tokenizer.batch_decode([[int(i)] for i in ids.tolist()])
        result.token_probability = np.concatenate([o.top[1][rows] for o, rows in zip(outputs, rows_by_example)]).astype(np.float32)
    # encoders without a head, and encoder-decoders (engine.analyze fallback): no predictions


# --- the disk cache ---------------------------------------------------------------------------------
_STRINGS = ("pos", "dep", "ent", "class_labels", "prediction", "token_prediction")
_OPTIONAL = ("probability", "probabilities", "token_probability")


def _save(folder: Path, r: ExamplesAnalysis) -> None:
    """hidden.npy (memory-mapped on reopen), arrays.npz, meta.json; written to a temporary folder then renamed."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    tmp.mkdir(exist_ok=True)
    np.save(tmp / "hidden.npy", r.hidden)
    lengths = np.asarray([len(t) for t in r.tokens], dtype=np.int64)
    arrays = {"row_example": r.row_example, "row_token": r.row_token, "row_spans": r.row_spans, "lengths": lengths,
              "offsets": np.concatenate(r.offsets) if r.offsets else np.zeros((0, 2), np.int32),
              "special": np.concatenate(r.special) if r.special else np.zeros(0, bool),
              "segments": np.concatenate(r.segments) if r.segments else np.zeros(0, np.int8)}
    arrays.update({f"stat_{k}": v for k, v in r.head_stats.items()})
    arrays.update({k: getattr(r, k) for k in _OPTIONAL if getattr(r, k) is not None})
    np.savez(tmp / "arrays.npz", **arrays)
    meta = {"version": CACHE_VERSION, "model_name": r.model_name, "kind": r.kind, "track": r.track,
            "num_layers": r.num_layers, "num_heads": r.num_heads, "tokens": r.tokens, "model_identity": r.model_identity,
            "fingerprint": r.examples.fingerprint, **{k: getattr(r, k) for k in _STRINGS}}
    (tmp / "meta.json").write_text(json.dumps(meta, ensure_ascii=False))
    if folder.exists():  # another process finished first: keep theirs
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        return
    os.replace(tmp, folder)


def _load(folder: Path, examples: ExampleSet) -> ExamplesAnalysis:
    meta = json.loads((folder / "meta.json").read_text())
    with np.load(folder / "arrays.npz") as z:
        arrays = {k: z[k] for k in z.files}
    cuts = np.cumsum(arrays["lengths"])[:-1]
    split = lambda a: list(np.split(a, cuts)) if len(arrays["lengths"]) else []  # noqa: E731
    return ExamplesAnalysis(
        model_name=meta["model_name"], kind=meta["kind"], track=meta["track"], examples=examples,
        num_layers=meta["num_layers"], num_heads=meta["num_heads"], tokens=meta["tokens"],
        offsets=split(arrays["offsets"]), special=split(arrays["special"]), segments=split(arrays["segments"]),
        row_example=arrays["row_example"], row_token=arrays["row_token"], row_spans=arrays["row_spans"],
        hidden=np.load(folder / "hidden.npy", mmap_mode="r"),
        head_stats={k[5:]: v for k, v in arrays.items() if k.startswith("stat_")},
        **{k: meta[k] for k in _STRINGS}, **{k: arrays.get(k) for k in _OPTIONAL},
        model_identity=meta["model_identity"], cache_path=folder, from_cache=True)
