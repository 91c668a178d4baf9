"""Open an exbert-hub corpus (a local folder or a Hub dataset repo) and search it with live analyses.

    >>> import exbert_hub
    >>> from exbert_hub.corpus import load_corpus
    >>> engine = exbert_hub.load("sentence-transformers/all-MiniLM-L6-v2")
    >>> corpus = load_corpus("my_corpus", engine=engine)     # or "user/name" on the Hub
    >>> a = engine.analyze("The cat sat on the mat.")
    >>> hits = corpus.search(a, token=2, layer=3, by="embedding", k=50)
    >>> hits[0].sentence, hits[0].token_index, hits[0].score, hits[0].tokens[hits[0].token_index].pos

The file layout, the columns and the meaning of layers and scores are in ``exbert_hub.corpus_format``.
``by="embedding"``: cosine of the token's output hidden state at ``layer`` (``hidden_states[layer + 1]``).
``by="heads"``: the mean, over the selected heads, of the cosine between per-head attention outputs
(before the output projection) at ``layer``. A token searched with its own live vector scores ~1.0.

Names typed by visitors of a served app. ``load_corpus(name, policy=..., remote=True)`` asks the policy
first and, when it does not allow folders, never looks at the disk for ``name``; a Hub corpus downloads only
the corpus's own files (``corpus_format.CORPUS_PATTERNS``), after checking their total size against
``policy.max_corpus_bytes``; every file a card names is confined to the corpus folder; errors name the
corpus as the visitor gave it (a folder by its own name only), never a server path, and for remote
visitors do not tell a missing folder from a file or a non-corpus. Opened corpora are kept in a bounded
LRU cache (``CORPUS_CACHE``: by count and by bytes).

Model check. A corpus can only be searched with the model it was built with: by name, and (given the live
engine: ``load_corpus(..., engine=)``, ``Corpus.check_engine``, ``Corpus.search(..., engine=)``) by the
model's embedding of a fixed probe sentence at each indexed layer, stored in the card at build time, so
other weights under the same name are refused (``CorpusModelMismatch``).
"""

from __future__ import annotations

import logging
import os
import re
import stat
import threading
import time
import warnings
import weakref
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Sequence

import numpy as np

from . import corpus_format as cf
from .errors import ExbertError, InputError

log = logging.getLogger(__name__)


class CorpusError(ExbertError, OSError):
    """A corpus that cannot be opened (missing, unfinished, damaged, a newer format, files outside it...)."""


class CorpusModelMismatch(ExbertError, ValueError):
    """A search with vectors of a different model than the corpus was built with."""


class CorpusWarning(UserWarning):
    """Something a corpus cannot check (an old corpus without a model fingerprint)."""


@dataclass
class CorpusToken:
    """One model token of a corpus sentence, with the spaCy features of the word it belongs to."""

    position: int
    token: str
    text: str
    start: int
    end: int
    special: bool
    word: int
    word_text: str
    lemma: str
    pos: str
    tag: str
    dep: str
    head: int
    ent_type: str
    ent_iob: str

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Hit:
    """One search result: the matched token in its sentence."""

    score: float
    sentence: str
    sentence_id: int
    token_index: int  # position among the sentence's model tokens (as in engine.analyze(sentence).tokens)
    token_id: int  # row of the tokens table
    tokens: list[CorpusToken] = field(repr=False)
    document: int = -1

    @property
    def token(self) -> CorpusToken:
        return self.tokens[self.token_index]

    def to_dict(self) -> dict[str, Any]:
        return {"score": self.score, "sentence": self.sentence, "sentence_id": self.sentence_id,
                "token_index": self.token_index, "token_id": self.token_id, "document": self.document,
                "tokens": [t.to_dict() for t in self.tokens]}


# --------------------------------------------------------------------------------------------------
# Names and messages
# --------------------------------------------------------------------------------------------------
def _shown(name: Any, limit: int = 80) -> str:
    """A name quoted for a one-line message (bounded; shown as text, never markup)."""
    one = " ".join(str(name).split())
    return repr(one if len(one) <= limit else one[: limit - 1] + "…")


def _is_hub_dataset_id(name: str) -> bool:
    from .policy import is_hub_id

    return is_hub_id(name) and name.count("/") == 1


def _model_shown(name: str) -> str:
    """A model name for messages: Hub ids as they are, a local folder by its own name only."""
    from .policy import is_hub_id

    text = str(name)
    if is_hub_id(text):
        return repr(text)
    return f"{Path(text.rstrip('/')).name!r} (a local model folder)"


def _same_model(a: str, b: str) -> bool:
    def norm(name: str) -> str:
        name = str(name).strip().rstrip("/")
        path = Path(name).expanduser()
        return str(path.resolve()) if path.exists() else name

    return norm(a) == norm(b)


def _offline() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}:
        return True
    try:
        from huggingface_hub import constants

        return bool(constants.is_offline_mode() if hasattr(constants, "is_offline_mode") else constants.HF_HUB_OFFLINE)
    except Exception:  # noqa: BLE001
        return False


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


# --------------------------------------------------------------------------------------------------
# Where a corpus is
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Location:
    """A corpus found on disk: ``folder`` as opened, the resolved folders its files may lie in (a Hub
    snapshot's files are links into the repo's blobs folder), and a label safe to show anyone."""

    folder: Path
    roots: tuple[Path, ...]
    label: str
    hub: bool = False
    name: str = ""


_HUB_TTL = 300.0  # seconds a resolved Hub corpus is reused before asking the Hub again
_HUB_MEMO: dict[tuple, tuple[Location, float]] = {}
_HUB_LOCK = threading.Lock()


def locate_corpus(name_or_folder: str, revision: str | None = None, *, allow_folder: bool = True,
                  remote: bool = False, max_bytes: int | None = None) -> Location:
    """Find a corpus: a local folder (when ``allow_folder``), else a Hub dataset repo downloaded (only the
    corpus's files, at most ``max_bytes`` of them) or found in the cache.

    ``remote``: the name comes from a visitor on another machine: ``~`` is not expanded, and a name that is
    no corpus gets one message whatever is on the disk."""
    if not isinstance(name_or_folder, str) or not name_or_folder.strip():
        raise CorpusError("no corpus given: pass a folder made by `python -m corpus_builder build` or a Hub dataset id")
    name = name_or_folder.strip()
    if allow_folder:
        path = Path(name) if remote else Path(name).expanduser()
        if path.is_dir():
            real = path.resolve()
            return Location(path, (real,), real.name or name, hub=False, name=name)
        if not _is_hub_dataset_id(name):
            if remote:
                raise CorpusError(f"cannot open the corpus {_shown(name)}: it is not a corpus folder this server "
                                  "can open, nor a Hub dataset id like user/name")
            if path.exists():
                raise CorpusError(f"{path} is a file; a corpus is a folder (made by `python -m corpus_builder build`)")
            raise CorpusError(f"no corpus folder {path} (and {name!r} is not a Hub dataset id like 'user/name')")
    elif not _is_hub_dataset_id(name):
        raise CorpusError(f"{_shown(name)} is not a Hub dataset id (like user/name); this server does not open "
                          "folders for visitors")
    return _from_hub(name, revision, max_bytes=max_bytes, remote=remote)


def resolve_corpus(name_or_folder: str, revision: str | None = None, **kwargs) -> Path:
    """The folder of a corpus (see ``locate_corpus``)."""
    return locate_corpus(name_or_folder, revision, **kwargs).folder


def _sibling_size(s) -> int | None:
    sizes = [x for x in (getattr(s, "size", None), getattr(getattr(s, "lfs", None), "size", None)) if x is not None]
    return max(sizes) if sizes else None


def _from_hub(repo_id: str, revision: str | None, *, max_bytes: int | None, remote: bool) -> Location:
    key = (repo_id, revision, max_bytes)
    with _HUB_LOCK:
        memo = _HUB_MEMO.get(key)
    if memo is not None and time.monotonic() - memo[1] < _HUB_TTL and memo[0].folder.is_dir():
        return memo[0]
    import huggingface_hub
    from huggingface_hub.utils import filter_repo_objects

    from .policy import PolicyError

    patterns = list(cf.CORPUS_PATTERNS)
    rev = revision
    try:
        if not _offline():
            info = huggingface_hub.HfApi().dataset_info(repo_id, revision=revision, files_metadata=True)
            files = list(filter_repo_objects(list(info.siblings or []), allow_patterns=patterns,
                                             key=lambda s: s.rfilename))
            if cf.CARD_FILE not in {s.rfilename for s in files}:
                raise CorpusError(f"the Hub dataset {_shown(repo_id)} is not an exbert-hub corpus: it has no "
                                  f"{cf.CARD_FILE}; build one with `python -m corpus_builder build`")
            if max_bytes is not None:
                sizes = [_sibling_size(s) for s in files]
                if any(x is None for x in sizes):
                    raise CorpusError(f"the Hub did not give the size of every file of the corpus {_shown(repo_id)}; "
                                      "this server only opens corpora whose size it can check")
                total = int(sum(sizes))
                if total > max_bytes:
                    raise PolicyError(f"the corpus {_shown(repo_id)} is {_gb(total)} on the Hub; this server opens "
                                      f"corpora of at most {_gb(max_bytes)}")
            rev = getattr(info, "sha", None) or revision  # download exactly the commit whose size was checked
        # into the HF cache (no local_dir): shared with `datasets` and `hf download`, resumed when cut short
        folder = Path(huggingface_hub.snapshot_download(repo_id=repo_id, repo_type="dataset", revision=rev,
                                                        allow_patterns=patterns, tqdm_class=download_bar(repo_id)))
    except (CorpusError, PolicyError):
        raise
    except Exception as err:  # noqa: BLE001 - offline, not found, gated, network: all mean "cannot open"
        raise CorpusError(f"could not get the corpus {_shown(repo_id)} from the Hugging Face Hub: "
                          f"{_hub_reason(err, revision, remote)}") from err
    roots = [folder.resolve()]
    if folder.parent.name == "snapshots" and (folder.parent.parent / "blobs").is_dir():
        roots.append((folder.parent.parent / "blobs").resolve())  # the cache's snapshot files link there
    loc = Location(folder, tuple(roots), repo_id, hub=True, name=repo_id)
    with _HUB_LOCK:
        _HUB_MEMO[key] = (loc, time.monotonic())
    return loc


