"""Build throughput on a local Ray cluster vs the local build, as ratios to the bare forward passes.

    HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false .venv/bin/python bench/bench_ray.py --sentences 600
    HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false .venv/bin/python bench/bench_ray.py --sentences 600 --model bert-base-random

One run, same sentences: the local build (spaCy in one worker process beside the model), then
``--ray`` alone (a local cluster of --num-cpus CPUs started inside the build and counted in its time;
default actors: one model actor, spaCy on the CPU left), then the bare forward passes of the corpus's
own batches (bench_corpus.bare_forward_seconds, median of --repeats). Both corpora's tables must be equal.
Prints JSON; bench/RESULTS.md quotes it with the command and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_corpus import bare_forward_seconds, load_avg, throughput_model  # noqa: E402


def _tables(folder: Path) -> dict:
    import pyarrow.parquet as pq

    from exbert_hub import corpus_format as cf

    return {sub: pq.read_table(sorted((folder / sub).glob("*.parquet"))).to_pydict() for sub in (cf.SENTENCES_DIR, cf.TOKENS_DIR)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="sentence-transformers/all-MiniLM-L6-v2", help="or bert-base-random")
    p.add_argument("--source", default="builtin:python-docs")
    p.add_argument("--sentences", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--num-cpus", type=int, default=os.cpu_count())
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=str(ROOT / "bench/out/ray"))
    args = p.parse_args()

    import exbert_hub
    from corpus_builder import build
    from exbert_hub import corpus_format as cf

    model = throughput_model(args.model)
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    common = dict(max_sentences=args.sentences, batch_size=args.batch_size, progress=False)
    result: dict = {"bench": "build throughput, local vs Ray local cluster", "model": args.model, "source": args.source,
                    "cpus": os.cpu_count(), "ray_num_cpus": args.num_cpus, "load_avg_before": load_avg()}
    seconds = {}
    for name, extra in (("local", {"workers": 1}), ("ray", {"ray": "local", "ray_num_cpus": args.num_cpus})):
        t0 = time.perf_counter()
        build(model, args.source, str(out / name), **common, **extra)
        seconds[name] = time.perf_counter() - t0
        result[f"load_avg_after_{name}"] = load_avg()
    assert _tables(out / "local") == _tables(out / "ray"), "the Ray corpus differs from the local one"
    meta = cf.read_card(out / "local")
    engine = exbert_hub.load(model)
    bare = []
    for _ in range(args.repeats):
        s, n = bare_forward_seconds(engine, out / "local", args.batch_size)
        assert n == meta["counts"]["tokens"]
        bare.append(s)
    bare_s = statistics.median(bare)
    ray_card = cf.read_card(out / "ray")
    result.update({
        "sentences": meta["counts"]["sentences"], "tokens": meta["counts"]["tokens"], "tables_equal": True,
        "bare_forward_seconds_runs": [round(x, 2) for x in bare],
        "local_build_seconds": round(seconds["local"], 2), "ray_build_seconds": round(seconds["ray"], 2),
        "local_ratio": round(bare_s / seconds["local"], 3), "ray_ratio": round(bare_s / seconds["ray"], 3),
        "ray_card_timings": {k: ray_card["timings"][k] for k in ("shards_this_run", "indexes_this_run", "total_this_run",
                                                                  "model_forward_all_shards", "spacy_wait_all_shards")},
        "local_card_timings": {k: meta["timings"][k] for k in ("shards_this_run", "indexes_this_run", "total_this_run",
                                                               "model_forward_all_shards", "spacy_wait_all_shards")},
        "load_avg_after": load_avg(),
    })
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
