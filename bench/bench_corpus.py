"""Corpus benchmarks: build throughput, storage per token, search at scale.

    # 1. build throughput: whole build vs bare forward passes of the same batches (target >= 0.7)
    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_corpus.py throughput --sentences 3000
    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_corpus.py throughput --sentences 3000 --model bert-base-random --out bench/out/corpus-throughput-bert
    # the ceiling on this machine: spaCy in a 2nd process beside the model's batches, nothing else
    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_corpus.py overlap bench/out/corpus-throughput
    # 2. storage bytes/token vs exBERT's layout for the same model and sentences (target <= 1/8)
    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_corpus.py storage bench/out/corpus-throughput bench/out/corpus-throughput-bert bench/out/docstrings-corpus
    # 3. search at scale: >= 1M real MiniLM token vectors (docstrings of installed packages)
    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_corpus.py docstrings --out bench/out/docstrings.txt
    HF_HUB_OFFLINE=1 .venv/bin/python -m corpus_builder build --model sentence-transformers/all-MiniLM-L6-v2 \
        --source bench/out/docstrings.txt --out bench/out/docstrings-corpus --layers 1,4 --max-sentences 58000 --keep-vectors
    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_corpus.py search bench/out/docstrings-corpus --queries 300
    # (after changing index defaults: rebuild the indexes from the kept vectors, same code as the builder)
    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_corpus.py reindex bench/out/docstrings-corpus
    # one-head / three-head / all-heads search at 1M beside exact search (builder's index code, reader's search)
    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_corpus.py vectors1m        # bench/out/vec1m, no spaCy
    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_corpus.py heads --layer 1 --n 1000000 --queries 100 --embedding
    # how the index codes were chosen: recall@50 / bytes / build time of factory strings on 50k kept vectors
    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_corpus.py codes bench/out/docstrings-corpus --layer 4

Every figure is printed as JSON; bench/RESULTS.md ("Corpus") quotes them with the commands.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def load_avg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# --- docstrings of installed packages: >= 1M tokens of real English-ish prose, offline ------------------
def docstrings(out: Path, site: Path | None = None) -> dict:
    """Write every distinct prose paragraph of the docstrings of the installed packages to ``out``."""
    import re
    import sysconfig

    site = Path(site or sysconfig.get_paths()["purelib"])
    seen: set[str] = set()
    paragraphs = 0
    chars = 0
    with open(out, "w", encoding="utf-8") as f:
        for path in sorted(site.rglob("*.py")):
            parts = set(path.parts)
            if parts & {"tests", "test", "testing", "_vendor", "vendored"}:
                continue
            try:
                tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
            except (SyntaxError, ValueError, RecursionError):
                continue
            for node in ast.walk(tree):
                if not isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                doc = ast.get_docstring(node)
                if not doc:
                    continue
                for block in re.split(r"\n\s*\n", doc):
                    lines = block.splitlines()
                    if not lines or lines[0].startswith((" ", "\t")) or any(
                            s in block for s in (">>>", "::", "---", "===", "|", "{", "}", "http", "`")):
                        continue
                    text = " ".join(line.strip() for line in lines)
                    letters = sum(c.isalpha() for c in text)
                    if len(text) < 40 or letters < 0.75 * len(text.replace(" ", "")) or text in seen:
                        continue
                    seen.add(text)
                    f.write(text + "\n\n")
                    paragraphs += 1
                    chars += len(text)
    return {"out": str(out), "paragraphs": paragraphs, "chars": chars, "site_packages": str(site)}


# --- 1. build throughput ---------------------------------------------------------------------------
def bare_forward_seconds(engine, folder: Path, batch_size: int) -> tuple[float, int]:
    """Time of bare forward passes over the corpus sentences, in the builder's batches.

    The builder runs each shard's kept sentences sorted by token count in batches of ``batch_size``;
    each shard is one parquet file, so the same batches are rebuilt here from the output.
    """
    import pyarrow.parquet as pq
    import torch

    from corpus_builder import vectors
    from exbert_hub import corpus_format as cf

    total, tokens = 0.0, 0
    for f in sorted((folder / cf.SENTENCES_DIR).glob("*.parquet")):
        texts = pq.read_table(f, columns=["text"]).column("text").to_pylist()
        encoded = vectors.encode(engine, texts)
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].ids))
        runner = vectors.VectorRunner(engine, [0])
        for b in range(0, len(order), batch_size):
            batch = [encoded[i] for i in order[b:b + batch_size]]
            inputs, lengths = runner.inputs(batch)
            t0 = time.perf_counter()
            with torch.inference_mode():
                engine.model(**inputs)
            total += time.perf_counter() - t0
            tokens += sum(lengths)
    return total, tokens


def throughput_model(name: str) -> str:
    """MiniLM (packaged), or "bert-base-random": BERT-base's shape with random weights (bench_engine's)."""
    if name != "bert-base-random":
        return name
    sys.path.insert(0, str(ROOT / "bench"))
    from bench_engine import bert_base_folder

    return str(bert_base_folder(ROOT / "bench/out"))


def spacy_alone_seconds(folder: Path) -> float:
    """spaCy (the build's pipeline, one process) over the corpus sentences: the CPU the build needs besides the model."""
    import pyarrow.parquet as pq

    from corpus_builder import annotate
    from exbert_hub import corpus_format as cf

    meta = cf.read_card(folder)
    nlp = annotate.load_pipeline(meta["spacy"]["requested"])
    texts = pq.read_table(sorted((folder / cf.SENTENCES_DIR).glob("*.parquet")), columns=["text"]).column("text").to_pylist()
    t0 = time.perf_counter()
    for _ in nlp.pipe(texts, batch_size=64):
        pass
    return time.perf_counter() - t0


def throughput(args) -> dict:
    import shutil

    import exbert_hub
    from corpus_builder import build
    from exbert_hub import corpus_format as cf

    model = throughput_model(args.model)
    engine = exbert_hub.load(model)
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    load_before = load_avg()
    t0 = time.perf_counter()
    build(model, args.source, str(out), max_sentences=args.sentences, batch_size=args.batch_size,
          workers=args.workers, progress=False, stream_indexes=not args.two_pass)
    build_s = time.perf_counter() - t0
    meta = cf.read_card(out)
    tokens = meta["counts"]["tokens"]
    bare = []
    for _ in range(args.repeats):
        s, n = bare_forward_seconds(engine, out, args.batch_size)
        assert n == tokens, (n, tokens)
        bare.append(s)
    bare_s = statistics.median(bare)
    spacy_s = spacy_alone_seconds(out)
    return {
        "bench": "build throughput", "model": args.model, "source": args.source, "sentences": meta["counts"]["sentences"],
        "tokens": tokens, "batch_size": args.batch_size, "workers": args.workers, "build_seconds": round(build_s, 2),
        "build_tokens_per_s": round(tokens / build_s, 1), "bare_forward_seconds_runs": [round(x, 2) for x in bare],
        "bare_tokens_per_s": round(tokens / bare_s, 1), "ratio": round(bare_s / build_s, 3),
        "spacy_alone_seconds": round(spacy_s, 2), "spacy_alone_over_bare_forward": round(spacy_s / bare_s, 3),
        "card_timings": meta["timings"], "index_tier": meta["indexes"]["embedding"][0]["tier"],
        "indexes_streamed": not args.two_pass,
        "recall_at_50": {f"{k}-{l}": st.get("recall_at_50") for k, per in meta["indexes"].items() for l, st in per.items()},
        "load_avg_before": load_before, "load_avg_after": load_avg(), "cpus": os.cpu_count(),
    }


def _spacy_job(pipeline: str, texts: list[str], queue) -> None:
    from corpus_builder import annotate

    nlp = annotate.load_pipeline(pipeline)
    queue.put("loaded")
    t0 = time.perf_counter()
    for _ in nlp.pipe(texts, batch_size=64):
        pass
    queue.put(time.perf_counter() - t0)


def overlap(args) -> dict:
    """The best a 2-core build could do: spaCy over the corpus sentences in a second process while the
    model runs their batches on one thread, then on every thread once spaCy is done; nothing else (no
    alignment, writing or indexing). Its time against the bare forward passes bounds the throughput ratio."""
    import multiprocessing as mp

    import pyarrow.parquet as pq
    import torch

    import exbert_hub
    from corpus_builder import vectors
    from exbert_hub import corpus_format as cf

    folder = Path(args.folder)
    meta = cf.read_card(folder)
    texts = pq.read_table(sorted((folder / cf.SENTENCES_DIR).glob("*.parquet")), columns=["text"]).column("text").to_pylist()
    engine = exbert_hub.load(meta["model"])
    encoded = vectors.encode(engine, texts)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].ids))
    runner = vectors.VectorRunner(engine, [0])
    batches = [runner.inputs([encoded[i] for i in order[b:b + args.batch_size]])[0]
               for b in range(0, len(order), args.batch_size)]
    threads = torch.get_num_threads()

    def forward(items) -> None:
        for inputs in items:
            with torch.inference_mode():
                engine.model(**inputs)

    t0 = time.perf_counter()
    forward(batches)
    bare = time.perf_counter() - t0
    queue = mp.get_context("spawn").Queue()
    proc = mp.get_context("spawn").Process(target=_spacy_job, args=(meta["spacy"]["requested"], texts, queue))
    proc.start()
    queue.get()  # spaCy loaded: start both clocks together
    torch.set_num_threads(1)
    t0, spacy_done, batches_then = time.perf_counter(), None, None
    for i, inputs in enumerate(batches):
        if spacy_done is None and not queue.empty():
            spacy_done, batches_then = time.perf_counter() - t0, i
            torch.set_num_threads(threads)
        forward([inputs])
    both = time.perf_counter() - t0
    torch.set_num_threads(threads)
    spacy_s = queue.get()
    proc.join()
    return {"bench": "spaCy + model overlap (ceiling)", "corpus": str(folder), "sentences": len(texts),
            "bare_forward_seconds": round(bare, 2), "spacy_seconds": round(spacy_s, 2),
            "spacy_done_at": None if spacy_done is None else round(spacy_done, 2), "batches_done_then": batches_then,
            "batches": len(batches), "overlapped_seconds": round(both, 2), "ceiling_ratio": round(bare / both, 3),
            "load_avg": load_avg()}


