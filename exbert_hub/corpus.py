"""Open an exbert-hub corpus (a local folder or a Hub dataset repo) and search it with live analyses.

    >>> import exbert_hub
    >>> from exbert_hub.corpus import load_corpus
    >>> engine = exbert_hub.load("sentence-transformers/all-MiniLM-L6-v2")
    >>> corpus = load_corpus("my_corpus", model=engine.name)     # or "user/name" on the Hub
    >>> a = engine.analyze("The cat sat on the mat.")
    >>> hits = corpus.search(a, token=2, layer=3, by="embedding", k=50)
    >>> hits[0].sentence, hits[0].token_index, hits[0].score, hits[0].tokens[hits[0].token_index].pos

The file layout, the columns and the meaning of layers and scores are in ``exbert_hub.corpus_format``.
``by="embedding"``: cosine of the token's output hidden state at ``layer`` (``hidden_states[layer + 1]``).
``by="heads"``: the mean, over the selected heads, of the cosine between per-head attention outputs
(before the output projection) at ``layer``. A token searched with its own live vector scores ~1.0.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from . import corpus_format as cf
from .errors import ExbertError, InputError


class CorpusError(ExbertError, OSError):
    """A corpus that cannot be opened (missing, unfinished, a newer format...)."""


class CorpusModelMismatch(ExbertError, ValueError):
    """A search with vectors of a different model than the corpus was built with."""


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


def _same_model(a: str, b: str) -> bool:
    def norm(name: str) -> str:
        name = str(name).strip().rstrip("/")
        path = Path(name).expanduser()
        return str(path.resolve()) if path.exists() else name

    return norm(a) == norm(b)


def resolve_corpus(name_or_folder: str, revision: str | None = None) -> Path:
    """A local folder, or a Hub dataset repo downloaded (or found in the cache) with huggingface_hub."""
    if not isinstance(name_or_folder, str) or not name_or_folder.strip():
        raise CorpusError("no corpus given: pass a folder made by `python -m corpus_builder build` or a Hub dataset id")
    path = Path(name_or_folder).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise CorpusError(f"{path} is a file; a corpus is a folder (made by `python -m corpus_builder build`)")
    if name_or_folder.count("/") != 1 or name_or_folder.startswith((".", "/", "~")):
        raise CorpusError(f"no corpus folder {path} (and {name_or_folder!r} is not a Hub dataset id like 'user/name')")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id=name_or_folder, repo_type="dataset", revision=revision))
    except Exception as err:  # noqa: BLE001 - offline, not found, gated: all mean "cannot open"
        offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes"}
        why = "offline (HF_HUB_OFFLINE=1) and not in the local cache" if offline else str(err).splitlines()[0]
        raise CorpusError(f"could not get the corpus {name_or_folder!r} from the Hugging Face Hub: {why}") from err


class Corpus:
    """A finished corpus: its card, token and sentence tables, and lazily opened indexes."""

    def __init__(self, folder: Path, meta: dict[str, Any]):
        self.folder = Path(folder)
        self.meta = meta
        self._indexes: dict[tuple[str, int], Any] = {}
        self._lock = threading.Lock()
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

    def __len__(self) -> int:
        return self.num_sentences

    def __repr__(self) -> str:
        return (f"Corpus({str(self.folder)!r}, model={self.model!r}, sentences={self.num_sentences:,}, "
                f"tokens={self.num_tokens:,}, layers={self.layers})")

    def index_info(self, by: str, layer: int) -> dict[str, Any]:
        return dict(self.meta["indexes"][by][layer])

    # --- tables ------------------------------------------------------------------------------------
    def _load_tables(self) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        def read(folder: str, columns: list[tuple[str, str, str]]):
            files = sorted((self.folder / folder).glob("*.parquet"))
            if not files:
                raise CorpusError(f"{self.folder} has no {folder}/*.parquet: not a complete exbert-hub corpus")
            return pa.concat_tables([pq.read_table(f, schema=cf.arrow_schema(columns)) for f in files])

        sentences = read(cf.SENTENCES_DIR, cf.SENTENCE_COLUMNS)
        # one chunk per column: take() over one chunk per shard cost ~10 ms per search at 1M tokens
        self._tokens = read(cf.TOKENS_DIR, cf.TOKEN_COLUMNS).combine_chunks()
        self._sent_text = sentences.column("text").to_pylist()
        self._sent_first = sentences.column("first_token").to_numpy()
        self._sent_len = sentences.column("num_tokens").to_numpy()
        self._sent_doc = sentences.column("document").to_numpy()
        if not np.array_equal(sentences.column("sentence_id").to_numpy(), np.arange(len(self._sent_text))):
            raise CorpusError(f"{self.folder}: sentence ids are not 0..n-1 in shard order; the corpus is damaged")
        vrow = self._tokens.column("vector_row").to_numpy()
        indexed = np.flatnonzero(vrow >= 0)
        self._row_token = np.empty(len(indexed), dtype=np.int64)
        self._row_token[vrow[indexed]] = indexed  # vector row -> token id
        self._token_sentence = self._tokens.column("sentence_id").to_numpy()
        self._token_position = self._tokens.column("position").to_numpy()

    def sentence(self, sentence_id: int) -> str:
        return self._sent_text[sentence_id]

    def sentence_tokens(self, sentence_id: int) -> list[CorpusToken]:
        if not 0 <= int(sentence_id) < self.num_sentences:
            raise InputError(f"sentence {sentence_id} is out of range: the corpus has {self.num_sentences} sentences")
        return self._many_sentence_tokens([int(sentence_id)])[int(sentence_id)]

    # --- indexes -----------------------------------------------------------------------------------
    def _index(self, by: str, layer: int):
        key = (by, layer)
        with self._lock:
            if key in self._indexes:
                return self._indexes[key]
            import faiss

            info = self.meta["indexes"][by][layer]
            path = self.folder / info["file"]
            if not path.exists():
                raise CorpusError(f"{self.folder} lacks {info['file']}: the corpus is incomplete")
            if info["tier"] == cf.EXACT:
                index = faiss.IndexFlatIP(int(info["dim"]))
                for f in sorted(path.glob("*.npy")):  # shard files in row order
                    vectors = np.load(f, mmap_mode="r")
                    for i in range(0, len(vectors), 65536):
                        index.add(np.ascontiguousarray(vectors[i:i + 65536], dtype=np.float32))
                if index.ntotal != int(info["vectors"]):
                    raise CorpusError(f"{path} holds {index.ntotal} vectors, the card says {info['vectors']}: damaged corpus")
            else:
                index = faiss.read_index(str(path))
                ivf = faiss.extract_index_ivf(index)
                ivf.nprobe = int(info.get("nprobe", 16))
                # one query at a time (the app): split its cells over the threads, not the queries
                # (measured at 1M vectors, 96 cells: 15.8 -> 8.4 ms on 2 cores)
                ivf.parallel_mode = 1
            self._indexes[key] = index
            return index

    # --- search ------------------------------------------------------------------------------------
    def check_model(self, model_name: str) -> None:
        """Raise CorpusModelMismatch unless ``model_name`` is the model this corpus was built with."""
        if not _same_model(model_name, self.model):
            raise CorpusModelMismatch(
                f"this corpus ({self.folder}) was built with the model {self.model!r}, but the search uses "
                f"{model_name!r}; token vectors of different models cannot be compared. Load {self.model!r}, or "
                f"build a corpus for {model_name!r}: python -m corpus_builder build --model {model_name} --out DIR"
            )

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
        if by == "embedding":
            if heads is not None:
                raise InputError("heads= is for by='heads'; an embedding search uses the whole hidden state")
            v = np.asarray(analysis.hidden_states[layer + 1, token], dtype=np.float32)
            if v.shape[0] != int(self.meta["hidden_size"]):
                raise CorpusModelMismatch(f"the analysis has hidden size {v.shape[0]}, the corpus {self.meta['hidden_size']}")
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
        c = np.asarray(analysis.contexts[layer, token], dtype=np.float32).reshape(H, -1)
        if c.shape[1] != int(self.meta["head_dim"]):
            raise CorpusModelMismatch(f"the analysis has head size {c.shape[1]}, the corpus {self.meta['head_dim']}")
        c = c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)
        mask = np.zeros((H, 1), dtype=np.float32)
        mask[selected] = 1
        return (c * mask).reshape(-1), len(selected)

    def search(self, analysis, token: int, layer: int, by: str = "embedding", k: int = 50,
               heads: Sequence[int] | None = None) -> list[Hit]:
        """The ``k`` corpus tokens most similar to ``analysis`` token ``token`` at ``layer``, best first.

        by="embedding": cosine of the layer's output hidden states. by="heads": mean cosine of the
        selected heads' attention outputs (``heads=None``: all heads). Special tokens are not indexed.
        """
        if not isinstance(k, (int, np.integer)) or not 1 <= k <= 1000:
            raise InputError(f"k must be between 1 and 1000, got {k!r}")
        query, n_heads = self.query_vector(analysis, token, layer, by, heads)
        layer = self._layer(layer)
        index = self._index(by, layer)
        k_eff = min(int(k), index.ntotal)
        scores, rows = self._search(index, by, layer, query, k_eff, n_heads)
        keep = rows >= 0
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
        q = query[None, :]
        if info["tier"] == cf.COMPRESSED and by == "heads" and n_heads < self.num_heads and "nprobe_one_head" in info:
            import faiss

            # fewer heads: the IVF cells were made from all heads, so visit more of them
            params = faiss.SearchParametersIVF(nprobe=int(info["nprobe_one_head"]))
            s, r = index.search(q, k, params=params)
        else:
            s, r = index.search(q, k)
        return s[0], r[0]


_CACHE: dict[tuple[str, float], Corpus] = {}
_CACHE_LOCK = threading.Lock()


def load_corpus(name_or_folder: str, model: str | None = None, *, revision: str | None = None) -> Corpus:
    """Open a corpus folder or Hub dataset repo (cached per folder). With ``model``, check it matches."""
    folder = resolve_corpus(name_or_folder, revision)
    meta = cf.read_card(folder)
    if (folder / cf.BUILD_DIR).exists():
        raise CorpusError(f"{folder} holds an unfinished build; rerun the same `python -m corpus_builder build` command to finish it")
    if meta is None:
        raise CorpusError(f"{folder} is not an exbert-hub corpus: its README.md has no {cf.CARD_KEY!r} section")
    if meta.get("format") != cf.FORMAT or int(meta.get("format_version", 0)) > cf.FORMAT_VERSION:
        raise CorpusError(f"{folder} has corpus format {meta.get('format')!r} version {meta.get('format_version')}; "
                          f"this exbert-hub reads {cf.FORMAT!r} up to version {cf.FORMAT_VERSION}: upgrade exbert-hub")
    card = folder / cf.CARD_FILE
    key = (str(folder.resolve()), card.stat().st_mtime)
    with _CACHE_LOCK:
        corpus = _CACHE.get(key)
        if corpus is None:
            corpus = Corpus(folder, meta)
            _CACHE[key] = corpus
    if model is not None:
        corpus.check_model(model)
    return corpus
