"""The on-disk format of an exbert-hub corpus: THE one place naming its files, columns and card fields.

Both the builder (``corpus_builder``) and the reader (``exbert_hub.corpus``) import these names; nothing
else spells them. A corpus is a folder that is also a valid Hugging Face *dataset* repository::

    README.md                         dataset card: YAML header (below) + human-readable description
    data/sentences/shard-00000.parquet  one row per sentence            (SENTENCE_COLUMNS)
    data/tokens/shard-00000.parquet     one row per model (subword) token (TOKEN_COLUMNS)
    index/embedding-layer03/shard-00000.npy  exact tier: float16 [vectors of the shard, hidden], searched
                                      with a faiss.IndexFlatIP made from all shards' files
    index/embedding-layer03.faiss     compressed tier: a FAISS index file (IVF + 5-bit RaBitQ codes)
    index/heads-layer03.head-centroids.npy  compressed heads tier: float32 [heads, cells, head_dim], k-means
                                      cells of EACH HEAD's own (unit) slice
    index/heads-layer03.head-cells.npy      uint8/uint16 [heads, vectors]: each vector's cell in each head's cells
    index/heads-layer03.head-{quant,codes,refine}.npy  compressed heads tier: 10-bit codes of each head's
                                      residual to its cell (head_codes_files); every heads query is scored
                                      from them (version 2; version 1 had heads-layer03.faiss, IVF + 6-bit
                                      codes, beside them: still read)
    vectors/heads-layer03/shard-00000.npy  optional (--keep-vectors, compressed tier): the float16 vectors

These are ALL the files a reader opens (``CORPUS_PATTERNS``): a Hub corpus downloads only them, and every
path a card names must lie inside the corpus folder (no absolute paths, no "..", no link leading out, no
device files); the reader refuses anything else.

``datasets.load_dataset(folder)`` gives the tokens (default config); ``load_dataset(folder, "sentences")``
the sentences. An unfinished build also holds ``.build/`` (never uploaded).

Layers. ``layer`` is the index of a transformer layer, 0 .. num_layers - 1, exactly as in
``Analysis.attentions[layer]`` and ``Analysis.contexts[layer]``. The *embedding* of a token at ``layer``
is the OUTPUT of that layer, ``Analysis.hidden_states[layer + 1]``. The input embeddings
(``hidden_states[0]``) are not indexed: they depend only on the token id and its position, so searching
them finds the same word piece again, and leaving them out saves 1/(L+1) of the storage.

Vectors. Every indexed vector is L2-normalised and stored as float16 (exact tier) or as product-quantizer
codes (compressed tier). *embedding* vectors: the hidden state divided by its norm, so inner product =
cosine. *heads* vectors: the per-head attention outputs before the output projection
(``Analysis.contexts[layer]``, head h is columns h*d:(h+1)*d), EACH HEAD'S SLICE normalised on its own.
A query over a subset S of heads keeps the normalised slices of S and zeroes the others; its inner product
with a stored vector is then ``sum over h in S of cos(query_h, corpus_h)``, and the reported score is that
sum divided by |S|: the mean per-head cosine, 1.0 for the token's own vector. Special tokens ([CLS],
[SEP], <s>...) are kept in the tokens table but not indexed: vector row r of every index is the r-th
non-special token, ``tokens.vector_row``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

FORMAT = "exbert-hub-corpus"
FORMAT_VERSION = 2  # 2: compressed heads indexes are per-head cells + 10-bit per-head codes only (no .faiss file)

# --- files --------------------------------------------------------------------------------------
CARD_FILE = "README.md"
SENTENCES_DIR = "data/sentences"
TOKENS_DIR = "data/tokens"
INDEX_DIR = "index"
BUILD_DIR = ".build"  # work in progress of an unfinished build; removed when the build completes
BUILD_STATE_FILE = "state.json"  # .build/state.json: the settings of the build in progress
SHARD_DONE_DIR = "shards"  # .build/shards/00012.json: shard 12 is finished (its row counts)
VECTORS_DIR = "vectors"  # .build/vectors/embedding-layer03/shard-00012.npy: float16 [vectors, dim]
INDEX_DONE_DIR = "indexes"  # .build/indexes/heads-layer03.json: that index is finished (its stats)
# optional (build --keep-vectors): vectors/embedding-layer03/shard-00012.npy, float16 [vectors, dim] of shard 12,
# rows in vector_row order; not needed for search (the exact tier's index/ folders hold the same files)
KEPT_VECTORS_DIR = "vectors"

# What a reader downloads from the Hub and opens (fnmatch patterns as huggingface_hub's allow_patterns:
# "*" also matches "/"): the card, the two tables' shards and the indexes of both tiers. Kept vectors
# (--keep-vectors) and build leftovers are not needed for search and never downloaded.
CORPUS_PATTERNS = [CARD_FILE, f"{SENTENCES_DIR}/*.parquet", f"{TOKENS_DIR}/*.parquet",
                   f"{INDEX_DIR}/*.faiss", f"{INDEX_DIR}/*.npy", f"{INDEX_DIR}/*/*.npy"]
MAX_CARD_BYTES = 4_000_000  # a card is a few KB; a larger README.md is not read

KINDS = ("embedding", "heads")  # what a search compares: `by=` of Corpus.search
EXACT = "exact"  # IndexFlatIP over the stored float16 vectors
COMPRESSED = "compressed"  # FAISS index_factory index (IVF + SQ6 by default), approximate


def shard_name(shard: int) -> str:
    return f"shard-{shard:05d}.parquet"


def sentences_file(shard: int) -> str:
    return f"{SENTENCES_DIR}/{shard_name(shard)}"


def tokens_file(shard: int) -> str:
    return f"{TOKENS_DIR}/{shard_name(shard)}"


def index_stem(kind: str, layer: int) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown vector kind {kind!r}: use one of {KINDS}")
    return f"{kind}-layer{layer:02d}"


def index_file(kind: str, layer: int, tier: str) -> str:
    """Path (inside the corpus folder) of the index of ``kind`` vectors at ``layer``: a folder of float16
    shard files (exact tier) or a FAISS index file (compressed tier; compressed heads indexes of version 2
    name their per-head codes file instead, ``head_codes_files(...)[1]``)."""
    ext = {EXACT: "", COMPRESSED: ".faiss"}[tier]
    return f"{INDEX_DIR}/{index_stem(kind, layer)}{ext}"


def head_cells_files(kind: str, layer: int) -> tuple[str, str]:
    """(centroids, cells) files of the per-head cells of a compressed heads index: one-head and few-head
    queries visit only the vectors whose selected heads fall in cells near the query's (card: ``head_cells``)."""
    stem = index_stem(kind, layer)
    return f"{INDEX_DIR}/{stem}.head-centroids.npy", f"{INDEX_DIR}/{stem}.head-cells.npy"