# --- 2. storage ----------------------------------------------------------------------------------
def exbert_bytes(folder: Path, meta: dict) -> int:
    """Bytes exBERT's layout takes for the same model and sentences.

    Its HDF5 file (server/data_processing/create_hdf5.py): float32 hidden states of every layer (embeddings
    included), float32 contexts of every layer, float32 attentions [layers, heads, T, T] per sentence. And
    its search indexes (create_faiss.py): one exact IndexFlatIP per layer for the embeddings and one for the
    contexts, each over layers + 1 layers (the input layer included), so float32 copies of those vectors.
    Contexts are counted for the model's layers only in the HDF5 file (the lower count, where exBERT's
    files would hold the input layer's zeros too)."""
    import pyarrow.parquet as pq

    from exbert_hub import corpus_format as cf

    L, H, D = meta["num_layers"], meta["num_heads"], meta["hidden_size"]
    ctx = H * meta["head_dim"]
    n = np.concatenate([pq.read_table(f, columns=["num_tokens"]).column("num_tokens").to_numpy()
                        for f in sorted((folder / cf.SENTENCES_DIR).glob("*.parquet"))]).astype(np.int64)
    hdf5_per_token = 4 * ((L + 1) * D + L * ctx)
    flat_indexes_per_token = 4 * (L + 1) * (D + ctx)
    return int(n.sum() * (hdf5_per_token + flat_indexes_per_token) + 4 * L * H * (n ** 2).sum())


