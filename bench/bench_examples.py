"""analyze_examples overhead, bytes kept, and projection times (issue 9), side by side in one run.

    HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false .venv/bin/python bench/bench_examples.py [--examples 1000]

1. 1,000 English sentences of ~30 tokens (from CPython's own documentation, pydoc_data) on the packaged
   MiniLM. Reference: the bare batched forward passes of the SAME batches (``BatchRunner.forward``:
   ``model(**inputs, output_hidden_states=True)`` under inference_mode, padded inputs already built).
   Measured: ``analyze_examples(spacy=None)`` (forward with attentions + head statistics + kept rows) and
   ``analyze_examples()`` with spaCy (POS/DEP/entity and grammar correlation; spaCy in its worker
   process beside the model, the default) and, for comparison, with spaCy in this process first
   (``spacy_process=False``). Runs alternate (bare, analyze, bare, analyze...) and the ratio of medians
   is reported. Target <= 1.3.
2. Bytes kept per example (``ExamplesAnalysis.nbytes`` / E) and on disk (the cache folder / E).
3. Projections of 20,000 tracked tokens per layer: PCA on every layer (target <= 1 s per layer),
   UMAP and t-SNE on ``--slow-layers`` layers (each started from the previous one), and the time to
   reopen a cached projection.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import exbert_hub  # noqa: E402
from exbert_hub import batching  # noqa: E402
from exbert_hub.analyses import projections  # noqa: E402
from exbert_hub.examples import analyze_examples, load_examples  # noqa: E402


def sentences(tokenizer, n: int, lo: int = 20, hi: int = 42) -> list[str]:
    """``n`` distinct sentences of lo..hi tokens (specials included) from pydoc_data's English prose."""
    from pydoc_data.topics import topics

    text = " ".join(topics[k] for k in sorted(topics))
    cands = [s.strip() for s in re.split(r"(?<=[.!?])\s+", re.sub(r"\s+", " ", text))]
    cands = [s for s in dict.fromkeys(cands) if 60 < len(s) < 400 and sum(c.isalpha() for c in s) > 0.7 * len(s)]
    lengths = [len(x) for x in tokenizer(cands)["input_ids"]]
    keep = [s for s, m in zip(cands, lengths) if lo <= m <= hi]
    if len(keep) < n:
        raise SystemExit(f"only {len(keep)} sentences of {lo}-{hi} tokens")
    return keep[:n]


def bare(runner, encoded, plan) -> float:
    ins = [runner.inputs([encoded[i] for i in b])[0] for b in plan]
    t = time.perf_counter()
    for x in ins:
        runner.forward(x)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--examples", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-tokens", type=int, default=4096)
    ap.add_argument("--points", type=int, default=20_000)
    ap.add_argument("--slow-layers", type=int, default=2, help="layers projected with UMAP and t-SNE")
    ap.add_argument("--part", choices=["all", "analyze", "projections"], default="all")
    args = ap.parse_args()

    engine = exbert_hub.load("sentence-transformers/all-MiniLM-L6-v2")
    texts = sentences(engine.tokenizer, args.examples)
    ex = load_examples(texts, limit=max(args.examples, 2000))
    encoded = batching.encode(engine, ex.texts)
    plan = batching.plan_batches([len(e) for e in encoded], args.batch_tokens)
    runner = batching.BatchRunner(engine)
    tokens = sum(len(e) for e in encoded)
    print(f"{len(ex)} examples, {tokens} tokens ({tokens / len(ex):.1f} per example), {len(plan)} batches "
          f"of <= {args.batch_tokens} padded tokens")
    analyze_examples(engine, load_examples(texts[:50]), progress=False)  # warm up (spaCy load, first passes)
    bare(runner, encoded, plan)

    t_bare, t_plain, t_spacy, t_inline = [], [], [], []
    for _ in range(args.repeats if args.part != "projections" else 0):
        t_bare.append(bare(runner, encoded, plan))
        t = time.perf_counter()
        analyze_examples(engine, ex, progress=False, spacy=None, batch_tokens=args.batch_tokens)
        t_plain.append(time.perf_counter() - t)
        t_bare.append(bare(runner, encoded, plan))
        t = time.perf_counter()
        analyze_examples(engine, ex, progress=False, batch_tokens=args.batch_tokens)
        t_spacy.append(time.perf_counter() - t)
        t = time.perf_counter()
        analyze_examples(engine, ex, progress=False, batch_tokens=args.batch_tokens, spacy_process=False)
        t_inline.append(time.perf_counter() - t)
    if args.part != "projections":
        report(t_bare, t_plain, t_spacy, t_inline)
    if args.part != "analyze":
        kept_and_projections(engine, ex, args)