def head_codes_files(kind: str, layer: int) -> tuple[str, str, str]:
    """(quantizer, codes, refinement) files of the per-head residual codes of a compressed heads index:
    float32[heads, 2, head_dim] (offset, step of the 10-bit grid), uint8[heads, N, head_dim] (high 8 bits of
    each dimension's code), uint8[heads, N, head_dim / 4] (low 2 bits, four per byte). Card: head_cells.codes."""
    stem = index_stem(kind, layer)
    return (f"{INDEX_DIR}/{stem}.head-quant.npy", f"{INDEX_DIR}/{stem}.head-codes.npy",
            f"{INDEX_DIR}/{stem}.head-refine.npy")


def head_coarse_files(kind: str, layer: int) -> tuple[str, str]:
    """(centroids, cells) of the coarse cells of a format-2 heads index: float32[nlist, heads * head_dim]
    k-means centroids of the whole vectors, uint16[N] each vector's cell (queries on more than 3 heads)."""
    stem = index_stem(kind, layer)
    return f"{INDEX_DIR}/{stem}.coarse-centroids.npy", f"{INDEX_DIR}/{stem}.coarse-cells.npy"


def vectors_shard_name(shard: int) -> str:
    return f"shard-{shard:05d}.npy"


def build_vectors_dir(kind: str, layer: int) -> str:
    return f"{BUILD_DIR}/{VECTORS_DIR}/{index_stem(kind, layer)}"


def kept_vectors_dir(kind: str, layer: int) -> str:
    return f"{KEPT_VECTORS_DIR}/{index_stem(kind, layer)}"


def build_shard_done_file(shard: int) -> str:
    return f"{BUILD_DIR}/{SHARD_DONE_DIR}/{shard:05d}.json"


def build_index_done_file(kind: str, layer: int) -> str:
    return f"{BUILD_DIR}/{INDEX_DONE_DIR}/{index_stem(kind, layer)}.json"


