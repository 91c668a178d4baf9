"""The builder's shard stage on a Ray cluster, with Ray Data: read -> spaCy -> the model -> shards.

``python -m corpus_builder build ... --ray [ADDRESS]`` (``BuildSettings.ray``). The driver reads the source
and cuts it into the same shards as a local build (``builder._shards``); Ray Data runs, per shard,

1. spaCy in ``map_batches`` (an actor pool of its own: ``annotate.annotate``, the function a local build's spaCy worker runs),
2. the model in an actor pool (``ActorPoolStrategy``, one actor per GPU or per ``ray_cpus_per_actor``
   CPUs): every sentence is encoded and, when it fits ``max_tokens``, run through the same batched path
   (``builder.forward`` over ``vectors.VectorRunner``), checked against ``engine.analyze`` on each actor's
   first shard (``builder.check_batched``),

and hands the shards back in order (``preserve_order``). The driver then does what is sequential by nature,
with the local build's own code (``Builder._shard_stage``): leaving out sentences seen in earlier shards,
the --max-sentences cap, the running sentence/token/vector numbers, the parquet shards and the streamed
index codes, each shard's done marker. So the corpus equals the local build's (vectors within float32
rounding: padding differs with the batches), and a killed driver resumes like a local build: finished
shards are skipped and not sent to the cluster again.

The source is read WINDOW shards at a time (the driver's memory stays bounded, and a capped build does not
read the whole source); each window is one Ray Data pipeline, so the actors load the model once per window.
"""

from __future__ import annotations

import itertools
import logging
import os
import pickle
import time
from typing import Iterator

import numpy as np

from exbert_hub import batching

from . import annotate, vectors
from .builder import Builder, BuildError, ShardWork, _shards, check_batched, forward

log = logging.getLogger(__name__)

WINDOW = 256  # shards per Ray Data pipeline (at 50,000 characters a shard: ~13 MB of text in the driver)


def _pack(obj) -> bytes:
    return pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)


class SpacyActor:
    """Ray Data stage 1: each row's documents (pickled [(number, text)]) -> pickled spaCy sentences.

    An actor pool of its own (not tasks): Ray would fuse a task stage into the model's actors, and spaCy
    would then wait for the model instead of running beside it; an actor also loads the pipeline once."""

    def __init__(self, spacy: str, min_words: int):
        self.spacy, self.min_words = spacy, min_words
        annotate.load_pipeline(spacy)

    def __call__(self, batch: dict) -> dict:
        sents, seconds = [], []
        for blob in batch["docs"]:
            t0 = time.time()
            sents.append(_pack(annotate.annotate(self.spacy, pickle.loads(blob), self.min_words)))
            seconds.append(time.time() - t0)
        return {"shard": batch["shard"], "seconds_spacy": np.asarray(seconds, dtype=np.float64),
                "sents": np.asarray(sents, dtype=object)}


class ModelActor:
    """Ray Data stage 2: one model per actor; each row's sentences -> their encodings and vectors."""

    def __init__(self, model: str, layers: list[int], max_tokens: int, batch_size: int, threads: int):
        import torch

        import exbert_hub

        torch.set_num_threads(max(1, threads))
        self.engine = exbert_hub.load(model)
        self.runner = vectors.VectorRunner(self.engine, layers, concurrent=True)
        self.streams = batching.Streams.for_engine(self.engine, max(1, threads))  # (the local build's reason)
        self.max_tokens, self.batch_size = max_tokens, batch_size
        self.checked = False

    def __call__(self, batch: dict) -> dict:
        import torch

        results = []
        for blob in batch["sents"]:
            sents: list[annotate.Sentence] = pickle.loads(blob)
            t0 = time.time()
            check = None
            if not self.checked and sents:
                check = check_batched(self.engine, self.runner, [s.text for s in sents], self.max_tokens)
                self.checked = True
            encoded = vectors.encode(self.engine, [s.text for s in sents]) if sents else []
            fits = [i for i, e in enumerate(encoded) if len(e.ids) <= self.max_tokens]
            vecs = forward(self.runner, [encoded[i] for i in fits], [sents[i].text for i in fits], self.batch_size,
                           self.streams).result()
            results.append(_pack({
                "sents": sents, "encoded": encoded, "vectors": dict(zip(fits, vecs)),
                "seconds_model": time.time() - t0, "threads": torch.get_num_threads() if self.streams is None else self.streams.threads, "batch_check": check,
                "fallback_reason": None if self.runner.batched else self.runner.fallback_reason}))
        return {"shard": batch["shard"], "seconds_spacy": batch["seconds_spacy"],
                "result": np.asarray(results, dtype=object)}