def download_bar(repo_id: str) -> type:
    """The progress bar class of a corpus download: huggingface_hub's own tqdm (so HF_HUB_DISABLE_PROGRESS_BARS
    and its log level still turn it off), each bar's description prefixed with the corpus's id."""
    from huggingface_hub.utils import tqdm as hf_tqdm

    prefix = f"corpus {repo_id}"

    class CorpusDownloadBar(hf_tqdm):
        def __init__(self, *args, **kwargs):
            desc = kwargs.get("desc")
            kwargs["desc"] = f"{prefix}: {desc}" if desc else prefix
            super().__init__(*args, **kwargs)

    return CorpusDownloadBar


def _hub_reason(err: BaseException, revision: str | None, remote: bool) -> str:
    from huggingface_hub import errors as hf_errors

    if isinstance(err, getattr(hf_errors, "RevisionNotFoundError", ())):
        return f"it has no revision {_shown(revision)}"
    if isinstance(err, getattr(hf_errors, "RepositoryNotFoundError", ())):
        return "no such dataset (or it is private or gated: log in with a token that may read it)"
    if _offline():
        return "offline (HF_HUB_OFFLINE=1) and not in the local cache"
    if isinstance(err, getattr(hf_errors, "LocalEntryNotFoundError", ())):
        return "the Hub could not be reached and the corpus is not in the local cache; try again later"
    if remote:
        return f"the Hub answered with an error ({type(err).__name__}); try again later"
    first = (str(err).strip().splitlines() or [""])[0]
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


def confined(loc: Location, rel: Any, *, want: str = "file") -> Path:
    """The resolved path of ``rel`` (a path inside the corpus, as a card or the format names it), refused
    unless it stays inside the corpus: no absolute path, no "..", no link leading out, and a regular file
    (``want="file"``) or a folder (``want="dir"``), never a device or a pipe."""
    label = loc.label
    if not isinstance(rel, str) or not rel.strip() or "\x00" in rel:
        raise CorpusError(f"the corpus {label!r} is damaged: its card names a file as {_shown(rel)}; rebuild it")
    text = rel.replace("\\", "/")
    parts = PurePosixPath(text).parts
    if text.startswith(("/", "~")) or re.match(r"^[A-Za-z]:", text) or ".." in parts:
        raise CorpusError(f"the corpus {label!r} names the file {_shown(rel)}, outside the corpus folder; refused")
    path = loc.folder.joinpath(*[p for p in parts if p not in ("", ".")])
    try:
        real = path.resolve(strict=True)
        mode = real.stat().st_mode
    except (OSError, RuntimeError):
        raise CorpusError(f"the corpus {label!r} is incomplete: it lacks {_shown(rel)}; rebuild it or get it again") from None
    if not any(real == root or root in real.parents for root in loc.roots):
        raise CorpusError(f"the corpus {label!r}: {_shown(rel)} leads outside the corpus folder; refused")
    if want == "file" and not stat.S_ISREG(mode):
        raise CorpusError(f"the corpus {label!r}: {_shown(rel)} is not a regular file; refused")
    if want == "dir" and not stat.S_ISDIR(mode):
        raise CorpusError(f"the corpus {label!r} is damaged: {_shown(rel)} is not a folder; rebuild it")
    return real


def corpus_disk_bytes(loc: Location) -> int:
    """Bytes of the corpus's own files (``CORPUS_PATTERNS``) in its folder, links followed (inside it only)."""
    from huggingface_hub.utils import filter_repo_objects

    base = loc.folder
    names = [p.relative_to(base).as_posix() for p in base.rglob("*") if not p.is_dir()]
    total = 0
    for rel in filter_repo_objects(names, allow_patterns=list(cf.CORPUS_PATTERNS)):
        total += confined(loc, rel).stat().st_size
    return total


def _listed(loc: Location, rel_dir: str, suffix: str) -> list[tuple[str, Path]]:
    """(path inside the corpus, resolved path) of the ``*suffix`` files of a folder of the corpus, sorted."""
    real = confined(loc, rel_dir, want="dir")
    names = sorted(p.name for p in real.iterdir() if p.name.endswith(suffix))
    return [(f"{rel_dir}/{n}", confined(loc, f"{rel_dir}/{n}")) for n in names]