# --- tables ---------------------------------------------------------------------------------------
# (name, arrow type, meaning). Types are pyarrow type names (pa.<name>()).
SENTENCE_COLUMNS: list[tuple[str, str, str]] = [
    ("sentence_id", "int64", "row number of the sentence in the whole corpus (0, 1, 2, ...)"),
    ("text", "string", "the sentence exactly as given to the model (spaCy's sentence, whitespace-trimmed)"),
    ("document", "int64", "number of the source document (line group, dataset row, doc topic) it came from"),
    ("first_token", "int64", "token_id of its first token ([CLS] or equivalent included)"),
    ("num_tokens", "int32", "number of model tokens, special tokens included"),
    ("num_words", "int32", "number of spaCy words"),
]

TOKEN_COLUMNS: list[tuple[str, str, str]] = [
    ("token_id", "int64", "row number of the token in the whole corpus"),
    ("sentence_id", "int64", "sentence it belongs to"),
    ("position", "int32", "index among the sentence's model tokens: the `token` of engine.analyze(sentence)"),
    ("token", "string", "the tokenizer's token, e.g. '##ing' or 'Ġcat'"),
    ("text", "string", "the characters it covers (the special token itself for specials)"),
    ("start", "int32", "character offset of its start in the sentence text (0 for specials)"),
    ("end", "int32", "character offset of its end in the sentence text (0 for specials)"),
    ("special", "bool_", "a special token added by the tokenizer ([CLS], [SEP], <s> ...)"),
    ("vector_row", "int64", "its row in every index of the corpus; -1 for special tokens (not indexed)"),
    ("word", "int32", "index of the spaCy word it is part of, in the sentence (-1 for specials)"),
    ("word_text", "string", "that word's text"),
    ("lemma", "string", "spaCy lemma of the word"),
    ("pos", "string", "coarse part of speech (Universal POS: NOUN, VERB ...)"),
    ("tag", "string", "fine-grained tag (Penn Treebank for English: NN, VBZ ...)"),
    ("dep", "string", "dependency relation to its head (nsubj, dobj, ROOT ...)"),
    ("head", "int32", "index (in the sentence) of the word's syntactic head; its own index for the ROOT"),
    ("ent_type", "string", "named-entity type (PERSON, ORG ...), '' outside entities"),
    ("ent_iob", "string", "entity IOB code: 'B' begins, 'I' inside, 'O' outside an entity"),
]

WORD_FEATURES = ("word_text", "lemma", "pos", "tag", "dep", "head", "ent_type", "ent_iob")


def column_names(columns: list[tuple[str, str, str]]) -> list[str]:
    return [c[0] for c in columns]


def arrow_schema(columns: list[tuple[str, str, str]]):
    import pyarrow as pa

    return pa.schema([(name, getattr(pa, typ)()) for name, typ, _ in columns])


# --- the dataset card -------------------------------------------------------------------------
CARD_KEY = "exbert_corpus"  # the YAML mapping that describes the corpus (fields below)

# Fields of the CARD_KEY mapping, with their meaning (the builder writes all of them).
CARD_FIELDS: dict[str, str] = {
    "format": f"always {FORMAT!r}",
    "format_version": "integer; readers refuse newer versions",
    "model": "the model name given to the builder (Hub id or folder); searches must use the same model",
    "model_revision": "Hub commit of the model, or the package version of a packaged model, or null",
    "model_origin": "'hub', 'local' or 'packaged'",
    "model_fingerprint": "sha256 (first 16 hex) of the model's input-embedding weights (exact: changes with the dtype)",
    "probe_fingerprint": "the model's embedding of PROBE_TEXT at each indexed layer (PROBE_VALUES numbers per layer, "
                         "see probe_values): searches compare it with the live model's, within PROBE_TOLERANCE, and "
                         "refuse other weights under the same name; older corpora have none (a warning)",
    "model_kind": "masked-lm, causal-lm, encoder or encoder-decoder",
    "num_layers": "transformer layers of the model",
    "num_heads": "attention heads per layer",
    "hidden_size": "width of the hidden states (embedding vectors)",
    "head_dim": "width of one head's context (heads vectors are num_heads * head_dim wide)",
    "layers": "the indexed layers (0-based transformer layers; embedding = output of the layer)",
    "dtype": "storage of exact-tier vectors (float16)",
    "normalization": "how vectors were normalised",
    "spacy": "pipeline name, pipeline version, spaCy version",
    "source": "what the text came from (file, Hub dataset with config/split/column, or builtin)",
    "build": "builder settings: batch_size, max_sentences, max_tokens, min_words, shard_chars, ...",
    "counts": "documents, sentences, tokens, indexed vectors, skipped sentences",
    "indexes": "per kind, per layer: tier, file, factory, nprobe, recall_at_50 (compressed tier), bytes; compressed "
               "heads indexes also head_cells: {centroids, cells, cells_per_head, nprobe: {heads: cells visited per "
               "selected head}, recall_at_50: {heads: measured}, max_heads, codes: {quant, codes, refine, bits, rerank} "
               "when per-head residual codes exist}; version 2: a compressed heads index is its per-head cells "
               "and codes alone (file = the codes file, factory HeadCells+HeadCodes10, nprobe / recall_at_50 for "
               "all heads, head_cells.nprobe for 1, 3 and all heads)",
    "timings": "seconds spent reading+annotating, running the model, building indexes; tokens per second",
    "exbert_hub_version": "version of the library that built it",
}