def _connect(settings) -> bool:
    """Connect to (or start) the cluster; True when this call started it (and so shuts it down)."""
    try:
        import ray
    except ImportError:
        raise BuildError("--ray needs Ray Data: pip install 'exbert-hub[ray]' (or pip install 'ray[data]')") from None
    if ray.is_initialized():
        return False
    quiet = dict(logging_level=logging.WARNING, log_to_driver=settings.progress)
    try:
        if settings.ray in ("", "local"):
            ray.init(num_cpus=settings.ray_num_cpus or os.cpu_count(), include_dashboard=False,
                     object_store_memory=settings.ray_object_store_memory, **quiet)
        else:
            _reachable(settings.ray)
            ray.init(address=settings.ray, **quiet)
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise BuildError(f"--ray {settings.ray}: could not connect to the Ray cluster ({str(err).splitlines()[0]}); "
                         "give the head's address (e.g. ray://head:10001 or head:6379), or --ray alone for a local cluster") from None
    return True


def _reachable(address: str) -> None:
    """Fail at once on a head that does not answer (ray.init would retry for minutes)."""
    import socket

    hostport = address.split("://", 1)[-1]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        return  # "auto" and other forms: Ray resolves them
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as err:
        raise ConnectionError(f"nothing answers at {hostport}: {err}") from None


def pool(settings) -> tuple[int, float, float, int]:
    """(model actors, GPUs per actor, CPUs per actor, spaCy actors) for the running cluster."""
    import ray

    resources = ray.cluster_resources()
    gpus_total, cpus_total = float(resources.get("GPU", 0)), float(resources.get("CPU", 1))
    gpus = settings.ray_gpus_per_actor if settings.ray_gpus_per_actor is not None else (1.0 if gpus_total else 0.0)
    cpus = max(0.0, float(settings.ray_cpus_per_actor))
    if settings.ray_actors:
        actors = int(settings.ray_actors)
    elif gpus > 0:
        actors = max(1, int(gpus_total // gpus))
    else:  # half the CPUs for the model, the rest for spaCy (it costs about as much as a small model)
        actors = max(1, int(cpus_total // 2 // max(cpus, 1.0)))
    if actors < 1:
        raise BuildError(f"--ray-actors must be at least 1, got {settings.ray_actors}")
    if gpus > gpus_total:
        raise BuildError(f"--ray-gpus-per-actor {gpus:g}: the cluster has {gpus_total:g} GPUs")
    # spaCy (one CPU each) on the CPUs the model actors leave
    spacy_actors = settings.ray_spacy_actors or max(1, int(cpus_total - actors * cpus))
    return actors, gpus, cpus, spacy_actors


def ray_works(b: Builder, done: dict[int, dict]) -> Iterator[ShardWork]:
    """The shards of ``b``'s source, in order, computed on the Ray cluster (finished ones are not sent)."""
    import ray

    s = b.s
    started = _connect(s)
    rows = None
    try:
        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True  # the driver numbers sentences in shard order
        ctx.enable_progress_bars = s.progress
        actors, gpus, cpus, spacy_actors = pool(s)
        log.info("Ray: %d model actors (%g GPUs, %g CPUs each), %d spaCy actors", actors, gpus, cpus, spacy_actors)
        shard_iter = _shards(b.source.documents(), b.shard_chars)
        while True:
            window = list(itertools.islice(shard_iter, WINDOW))
            if not window:
                break
            todo = [{"shard": n, "docs": _pack(docs)} for n, docs in window if n not in done]
            rows = iter(())
            if todo:
                ds = ray.data.from_items(todo, override_num_blocks=len(todo))
                ds = ds.map_batches(SpacyActor, batch_size=1, num_cpus=1,
                                    compute=ray.data.ActorPoolStrategy(size=min(spacy_actors, len(todo))),
                                    fn_constructor_kwargs={"spacy": s.spacy, "min_words": s.min_words})
                ds = ds.map_batches(ModelActor, batch_size=1, compute=ray.data.ActorPoolStrategy(size=min(actors, len(todo))),
                                    num_gpus=gpus, num_cpus=cpus,
                                    fn_constructor_kwargs={"model": s.model, "layers": b.layers, "max_tokens": b.max_tokens,
                                                           "batch_size": s.batch_size, "threads": max(1, int(cpus))})
                rows = ds.iter_rows().__iter__()
            for n, docs in window:
                if n in done:
                    yield ShardWork(n, len(docs))
                    continue
                row = next(rows)
                if int(row["shard"]) != n:  # preserve_order is what makes the corpus equal the local one
                    raise RuntimeError(f"Ray returned shard {row['shard']} where shard {n} was expected")
                r = pickle.loads(row["result"])
                by_index = r["vectors"]
                yield ShardWork(n, len(docs), r["sents"], r["encoded"], lambda keep, v=by_index: batching.PendingBatches.done([v[i] for i in keep]),
                                seconds_spacy=float(row["seconds_spacy"]), seconds_model=r["seconds_model"],
                                threads=r["threads"], batch_check=r["batch_check"], fallback_reason=r["fallback_reason"])
    finally:
        close = getattr(rows, "close", None)
        if close is not None:
            close()  # stops the pipeline (a capped build ends early) before the cluster goes
        if started:
            ray.shutdown()