# --------------------------------------------------------------------------------------------------
# The card
# --------------------------------------------------------------------------------------------------
def _int(value, what: str, label: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < minimum:
        raise CorpusError(f"the corpus {label!r} has a damaged card: {what} is {_shown(value, 30)}; rebuild it")
    return int(value)


def check_meta(meta: dict, label: str) -> dict:
    """The card's mapping with its fields checked (types, ranges, one index entry per kind and layer);
    index entries keyed by int layer. Raises a one-line CorpusError naming the field."""
    model = meta.get("model")
    if not isinstance(model, str) or not model.strip():
        raise CorpusError(f"the corpus {label!r} has a damaged card: no model name; rebuild it")
    L = _int(meta.get("num_layers"), "num_layers", label, 1)
    H = _int(meta.get("num_heads"), "num_heads", label, 1)
    _int(meta.get("hidden_size", 0), "hidden_size", label)
    _int(meta.get("head_dim", 0), "head_dim", label)
    layers = meta.get("layers")
    if not isinstance(layers, list) or not layers:
        raise CorpusError(f"the corpus {label!r} has a damaged card: no indexed layers; rebuild it")
    layers = [_int(x, "a layer", label) for x in layers]
    if any(x >= L for x in layers):
        raise CorpusError(f"the corpus {label!r} has a damaged card: layers {layers} for {L} layers; rebuild it")
    indexes = meta.get("indexes")
    if not isinstance(indexes, dict):
        raise CorpusError(f"the corpus {label!r} has a damaged card: no indexes; rebuild it")
    checked: dict = {}
    for kind in cf.KINDS:
        per = indexes.get(kind)
        if not isinstance(per, dict):
            raise CorpusError(f"the corpus {label!r} has a damaged card: no {kind} indexes; rebuild it")
        try:
            per = {int(k): v for k, v in per.items()}
        except (TypeError, ValueError):
            raise CorpusError(f"the corpus {label!r} has a damaged card: its {kind} indexes are not per layer; rebuild it") from None
        checked[kind] = {}
        for layer in layers:
            info = per.get(layer)
            what = f"the {kind} index of layer {layer}"
            if not isinstance(info, dict):
                raise CorpusError(f"the corpus {label!r} has a damaged card: it lacks {what}; rebuild it")
            if info.get("tier") not in (cf.EXACT, cf.COMPRESSED) or not isinstance(info.get("file"), str):
                raise CorpusError(f"the corpus {label!r} has a damaged card: {what} has no tier or file; rebuild it")
            info = dict(info, dim=_int(info.get("dim"), f"the width of {what}", label, 1),
                        vectors=_int(info.get("vectors"), f"the vectors of {what}", label))
            if kind == "heads" and info["dim"] % H:
                raise CorpusError(f"the corpus {label!r} has a damaged card: {what} is {info['dim']} wide, not a "
                                  f"multiple of its {H} heads; rebuild it")
            checked[kind][layer] = info
    return dict(meta, layers=layers, indexes=checked)


def _read_meta(loc: Location, remote: bool) -> tuple[dict, Path]:
    """The checked card of a located corpus, and the resolved card file."""
    shown = _shown(loc.name or loc.label)
    folder_visitor = remote and not loc.hub  # a visitor's folder: one message, whatever is there
    unknown = (f"cannot open the corpus {shown}: it is not a corpus folder this server can open, nor a Hub "
               "dataset id like user/name")
    if os.path.lexists(loc.folder / cf.BUILD_DIR):
        if folder_visitor:
            raise CorpusError(unknown)
        raise CorpusError(f"{loc.label if remote else loc.folder} holds an unfinished build; rerun the same "
                          "`python -m corpus_builder build` command to finish it")
    try:
        card = confined(loc, cf.CARD_FILE)
    except CorpusError:
        if folder_visitor:
            raise CorpusError(unknown) from None
        if os.path.lexists(loc.folder / cf.CARD_FILE):
            raise
        where = loc.label if remote or loc.hub else loc.folder
        raise CorpusError(f"{where} is not an exbert-hub corpus: it has no {cf.CARD_FILE} "
                          f"(build one with `python -m corpus_builder build`)") from None
    if card.stat().st_size > cf.MAX_CARD_BYTES:
        raise CorpusError(f"the corpus {loc.label!r} has a {cf.CARD_FILE} over {_gb(cf.MAX_CARD_BYTES)}: not an "
                          "exbert-hub card; refused")
    try:
        meta = cf.parse_card(card.read_text(encoding="utf-8", errors="replace"))
    except Exception:  # noqa: BLE001 - YAML errors carry the text: one line instead
        meta = None
        if not folder_visitor:
            raise CorpusError(f"the corpus {loc.label!r} has a damaged card: its YAML header cannot be read; "
                              "rebuild it") from None
    if meta is None:
        if folder_visitor:
            raise CorpusError(unknown)
        where = loc.label if remote or loc.hub else loc.folder
        raise CorpusError(f"{where} is not an exbert-hub corpus: its README.md has no {cf.CARD_KEY!r} section")
    if meta.get("format") != cf.FORMAT or not isinstance(meta.get("format_version"), int) \
            or meta["format_version"] > cf.FORMAT_VERSION:
        raise CorpusError(f"the corpus {loc.label!r} has corpus format {_shown(meta.get('format'), 40)} version "
                          f"{_shown(meta.get('format_version'), 20)}; this exbert-hub reads {cf.FORMAT!r} up to version "
                          f"{cf.FORMAT_VERSION}: upgrade exbert-hub")
    return check_meta(meta, loc.label), card


# --------------------------------------------------------------------------------------------------
# The model fingerprint
# --------------------------------------------------------------------------------------------------
def probe_fingerprint(engine, layers: Sequence[int]) -> dict[str, Any]:
    """The card's ``probe_fingerprint``: ``engine.analyze(PROBE_TEXT)``'s output at each of ``layers``, a few
    numbers per layer (``corpus_format.probe_values``). The builder stores it; searches recompute it."""
    a = engine.analyze(cf.PROBE_TEXT)
    return {"text": cf.PROBE_TEXT, "tokens": len(a.tokens), "tolerance": cf.PROBE_TOLERANCE,
            "embedding": {int(l): cf.probe_values(a.hidden_states[int(l) + 1]) for l in layers}}


# --------------------------------------------------------------------------------------------------
# Per-head cells: one-head and few-head queries
# --------------------------------------------------------------------------------------------------
# A compressed heads index's IVF cells are made from all heads, so the vectors nearest a query on one
# head are spread over most of them (at 1M vectors, visiting every cell found only 0.81-0.87 of the
# exact top 50 of one head). Each head also has cells of its own (k-means of the heads' unit slices, a
# byte or two per vector and head): a query on a few heads keeps the vectors whose selected heads fall
# in the cells nearest the query's slices, and only those are scored, by the index's own codes.
HEAD_CELLS_MAX_HEADS = 3  # queries on more heads use the index's IVF cells


def head_cell_candidates(centroids: np.ndarray, cells: np.ndarray, query: np.ndarray, heads: Sequence[int],
                         nprobe: int) -> np.ndarray:
    """Bitmap (uint8[ceil(N / 8)], bit i of byte i // 8 little-endian = vector row i) of the vectors in the
    ``nprobe`` cells nearest the query in at least one of ``heads``.

    centroids: float32[heads, cells, head_dim]; cells: uint8/uint16[heads, N]; query: float32[heads * head_dim]."""
    H, C, d = centroids.shape
    keep = np.zeros(cells.shape[1], dtype=bool)
    p = max(1, min(int(nprobe), C))
    for h in heads:
        score = centroids[h] @ query[h * d:(h + 1) * d]
        near = np.zeros(C, dtype=bool)
        near[np.argpartition(-score, p - 1)[:p] if p < C else slice(None)] = True
        keep |= near[cells[h]]
    return np.packbits(keep, bitorder="little")


HEAD_CODE_RERANK = 200  # candidates re-scored with the full 10-bit codes (8-bit scores keep ~0.97 of the top 50 in the top 100)
HEAD_CODE_UNION = 4000  # several heads: rows each head lists (at 1M, exact per-head lists of 4,000 held 0.99 / 0.96 of the 3 / 12-head top 50)
HEAD_CODE_RERANK_MANY = 1000  # several heads: union rows re-scored with all 10 bits


_HEAD_POOL = None
_HEAD_POOL_LOCK = threading.Lock()
# a refinement byte -> its four 2-bit values (dimensions 4j .. 4j + 3), as float32
_LOW_BITS = ((np.arange(256, dtype=np.uint8)[:, None] >> np.array([0, 2, 4, 6], dtype=np.uint8)) & 3).astype(np.float32)
_LOW_BYTES = _LOW_BITS.astype(np.uint8).view(np.uint32).ravel()  # the same four values as four bytes of one uint32
DECODE_ROWS = 2048  # rows HeadCodes.decode turns into floats at a time


def _head_pool():
    """Threads for the per-head FAISS scans of a several-head query (one per core)."""
    global _HEAD_POOL
    with _HEAD_POOL_LOCK:
        if _HEAD_POOL is None:
            from concurrent.futures import ThreadPoolExecutor

            _HEAD_POOL = ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1)),
                                            thread_name_prefix="exbert-head-scan")
        return _HEAD_POOL


def _sorted_unique(a: np.ndarray) -> np.ndarray:
    """np.unique of a 1-d array by sorting (numpy 2's hashing unique took 14x as long on 12,000 row ids)."""
    a = np.sort(a)
    return a[np.concatenate(([True], a[1:] != a[:-1]))] if len(a) else a