def report(t_bare, t_plain, t_spacy, t_inline) -> None:
    b = statistics.median(t_bare)
    print(f"bare batched forward passes: median {b:.2f} s ({', '.join(f'{x:.2f}' for x in t_bare)})")
    print(f"analyze_examples(spacy=None): median {statistics.median(t_plain):.2f} s -> ratio {statistics.median(t_plain) / b:.2f}")
    print(f"analyze_examples() with spaCy (worker process): median {statistics.median(t_spacy):.2f} s -> ratio "
          f"{statistics.median(t_spacy) / b:.2f}")
    print(f"analyze_examples(spacy_process=False) (spaCy here first): median {statistics.median(t_inline):.2f} s -> ratio "
          f"{statistics.median(t_inline) / b:.2f}")
    print(f"  best of each (the machine's other load hits every run differently): bare {min(t_bare):.2f} s, "
          f"spacy=None {min(t_plain):.2f} s -> {min(t_plain) / min(t_bare):.2f}, spaCy {min(t_spacy):.2f} s -> "
          f"{min(t_spacy) / min(t_bare):.2f}, spaCy here {min(t_inline):.2f} s -> {min(t_inline) / min(t_bare):.2f}")
    # the machine's load drifts over minutes: each analyze run over the bare run just before it
    pairs = [(p / t_bare[2 * i], s / t_bare[2 * i + 1], n / t_bare[2 * i + 1])
             for i, (p, s, n) in enumerate(zip(t_plain, t_spacy, t_inline))]
    print("  paired ratios (analyze / the bare passes just before), median: spacy=None "
          f"{statistics.median(x[0] for x in pairs):.2f}, spaCy worker {statistics.median(x[1] for x in pairs):.2f}, "
          f"spaCy here {statistics.median(x[2] for x in pairs):.2f}")
    print(f"  runs: spacy=None {', '.join(f'{x:.2f}' for x in t_plain)}; spaCy {', '.join(f'{x:.2f}' for x in t_spacy)}; "
          f"spaCy here {', '.join(f'{x:.2f}' for x in t_inline)}")


def kept_and_projections(engine, ex, args) -> None:
    cache = Path(tempfile.mkdtemp(prefix="bench-examples-"))
    try:
        t = time.perf_counter()
        r = analyze_examples(engine, ex, progress=False, cache_dir=cache, batch_tokens=args.batch_tokens)
        t_first = time.perf_counter() - t
        t = time.perf_counter()
        again = analyze_examples(engine, ex, progress=False, cache_dir=cache)
        t_reopen = time.perf_counter() - t
        disk = sum(f.stat().st_size for f in cache.rglob("*") if f.is_file())
        print(f"kept: {r.nbytes / len(ex) / 1e3:.1f} kB per example in memory ({r.num_rows} rows x {r.hidden.shape[0]} layers "
              f"x {r.hidden.shape[2]} float32 = {r.hidden.nbytes / len(ex) / 1e3:.1f} kB of hidden states); "
              f"{disk / len(ex) / 1e3:.1f} kB per example on disk")
        print(f"cache: first run {t_first:.2f} s, reopened in {t_reopen * 1e3:.1f} ms (from_cache={again.from_cache})")

        n = min(args.points, r.num_rows)
        pts = np.ascontiguousarray(r.hidden[:, :n])
        t = time.perf_counter()
        projections.project_layers(pts, "pca")
        t_pca = (time.perf_counter() - t) / pts.shape[0]
        print(f"PCA of {n} points: {t_pca:.3f} s per layer (aligned, {pts.shape[0]} layers)")
        k = max(0, min(args.slow_layers, pts.shape[0]))
        for method in ("umap", "tsne") if k else ():
            times = []
            t = time.perf_counter()
            projections.project_layers(pts[:k], method, n_jobs=2, progress=lambda _l: times.append(time.perf_counter()))
            per = np.diff([t] + times)
            print(f"{method} of {n} points: {', '.join(f'{x:.1f}' for x in per)} s for layers 0..{k - 1} "
                  "(the first includes the import / numba compilation)")
        sub = type(r)(**{**r.__dict__, "hidden": pts, "_projections": {}})
        t = time.perf_counter()
        sub.projection("pca")
        t_make = time.perf_counter() - t
        sub._projections.clear()
        t = time.perf_counter()
        sub.projection("pca")
        print(f"cached projection: computed and saved in {t_make:.2f} s, reopened from disk in "
              f"{(time.perf_counter() - t) * 1e3:.1f} ms (any method: the same .npy of float32[layers, N, 2])")
    finally:
        shutil.rmtree(cache, ignore_errors=True)


if __name__ == "__main__":
    main()