def storage(args) -> dict:
    from exbert_hub import corpus_format as cf

    rows = []
    for folder in map(Path, args.folders):
        meta = cf.read_card(folder)
        tokens = meta["counts"]["tokens"]
        files = [p for p in folder.rglob("*") if p.is_file() and cf.KEPT_VECTORS_DIR not in p.relative_to(folder).parts[:1]]
        ours = sum(p.stat().st_size for p in files)
        index_bytes = sum(p.stat().st_size for p in (folder / cf.INDEX_DIR).glob("*"))
        layers = len(meta["layers"])
        ex_all = exbert_bytes(folder, meta)
        # exBERT for the same layers only (when a corpus indexes a subset of layers)
        L = meta["num_layers"]
        ex_same_layers = ex_all * layers / L if layers < L else ex_all
        tier = meta["indexes"]["embedding"][meta["layers"][0]]["tier"]
        rows.append({
            "corpus": str(folder), "tier": tier, "layers_indexed": meta["layers"], "tokens": tokens,
            "sentences": meta["counts"]["sentences"], "bytes_total": ours, "bytes_indexes": index_bytes,
            "bytes_per_token": round(ours / tokens, 1), "exbert_bytes_per_token_all_layers": round(ex_all / tokens, 1),
            "exbert_bytes_per_token_same_layers": round(ex_same_layers / tokens, 1),
            "ratio_vs_exbert_same_layers": round(ours / ex_same_layers, 4),
        })
    return {"bench": "storage bytes/token", "corpora": rows}


