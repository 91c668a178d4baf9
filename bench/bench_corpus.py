"""Corpus benchmarks: build throughput, storage per token, search at scale.

    # 1. build throughput: whole build vs bare forward passes of the same batches (target >= 0.7)
    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_corpus.py throughput --sentences 3000
    # 2. storage bytes/token vs exBERT's layout for the same model and sentences (target <= 1/8)
    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_corpus.py storage bench/out/corpus-3000 bench/out/docstrings-corpus
    # 3. search at scale: >= 1M real MiniLM token vectors (docstrings of installed packages)
    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_corpus.py docstrings --out bench/out/docstrings.txt
    HF_HUB_OFFLINE=1 .venv/bin/python -m corpus_builder build --model sentence-transformers/all-MiniLM-L6-v2 \
        --source bench/out/docstrings.txt --out bench/out/docstrings-corpus --layers 1,4 --max-sentences 48000 --keep-vectors
    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_corpus.py search bench/out/docstrings-corpus --queries 300

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
            inputs, lengths = runner._inputs(batch)
            t0 = time.perf_counter()
            with torch.inference_mode():
                engine.model(**inputs)
            total += time.perf_counter() - t0
            tokens += sum(lengths)
    return total, tokens


def throughput(args) -> dict:
    import shutil

    import exbert_hub
    from corpus_builder import build
    from exbert_hub import corpus_format as cf

    engine = exbert_hub.load(MINILM)
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    load_before = load_avg()
    t0 = time.perf_counter()
    build(MINILM, args.source, str(out), max_sentences=args.sentences, batch_size=args.batch_size,
          workers=args.workers, progress=False)
    build_s = time.perf_counter() - t0
    meta = cf.read_card(out)
    tokens = meta["counts"]["tokens"]
    bare = []
    for _ in range(args.repeats):
        s, n = bare_forward_seconds(engine, out, args.batch_size)
        assert n == tokens, (n, tokens)
        bare.append(s)
    bare_s = statistics.median(bare)
    return {
        "bench": "build throughput", "model": MINILM, "source": args.source, "sentences": meta["counts"]["sentences"],
        "tokens": tokens, "batch_size": args.batch_size, "workers": args.workers, "build_seconds": round(build_s, 2),
        "build_tokens_per_s": round(tokens / build_s, 1), "bare_forward_seconds_runs": [round(x, 2) for x in bare],
        "bare_tokens_per_s": round(tokens / bare_s, 1), "ratio": round(bare_s / build_s, 3),
        "card_timings": meta["timings"], "index_tier": meta["indexes"]["embedding"][0]["tier"],
        "load_avg_before": load_before, "load_avg_after": load_avg(), "cpus": os.cpu_count(),
    }


# --- 2. storage ----------------------------------------------------------------------------------
def exbert_bytes(folder: Path, meta: dict) -> int:
    """Bytes exBERT's layout takes for the same model and sentences: float32 hidden states of every layer
    (embeddings included), float32 contexts of every layer, float32 attentions [layers, heads, T, T] per sentence."""
    import pyarrow.parquet as pq

    from exbert_hub import corpus_format as cf

    L, H, D = meta["num_layers"], meta["num_heads"], meta["hidden_size"]
    ctx = H * meta["head_dim"]
    n = np.concatenate([pq.read_table(f, columns=["num_tokens"]).column("num_tokens").to_numpy()
                        for f in sorted((folder / cf.SENTENCES_DIR).glob("*.parquet"))]).astype(np.int64)
    per_token = 4 * ((L + 1) * D + L * ctx)
    return int(n.sum() * per_token + 4 * L * H * (n ** 2).sum())


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


# --- 3. search at scale ----------------------------------------------------------------------------
def search(args) -> dict:
    """Median/p99 latency of top-50 searches and recall@50 vs exact, on the corpus's compressed indexes.

    Queries are LIVE: sentences are drawn from the corpus, run through engine.analyze, and a token's
    vector searched with Corpus.search (the full API path incl. building the hits) and with the bare
    FAISS index. Exact top-50 comes from brute force over the kept float16 vectors (--keep-vectors)."""
    import faiss

    import exbert_hub
    from corpus_builder import indexing
    from exbert_hub import corpus_format as cf
    from exbert_hub.corpus import load_corpus

    folder = Path(args.folder)
    engine = exbert_hub.load(MINILM)
    corpus = load_corpus(str(folder), model=MINILM)
    meta = corpus.meta
    rng = np.random.default_rng(args.seed)
    results = {"bench": "search at scale", "corpus": str(folder), "vectors": meta["counts"]["vectors"],
               "tokens": meta["counts"]["tokens"], "faiss_threads": faiss.omp_get_max_threads(),
               "load_avg_before": load_avg(), "cases": []}
    sids = rng.choice(corpus.num_sentences, size=args.queries, replace=False)
    analyses = [engine.analyze(corpus.sentence(int(s))) for s in sids]
    picks = [int(rng.integers(1, len(a.tokens) - 1)) for a in analyses]
    cases = [("embedding", None), ("heads", None), ("heads", "one")]
    for layer in meta["layers"]:
        for by, heads_mode in cases:
            info = meta["indexes"][by][layer]
            kept = sorted((folder / cf.KEPT_VECTORS_DIR).glob(f"*-{by}.npy"))
            pos = meta["layers"].index(layer)
            source = indexing.VectorSource([np.load(p, mmap_mode="r")[pos] for p in kept])
            queries, api_ms, faiss_ms, top1_self = [], [], [], 0
            for a, tok in zip(analyses, picks):
                heads = None if heads_mode is None else [int(rng.integers(0, corpus.num_heads))]
                q, n_heads = corpus.query_vector(a, tok, layer, by, heads)
                queries.append(q)
                index = corpus._index(by, layer)
                t0 = time.perf_counter()
                corpus._search(index, by, layer, q, 50, n_heads)
                faiss_ms.append((time.perf_counter() - t0) * 1000)
                t0 = time.perf_counter()
                hits = corpus.search(a, token=tok, layer=layer, by=by, heads=heads, k=50)
                api_ms.append((time.perf_counter() - t0) * 1000)
                top1_self += int(hits[0].sentence == a.text and hits[0].token_index == tok)
            qs = np.stack(queries).astype(np.float32)
            truth = indexing.exact_topk(source, qs, 50)
            found = np.stack([corpus._search(corpus._index(by, layer), by, layer, q, 50,
                                             1 if heads_mode else corpus.num_heads)[1] for q in qs])
            results["cases"].append({
                "layer": layer, "by": by, "heads": "all" if heads_mode is None and by == "heads" else heads_mode,
                "index": info.get("factory") or "IndexFlatIP", "nprobe": info.get("nprobe_one_head" if heads_mode else "nprobe"),
                "faiss_median_ms": round(statistics.median(faiss_ms), 2),
                "faiss_p99_ms": round(float(np.percentile(faiss_ms, 99)), 2),
                "api_median_ms": round(statistics.median(api_ms), 2), "api_p99_ms": round(float(np.percentile(api_ms, 99)), 2),
                "recall_at_50": round(indexing.recall(found, truth), 4), "queries": len(qs),
                "own_token_first": round(top1_self / len(qs), 3),
                "card_recall_at_50": info.get("recall_at_50_one_head" if heads_mode else "recall_at_50"),
            })
            print(json.dumps(results["cases"][-1]), flush=True)
    results["load_avg_after"] = load_avg()
    return results


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("docstrings")
    d.add_argument("--out", default=str(ROOT / "bench/out/docstrings.txt"))
    t = sub.add_parser("throughput")
    t.add_argument("--source", default="builtin:python-docs")
    t.add_argument("--sentences", type=int, default=3000)
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--workers", type=int, default=1)
    t.add_argument("--repeats", type=int, default=3)
    t.add_argument("--out", default=str(ROOT / "bench/out/corpus-throughput"))
    s = sub.add_parser("storage")
    s.add_argument("folders", nargs="+")
    q = sub.add_parser("search")
    q.add_argument("folder")
    q.add_argument("--queries", type=int, default=300)
    q.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.cmd == "docstrings":
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        result = docstrings(Path(args.out))
    elif args.cmd == "throughput":
        result = throughput(args)
    elif args.cmd == "storage":
        result = storage(args)
    else:
        result = search(args)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