class HeadCodes:
    """Per-head cells with per-head residual codes: every heads search of a format-2 corpus (and one-head /
    few-head search of a format-1 corpus that has codes).

    Each head's slice x_h of a vector is stored as its cell c (``cells[h]``) and the residual x_h - centroid
    coded on a uniform 10-bit grid per dimension (``lo + code * step``): the high 8 bits in ``codes``, the
    low 2 bits in ``refine``. A query's score on head h is q_h . centroid[c] + q_h . lo + (q_h * step) . code,
    summed over the selected heads. Candidates (vectors whose selected heads fall in the query's nearest
    cells) are scored with the 8-bit part, the best ``rerank`` again with all 10 bits.

    centroids: float32[H, C, d]; cells: uint8/uint16[H, N]; quant: float32[H, 2, d]; codes: uint8[H, N, d];
    refine: uint8[H, N, d // 4] (dimension j's low bits at bits 2 * (j % 4) of byte j // 4).
    coarse: (float32[nlist, H * d] k-means centroids of the whole vectors, uint16[N] each vector's cell), or
    None: queries on more than HEAD_CELLS_MAX_HEADS heads visit those cells (``coarse_ivf``)."""

    def __init__(self, centroids, cells, quant, codes, refine, coarse=None):
        self.centroids, self.cells, self.codes, self.refine = centroids, cells, codes, refine
        self.lo, self.step = quant[:, 0], quant[:, 1]
        self.coarse = coarse
        self._lists: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._ivfs: dict[int, Any] = {}
        self._lock = threading.Lock()
        self._coarse_lock = threading.Lock()
        self._coarse_ivf = None
        self._decoded: np.ndarray | None = None
        self._base: np.ndarray | None = None

    def keep_decoded(self) -> None:
        """Decode every vector once and keep them: ``decode`` then reads them (the builder's tuning, which
        decodes all the vectors twice, for its recall estimate and the coarse IVF)."""
        self._decoded = self.decode(slice(None))

    def decode(self, rows: slice | np.ndarray) -> np.ndarray:
        """float32[n, H * d]: the vectors of ``rows`` as their 10-bit codes give them (centroid + lo + code * step).
        DECODE_ROWS rows at a time, the 10-bit values as integers (the low bits by one 4-byte table lookup per
        refinement byte), so each head's temporaries stay in the core's cache: the same floats as whole-array
        float passes in less than half the time (RESULTS S23)."""
        if self._decoded is not None:
            return self._decoded[rows]
        H, C, d = self.centroids.shape
        if self._base is None:
            self._base = self.centroids + self.lo[:, None, :]  # [H, C, d]: each cell's centroid + the grid's offset
        codes, refine, cells = self.codes[:, rows], self.refine[:, rows], self.cells[:, rows]
        n = codes.shape[1]
        out = np.empty((n, H * d), dtype=np.float32)
        value = np.empty((min(n, DECODE_ROWS), d), dtype=np.uint16)
        for a in range(0, n, DECODE_ROWS):
            b = min(n, a + DECODE_ROWS)
            r = b - a
            for h in range(H):
                o = out[a:b, h * d:(h + 1) * d]
                np.left_shift(codes[h, a:b], 2, out=value[:r], dtype=np.uint16)
                value[:r] += np.take(_LOW_BYTES, refine[h, a:b]).view(np.uint8)[:, :d]  # one 4-byte lookup per refine byte
                np.multiply(value[:r], self.step[h], out=o)
                o += np.take(self._base[h], cells[h, a:b], axis=0)
        return out

    def coarse_ivf(self):
        """Queries on many heads: a FAISS IVF-SQ8 over the coarse cells of the whole vectors, made in memory
        on first use from the decoded 10-bit codes (8 bits per dimension over each dimension's range), so
        its cells are scanned in SIMD code; its best rows are then re-scored with all 10 bits."""
        with self._coarse_lock:
            if self._coarse_ivf is None:
                index = self._new_coarse_ivf()
                for a in range(0, self.ntotal, 65536):
                    self._add_coarse(index, a, self.decode(slice(a, min(self.ntotal, a + 65536))))
                self._coarse_ivf = index
            return self._coarse_ivf

    def _new_coarse_ivf(self):
        """``coarse_ivf``'s index, trained (its SQ8 ranges over an even sample of the rows), still empty."""
        import faiss

        cents, _ = self.coarse
        D, n = cents.shape[1], self.ntotal
        quantizer = faiss.IndexFlatIP(D)
        quantizer.add(np.ascontiguousarray(cents, dtype=np.float32))
        index = faiss.IndexIVFScalarQuantizer(quantizer, D, len(cents), faiss.ScalarQuantizer.QT_8bit,
                                              faiss.METRIC_INNER_PRODUCT, False)
        sample = np.linspace(0, n - 1, num=min(n, 50_000)).astype(np.int64)
        index.train(np.ascontiguousarray(self.decode(sample)))  # (the quantizer is already trained)
        return index

    def _add_coarse(self, index, a: int, x: np.ndarray) -> None:
        """Rows a .. a + len(x) (decoded: ``x``) into their coarse cells of ``index``."""
        import faiss

        x = np.ascontiguousarray(x, dtype=np.float32)
        ids = np.arange(a, a + len(x), dtype=np.int64)
        lists = np.ascontiguousarray(np.asarray(self.coarse[1][a:a + len(x)]), dtype=np.int64)
        index.add_core(len(x), faiss.swig_ptr(x), faiss.swig_ptr(ids), faiss.swig_ptr(lists))

    def decoded_chunks(self, rows: int):
        """(first row, float32[<= rows, H * d]) of every vector decoded, in row order. A coarse IVF not made
        yet is filled from the same chunks (the builder's tuning: one decode for its recall estimate and that
        IVF); the same index ``coarse_ivf`` would make, set once the last chunk has been read."""
        index = self._new_coarse_ivf() if self.coarse is not None and self._coarse_ivf is None else None
        for a in range(0, self.ntotal, rows):
            x = self.decode(slice(a, min(self.ntotal, a + rows)))
            if index is not None:
                self._add_coarse(index, a, x)
            yield a, x
        if index is not None:
            with self._coarse_lock:
                if self._coarse_ivf is None:
                    self._coarse_ivf = index

    def _cell_lists(self, h: int) -> tuple[np.ndarray, np.ndarray]:
        """(rows of head h sorted by cell, int64[C + 1] start of each cell in them), made on first use."""
        with self._lock:
            if h not in self._lists:
                order = np.argsort(self.cells[h], kind="stable")
                starts = np.searchsorted(self.cells[h][order], np.arange(self.centroids.shape[1] + 1))
                self._lists[h] = (order, starts)
            return self._lists[h]

    @property
    def ntotal(self) -> int:
        return int(self.cells.shape[1])

    def ivf(self, h: int):
        """Head h's 8-bit codes as a FAISS ``IndexIVFScalarQuantizer`` (by residual, inner product), made in
        memory on first use: its inverted lists are the per-head cells, its SQ8 grid the high 8 bits of the
        10-bit grid with the low bits at their middle, so its scores are exactly ``scores(refined=False)``,
        computed by FAISS's SIMD scan over contiguous lists instead of numpy gathers (measured: numpy spent
        most of a one-head query gathering candidate rows from random places of the codes)."""
        import faiss

        with self._lock:
            if h in self._ivfs:
                return self._ivfs[h]
        order, starts = self._cell_lists(h)
        H, C, d = self.centroids.shape
        quantizer = faiss.IndexFlatIP(d)
        quantizer.add(np.ascontiguousarray(self.centroids[h], dtype=np.float32))
        index = faiss.IndexIVFScalarQuantizer(quantizer, d, C, faiss.ScalarQuantizer.QT_8bit,
                                              faiss.METRIC_INNER_PRODUCT, True)
        # FAISS decodes vmin + (c + 0.5) / 255 * vdiff; ours is lo + (4c + 1.5) * step
        trained = np.concatenate([self.lo[h] - 0.5 * self.step[h], 1020.0 * self.step[h]]).astype(np.float32)
        faiss.copy_array_to_vector(trained, index.sq.trained)
        index.is_trained = True
        # parallel_mode stays 0: one query runs on one thread. Splitting its lists over OpenMP threads
        # (mode 1) cost 23-30 ms per search on the loaded 2-core machine against 0.14 ms on one thread.
        codes = np.ascontiguousarray(np.asarray(self.codes[h])[order])  # rows in cell order: one gather, once
        for c in range(C):
            a, b = int(starts[c]), int(starts[c + 1])
            if b > a:
                ids = np.ascontiguousarray(order[a:b], dtype=np.int64)
                index.invlists.add_entries(c, b - a, faiss.swig_ptr(ids), faiss.swig_ptr(codes[a:b]))
        index.ntotal = int(self.cells.shape[1])
        with self._lock:
            return self._ivfs.setdefault(h, index)

    def candidates(self, query: np.ndarray, heads: Sequence[int], nprobe: int) -> np.ndarray:
        """int64 rows (sorted) of the vectors in the ``nprobe`` cells nearest the query in at least one of ``heads``."""
        H, C, d = self.centroids.shape
        p = max(1, min(int(nprobe), C))
        parts = []
        for h in heads:
            score = self.centroids[h] @ query[h * d:(h + 1) * d]
            near = np.argpartition(-score, p - 1)[:p] if p < C else np.arange(C)
            order, starts = self._cell_lists(h)
            parts += [order[starts[c]:starts[c + 1]] for c in near]
        rows = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        return _sorted_unique(rows).astype(np.int64) if len(heads) > 1 else np.sort(rows).astype(np.int64)

    def scores(self, query: np.ndarray, heads: Sequence[int], rows: np.ndarray, refined: bool) -> np.ndarray:
        """float32[len(rows)]: the coded inner products on ``heads`` (8-bit part only unless ``refined``).
        Per head: a row gather of its codes and one matrix-vector product (BLAS); measured 3x faster than
        one [heads, rows, d] float32 array for the few-head union's ~10,000 unrefined rows."""
        H, C, d = self.centroids.shape
        rows = np.asarray(rows, dtype=np.int64)
        if refined and self._decoded is not None:  # (keep_decoded) the same values, one gather and product
            x = self._decoded[rows]
            query = np.asarray(query, dtype=np.float32)
            if len(heads) == H:
                return x @ query
            out = np.zeros(len(rows), dtype=np.float32)
            for h in heads:
                out += x[:, h * d:(h + 1) * d] @ query[h * d:(h + 1) * d]
            return out
        q = np.asarray(query, dtype=np.float32).reshape(H, d)
        out = np.zeros(len(rows), dtype=np.float32)
        for h in heads:
            w = q[h] * self.step[h]
            base = self.centroids[h] @ q[h] + np.float32(q[h] @ self.lo[h])  # [C]
            code = self.codes[h][rows].astype(np.float32)
            if refined:
                low = _LOW_BITS[self.refine[h][rows]].reshape(len(rows), -1)[:, :d]
                out += code @ (4 * w) + low @ w
            else:
                out += code @ (4 * w) + np.float32(1.5 * w.sum())  # the low bits at the middle of their 4 values
            out += base[self.cells[h][rows]]
        return out

    def first_stage(self, query: np.ndarray, heads: Sequence[int], nprobe: int, r: int) -> np.ndarray:
        """int64 rows (at most ``r``) to re-score with all 10 bits: one head: the best ``r`` of its ``nprobe``
        nearest cells by the 8-bit codes (FAISS, ``ivf``). Two or three heads: each head's best
        HEAD_CODE_UNION there, the union ranked by its 8-bit scores summed over the selected heads. More heads
        (with coarse cells): the best ``r`` of the ``nprobe`` nearest coarse cells (``coarse_ivf``)."""
        import faiss

        d = self.centroids.shape[2]
        if len(heads) > HEAD_CELLS_MAX_HEADS and self.coarse is not None:
            q = np.ascontiguousarray(query[None], dtype=np.float32)  # the other heads are zero
            nlist = len(self.coarse[0])
            _, i = self.coarse_ivf().search(q, r, params=faiss.SearchParametersIVF(nprobe=max(1, min(int(nprobe), nlist))))
            return i[0][i[0] >= 0]
        params = faiss.SearchParametersIVF(nprobe=max(1, min(int(nprobe), self.centroids.shape[1])))
        each = r if len(heads) == 1 else max(r, HEAD_CODE_UNION)

        def one(h: int):
            q = np.ascontiguousarray(query[None, h * d:(h + 1) * d], dtype=np.float32)
            s, i = self.ivf(h).search(q, each, params=params)
            keep = i[0] >= 0
            return s[0][keep], i[0][keep]

        # FAISS releases the GIL: several heads' scans run on the cores side by side
        lists = [one(h) for h in heads] if len(heads) == 1 else list(_head_pool().map(one, heads))
        if len(lists) == 1:
            return lists[0][1]
        # the union scored on every selected head (8 bits): a row one head did not list still counts there
        rows = _sorted_unique(np.concatenate([i for _, i in lists]))
        if len(rows) > r:
            total = self.scores(query, heads, rows, refined=False)
            rows = rows[np.argpartition(-total, r - 1)[:r]]
        return rows

    def search(self, query: np.ndarray, heads: Sequence[int], nprobe: int, k: int,
               rerank: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` (scores float32[k], rows int64[k], best first; -inf / -1 past the candidates): the
        ``first_stage`` rows re-scored with all 10 bits of the selected heads."""
        r = max(k, rerank or (HEAD_CODE_RERANK if len(heads) == 1 else HEAD_CODE_RERANK_MANY))
        rows = np.sort(self.first_stage(query, heads, nprobe, r))
        s = self.scores(query, heads, rows, refined=True)
        top = np.argsort(-s, kind="stable")[:k]
        scores = np.full(k, -np.inf, dtype=np.float32)
        out = np.full(k, -1, dtype=np.int64)
        scores[:len(top)], out[:len(top)] = s[top], rows[top]
        return scores, out


def search_head_cells(index, centroids: np.ndarray, cells: np.ndarray, queries: np.ndarray,
                      heads: Sequence[Sequence[int]], nprobe: int, k: int,
                      codes: HeadCodes | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top ``k`` (scores float32[q, k], rows int64[q, k]) of each query among its per-head cell candidates,
    scored by the per-head residual ``codes`` when given, else by ``index`` (a FAISS IVF index) over all its
    cells with the candidates as an ID selector (corpora built before the per-head codes)."""
    import faiss

    if codes is not None:
        found = [codes.search(q, hs, nprobe, k) for q, hs in zip(queries, heads)]
        return np.stack([f[0] for f in found]), np.stack([f[1] for f in found])
    ivf = faiss.extract_index_ivf(index)
    scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    rows = np.full((len(queries), k), -1, dtype=np.int64)
    for i, (q, hs) in enumerate(zip(queries, heads)):
        bitmap = head_cell_candidates(centroids, cells, q, hs, nprobe)
        sel = faiss.IDSelectorBitmap(cells.shape[1], faiss.swig_ptr(bitmap))
        s, r = index.search(np.ascontiguousarray(q[None], dtype=np.float32), k,
                            params=faiss.SearchParametersIVF(nprobe=ivf.nlist, sel=sel))
        scores[i], rows[i] = s[0], r[0]
    return scores, rows


def head_cells_nprobe(info: dict, n_heads: int) -> int | None:
    """Cells per selected head a query on ``n_heads`` heads visits (the card's tuning for the smallest
    measured head count >= n_heads), or None when it uses the IVF cells (more heads, no head cells)."""
    hc = info.get("head_cells") if info.get("tier") == cf.COMPRESSED else None
    if not isinstance(hc, dict) or not isinstance(hc.get("nprobe"), dict) or n_heads > HEAD_CELLS_MAX_HEADS:
        return None
    tuned = sorted(int(m) for m in hc["nprobe"] if int(m) >= n_heads)
    return int(hc["nprobe"][str(tuned[0])]) if tuned else None


def is_head_codes_index(info: dict) -> bool:
    """A compressed heads index of format 2: per-head cells and codes only (its card's file is the codes)."""
    hc = info.get("head_cells")
    return (info.get("tier") == cf.COMPRESSED and isinstance(hc, dict) and isinstance(hc.get("codes"), dict)
            and info.get("file") == hc["codes"].get("codes"))


def head_codes_nprobe(info: dict, n_heads: int) -> int:
    """Cells per selected head of a per-head codes index for a query on ``n_heads`` heads: the card's tuning
    for the smallest measured head count >= n_heads (1, 3, all)."""
    tuned = {int(m): int(p) for m, p in info["head_cells"]["nprobe"].items()}
    if not tuned:
        return int(info["head_cells"]["cells_per_head"])
    above = [m for m in tuned if m >= n_heads]
    return tuned[min(above)] if above else tuned[max(tuned)]


def selected_heads(query: np.ndarray, num_heads: int) -> list[int]:
    """The heads a heads query uses (the others are zero)."""
    per = np.asarray(query).reshape(num_heads, -1)
    return [int(h) for h in np.flatnonzero(np.abs(per).sum(axis=1) > 0)]


_WARNED: set[str] = set()
_WARNED_LOCK = threading.Lock()


# --------------------------------------------------------------------------------------------------
# The corpus
# --------------------------------------------------------------------------------------------------
class Corpus:
    """A finished corpus: its card, token and sentence tables, and lazily opened indexes.

    ``folder``: where it is on this machine (for the operator; never put it in a visitor's message);
    ``label``: its name for messages and displays (the Hub id, or the folder's own name)."""

    def __init__(self, folder: Path | Location, meta: dict[str, Any] | None = None, *, label: str | None = None):
        if isinstance(folder, Location):
            loc = folder
        else:
            real = Path(folder).resolve()
            loc = Location(Path(folder), (real,), label or real.name or str(folder), name=str(folder))
        self.location = loc
        self.folder = Path(loc.folder)
        self.label = label or loc.label
        self.meta = check_meta(meta if meta is not None else _read_meta(loc, remote=False)[0], self.label)
        self._indexes: dict[tuple[str, int], Any] = {}
        self._lock = threading.Lock()
        self._verified: "weakref.WeakKeyDictionary[Any, CorpusModelMismatch | None]" = weakref.WeakKeyDictionary()
        self._vector_files: dict[tuple[str, int], list[tuple[str, Path]]] = {}
        self._head_cell_files: dict[int, tuple[Path, Path]] = {}
        self._head_cell_arrays: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._head_code_files: dict[int, tuple[Path, ...]] = {}
        self._head_codes_loaded: dict[int, HeadCodes] = {}
        self.disk_bytes = 0
        self._check_index_files()
        self._load_tables()

    # --- what it is --------------------------------------------------------------------------------
    @property
    def model(self) -> str:
        return self.meta["model"]

    @property
    def layers(self) -> list[int]:
        return [int(l) for l in self.meta["layers"]]

    @property
    def num_heads(self) -> int:
        return int(self.meta["num_heads"])

    @property
    def num_sentences(self) -> int:
        return len(self._sent_text)

    @property
    def num_tokens(self) -> int:
        return self._tokens.num_rows

    @property
    def nbytes(self) -> int:
        """Memory it may take with every index opened (the tables now, the indexes as float32 / their file)."""
        return self._table_bytes + self._index_bytes

    def __len__(self) -> int:
        return self.num_sentences

    def __repr__(self) -> str:
        return (f"Corpus({str(self.folder)!r}, model={self.model!r}, sentences={self.num_sentences:,}, "
                f"tokens={self.num_tokens:,}, layers={self.layers})")

    def index_info(self, by: str, layer: int) -> dict[str, Any]:
        return dict(self.meta["indexes"][by][layer])

    def _damaged(self, what: str) -> CorpusError:
        return CorpusError(f"the corpus {self.label!r} is damaged: {what}; rebuild it or get it again")

    # --- files -------------------------------------------------------------------------------------
    def _check_index_files(self) -> None:
        """Every index file the card names: inside the corpus, and (exact tier) float vectors of the width
        and count the card says. Only the .npy headers are read."""
        self._index_bytes = 0
        for by in cf.KINDS:
            for layer in self.layers:
                info = self.meta["indexes"][by][layer]
                what = f"its {by} index for layer {layer}"
                if info["tier"] == cf.EXACT:
                    files = _listed(self.location, info["file"].rstrip("/"), ".npy")
                    rows = 0
                    for rel, path in files:
                        shape, dtype = self._npy_header(rel, path, what)
                        if len(shape) != 2:
                            raise self._damaged(f"{rel} holds an array of shape {tuple(shape)}, not vectors of width "
                                                f"{info['dim']} ({what})")
                        if shape[1] != info["dim"]:
                            raise CorpusError(f"the corpus {self.label!r} is damaged: {rel} holds vectors of width "
                                              f"{shape[1]}, its card says {info['dim']} ({what}); rebuild it")
                        if dtype.kind != "f":
                            raise self._damaged(f"{rel} holds {dtype} values, not float vectors")
                        rows += shape[0]
                        size = path.stat().st_size
                        self.disk_bytes += size
                        self._index_bytes += size * 4 // max(dtype.itemsize, 1)
                    if rows != info["vectors"]:
                        raise self._damaged(f"{what} holds {rows} vectors, its card says {info['vectors']}")
                    self._vector_files[(by, layer)] = files
                elif by == "heads" and is_head_codes_index(info):
                    self._check_head_cells(layer, info)  # its files (the codes file among them), counted there
                    # in memory: each head's codes copied into its FAISS lists, with int64 ids
                    self._index_bytes += info["vectors"] * (info["dim"] + 8 * self.num_heads)
                else:
                    path = confined(self.location, info["file"])
                    size = path.stat().st_size
                    self.disk_bytes += size
                    self._index_bytes += size
                    if by == "heads" and isinstance(info.get("head_cells"), dict):
                        self._check_head_cells(layer, info)

    def _check_head_cells(self, layer: int, info: dict) -> None:
        hc = info["head_cells"]
        what = f"the per-head cells of its heads index for layer {layer}"
        (crel, cpath), (rel, path) = [(r, confined(self.location, r)) for r in (hc.get("centroids"), hc.get("cells"))]
        cshape, cdtype = self._npy_header(crel, cpath, what)
        shape, dtype = self._npy_header(rel, path, what)
        H, d = self.num_heads, info["dim"] // self.num_heads
        if len(cshape) != 3 or cshape[0] != H or cshape[2] != d or cdtype != np.float32:
            raise self._damaged(f"{crel} holds {cdtype} {tuple(cshape)}, not float32 [{H}, cells, {d}] ({what})")
        if len(shape) != 2 or tuple(shape) != (H, info["vectors"]) or dtype not in (np.uint8, np.uint16) \
                or cshape[1] > np.iinfo(dtype).max + 1:
            raise self._damaged(f"{rel} holds {dtype} {tuple(shape)}, not cells [{H}, {info['vectors']}] ({what})")
        for p in (cpath, path):
            size = p.stat().st_size
            self.disk_bytes += size
            self._index_bytes += size
        self._head_cell_files[layer] = (cpath, path)
        if isinstance(hc.get("codes"), dict):  # absent in corpora built before the per-head codes
            self._check_head_codes(layer, info, cshape[1])

    def _checked_npy(self, files: dict, want: dict, what: str) -> list[Path]:
        """The paths of ``files[key]`` for each ``want[key] = (shape, dtype)``, their .npy headers checked (a
        mismatch is a damaged corpus) and their bytes counted."""
        paths = []
        for key, (shape, dtype) in want.items():
            rel = files.get(key)
            path = confined(self.location, rel)
            got, gdtype = self._npy_header(rel, path, what)
            if tuple(got) != shape or gdtype != dtype:
                raise self._damaged(f"{rel} holds {gdtype} {tuple(got)}, not {np.dtype(dtype)} {list(shape)} ({what})")
            size = path.stat().st_size
            self.disk_bytes += size
            self._index_bytes += size
            paths.append(path)
        return paths

    def _check_head_codes(self, layer: int, info: dict, n_cells: int) -> None:
        codes = info["head_cells"]["codes"]
        what = f"the per-head codes of its heads index for layer {layer}"
        H, N, d = self.num_heads, info["vectors"], info["dim"] // self.num_heads
        want = {"quant": ((H, 2, d), np.float32), "codes": ((H, N, d), np.uint8),
                "refine": ((H, N, -(-d // 4)), np.uint8)}
        paths = self._checked_npy(codes, want, what)
        coarse = info["head_cells"].get("coarse")
        if isinstance(coarse, dict):  # format 2: the coarse cells of many-head queries
            nlist = coarse.get("nlist")
            paths += self._checked_npy(coarse, {"centroids": ((nlist, H * d), np.float32), "cells": ((N,), np.uint16)}, what)
            self._index_bytes += N * (H * d + 8)  # in memory: the coarse cells' IVF-SQ8 and its ids
        self._head_code_files[layer] = tuple(paths)

    def _head_codes(self, layer: int) -> HeadCodes | None:
        """The per-head residual codes of the heads index of ``layer`` (codes memory-mapped), or None."""
        files = self._head_code_files.get(layer)
        cells = self._head_cells(layer) if files is not None else None
        if cells is None:
            return None
        with self._lock:
            if layer not in self._head_codes_loaded:
                try:
                    quant = np.load(files[0], allow_pickle=False)
                    codes, refine = (np.load(p, mmap_mode="r", allow_pickle=False) for p in files[1:3])
                    coarse = tuple(np.load(p, allow_pickle=False) for p in files[3:5]) if len(files) == 5 else None
                except Exception:  # noqa: BLE001 - truncated or rewritten since the header check
                    raise self._damaged(f"its per-head codes for layer {layer} cannot be read") from None
                self._head_codes_loaded[layer] = HeadCodes(cells[0], cells[1], quant, codes, refine, coarse)
            return self._head_codes_loaded[layer]

    def _head_cells(self, layer: int):
        """(centroids, cells) of the heads index of ``layer``, or None for corpora without them."""
        files = self._head_cell_files.get(layer)
        if files is None:
            return None
        with self._lock:
            if layer not in self._head_cell_arrays:
                try:
                    self._head_cell_arrays[layer] = tuple(np.load(p, allow_pickle=False) for p in files)
                except Exception:  # noqa: BLE001 - truncated or rewritten since the header check
                    raise self._damaged(f"its per-head cells for layer {layer} cannot be read") from None
            return self._head_cell_arrays[layer]

    def _npy_header(self, rel: str, path: Path, what: str):
        try:
            with open(path, "rb") as f:
                version = np.lib.format.read_magic(f)
                reader = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
                shape, fortran, dtype = reader.get(version, np.lib.format.read_array_header_2_0)(f)
        except Exception:  # noqa: BLE001 - not an npy file, truncated, pickled objects...
            raise self._damaged(f"{rel} ({what}) is not a readable .npy file") from None
        if dtype.hasobject or fortran:
            raise self._damaged(f"{rel} ({what}) does not hold plain float vectors")
        return shape, dtype

    # --- tables ------------------------------------------------------------------------------------
    def _load_tables(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        def read(rel_dir: str, columns: list[tuple[str, str, str]]):
            try:
                files = _listed(self.location, rel_dir, ".parquet")
            except CorpusError as err:
                if "lacks" in str(err):
                    raise self._damaged(f"it has no {rel_dir}/*.parquet (not a complete exbert-hub corpus)") from None
                raise
            if not files:
                raise self._damaged(f"it has no {rel_dir}/*.parquet (not a complete exbert-hub corpus)")
            tables = []
            schema = cf.arrow_schema(columns)
            for rel, path in files:
                try:
                    tables.append(pq.read_table(path, schema=schema))
                except Exception:  # noqa: BLE001 - arrow errors carry the path: one line instead
                    raise self._damaged(f"{rel} cannot be read as a {rel_dir.split('/')[-1]} table") from None
                self.disk_bytes += path.stat().st_size
            try:
                return pa.concat_tables(tables)
            except Exception:  # noqa: BLE001
                raise self._damaged(f"the shards of {rel_dir} do not fit together") from None

        sentences = read(cf.SENTENCES_DIR, cf.SENTENCE_COLUMNS)
        # one chunk per column: take() over one chunk per shard cost ~10 ms per search at 1M tokens
        self._tokens = read(cf.TOKENS_DIR, cf.TOKEN_COLUMNS).combine_chunks()
        self._sent_text = sentences.column("text").to_pylist()
        self._sent_first = sentences.column("first_token").to_numpy()
        self._sent_len = sentences.column("num_tokens").to_numpy()
        self._sent_doc = sentences.column("document").to_numpy()
        n_sent, n_tok = len(self._sent_text), self._tokens.num_rows
        if not np.array_equal(sentences.column("sentence_id").to_numpy(), np.arange(n_sent)):
            raise self._damaged("its sentence ids are not 0..n-1 in shard order")
        lengths = self._sent_len.astype(np.int64)
        if (lengths < 1).any() or int(lengths.sum()) != n_tok or not np.array_equal(
                self._sent_first, np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(self._sent_first.dtype)):
            raise self._damaged("its sentences' first_token / num_tokens do not match its tokens table")
        self._token_sentence = self._tokens.column("sentence_id").to_numpy()
        self._token_position = self._tokens.column("position").to_numpy()
        if not (np.array_equal(self._tokens.column("token_id").to_numpy(), np.arange(n_tok))
                and np.array_equal(self._token_sentence, np.repeat(np.arange(n_sent), lengths))
                and np.array_equal(self._token_position, np.arange(n_tok) - np.repeat(self._sent_first, lengths))):
            raise self._damaged("its tokens' ids, sentences or positions are out of order")
        vrow = self._tokens.column("vector_row").to_numpy()
        indexed = np.flatnonzero(vrow >= 0)
        n_vec = len(indexed)
        rows = vrow[indexed]
        if not (np.array_equal(rows, np.arange(n_vec)) or np.array_equal(np.sort(rows), np.arange(n_vec))):
            raise self._damaged("its tokens' vector rows are not 0..n-1")
        for by in cf.KINDS:
            for layer in self.layers:
                if self.meta["indexes"][by][layer]["vectors"] != n_vec:
                    raise self._damaged(f"its {by} index for layer {layer} has "
                                        f"{self.meta['indexes'][by][layer]['vectors']} vectors for {n_vec} indexed tokens")
        self._row_token = np.empty(n_vec, dtype=np.int64)
        self._row_token[rows] = indexed  # vector row -> token id
        self._table_bytes = int(self._tokens.nbytes + sentences.nbytes + self._row_token.nbytes
                                + sum(len(t) + 50 for t in self._sent_text))

    def sentence(self, sentence_id: int) -> str:
        return self._sent_text[sentence_id]

    def sentence_tokens(self, sentence_id: int) -> list[CorpusToken]:
        if not 0 <= int(sentence_id) < self.num_sentences:
            raise InputError(f"sentence {sentence_id} is out of range: the corpus has {self.num_sentences} sentences")
        return self._many_sentence_tokens([int(sentence_id)])[int(sentence_id)]

    # --- indexes -----------------------------------------------------------------------------------
    def _index(self, by: str, layer: int):
        key = (by, layer)
        if by == "heads" and is_head_codes_index(self.meta["indexes"][by][layer]):
            codes = self._head_codes(layer)  # (takes the lock itself)
            if codes is None:
                raise self._damaged(f"its heads index for layer {layer} has no per-head codes")
            return codes
        with self._lock:
            if key in self._indexes:
                return self._indexes[key]
            info = self.meta["indexes"][by][layer]
            try:
                index = self._open_index(by, layer, info)
            except CorpusError:
                raise
            except Exception as err:  # noqa: BLE001 - faiss/IO errors carry paths and C++ stack text
                log.warning("corpus %s: %s index of layer %d cannot be read: %s", self.label, by, layer,
                            (str(err).strip().splitlines() or [""])[0][:200])
                raise self._damaged(f"its {by} index for layer {layer} cannot be read") from None
            self._indexes[key] = index
            return index

    def _open_index(self, by: str, layer: int, info: dict):
        import faiss

        dim = int(info["dim"])
        if info["tier"] == cf.EXACT:
            index = faiss.IndexFlatIP(dim)
            for rel, path in self._vector_files[(by, layer)]:  # shard files in row order, checked at open
                vectors = np.load(path, mmap_mode="r", allow_pickle=False)
                if vectors.ndim != 2 or vectors.shape[1] != dim:
                    raise CorpusError(f"the corpus {self.label!r} is damaged: {rel} holds vectors of width "
                                      f"{vectors.shape[-1]}, its card says {dim}; rebuild it")
                for i in range(0, len(vectors), 65536):
                    index.add(np.ascontiguousarray(vectors[i:i + 65536], dtype=np.float32))
            if index.ntotal != int(info["vectors"]):
                raise self._damaged(f"its {by} index for layer {layer} holds {index.ntotal} vectors, "
                                    f"its card says {info['vectors']}")
            return index
        path = confined(self.location, info["file"])
        index = faiss.read_index(str(path))
        if index.d != dim or index.ntotal != int(info["vectors"]):
            raise self._damaged(f"{info['file']} holds {index.ntotal} vectors of width {index.d}, its card says "
                                f"{info['vectors']} of width {dim}")
        ivf = faiss.extract_index_ivf(index)
        ivf.nprobe = int(info.get("nprobe", 16))
        # one query at a time (the app): split its cells over the threads, not the queries
        # (measured at 1M vectors, 96 cells: 15.8 -> 8.4 ms on 2 cores)
        ivf.parallel_mode = 1
        return index

    # --- the model ---------------------------------------------------------------------------------
    def check_model(self, model_name: str) -> None:
        """Raise CorpusModelMismatch unless ``model_name`` is the model this corpus was built with."""
        if not _same_model(model_name, self.model):
            built = _model_shown(self.model)
            raise CorpusModelMismatch(
                f"the corpus {self.label!r} was built with the model {built}, but the search uses "
                f"{str(model_name)!r}; token vectors of different models cannot be compared. Load {built}, or "
                f"build a corpus for {str(model_name)!r}: python -m corpus_builder build --model {model_name} --out DIR"
            )

    def check_engine(self, engine) -> None:
        """Raise CorpusModelMismatch unless ``engine`` runs the model this corpus was built with: its name,
        and its embedding of the probe sentence at each indexed layer (the card's ``probe_fingerprint``,
        within ``PROBE_TOLERANCE``): other weights under the same name are refused. Checked once per
        loaded model. Corpora built before fingerprints: a CorpusWarning, once."""
        self.check_model(engine.name)
        model = engine.model
        with self._lock:
            if model in self._verified:
                verdict = self._verified[model]
                if verdict is not None:
                    raise verdict
                return
        fp = self.meta.get("probe_fingerprint")
        verdict = None
        if not isinstance(fp, dict) or not isinstance(fp.get("embedding"), dict) or not fp["embedding"]:
            self._warn_no_fingerprint()
        else:
            verdict = self._compare(engine, fp)
        with self._lock:
            self._verified[model] = verdict
        if verdict is not None:
            raise verdict

    def _compare(self, engine, fp: dict) -> CorpusModelMismatch | None:
        try:
            stored = {int(k): v for k, v in fp["embedding"].items()}
            tol = float(fp.get("tolerance", cf.PROBE_TOLERANCE))
        except (TypeError, ValueError):
            raise self._damaged("its card's probe_fingerprint is not a list of numbers per layer") from None
        a = engine.analyze(str(fp.get("text") or cf.PROBE_TEXT))
        built = _model_shown(self.model)
        fix = (f"load the weights it was built with (revision {self.meta.get('model_revision')}) or rebuild the "
               f"corpus with this model")
        if int(fp.get("tokens", len(a.tokens))) != len(a.tokens):
            return CorpusModelMismatch(
                f"the corpus {self.label!r} was built with another tokenizer of the model {built}: the probe sentence "
                f"had {fp.get('tokens')} tokens, it has {len(a.tokens)} now; {fix}")
        for layer, values in sorted(stored.items()):
            if not 0 <= layer < a.hidden_states.shape[0] - 1:
                return CorpusModelMismatch(f"the corpus {self.label!r} was built with a model of more layers than "
                                           f"{built} has now; {fix}")
            diff = cf.probe_difference(values, cf.probe_values(a.hidden_states[layer + 1]))
            if not diff <= tol:
                return CorpusModelMismatch(
                    f"the corpus {self.label!r} was built with other weights of the model {built}: its vectors of a "
                    f"probe sentence differ from the corpus's fingerprint at layer {layer} (relative difference "
                    f"{diff:.2g}, tolerance {tol:g}); {fix}")
        return None

    def _warn_no_fingerprint(self) -> None:
        key = f"{self.location.roots[0]}"
        with _WARNED_LOCK:
            if key in _WARNED:
                return
            _WARNED.add(key)
        message = (f"the corpus {self.label!r} has no model fingerprint (built by an older exbert-hub): searches "
                   "check only the model's name, not its weights; rebuild it to add one")
        log.warning(message)
        warnings.warn(message, CorpusWarning, stacklevel=3)

    # --- search ------------------------------------------------------------------------------------
    def _layer(self, layer: int) -> int:
        L = int(self.meta["num_layers"])
        if not isinstance(layer, (int, np.integer)) or not -L <= layer < L:
            raise InputError(f"layer {layer!r} is out of range: the model has layers 0 to {L - 1}")
        layer = int(layer) % L
        if layer not in self.layers:
            raise InputError(f"layer {layer} is not indexed in this corpus; it has layers {self.layers}")
        return layer

    def query_vector(self, analysis, token: int, layer: int, by: str = "embedding",
                     heads: Sequence[int] | None = None) -> tuple[np.ndarray, int]:
        """(float32 query vector, number of heads it uses) for one token of a live analysis."""
        if by not in cf.KINDS:
            raise InputError(f"by must be one of {', '.join(cf.KINDS)}, got {by!r}")
        self.check_model(analysis.model_name)
        layer = self._layer(layer)
        T = len(analysis.tokens)
        if not isinstance(token, (int, np.integer)) or not 0 <= token < T:
            raise InputError(f"token {token!r} is out of range: the analysis has {T} tokens (0 to {T - 1})")
        dim = int(self.meta["indexes"][by][layer]["dim"])
        if by == "embedding":
            if heads is not None:
                raise InputError("heads= is for by='heads'; an embedding search uses the whole hidden state")
            v = np.asarray(analysis.hidden_states[layer + 1, token], dtype=np.float32)
            if v.shape[0] != dim:
                raise CorpusModelMismatch(f"the analysis has hidden size {v.shape[0]}, the corpus {self.label!r} {dim}")
            return v / max(float(np.linalg.norm(v)), 1e-12), 1
        if analysis.contexts is None:
            raise InputError(f"{analysis.model_name}: per-head contexts were not captured, so a heads search is not possible")
        H = self.num_heads
        selected = list(range(H)) if heads is None else sorted({int(h) for h in heads})
        if not selected:
            raise InputError("select at least one head for a heads search")
        bad = [h for h in selected if not 0 <= h < H]
        if bad:
            raise InputError(f"heads {bad} do not exist: each layer has {H} heads (0 to {H - 1})")
        c = np.asarray(analysis.contexts[layer, token], dtype=np.float32).reshape(-1)
        if c.shape[0] != dim:
            raise CorpusModelMismatch(f"the analysis has {c.shape[0]} values per token in its heads, the corpus "
                                      f"{self.label!r} {dim}")
        c = c.reshape(H, -1)
        c = c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)
        mask = np.zeros((H, 1), dtype=np.float32)
        mask[selected] = 1
        return (c * mask).reshape(-1), len(selected)

    def search(self, analysis, token: int, layer: int, by: str = "embedding", k: int = 50,
               heads: Sequence[int] | None = None, *, engine=None) -> list[Hit]:
        """The ``k`` corpus tokens most similar to ``analysis`` token ``token`` at ``layer``, best first.

        by="embedding": cosine of the layer's output hidden states. by="heads": mean cosine of the
        selected heads' attention outputs (``heads=None``: all heads). Special tokens are not indexed.
        ``engine``: the engine that made ``analysis``; its weights are checked against the corpus's
        fingerprint (once per loaded model, see ``check_engine``).
        """
        if not isinstance(k, (int, np.integer)) or not 1 <= k <= 1000:
            raise InputError(f"k must be between 1 and 1000, got {k!r}")
        if engine is not None:
            self.check_engine(engine)
        query, n_heads = self.query_vector(analysis, token, layer, by, heads)
        layer = self._layer(layer)
        index = self._index(by, layer)
        k_eff = min(int(k), index.ntotal)
        try:
            scores, rows = self._search(index, by, layer, query, k_eff, n_heads)
        except Exception as err:  # noqa: BLE001 - faiss errors: C++ text
            log.warning("corpus %s: search of the %s index of layer %d failed: %s", self.label, by, layer,
                        (str(err).strip().splitlines() or [""])[0][:200])
            raise self._damaged(f"its {by} index for layer {layer} cannot be searched") from None
        keep = (rows >= 0) & (rows < len(self._row_token))
        scores, rows = scores[keep], rows[keep]
        tids = self._row_token[rows]
        sids = self._token_sentence[tids]
        tokens = self._many_sentence_tokens(sids)
        return [Hit(score=float(score) / n_heads, sentence=self._sent_text[sid], sentence_id=int(sid),
                    token_index=int(self._token_position[tid]), token_id=int(tid), tokens=tokens[sid],
                    document=int(self._sent_doc[sid]))
                for score, tid, sid in zip(scores, tids, sids)]

    def _many_sentence_tokens(self, sentence_ids) -> dict[int, list[CorpusToken]]:
        """Tokens of several sentences with one read of the table."""
        unique = list(dict.fromkeys(int(s) for s in sentence_ids))
        if not unique:
            return {}
        first, length = self._sent_first[unique], self._sent_len[unique]
        rows = np.concatenate([np.arange(f, f + n) for f, n in zip(first, length)])
        names = list(CorpusToken.__dataclass_fields__)
        cols = self._tokens.select(names).take(rows).to_pydict()
        out, at = {}, 0
        for sid, n in zip(unique, length):
            out[sid] = [CorpusToken(**{k: cols[k][i] for k in names}) for i in range(at, at + int(n))]
            at += int(n)
        return out

    def _search(self, index, by: str, layer: int, query: np.ndarray, k: int, n_heads: int):
        info = self.meta["indexes"][by][layer]
        if isinstance(index, HeadCodes):  # format 2: every heads query from the per-head codes
            heads = selected_heads(query, self.num_heads)
            return index.search(query, heads, head_codes_nprobe(info, len(heads)), k)
        q = query[None, :]
        nprobe = head_cells_nprobe(info, n_heads) if by == "heads" else None
        cells = self._head_cells(layer) if nprobe is not None else None
        if cells is not None:
            s, r = search_head_cells(index, cells[0], cells[1], q, [selected_heads(query, self.num_heads)], nprobe, k,
                                     codes=self._head_codes(layer))
        elif info["tier"] == cf.COMPRESSED and by == "heads" and n_heads < self.num_heads and "nprobe_one_head" in info:
            import faiss

            # fewer heads: the IVF cells were made from all heads, so visit more of them
            params = faiss.SearchParametersIVF(nprobe=int(info["nprobe_one_head"]))
            s, r = index.search(q, k, params=params)
        else:
            s, r = index.search(q, k)
        return s[0], r[0]


# --------------------------------------------------------------------------------------------------
# The cache of opened corpora
# --------------------------------------------------------------------------------------------------
class CorpusCache:
    """Opened corpora, least recently used evicted beyond ``max_corpora`` or ``max_bytes`` (``Corpus.nbytes``:
    tables plus every index opened). The corpus just opened is always kept, even alone over ``max_bytes``.
    Opening the same corpus from several threads opens it once; other corpora are not held up."""

    def __init__(self, max_corpora: int = 4, max_bytes: int = 8_000_000_000):
        self.max_corpora = int(max_corpora)
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict[tuple, Corpus] = OrderedDict()
        self._opening: dict[tuple, threading.Lock] = {}
        self._lock = threading.Lock()

    def get(self, key: tuple, opener: Callable[[], Corpus]) -> Corpus:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            gate = self._opening.setdefault(key, threading.Lock())
        with gate:
            with self._lock:
                if key in self._items:
                    self._items.move_to_end(key)
                    return self._items[key]
            try:
                corpus = opener()
            finally:
                with self._lock:
                    self._opening.pop(key, None)
            with self._lock:
                self._items[key] = corpus
                self._items.move_to_end(key)
                self._evict(keep=key)
            return corpus

    def _evict(self, keep: tuple) -> None:
        while len(self._items) > 1 and (len(self._items) > self.max_corpora or self.nbytes > self.max_bytes):
            oldest = next(k for k in self._items if k != keep)
            dropped = self._items.pop(oldest)
            log.info("corpus cache: closed %s (%d bytes)", dropped.label, dropped.nbytes)

    def configure(self, *, max_corpora: int | None = None, max_bytes: int | None = None) -> None:
        with self._lock:
            if max_corpora is not None:
                self.max_corpora = max(1, int(max_corpora))
            if max_bytes is not None:
                self.max_bytes = int(max_bytes)
            if self._items:
                self._evict(keep=next(reversed(self._items)))

    @property
    def nbytes(self) -> int:
        return sum(c.nbytes for c in self._items.values())

    def labels(self) -> list[str]:
        """Labels of the corpora held, least recently used first."""
        with self._lock:
            return [c.label for c in self._items.values()]

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key) -> bool:
        return key in self._items


CORPUS_CACHE = CorpusCache()


def _cache_key(loc: Location) -> tuple | None:
    """(folder, card file, its mtime and size) of a finished-looking corpus; None when that needs a closer look."""
    try:
        if os.path.lexists(loc.folder / cf.BUILD_DIR):
            return None
        card = confined(loc, cf.CARD_FILE)
        st = card.stat()
    except (CorpusError, OSError):
        return None
    return (str(loc.roots[0]), str(card), st.st_mtime_ns, st.st_size)


def load_corpus(name_or_folder: str, model: str | None = None, *, revision: str | None = None, policy=None,
                remote: bool = False, engine=None, cache: CorpusCache | None = None) -> Corpus:
    """Open a corpus folder or Hub dataset repo, kept in ``CORPUS_CACHE`` (bounded, LRU).

    model: the model name the search will use (refuses a corpus of another model). engine: the live
    engine; also checks its weights against the corpus's fingerprint. policy (an ``exbert_hub.policy.Policy``)
    with ``remote``: the name comes from a visitor: ``policy.check_corpus`` first (a PolicyError when not
    allowed); when folders are not allowed the name is only ever a Hub id; a Hub corpus over
    ``policy.max_corpus_bytes`` is refused before downloading (the operator's own corpora are exempt).
    Errors are one line; for remote visitors they name the corpus as given, never a server path.
    """
    allow_folder, max_bytes = True, None
    if policy is not None:
        allow_folder = bool(policy.check_corpus(name_or_folder, remote=remote))
        if str(name_or_folder).strip() not in tuple(getattr(policy, "operator_corpora", ()) or ()):
            max_bytes = getattr(policy, "max_corpus_bytes", None)
    loc = locate_corpus(name_or_folder, revision, allow_folder=allow_folder, remote=remote, max_bytes=max_bytes)
    cache = CORPUS_CACHE if cache is None else cache
    key, meta = _cache_key(loc), None
    if key is None or key not in cache:  # the card is read and checked only when the corpus is not open yet
        meta, card = _read_meta(loc, remote)
        st = card.stat()
        key = (str(loc.roots[0]), str(card), st.st_mtime_ns, st.st_size)

    def opener() -> Corpus:
        checked = meta if meta is not None else _read_meta(loc, remote)[0]  # (evicted since the look above)
        if loc.hub and max_bytes is not None:
            # offline, the Hub's sizes were not checked: check the cached files before reading them
            size = corpus_disk_bytes(loc)
            if size > max_bytes:
                from .policy import PolicyError

                raise PolicyError(f"the corpus {_shown(loc.label)} is {_gb(size)}; this server opens corpora "
                                  f"of at most {_gb(max_bytes)}")
        return Corpus(loc, checked)

    corpus = cache.get(key, opener)
    if engine is not None:
        corpus.check_engine(engine)
    if model is not None:
        corpus.check_model(model)
    return corpus