# --- index codes compared (how the defaults were chosen) ------------------------------------------
def codes(args) -> dict:
    """recall@50 vs exact search (every cell visited, so only the codes' error counts), bytes per vector and
    seconds to train + add, for FAISS factory strings on the first ``--vectors`` kept vectors of a layer."""
    import faiss

    from corpus_builder import indexing
    from exbert_hub import corpus_format as cf

    folder = Path(args.folder)
    meta = cf.read_card(folder)
    rows = []
    for by in ("embedding", "heads"):
        src = kept_source(folder, by, args.layer)
        X = np.concatenate([np.asarray(a[: args.vectors], dtype=np.float32) for a in src.arrays])[: args.vectors]
        rng = np.random.default_rng(0)
        q_rows = rng.choice(len(X), size=args.queries, replace=False)
        sets = [("all heads" if by == "heads" else "embedding", X[q_rows])]
        if by == "heads":
            sets.append(("one head", indexing.one_head_queries(X[q_rows], meta["num_heads"], rng)))
        sub = indexing.VectorSource([X])
        truths = [indexing.without_self(indexing.exact_topk(sub, q, 51), q_rows, 50) for _, q in sets]
        for factory in args.factories.split(";"):
            index = faiss.index_factory(X.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
            t0 = time.perf_counter()
            index.train(X[:65536])
            index.add(X)
            seconds = time.perf_counter() - t0
            ivf = faiss.extract_index_ivf(index)
            ivf.nprobe = ivf.nlist
            row = {"by": by, "factory": factory, "vectors": len(X), "bytes_per_vector": round(len(faiss.serialize_index(index)) / len(X)),
                   "train_add_seconds": round(seconds, 2)}
            for (name, q), truth in zip(sets, truths):
                _, found = index.search(q, 51)
                row[f"recall_at_50 {name}"] = round(indexing.recall(indexing.without_self(found, q_rows, 50), truth), 3)
            rows.append(row)
            print(json.dumps(row), flush=True)
    return {"bench": "index codes", "corpus": str(folder), "layer": args.layer, "rows": rows}


# --- 3. search at scale ----------------------------------------------------------------------------
def kept_source(folder: Path, by: str, layer: int):
    from corpus_builder import indexing
    from exbert_hub import corpus_format as cf

    files = sorted((folder / cf.kept_vectors_dir(by, layer)).glob("shard-*.npy"))
    if not files:
        raise SystemExit(f"{folder} has no kept vectors for {by} layer {layer}: build with --keep-vectors")
    return indexing.VectorSource([np.load(f, mmap_mode="r") for f in files])


def reindex(args) -> dict:
    """Rebuild the compressed indexes of a corpus built with --keep-vectors (same code as the builder)
    and update its card: used after changing the index defaults, without recomputing 1M vectors."""
    import yaml

    from corpus_builder import builder, indexing
    from exbert_hub import corpus_format as cf

    folder = Path(args.folder)
    meta = cf.read_card(folder)
    for by in cf.KINDS:
        for layer in meta["layers"]:
            src = kept_source(folder, by, layer)
            stats = indexing.build_index(folder, by, layer, src.arrays, num_heads=meta["num_heads"],
                                         factory=args.factory, recall_queries=args.recall_queries)
            meta["indexes"][by][layer] = stats
            print(json.dumps({"by": by, "layer": layer, **stats}), flush=True)
    text = (folder / cf.CARD_FILE).read_text()
    header = yaml.safe_load(text.split("---")[1])
    extra = {k: v for k, v in header.items() if k not in ("configs", cf.CARD_KEY)}
    cf.write_card(folder, meta, builder._card_body(meta), extra_yaml=extra)
    return {"bench": "reindex", "corpus": str(folder), "indexes": meta["indexes"]}


def live_queries(engine, n: int, rng) -> list:
    """Analyses of sentences NOT in the docstring corpus: prose of the Python language reference."""
    import re

    from corpus_builder.sources import _python_docs

    sentences = [s.strip() for d in _python_docs() for s in re.split(r"(?<=[.!?])\s+", d)
                 if 6 <= len(s.split()) <= 40]
    picks = rng.choice(len(sentences), size=n, replace=False)
    return [engine.analyze(sentences[int(i)]) for i in picks]


def search(args) -> dict:
    """Median/p99 latency of top-50 searches and recall@50 vs exact, at >= 1M vectors.

    Queries are LIVE: sentences that are not in the corpus (Python language reference) run through
    engine.analyze, one random non-special token each, searched through Corpus.search (the whole API
    path, hits with their sentences and spaCy tokens) and through the bare FAISS index. Exact top-50 is
    brute force over the kept float16 vectors (--keep-vectors). nprobe: the card's, then 2x and 4x."""
    import faiss

    import exbert_hub
    from corpus_builder import indexing
    from exbert_hub.corpus import load_corpus

    folder = Path(args.folder)
    engine = exbert_hub.load(MINILM)
    corpus = load_corpus(str(folder), model=MINILM)
    meta = corpus.meta
    rng = np.random.default_rng(args.seed)
    results = {"bench": "search at scale", "corpus": str(folder), "vectors": meta["counts"]["vectors"],
               "tokens": meta["counts"]["tokens"], "faiss_threads": faiss.omp_get_max_threads(),
               "load_avg_before": load_avg(), "queries": args.queries, "cases": []}
    analyses = live_queries(engine, args.queries, rng)
    picks = [int(rng.integers(1, len(a.tokens) - 1)) for a in analyses]
    for layer in meta["layers"]:
        for by, heads_mode in (("embedding", None), ("heads", None), ("heads", "one")):
            info = meta["indexes"][by][layer]
            index = corpus._index(by, layer)
            ivf = faiss.extract_index_ivf(index)
            source = kept_source(folder, by, layer)
            qs, heads_used = [], []
            for a, tok in zip(analyses, picks):
                heads = None if heads_mode is None else [int(rng.integers(0, corpus.num_heads))]
                q, n_heads = corpus.query_vector(a, tok, layer, by, heads)
                qs.append(q)
                heads_used.append(heads)
            qs = np.stack(qs).astype(np.float32)
            truth = indexing.exact_topk(source, qs, 50)
            base = int(info["nprobe_one_head"] if heads_mode else info["nprobe"])
            for nprobe in sorted({base, min(ivf.nlist, base * 2), min(ivf.nlist, base * 4)}):
                ivf.nprobe = nprobe  # (SearchParametersIVF would not pass through the embedding's rotation)
                faiss_ms, found = [], []
                for q in qs:
                    t0 = time.perf_counter()
                    _, rows = index.search(q[None], 50)
                    faiss_ms.append((time.perf_counter() - t0) * 1000)
                    found.append(rows[0])
                case = {"layer": layer, "by": by, "heads": ("one" if heads_mode else "all") if by == "heads" else None,
                        "index": info.get("factory"), "nprobe": nprobe, "card_nprobe": nprobe == base,
                        "faiss_median_ms": round(statistics.median(faiss_ms), 2),
                        "faiss_p99_ms": round(float(np.percentile(faiss_ms, 99)), 2),
                        "recall_at_50": round(indexing.recall(np.stack(found), truth), 4)}
                if nprobe == base:  # the whole API path at the card's setting
                    ivf.nprobe = int(info["nprobe"])
                    api_ms = []
                    for a, tok, heads in zip(analyses, picks, heads_used):
                        t0 = time.perf_counter()
                        corpus.search(a, token=tok, layer=layer, by=by, heads=heads, k=50)
                        api_ms.append((time.perf_counter() - t0) * 1000)
                    case.update(api_median_ms=round(statistics.median(api_ms), 2),
                                api_p99_ms=round(float(np.percentile(api_ms, 99)), 2),
                                card_recall_at_50=info.get("recall_at_50_one_head" if heads_mode else "recall_at_50"))
                results["cases"].append(case)
                print(json.dumps(case), flush=True)
    results["load_avg_after"] = load_avg()
    return results


def vectors1m(args) -> dict:
    """>= 1M real MiniLM token vectors of layers 1 and 4 (unit embeddings, per-head unit contexts, float16)
    for ``heads``, without spaCy: the docstrings text split at sentence ends, repeats dropped, specials not
    kept, the builder's own batched path (``VectorRunner``) and normalisations; 4,096 sentences per shard."""
    import re

    import exbert_hub
    from corpus_builder import vectors

    out = Path(args.out)
    engine = exbert_hub.load(MINILM)
    layers = [1, 4]
    runner = vectors.VectorRunner(engine, layers)
    text = Path(args.text).read_text(encoding="utf-8")
    sents = list(dict.fromkeys(s.strip() for p in text.split("\n\n") for s in re.split(r"(?<=[.!?])\s+", p)
                               if len(s.split()) >= 3))
    n, shard, t0 = 0, 0, time.perf_counter()
    for start in range(0, len(sents), 4096):
        enc = sorted((e for e in vectors.encode(engine, sents[start:start + 4096]) if len(e.ids) <= 128), key=len)
        parts = {(k, l): [] for k in ("embedding", "heads") for l in layers}
        for b in range(0, len(enc), 32):
            batch = enc[b:b + 32]
            for e, v in zip(batch, runner.run(batch, [""] * len(batch))):
                real = ~np.asarray(e.special)
                for p, l in enumerate(layers):
                    parts[("embedding", l)].append(v.hidden[p][real])
                    parts[("heads", l)].append(v.contexts[p][real])
        for (kind, l), chunks in parts.items():
            x = np.concatenate(chunks)
            x = vectors.normalise_embedding(x) if kind == "embedding" else vectors.normalise_heads(x, engine.num_heads)
            d = out / f"{kind}-layer{l:02d}"
            d.mkdir(parents=True, exist_ok=True)
            np.save(d / f"shard-{shard:05d}.npy", x.astype(np.float16))
        n += sum(len(c) for c in parts[("embedding", layers[0])])
        shard += 1
        print(json.dumps({"shard": shard, "vectors": n, "seconds": round(time.perf_counter() - t0, 1)}), flush=True)
        if n >= args.vectors:
            break
    return {"bench": "vectors1m", "out": str(out), "vectors": n, "shards": shard}


def _timed(fn, queries) -> tuple[list[float], np.ndarray]:
    """(milliseconds per query, int64[q, 50] rows found), one query at a time."""
    ms, found = [], []
    for q in queries:
        t = time.perf_counter()
        r = fn(q)
        ms.append((time.perf_counter() - t) * 1000)
        found.append(r)
    return ms, np.stack(found)


def heads_at_scale(args) -> dict:
    """Embedding, one-head, three-head and all-heads search at >= 1M real vectors, beside exact search.

    ``--vectors DIR``: float16 unit vectors in ``DIR/{heads,embedding}-layerNN/shard-*.npy`` (a corpus's kept
    vectors/ folder, or bench/out/vec1m from ``vectors1m``). The first ``--n`` rows are indexed with the
    builder's own code (``indexing.build_index``: per-head cells + 10-bit per-head codes for heads, format 2;
    IVF + RaBitQ5 for embeddings; nprobe tuned on corpus rows); queries are the next rows (tokens of sentences
    NOT indexed), each with 1 or 3 random heads kept or all, searched one at a time through the reader's own
    path (``HeadCodes.search`` with the card's nprobe, as ``Corpus._search``; the FAISS index for embeddings).
    Exact: brute force (faiss.knn) over the same float16 vectors, timed in the same run. Bytes: the files
    the index wrote, on disk."""
    import shutil
    import tempfile

    import faiss

    from corpus_builder import indexing
    from exbert_hub import corpus as corpus_mod

    layer = args.layer

    def rows_of(kind):
        files = sorted((Path(args.vectors) / f"{kind}-layer{layer:02d}").glob("shard-*.npy"))
        X = np.concatenate([np.load(f, mmap_mode="r") for f in files])
        return X[: args.n], np.asarray(X[args.n: args.n + args.queries], dtype=np.float32)

    H = args.heads
    folder = Path(tempfile.mkdtemp(prefix="heads-bench-", dir=ROOT / "bench/out"))
    out = {"bench": "search at scale (format 2)", "layer": layer, "faiss_threads": faiss.omp_get_max_threads(),
           "load_avg_before": load_avg(), "cases": []}
    base, Q = rows_of("heads")
    t0 = time.perf_counter()
    stats = indexing.build_index(folder, "heads", layer, [base], num_heads=H, recall_queries=args.recall_queries)
    out.update(vectors=len(base), heads_build_seconds=round(time.perf_counter() - t0, 1),
               heads_card={k: v for k, v in stats.items() if k != "head_cells"}, heads_card_head_cells=stats["head_cells"])
    hc = stats["head_cells"]
    files = {f: (folder / f).stat().st_size for f in hc["files"]}
    out["heads_bytes_per_vector"] = {Path(f).name: round(b / len(base), 2) for f, b in files.items()}
    out["heads_bytes_per_vector"]["total"] = round(sum(files.values()) / len(base), 2)
    hk = hc["codes"]
    codes = corpus_mod.HeadCodes(np.load(folder / hc["centroids"]), np.load(folder / hc["cells"]),
                                 np.load(folder / hk["quant"]), np.load(folder / hk["codes"], mmap_mode="r"),
                                 np.load(folder / hk["refine"], mmap_mode="r"),
                                 (np.load(folder / hc["coarse"]["centroids"]), np.load(folder / hc["coarse"]["cells"])))
    t0 = time.perf_counter()
    for h in range(H):
        codes.ivf(h)
    t1 = time.perf_counter()
    codes.coarse_ivf()
    out["heads_first_use_seconds"] = {"per_head_lists": round(t1 - t0, 2), "coarse_ivf": round(time.perf_counter() - t1, 2)}
    sizes = np.bincount(np.asarray(codes.coarse[1], dtype=np.int64), minlength=hc["coarse"]["nlist"])
    out["coarse_cell_sizes"] = {"mean": round(float(sizes.mean()), 1), "max": int(sizes.max()),
                                "largest_10_percent_hold": round(float(np.sort(sizes)[-len(sizes) // 10:].sum() / sizes.sum()), 3)}
    rng = np.random.default_rng(args.seed)
    base32 = np.asarray(base, dtype=np.float32)
    exact = lambda q: faiss.knn(q[None], base32, 50, metric=faiss.METRIC_INNER_PRODUCT)[1][0]  # noqa: E731
    for m in (1, 3, H):
        if m == H:
            qs, kept = Q, [list(range(H))] * len(Q)
        else:
            qs, kept = indexing.few_head_queries(Q, H, m, rng)
        exact_ms, truth = _timed(exact, qs)
        nprobe = corpus_mod.head_codes_nprobe(stats, m)
        it = iter(kept)
        ms, found = _timed(lambda q: codes.search(q, next(it), nprobe, 50)[1], qs)
        where = f"{nprobe} of {hc['cells_per_head']} per head" if m <= corpus_mod.HEAD_CELLS_MAX_HEADS \
            else f"{nprobe} of {hc['coarse']['nlist']} coarse cells"
        case = {"by": "heads", "heads": m, "path": "per-head codes", "nprobe": where,
                "median_ms": round(statistics.median(ms), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2),
                "recall_at_50": round(indexing.recall(found, truth), 4), "exact_median_ms": round(statistics.median(exact_ms), 2),
                "card_recall_at_50": hc["recall_at_50"].get(str(m)), "load_avg": load_avg()}
        out["cases"].append(case)
        print(json.dumps(case), flush=True)
    del base32
    if args.embedding:
        ebase, EQ = rows_of("embedding")
        t0 = time.perf_counter()
        est = indexing.build_index(folder, "embedding", layer, [ebase], num_heads=H, recall_queries=args.recall_queries)
        out["embedding_build_seconds"] = round(time.perf_counter() - t0, 1)
        out["embedding_card"] = est
        out["embedding_bytes_per_vector"] = round((folder / est["file"]).stat().st_size / len(ebase), 2)
        index = faiss.read_index(str(folder / est["file"]))
        ivf = faiss.extract_index_ivf(index)
        ivf.nprobe, ivf.parallel_mode = int(est["nprobe"]), 1  # as the reader opens it
        e32 = np.asarray(ebase, dtype=np.float32)
        exact_ms, truth = _timed(lambda q: faiss.knn(q[None], e32, 50, metric=faiss.METRIC_INNER_PRODUCT)[1][0], EQ)
        ms, found = _timed(lambda q: index.search(q[None], 50)[1][0], EQ)
        ivf.parallel_mode = 0  # one thread per query, for comparison (the reader's is 1)
        ms0, _ = _timed(lambda q: index.search(q[None], 50)[1][0], EQ)
        case = {"by": "embedding", "path": est["factory"], "nprobe": est["nprobe"],
                "median_ms": round(statistics.median(ms), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2),
                "one_thread_median_ms": round(statistics.median(ms0), 2),
                "recall_at_50": round(indexing.recall(found, truth), 4), "exact_median_ms": round(statistics.median(exact_ms), 2),
                "card_recall_at_50": est["recall_at_50"], "load_avg": load_avg()}
        out["cases"].append(case)
        print(json.dumps(case), flush=True)
    out["load_avg_after"] = load_avg()
    if not args.keep:
        shutil.rmtree(folder, ignore_errors=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("docstrings")
    d.add_argument("--out", default=str(ROOT / "bench/out/docstrings.txt"))
    t = sub.add_parser("throughput")
    t.add_argument("--model", default=MINILM, help='a model name, or "bert-base-random"')
    t.add_argument("--source", default="builtin:python-docs")
    t.add_argument("--sentences", type=int, default=3000)
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--workers", type=int, default=1)
    t.add_argument("--repeats", type=int, default=3)
    t.add_argument("--out", default=str(ROOT / "bench/out/corpus-throughput"))
    t.add_argument("--two-pass", action="store_true", help="vector files + indexes after the shards (the old way)")
    s = sub.add_parser("storage")
    s.add_argument("folders", nargs="+")
    r = sub.add_parser("reindex")
    r.add_argument("folder")
    r.add_argument("--factory", default=None)
    r.add_argument("--recall-queries", type=int, default=400)
    o = sub.add_parser("overlap")
    o.add_argument("folder")
    o.add_argument("--batch-size", type=int, default=32)
    c = sub.add_parser("codes")
    c.add_argument("folder")
    c.add_argument("--layer", type=int, default=4)
    c.add_argument("--vectors", type=int, default=50_000)
    c.add_argument("--queries", type=int, default=200)
    c.add_argument("--factories", default="IVF64,RaBitQ5;IVF64,RaBitQ4;IVF64,SQ6;RR384,IVF64,SQ6;IVF64,SQ4;IVF64,SQ8")
    q = sub.add_parser("search")
    q.add_argument("folder")
    q.add_argument("--queries", type=int, default=300)
    q.add_argument("--seed", type=int, default=0)
    v = sub.add_parser("vectors1m")
    v.add_argument("--text", default=str(ROOT / "bench/out/docstrings.txt"))
    v.add_argument("--out", default=str(ROOT / "bench/out/vec1m"))
    v.add_argument("--vectors", type=int, default=1_050_000)
    hs = sub.add_parser("heads")
    hs.add_argument("--vectors", default=str(ROOT / "bench/out/vec1m"))
    hs.add_argument("--layer", type=int, default=1)
    hs.add_argument("--n", type=int, default=1_000_000)
    hs.add_argument("--heads", type=int, default=12)
    hs.add_argument("--queries", type=int, default=200)
    hs.add_argument("--recall-queries", type=int, default=200)
    hs.add_argument("--seed", type=int, default=0)
    hs.add_argument("--embedding", action="store_true", help="also the embedding index of the same layer and rows")
    hs.add_argument("--keep", action="store_true")
    args = p.parse_args()
    if args.cmd == "docstrings":
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        result = docstrings(Path(args.out))
    elif args.cmd == "throughput":
        result = throughput(args)
    elif args.cmd == "storage":
        result = storage(args)
    elif args.cmd == "reindex":
        result = reindex(args)
    elif args.cmd == "overlap":
        result = overlap(args)
    elif args.cmd == "codes":
        result = codes(args)
    elif args.cmd == "vectors1m":
        result = vectors1m(args)
    elif args.cmd == "heads":
        result = heads_at_scale(args)
    else:
        result = search(args)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