# --- the model fingerprint ---------------------------------------------------------------------------
PROBE_TEXT = "The quick brown fox jumps over the lazy dog near the bank of the river."
PROBE_VALUES = 32  # numbers kept per layer
PROBE_TOLERANCE = 2e-3  # largest |live - stored| relative to the largest stored value (float32 noise: ~1e-5)


def probe_values(hidden) -> list[float]:
    """Fingerprint numbers of one layer: ``hidden`` float[T, D] is the layer's output for PROBE_TEXT (every
    token, special ones included, as ``engine.analyze`` gives it). Each token's vector is L2-normalised, the
    mean taken and normalised again; its first PROBE_VALUES components, rounded to 7 decimals, are kept."""
    import numpy as np

    h = np.asarray(hidden, dtype=np.float64)
    h = h / np.maximum(np.linalg.norm(h, axis=-1, keepdims=True), 1e-12)
    m = h.mean(axis=0)
    m = m / max(float(np.linalg.norm(m)), 1e-12)
    return [round(float(x), 7) for x in m[:PROBE_VALUES]]


def probe_difference(stored, live) -> float:
    """Largest |live - stored| relative to the largest |stored| (inf when the lengths differ)."""
    import numpy as np

    a, b = np.asarray(stored, dtype=np.float64), np.asarray(live, dtype=np.float64)
    if a.shape != b.shape or a.size == 0:
        return float("inf")
    return float(np.abs(a - b).max() / max(float(np.abs(a).max()), 1e-12))


def dataset_configs() -> list[dict[str, Any]]:
    """The `configs` entry of the card: makes ``datasets.load_dataset(folder)`` read the parquet shards."""
    return [
        {"config_name": "tokens", "default": True,
         "data_files": [{"split": "train", "path": f"{TOKENS_DIR}/*.parquet"}]},
        {"config_name": "sentences",
         "data_files": [{"split": "train", "path": f"{SENTENCES_DIR}/*.parquet"}]},
    ]


_FRONT = re.compile(r"\A---\s*\n(.*?)\n---\s*\n?", re.S)


def write_card(folder: Path, meta: dict[str, Any], body: str, extra_yaml: dict[str, Any] | None = None) -> Path:
    """Write README.md with a YAML header holding ``configs`` and ``meta`` under CARD_KEY."""
    import yaml

    header = dict(extra_yaml or {})
    header["configs"] = dataset_configs()
    header[CARD_KEY] = meta
    text = "---\n" + yaml.safe_dump(header, sort_keys=False, allow_unicode=True, width=120) + "---\n\n" + body
    path = Path(folder) / CARD_FILE
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path


def read_card(folder: Path) -> dict[str, Any] | None:
    """The CARD_KEY mapping of the folder's README.md, or None when it has none (or it is not a regular file)."""
    path = Path(folder) / CARD_FILE
    if not path.is_file():
        return None
    return parse_card(path.read_text(encoding="utf-8"))


def parse_card(text: str) -> dict[str, Any] | None:
    """The CARD_KEY mapping of a README.md's text, or None when its YAML header has none.

    Raises ``yaml.YAMLError`` for a header that is not YAML."""
    import yaml

    m = _FRONT.match(text)
    if not m:
        return None
    header = yaml.safe_load(m.group(1)) or {}
    meta = header.get(CARD_KEY) if isinstance(header, dict) else None
    return meta if isinstance(meta, dict) else None


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (a killed process leaves the old file or none, never half a file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True), encoding="utf-8")
    tmp.replace(path)


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))
