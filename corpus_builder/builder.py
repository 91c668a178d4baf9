"""Build a corpus folder (a Hugging Face dataset repository) from a text source and a model.

Stages, each resumable after a kill (even SIGKILL):

1. Shards. Documents are grouped into shards of about ``shard_chars`` characters (a deterministic function
   of the source). For each shard, spaCy (in a worker process, overlapping with the model) splits
   sentences and annotates words; the model runs the sentences in length-sorted batches (on a CPU,
   several at once on ``exbert_hub.batching.Streams``, the next shard's queued before this one's tables
   are made); the shard's sentence and token tables go to ``data/`` and its float16 vectors to
   ``.build/vectors/``, each file written under a temporary name and renamed; ``.build/shards/NNNNN.json``
   is written LAST and marks the shard finished. A restarted build skips finished shards and redoes the
   others.
   Once the vectors pass the exact limit and fill a training sample, every compressed index is trained
   on them (``indexing.IndexStream``; ``.build/streaming.json`` marks it done) and from then on each
   shard's vectors go straight to FAISS codes, per-head cells and the exact top-k of the recall queries:
   no vector files, no second pass (``stream_indexes=False``: the two-pass way, vector files first).
   Where spaCy and the model run is the producer's business (``_local_works``: this machine;
   ``ray_build.ray_works``: a Ray cluster, ``--ray``); everything after them is the one consumer,
   ``_shard_stage``, so both builds write the same corpus.
2. Indexes, one per (kind, layer), each marked finished by ``.build/indexes/<name>.json`` (streamed: the
   codes added to the trained index, nprobe tuned, recall measured from the stored top-k).
3. The dataset card (README.md); then ``.build/`` is deleted. A folder with a card and no ``.build`` is a
   finished corpus.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from exbert_hub import batching
from exbert_hub import corpus_format as cf
from exbert_hub.corpus import probe_fingerprint
from exbert_hub.errors import InputError

from . import annotate, index_workers, indexing, sources, vectors

log = logging.getLogger(__name__)

DEFAULT_SPACY = "en_core_web_sm"
STREAMING_FILE = "streaming.json"  # .build/streaming.json: the indexes are trained, shards go to codes
DEFAULT_EXACT_LIMIT = 10_000  # vectors per index; above: compressed indexes (see indexing)
PREFETCH = 4  # shards a spaCy worker may be given ahead of the model
MAX_DOC_CHARS = 100_000  # longer documents are cut at whitespace (spaCy's memory grows with document length)


class BuildError(InputError):
    """A build that cannot start or continue as asked."""


@dataclass
class BuildSettings:
    model: str
    source: str
    out: str
    config: str | None = None
    split: str = "train"
    column: str = "text"
    spacy: str = DEFAULT_SPACY
    max_sentences: int | None = None
    batch_size: int = 32
    max_tokens: int = 128
    min_words: int = 3
    shard_chars: int = 50_000
    layers: list[int] | None = None  # None: every layer
    workers: int = 1  # spaCy worker processes; 0 = annotate in this process
    exact_limit: int = DEFAULT_EXACT_LIMIT
    index_factory: str | None = None  # override the compressed tier's factory string
    recall_queries: int = 200  # half tune nprobe, half measure recall@50 (the card)
    keep_vectors: bool = False  # also keep the float16 vectors of every shard in vectors/ (for analysis, re-indexing)
    stream_indexes: bool = True  # compressed tier: train on the first vectors, encode shards as they arrive
    overwrite: bool = False
    progress: bool = True
    # Ray (corpus_builder.ray_build): None = this machine; "local" = start a local cluster; else the address
    # of a running cluster ("auto", "ray://head:10001", "head:6379"). Not part of identity(): a build
    # started on Ray can be resumed without it and the other way round (the result is the same)
    ray: str | None = None
    ray_actors: int | None = None  # model actors (default: one per GPU, else half the CPUs / ray_cpus_per_actor)
    ray_gpus_per_actor: float | None = None  # default: 1 when the cluster has GPUs, else 0
    ray_cpus_per_actor: float = 1.0
    ray_spacy_actors: int | None = None  # spaCy actors, one CPU each (default: the CPUs the model actors leave)
    ray_num_cpus: int | None = None  # CPUs of a local cluster (default: all of this machine's)
    ray_object_store_memory: int | None = None  # bytes, local cluster (default: Ray's, 30% of the memory)

    def identity(self) -> dict:
        """What must not change between a build and its resumption."""
        # max_sentences is not in it: a finished or killed build can be extended with a higher cap
        return {k: getattr(self, k) for k in ("model", "source", "config", "split", "column",
                                               "max_tokens", "min_words", "shard_chars", "layers")}


@dataclass
class ShardResult:
    shard: int
    sentences: int
    tokens: int
    vectors: int
    skipped_long: int
    documents: int
    seconds_model: float = 0.0
    seconds_spacy: float = 0.0


@dataclass
class Progress:
    sentences: int = 0
    tokens: int = 0
    vectors: int = 0
    skipped_long: int = 0
    duplicates: int = 0
    documents: int = 0
    shards: list[dict] = field(default_factory=list)


def _model_fingerprint(engine) -> str:
    emb = engine.model.get_input_embeddings().weight.detach()
    h = hashlib.sha256()
    h.update(str(tuple(emb.shape)).encode())
    h.update(emb[: min(256, emb.shape[0])].float().numpy().tobytes())
    return h.hexdigest()[:16]


def _model_revision(engine) -> str | None:
    rev = getattr(engine.config, "_commit_hash", None)
    if rev:
        return str(rev)
    if engine.origin == "packaged":
        from importlib import metadata

        from exbert_hub import resolve

        pkg = resolve.PACKAGE_OF.get(engine.name)
        if pkg:
            try:
                return f"{pkg}=={metadata.version(pkg)}"
            except metadata.PackageNotFoundError:
                return None
    return None


def _shards(documents: Iterator[str], shard_chars: int) -> Iterator[tuple[int, list[tuple[int, str]]]]:
    """(shard number, [(document number, text)]) with about ``shard_chars`` characters per shard.

    The first shards are smaller (1/8, 1/4, 1/2) so the model starts after a short spaCy wait."""
    shard, batch, chars, number = 0, [], 0, 0
    size = lambda k: shard_chars >> max(0, 3 - k)  # noqa: E731
    for doc in documents:
        pieces = [doc] if len(doc) <= MAX_DOC_CHARS else _cut(doc)
        for piece in pieces:
            batch.append((number, piece))
            chars += len(piece)
            number += 1
            if chars >= size(shard):
                yield shard, batch
                shard, batch, chars = shard + 1, [], 0
    if batch:
        yield shard, batch


def _cut(doc: str) -> list[str]:
    out = []
    while len(doc) > MAX_DOC_CHARS:
        cut = doc.rfind(" ", 0, MAX_DOC_CHARS)
        cut = cut if cut > MAX_DOC_CHARS // 2 else MAX_DOC_CHARS
        out.append(doc[:cut])
        doc = doc[cut:].lstrip()
    if doc:
        out.append(doc)
    return out


def _write_parquet(table, path: Path) -> None:
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)


def _save_npy(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        np.save(f, array)
    os.replace(tmp, path)


@dataclass
class ShardWork:
    """One shard as the builder's consumer gets it, in shard order. A finished shard has only ``shard``
    and ``documents``; otherwise its spaCy sentences, every sentence's encoding (the model's tokens) and
    ``model(keep)``: the vectors of the sentences ``keep`` (indices into ``sents``) as a
    ``batching.PendingBatches``, started then (this machine's forward streams: the consumer goes on with
    the shard before while they run) or looked up (a Ray actor ran every sentence that fits max_tokens)."""

    shard: int
    documents: int
    sents: list = field(default_factory=list)
    encoded: list = field(default_factory=list)
    model: Callable[[list[int]], batching.PendingBatches] | None = None
    seconds_spacy: float = 0.0
    seconds_model: float | None = None  # None: the pending result's own seconds
    threads: int | None = None  # torch threads of the forward passes (None: this process's)
    batch_check: float | None = None  # check_batched's figure, on the first shard with sentences
    fallback_reason: str | None = None  # set when that check sent the model to engine.analyze


def check_batched(engine, runner: vectors.VectorRunner, texts: list[str], max_tokens: int) -> float:
    """Compare the batched path with engine.analyze on 4 of ``texts`` of different lengths (so padding is
    exercised) before trusting it for the whole build; a failed check turns ``runner`` to engine.analyze."""
    texts = list(texts[:200])
    encoded = vectors.encode(engine, texts)
    fits = sorted((len(e.ids), t) for t, e in zip(texts, encoded) if len(e.ids) <= max_tokens)
    n = len(fits)
    sample = list(dict.fromkeys(fits[i][1] for i in sorted({0, n // 3, (2 * n) // 3, n - 1}) if n))
    check = vectors.check_against_engine(runner, sample)
    if not runner.batched:
        log.warning("building one sentence at a time through engine.analyze: %s", runner.fallback_reason)
    return check


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def check_texts(docs: list[tuple[int, str]], limit: int = 200) -> list[str]:
    """Sentence-like pieces of a shard's raw documents (cut after . ! ?), for ``check_batched`` before
    spaCy has split them: the check then runs while the spaCy worker works on the first shard."""
    out: list[str] = []
    for _, text in docs:
        for piece in _SENTENCE_END.split(text):
            piece = " ".join(piece.split())
            if len(piece.split()) >= 3:
                out.append(piece)
                if len(out) >= limit:
                    return out
    return out


def _one_torch_thread() -> None:
    import torch

    torch.set_num_threads(1)


def forward(runner: vectors.VectorRunner, encoded: list, texts: list[str], batch_size: int,
            streams: batching.Streams | None = None) -> batching.PendingBatches:
    """What the corpus keeps of every sentence (``vectors.KeptVectors``), in the given order, once the
    result's ``result()`` returns. The model runs them in length-sorted batches, longest first (on
    ``streams`` the last batches to finish are then the shortest), submitted to ``streams`` (returns at
    once) or run here (None)."""
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].ids), reverse=True)
    bs = max(1, batch_size)
    groups = [order[b:b + bs] for b in range(0, len(order), bs)]

    def assemble(per_batch: list) -> list:
        out: list = [None] * len(encoded)
        for idx, vecs in zip(groups, per_batch):
            for i, vec in zip(idx, vecs):
                out[i] = vec
        return out

    return batching.PendingBatches.run(runner.kept, [([encoded[i] for i in idx], [texts[i] for i in idx]) for idx in groups],
                                       streams, assemble)


class Builder:
    def __init__(self, settings: BuildSettings):
        self.s = settings
        self.out = Path(settings.out).expanduser()
        self.build_dir = self.out / cf.BUILD_DIR
        self._seen: set[int] = set()  # hashes of the sentences kept so far
        self.seconds_writer_wait = 0.0  # the consumer waiting for the writer thread (card timings)
        self._index_workers: index_workers.IndexWorkers | None = None  # started by the first large index work
        self._workers: list[annotate.Worker] | None = None  # spaCy worker processes of a local build (run starts them)

    # --- setup ---------------------------------------------------------------------------------------
    def _check_out(self) -> bool:
        """True when resuming an unfinished build."""
        out = self.out
        if out.exists() and not out.is_dir():
            raise BuildError(f"--out {out} is a file; give a folder")
        state = self.build_dir / cf.BUILD_STATE_FILE
        finished = cf.read_card(out) is not None and not self.build_dir.exists()
        if finished or (out.exists() and any(out.iterdir()) and not state.exists()):
            if not self.s.overwrite:
                what = "a finished corpus" if finished else "files"
                raise BuildError(f"{out} already holds {what}; choose another --out or pass --overwrite to replace it")
            for child in out.iterdir():
                shutil.rmtree(child) if child.is_dir() else child.unlink()
            return False
        if state.exists():
            if self.s.overwrite:
                shutil.rmtree(self.build_dir)
                for sub in ("data", cf.INDEX_DIR):
                    shutil.rmtree(out / sub, ignore_errors=True)
                return False
            return True
        return False

    def _check_resume(self) -> None:
        previous = cf.read_json(self.build_dir / cf.BUILD_STATE_FILE).get("identity", {})
        if previous != self.identity:
            changed = sorted(k for k in set(self.identity) | set(previous) if previous.get(k) != self.identity.get(k))
            raise BuildError(
                f"{self.out} holds an unfinished build with different settings ("
                + "; ".join(f"{k}: was {previous.get(k)!r}, now {self.identity.get(k)!r}" for k in changed)
                + "); rerun with the same settings to resume it, or pass --overwrite to start again"
            )

    def _load(self):
        import exbert_hub

        self.engine = exbert_hub.load(self.s.model)
        e = self.engine
        L = e.num_layers
        layers = list(range(L)) if self.s.layers is None else [int(x) for x in self.s.layers]
        layers = sorted({l + L if l < 0 else l for l in layers})
        bad = [l for l in layers if not 0 <= l < L]
        if bad:
            raise BuildError(f"layers {bad} do not exist: {e.name} has layers 0 to {L - 1}")
        self.layers = layers
        self.num_heads = e.num_heads
        self.hidden_size = int(getattr(e.config, "hidden_size", 0) or getattr(e.config, "d_model", 0) or getattr(e.config, "n_embd", 0))
        self.max_tokens = min(self.s.max_tokens, e.token_limit)
        # a small --max-sentences should not wait for spaCy to read a whole large shard
        self.shard_chars = self.s.shard_chars
        if self.s.max_sentences:
            self.shard_chars = max(2_000, min(self.shard_chars, self.s.max_sentences * 150))
        self.source = sources.open_source(self.s.source, config=self.s.config, split=self.s.split, column=self.s.column)
        self.runner = vectors.VectorRunner(e, self.layers, concurrent=True)  # its passes run on forward streams
        workers = self._workers
        if workers:
            self._early_check()
        # fails early when the pipeline is missing; a build with spaCy workers asks the first one (its
        # pipeline loaded while the model did and the check ran), so this process never loads spaCy
        self.spacy_info = workers[0].info() if workers else annotate.pipeline_info(self.s.spacy)
        self.identity = dict(self.s.identity(), source=self.source.description, layers=self.layers, model_fingerprint=_model_fingerprint(e),
                             spacy=self.spacy_info["pipeline"] + "-" + str(self.spacy_info["version"]),
                             format_version=cf.FORMAT_VERSION)
        self.streams = {(kind, layer): indexing.IndexStream(self.out, kind, layer, self.num_heads, self.s.index_factory,
                                                            self.s.recall_queries)
                        for kind in cf.KINDS for layer in self.layers}
        self._written: list[dict] = []  # shards finished (this run or an earlier one), for _maybe_train

    def _early_check(self) -> None:
        """While the spaCy workers load their pipeline: the batched-path check on the first shard's raw
        text and the card's probe, on the threads the workers leave (the model would wait otherwise)."""
        import torch

        t0 = time.time()
        threads = torch.get_num_threads()
        torch.set_num_threads(max(1, threads - len(self._workers)))
        try:
            first = next(_shards(self.source.documents(), self.shard_chars), None)
            texts = check_texts(first[1]) if first else []
            if texts:
                self.batch_check = check_batched(self.engine, self.runner, texts, self.max_tokens)
            self._probe = self._probe_fingerprint()
        finally:
            torch.set_num_threads(threads)
        self.seconds_check = round(time.time() - t0, 3)

    # --- stage 1: shards -----------------------------------------------------------------------------
    def _done_shards(self) -> dict[int, dict]:
        """Finished shards; a shard cut short by the previous run's --max-sentences is redone."""
        folder = self.build_dir / cf.SHARD_DONE_DIR
        if not folder.exists():
            return {}
        done = {int(p.stem): cf.read_json(p) for p in folder.glob("*.json")}
        return {k: v for k, v in done.items() if not v.get("truncated")}

    def _remember(self, shard: int) -> None:
        """Add a finished shard's sentences to the seen set (a resumed build skips them like an uninterrupted one)."""
        import pyarrow.parquet as pq

        path = self.out / cf.sentences_file(shard)
        if path.exists():
            for text in pq.read_table(path, columns=["text"]).column("text").to_pylist():
                self._seen.add(_sentence_key(text))

    def _annotate_inline(self, docs):
        return annotate.annotate(self.s.spacy, docs, self.s.min_words)

    def _shard_stage(self, progress: Progress) -> None:
        """Consume the shards in order: finished ones are counted, the others selected (repeats and long
        sentences left out, the cap applied), turned into tables and written. They are produced on this
        machine (``_local_works``) or on a Ray cluster (``ray_build.ray_works``, with ``ray`` set)."""
        from tqdm.auto import tqdm

        done = self._done_shards()
        if self.s.ray is not None:
            from . import ray_build

            works = ray_build.ray_works(self, done)
        else:
            works = self._local_works(done)
        bar = tqdm(desc="sentences", unit=" sent", disable=not self.s.progress, total=self.s.max_sentences, dynamic_ncols=True)
        tok_bar = tqdm(desc="tokens", unit=" tok", disable=not self.s.progress, dynamic_ncols=True)
        # the writer on one torch thread beside a CPU model's streams (one more stream of work on the cores)
        cpu = not batching.on_accelerator(self.engine)
        writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="corpus-writer",
                                    initializer=_one_torch_thread if cpu else None)
        writing: list[Future | None] = [None]
        started: tuple[dict, dict] | None = None  # the shard whose forward passes run while the next one starts
        cap = self.s.max_sentences

        def count(info: dict) -> None:
            progress.sentences += info["sentences"]
            progress.tokens += info["tokens"]
            progress.vectors += info["vectors"]
            progress.skipped_long += info["skipped_long"]
            progress.duplicates += info.get("duplicates", 0)
            progress.documents += info["documents"]
            progress.shards.append(info)
            bar.update(info["sentences"])
            tok_bar.update(info["tokens"])

        def finish(info: dict, payload: dict) -> None:
            """A started shard's vectors (waited for), tables, and its write (after the shard before's)."""
            pending = payload["vectors"]
            payload["vectors"] = pending.result()
            if info["seconds_model"] is None:
                info["seconds_model"] = round(pending.seconds, 3)
            if writing[0] is not None:
                t1 = time.time()
                writing[0].result()  # at most one shard waits for the disk; errors surface here
                self.seconds_writer_wait += time.time() - t1
            t1 = time.time()
            tables = self._tables(info, payload)
            info["seconds_tables"] = round(time.time() - t1, 3)
            writing[0] = writer.submit(self._write_shard, info, tables)

        try:
            for work in works:
                if work.shard in done:
                    if started is not None:
                        finish(*started)
                        started = None
                    info = done[work.shard]
                    self._written.append(info)
                    self._remember(work.shard)
                    if cap is not None and progress.sentences + info["sentences"] > cap:
                        raise BuildError(
                            f"{self.out} already holds more than --max-sentences {cap} sentences from an earlier run; "
                            "raise --max-sentences or pass --overwrite to start again")
                    count(info)
                else:
                    if work.batch_check is not None:
                        self.batch_check = work.batch_check
                    if work.fallback_reason is not None:  # the batched path failed its check where the model ran
                        self.runner.batched, self.runner.fallback_reason = False, work.fallback_reason
                    info, payload = self._start_shard(work, progress)
                    count(info)  # (the next shard's selection needs this one's counts)
                    if started is not None:
                        finish(*started)
                    started = (info, payload)
                if cap is not None and progress.sentences >= cap:
                    break
            if started is not None:
                finish(*started)
                started = None
            if writing[0] is not None:
                t1 = time.time()
                writing[0].result()
                self.seconds_writer_wait += time.time() - t1
        finally:
            close = getattr(works, "close", None)
            if close is not None:
                close()  # stops the producer (spaCy workers, a Ray pipeline) when the cap ends the build early
            writer.shutdown(wait=True)
            bar.close()
            tok_bar.close()

    def _local_works(self, done: dict[int, dict]) -> Iterator["ShardWork"]:
        """The shards of this machine, in order: spaCy in worker processes (up to PREFETCH shards ahead),
        the model on this process's forward streams when the consumer asks for a shard's vectors."""
        import torch

        if self._workers is None:
            self._workers = [annotate.Worker(self.s.spacy) for _ in range(max(0, self.s.workers))]
        workers = self._workers
        # the model on forward streams of one torch thread each (batching.Streams): a core the spaCy worker
        # or the index writer shares slows one stream, not every thread of one OpenMP team
        threads = torch.get_num_threads()
        streams = batching.Streams.for_engine(self.engine, threads)
        cancel = False
        pending: deque[tuple[int, list, annotate.Worker | None]] = deque()
        checked = getattr(self, "batch_check", None) is not None  # _early_check ran it
        turn = 0
        yielded = [0, 0]  # shards and sentences handed to the model so far

        def ahead() -> int:
            """Shards to keep submitted: PREFETCH per worker, but with --max-sentences no more than the
            sentences still wanted need at the rate seen so far (spaCy on shards the build never reads
            would take the model's cores for nothing)."""
            full = len(workers) * PREFETCH + 1
            cap = self.s.max_sentences
            if not cap:
                return full
            if not yielded[0]:
                return min(full, 2)  # shard_chars is sized for the cap: about one shard
            per = max(1, yielded[1] // yielded[0])
            return max(1, min(full, -(-(cap - yielded[1]) // per) + 1))

        try:
            shard_iter = _shards(self.source.documents(), self.shard_chars)
            exhausted = False
            while True:
                while not exhausted and len(pending) < ahead():
                    try:
                        shard, docs = next(shard_iter)
                    except StopIteration:
                        exhausted = True
                        break
                    worker = None
                    if shard not in done and workers:
                        worker = workers[turn % len(workers)]
                        turn += 1
                        worker.submit(docs, self.s.min_words)
                    pending.append((shard, docs, worker))
                if not pending:
                    break
                shard, docs, worker = pending.popleft()
                if shard in done:
                    yield ShardWork(shard, len(docs))
                    continue
                check = None
                t0 = time.time()
                sents = worker.result() if worker is not None else self._annotate_inline(docs)
                t_spacy = time.time() - t0
                if not checked and sents:
                    t1 = time.time()
                    check = check_batched(self.engine, self.runner, [s.text for s in sents], self.max_tokens)
                    checked = True
                    self.seconds_check = round(time.time() - t1, 3)
                encoded = vectors.encode(self.engine, [s.text for s in sents]) if sents else []
                yielded[0] += 1
                yielded[1] += len(sents)

                def model(keep: list[int], encoded=encoded, sents=sents) -> batching.PendingBatches:
                    return forward(self.runner, [encoded[i] for i in keep], [sents[i].text for i in keep],
                                   self.s.batch_size, streams)

                yield ShardWork(shard, len(docs), sents, encoded, model, seconds_spacy=t_spacy, batch_check=check,
                                threads=threads if streams is None else streams.threads)
        except BaseException:  # (GeneratorExit too: the consumer stopped early) batches not yet begun are dropped
            cancel = True
            raise
        finally:
            if streams is not None:
                streams.close(cancel=cancel)  # exhausted: the last shard's batches finish first
            torch.set_num_threads(threads)
            self._close_workers()

    def _close_workers(self) -> None:
        for w in self._workers or []:
            w.close()
        self._workers = None

    def _select(self, sents: list[annotate.Sentence], lengths: list[int], progress: Progress) -> tuple[list[int], dict]:
        """Which sentences of a shard go in (indices, in order), and the counts of those left out.

        A sentence seen before (in this or an earlier shard) is left out: repeated boilerplate would
        otherwise fill the top hits with copies of one match; then sentences over max_tokens; then what
        exceeds --max-sentences."""
        unique = []
        for i, sent in enumerate(sents):
            key = _sentence_key(sent.text)
            if key not in self._seen:
                self._seen.add(key)
                unique.append(i)
        keep = [i for i in unique if lengths[i] <= self.max_tokens]
        counts = {"duplicates": len(sents) - len(unique), "skipped_long": len(unique) - len(keep), "truncated": False}
        if self.s.max_sentences is not None:
            room = max(0, self.s.max_sentences - progress.sentences)
            counts["truncated"] = len(keep) > room
            keep = keep[:room]
        return keep, counts

    def _start_shard(self, work: "ShardWork", progress: Progress) -> tuple[dict, dict]:
        """The sentences a shard keeps, their forward passes started: (info with row counts, payload for
        ``_tables``; its "vectors" pending until the consumer's ``finish``)."""
        keep, counts = self._select(work.sents, [len(e.ids) for e in work.encoded], progress)
        sents = [work.sents[i] for i in keep]
        encoded = [work.encoded[i] for i in keep]
        pending = work.model(keep)
        threads = work.threads
        if threads is None:
            import torch

            threads = torch.get_num_threads()
        info = {"shard": work.shard, "sentences": len(sents), "tokens": sum(len(e.ids) for e in encoded),
                "vectors": sum(len(e.ids) - sum(e.special) for e in encoded), "skipped_long": counts["skipped_long"],
                "documents": work.documents, "duplicates": counts["duplicates"], "truncated": counts["truncated"],
                "seconds_model": None if work.seconds_model is None else round(work.seconds_model, 3),
                "seconds_spacy_wait": round(work.seconds_spacy, 3), "threads": threads}
        payload = {"sents": sents, "encoded": encoded, "vectors": pending, "sentence_base": progress.sentences,
                   "token_base": progress.tokens, "vector_base": progress.vectors}
        return info, payload

    def _tables(self, info: dict, payload: dict) -> dict:
        """Sentence and token columns of a shard (Python work: done in the model's thread, because a
        Python loop in another thread would hold the GIL between the model's many small torch calls)."""
        sents, encoded, per_sentence = payload["sents"], payload["encoded"], payload["vectors"]
        srows = {c: [] for c in cf.column_names(cf.SENTENCE_COLUMNS)}
        trows = {c: [] for c in cf.column_names(cf.TOKEN_COLUMNS)}
        emb_parts, head_parts = [], []
        tid, vrow = payload["token_base"], payload["vector_base"]
        empty = (("word_text", ""), ("lemma", ""), ("pos", ""), ("tag", ""), ("dep", ""), ("head", -1),
                 ("ent_type", ""), ("ent_iob", ""))
        for j, (sent, enc, vec) in enumerate(zip(sents, encoded, per_sentence)):
            sid = payload["sentence_base"] + j
            srows["sentence_id"].append(sid)
            srows["text"].append(sent.text)
            srows["document"].append(sent.document)
            srows["first_token"].append(tid)
            srows["num_tokens"].append(len(enc.ids))
            srows["num_words"].append(len(sent.words))
            words = align_words(enc.offsets, enc.special, sent.starts, sent.ends, len(sent.text))
            for pos, (token, (start, end), special, w) in enumerate(zip(enc.tokens, enc.offsets, enc.special, words)):
                trows["token_id"].append(tid)
                trows["sentence_id"].append(sid)
                trows["position"].append(pos)
                trows["token"].append(token)
                trows["text"].append(token if special else sent.text[start:end])
                trows["start"].append(start)
                trows["end"].append(end)
                trows["special"].append(special)
                trows["vector_row"].append(-1 if special else vrow)
                trows["word"].append(w)
                if w >= 0:
                    trows["word_text"].append(sent.words[w])
                    trows["lemma"].append(sent.lemmas[w])
                    trows["pos"].append(sent.pos[w])
                    trows["tag"].append(sent.tags[w])
                    trows["dep"].append(sent.deps[w])
                    trows["head"].append(sent.heads[w])
                    trows["ent_type"].append(sent.ent_types[w])
                    trows["ent_iob"].append(sent.ent_iobs[w])
                else:
                    for c, value in empty:
                        trows[c].append(value)
                tid += 1
                vrow += 0 if special else 1
            emb_parts.append(vec.embedding)  # already the non-special tokens, normalised, float16
            head_parts.append(vec.heads)
        assert tid - payload["token_base"] == info["tokens"] and vrow - payload["vector_base"] == info["vectors"]
        return {"sentences": srows, "tokens": trows, "embedding": emb_parts, "heads": head_parts,
                "vector_base": payload["vector_base"]}

    def _write_shard(self, info: dict, tables: dict) -> None:
        """Normalised float16 vectors and parquet tables of a shard, then its done marker. Runs in a writer
        thread (numpy and the disk release the GIL), so it overlaps the next shard's forward passes;
        shards are written in order."""
        import pyarrow as pa

        t0 = time.time()
        shard = info["shard"]
        if info["sentences"]:
            _write_parquet(pa.table(tables["sentences"], schema=cf.arrow_schema(cf.SENTENCE_COLUMNS)),
                           self.out / cf.sentences_file(shard))
            _write_parquet(pa.table(tables["tokens"], schema=cf.arrow_schema(cf.TOKEN_COLUMNS)),
                           self.out / cf.tokens_file(shard))
            emb = np.concatenate(tables["embedding"], axis=1)  # float16 unit vectors (VectorRunner.kept)
            heads = np.concatenate(tables["heads"], axis=1)
            streaming = self._streaming()
            for kind, arr in (("embedding", emb), ("heads", heads)):
                for p, layer in enumerate(self.layers):
                    if streaming:  # the compressed tier: codes, no vector files
                        self.streams[(kind, layer)].encode(shard, arr[p], tables["vector_base"])
                    if not streaming or self.s.keep_vectors:
                        _save_npy(arr[p], self.out / cf.build_vectors_dir(kind, layer) / cf.vectors_shard_name(shard))
        info = dict(info, seconds_write=round(time.time() - t0, 3))
        cf.write_json(self.out / cf.build_shard_done_file(shard), info)
        self._written.append(info)
        self._maybe_train()

    # --- the compressed tier while the shards arrive --------------------------------------------------
    def _streaming(self) -> bool:
        """The indexes are trained: every later shard goes straight to codes (see indexing.IndexStream)."""
        return (self.build_dir / STREAMING_FILE).exists()

    def _maybe_train(self) -> None:
        """Once the kept vectors exceed the exact limit and fill a training sample, train every index on
        them, encode them, and drop their files (a corpus that stays smaller keeps the two-pass path)."""
        if not self.s.stream_indexes or self._streaming():
            return
        shards = [i for i in sorted(self._written, key=lambda x: x["shard"]) if i["vectors"] > 0]
        n = sum(i["vectors"] for i in shards)
        sentences = sum(i["sentences"] for i in shards)
        estimate = (int(self.s.max_sentences * n / max(sentences, 1)) if self.s.max_sentences else 16 * n)
        nlist = indexing.default_nlist(max(estimate, n)) if not self.s.index_factory else 1024
        if n <= self.s.exact_limit or n < min(indexing.MAX_TRAIN, 64 * nlist):
            return
        t0 = time.time()
        numbers = [i["shard"] for i in shards]
        for _ in self._index_jobs("train", list(self.streams), (numbers, max(estimate, n)), n):
            pass
        cf.write_json(self.build_dir / STREAMING_FILE, {"trained_on_shards": numbers, "vectors": n,
                                                        "estimate": estimate, "seconds": round(time.time() - t0, 2)})
        if not self.s.keep_vectors:
            for stream in self.streams.values():
                shutil.rmtree(stream.vectors_dir, ignore_errors=True)

    def _index_jobs(self, method: str, jobs: list[tuple[str, int]], args: tuple, vectors: int):
        """(job, result) of ``self.streams[job].<method>(*args)`` for each (kind, layer) job, as each ends: in
        index worker processes when the machine and the indexes are large enough (index_workers), else here
        in order. The workers, once started, stay for the build's later index work."""
        processes = index_workers.process_count(len(jobs), vectors, self.hidden_size)
        if not processes and self._index_workers is None:
            for job in jobs:
                yield job, getattr(self.streams[job], method)(*args)
            return
        if self._index_workers is None:
            self._index_workers = index_workers.IndexWorkers(processes, (os.cpu_count() or 1) // processes)
        names = [f"the {kind} index of layer {layer}" for kind, layer in jobs]
        try:
            for j, result in self._index_workers.run([(method, self.streams[job], args) for job in jobs], names):
                yield jobs[j], result
        except index_workers.IndexWorkerError as err:
            raise BuildError(f"{err} (the build can be resumed: run the same command again)") from None

    def _close_index_workers(self, ok: bool) -> None:
        if self._index_workers is not None:
            self._index_workers.close() if ok else self._index_workers.kill()
            self._index_workers = None

    # --- stage 2: indexes --------------------------------------------------------------------------
    def _index_stage(self, progress: Progress) -> dict:
        from tqdm.auto import tqdm

        shards = [s for s in sorted(progress.shards, key=lambda x: x["shard"]) if s["vectors"] > 0]
        tier = cf.EXACT if progress.vectors <= self.s.exact_limit else cf.COMPRESSED
        indexes: dict = {kind: {} for kind in cf.KINDS}
        jobs = []
        for kind in ("heads", "embedding"):  # the heads indexes take longest: first, when they run side by side
            for layer in self.layers:
                marker = self.out / cf.build_index_done_file(kind, layer)
                if marker.exists():
                    indexes[kind][layer] = cf.read_json(marker)
                else:
                    jobs.append((kind, layer))
        bar = tqdm(total=len(jobs), desc="indexes", disable=not self.s.progress, dynamic_ncols=True)

        def done(kind: str, layer: int, stats: dict) -> None:
            cf.write_json(self.out / cf.build_index_done_file(kind, layer), stats)
            indexes[kind][layer] = stats
            bar.update(1)

        numbers = [s["shard"] for s in shards]
        if self._streaming():
            for job, stats in self._index_jobs("finish", jobs, (numbers,), progress.vectors):
                done(*job, stats)
            jobs = []
        for kind, layer in jobs:
            src = self.out / cf.build_vectors_dir(kind, layer)
            if tier == cf.EXACT:
                # the shard files ARE the exact index: move them, no copy
                dst = self.out / cf.index_file(kind, layer, tier)
                if src.exists():
                    shutil.rmtree(dst, ignore_errors=True)
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(src, dst)
                stats = indexing.exact_stats(self.out, kind, layer)
            else:
                arrays = [np.load(src / cf.vectors_shard_name(s), mmap_mode="r") for s in numbers]
                stats = indexing.build_index(self.out, kind, layer, arrays, num_heads=self.num_heads,
                                             factory=self.s.index_factory, recall_queries=self.s.recall_queries)
            done(kind, layer, stats)
        bar.close()
        return {kind: dict(sorted(indexes[kind].items())) for kind in cf.KINDS}

    # --- stage 3: card -----------------------------------------------------------------------------
    def _card(self, progress: Progress, indexes: dict, seconds: dict) -> None:
        import exbert_hub
        import transformers

        e = self.engine
        head_dim = (self.hidden_size // self.num_heads) if self.num_heads else 0
        ctx_dim = next((st["dim"] for st in indexes["heads"].values()), self.num_heads * head_dim)
        head_dim = ctx_dim // self.num_heads if self.num_heads else head_dim
        meta = {
            "format": cf.FORMAT,
            "format_version": cf.FORMAT_VERSION,
            "model": e.name,
            "model_revision": _model_revision(e),
            "model_origin": e.origin,
            "model_fingerprint": self.identity["model_fingerprint"],
            # the model's embedding of a probe sentence per indexed layer: searches compare it with the
            # live model's, so other weights under the same name are refused (exbert_hub.corpus.check_engine)
            "probe_fingerprint": self._probe if hasattr(self, "_probe") else self._probe_fingerprint(),
            "model_kind": e.kind,
            "num_layers": e.num_layers,
            "num_heads": self.num_heads,
            "hidden_size": self.hidden_size,
            "head_dim": head_dim,
            "layers": self.layers,
            "dtype": "float16",
            "normalization": {
                "embedding": "output of the layer (hidden_states[layer + 1]) / its L2 norm; score = cosine",
                "heads": "each head's slice of the attention output before the output projection / its L2 norm; "
                         "query: selected heads' unit slices, others zero; score = inner product / #heads = mean per-head cosine",
            },
            "spacy": self.spacy_info,
            "source": self.source.description,
            "build": {"batch_size": self.s.batch_size, "max_sentences": self.s.max_sentences,
                      "max_tokens": self.max_tokens, "min_words": self.s.min_words, "shard_chars": self.shard_chars,
                      "exact_limit": self.s.exact_limit, "index_factory": self.s.index_factory,
                      "keep_vectors": self.s.keep_vectors,
                      "batched_forward": self.runner.batched, "batched_vs_engine_max_rel_diff": getattr(self, "batch_check", None),
                      "special_tokens_indexed": False, "input_embeddings_indexed": False,
                      "transformers_version": transformers.__version__},
            "counts": {"documents": progress.documents, "sentences": progress.sentences, "tokens": progress.tokens,
                       "vectors": progress.vectors, "skipped_long_sentences": progress.skipped_long,
                       "duplicate_sentences_skipped": progress.duplicates,
                       "shards": len(progress.shards)},
            "indexes": {kind: {int(layer): st for layer, st in sorted(per.items())} for kind, per in indexes.items()},
            "timings": seconds,
            "exbert_hub_version": exbert_hub.__version__,
        }
        cf.write_card(self.out, meta, _card_body(meta), extra_yaml={
            "pretty_name": f"exbert-hub corpus: {e.name} on {_source_name(self.source.description)}",
            "language": ["en"] if str(self.spacy_info.get("pipeline", "")).startswith("en") else [],
            "tags": ["exbert-hub", "interpretability", "attention", "faiss", "spacy"],
            "size_categories": [_size_category(progress.sentences)],
        })

    def _probe_fingerprint(self) -> dict | None:
        try:
            return probe_fingerprint(self.engine, self.layers)
        except Exception as err:  # noqa: BLE001 - a model that cannot analyze the probe: a corpus without one
            log.warning("no model fingerprint in the card (the probe sentence could not be analyzed: %s)", err)
            return None

    # --- all -----------------------------------------------------------------------------------------
    def run(self) -> Path:
        t0 = time.time()
        resuming = self._check_out()
        # spaCy workers start first: their pipeline loads while the model does (a local build only)
        self._workers = ([annotate.Worker(self.s.spacy) for _ in range(max(0, self.s.workers))]
                         if self.s.ray is None else [])
        ok = False
        try:
            out = self._run(t0, resuming)
            ok = True
            return out
        finally:
            self._close_workers()
            self._close_index_workers(ok)

    def _run(self, t0: float, resuming: bool) -> Path:
        self._load()
        t_loaded = time.time()
        if resuming:
            self._check_resume()
        self.out.mkdir(parents=True, exist_ok=True)
        state = self.build_dir / cf.BUILD_STATE_FILE
        if not resuming:
            cf.write_json(state, {"identity": self.identity, "started": time.time()})
        else:
            log.warning("resuming the unfinished build in %s (%d shards already finished)", self.out,
                        len(self._done_shards()))
        progress = Progress()
        self._shard_stage(progress)
        t1 = time.time()
        if progress.sentences == 0:
            shutil.rmtree(self.build_dir, ignore_errors=True)
            raise BuildError(
                f"the source {self.s.source!r} gave no sentences (no text, or none passed the filters: at least "
                f"{self.s.min_words} words, mostly letters, at most {self.max_tokens} tokens)"
            )
        indexes = self._index_stage(progress)
        t2 = time.time()
        model_s = sum(s.get("seconds_model", 0) for s in progress.shards)
        seconds = {"shards_on_all_threads": sum(1 for s in progress.shards if s.get("threads", 0) > 1),
                   "shard_model_seconds": [round(s.get("seconds_model", 0), 2) for s in progress.shards][:50],
                   "shard_threads": [s.get("threads") for s in progress.shards][:50],
                   "spacy_wait_all_shards": round(sum(s.get("seconds_spacy_wait", 0) for s in progress.shards), 2),
                   "tables_all_shards": round(sum(s.get("seconds_tables", 0) for s in progress.shards), 2),
                   "total_this_run": round(t2 - t0, 2), "shards_this_run": round(t1 - t0, 2),
                   "indexes_this_run": round(t2 - t1, 2), "model_forward_all_shards": round(model_s, 2),
                   "tokens_per_second_this_run": round(progress.tokens / max(t2 - t0, 1e-9), 1),
                   "setup_this_run": round(t_loaded - t0, 2),
                   "check_and_probe": getattr(self, "seconds_check", None),
                   "writer_wait_this_run": round(self.seconds_writer_wait, 2),
                   "resumed": resuming}
        self._card(progress, indexes, seconds)
        built = self.build_dir / cf.VECTORS_DIR
        if self.s.keep_vectors and built.exists() and any(built.iterdir()):
            kept = self.out / cf.KEPT_VECTORS_DIR
            shutil.rmtree(kept, ignore_errors=True)
            os.replace(built, kept)
        shutil.rmtree(self.build_dir, ignore_errors=True)
        self.progress = progress
        return self.out


def _sentence_key(text: str) -> int:
    """Identity of a sentence for removing repeats: its words, whitespace ignored."""
    return hash(" ".join(text.split()))


def align_words(offsets, special, starts, ends, length) -> list[int]:
    """Word index of every model token (by character offsets); -1 for special tokens."""
    char_word = np.full(length + 1, -1, dtype=np.int64)
    for w, (s, e) in enumerate(zip(starts, ends)):
        char_word[s:e] = w
    out = []
    for (s, e), sp in zip(offsets, special):
        if sp or e <= s:
            out.append(-1)
            continue
        hits = char_word[s:e]
        hits = hits[hits >= 0]
        if hits.size:
            out.append(int(hits[0]))
        else:  # a token made only of characters spaCy left out: the next word
            nxt = char_word[e:]
            nxt = nxt[nxt >= 0]
            out.append(int(nxt[0]) if nxt.size else len(starts) - 1)
    return out


def _source_name(desc: dict) -> str:
    return str(desc.get("name") or desc.get("path") or "text")


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "1M<n<10M"


def _card_body(meta: dict) -> str:
    c = meta["counts"]
    lines = [
        f"# exbert-hub corpus for `{meta['model']}`",
        "",
        f"{c['sentences']:,} sentences ({c['tokens']:,} tokens, {c['vectors']:,} indexed vectors per index) from "
        f"`{_source_name(meta['source'])}`, annotated with spaCy `{meta['spacy']['pipeline']}` "
        f"{meta['spacy']['version']} and indexed with FAISS for [exbert-hub](https://github.com/) corpus search.",
        "",
        "Search it with the model it was built for:",
        "",
        "```python",
        "import exbert_hub",
        "from exbert_hub.corpus import load_corpus",
        f"engine = exbert_hub.load({meta['model']!r})",
        "corpus = load_corpus('<this repo id or folder>')",
        "a = engine.analyze('The cat sat on the mat.')",
        "hits = corpus.search(a, token=2, layer=3, by='embedding', k=50)  # or by='heads', heads=[0, 5]",
        "```",
        "",
        "## Contents",
        "",
        "- `data/sentences/*.parquet`: " + ", ".join(n for n, _, _ in cf.SENTENCE_COLUMNS),
        "- `data/tokens/*.parquet`: " + ", ".join(n for n, _, _ in cf.TOKEN_COLUMNS),
        "- `index/`: one index per layer for `embedding` (the layer's output hidden state) and `heads` "
        "(per-head attention outputs before the output projection), L2-normalised (per head for `heads`).",
        "",
        "`datasets.load_dataset(repo)` loads the tokens; `load_dataset(repo, 'sentences')` the sentences.",
        "",
        "## Indexes",
        "",
        "| kind | layer | tier | vectors | recall@50 vs exact | bytes |",
        "|---|---|---|---|---|---|",
    ]
    for kind, per in meta["indexes"].items():
        for layer, st in per.items():
            r = st.get("recall_at_50")
            extra = f" (one head: {st['recall_at_50_one_head']})" if "recall_at_50_one_head" in st else ""
            desc = st.get("factory") or "IndexFlatIP (float16 vectors)"
            lines.append(f"| {kind} | {layer} | {st['tier']}: {desc} | {st['vectors']:,} | {r}{extra} | {st['bytes']:,} |")
    lines += ["", "## Columns", ""]
    for title, cols in (("sentences", cf.SENTENCE_COLUMNS), ("tokens", cf.TOKEN_COLUMNS)):
        lines.append(f"**{title}**")
        lines.append("")
        lines += [f"- `{n}` ({t}): {d}" for n, t, d in cols]
        lines.append("")
    return "\n".join(lines) + "\n"


def build(model: str, source: str, out: str, **options) -> Path:
    """Build (or resume building) a corpus; see BuildSettings for the options. Returns the folder."""
    return Builder(BuildSettings(model=model, source=source, out=out, **options)).run()
