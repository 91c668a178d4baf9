"""Compressed indexes built while the shards arrive (train on the first vectors, encode each later shard).

The corpus is unchanged in content against the two-pass build (the same sentences, tokens, annotations
and vectors), its indexes find the same neighbours as well (recall against exact search over the kept
vectors, measured here with queries of our own), no vector file is written after the training, and a
build killed (SIGKILL) after the training resumes to the same corpus.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from exbert_hub import corpus_format as cf

MINILM = "sentence-transformers/all-MiniLM-L6-v2"
DOCS = "builtin:python-docs"
OPTS = dict(max_sentences=150, workers=0, progress=False, exact_limit=0, recall_queries=60, layers=[2], shard_chars=4000)


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    from corpus_builder import build, builder, indexing

    saved, encoded, trained = [], [], []
    real_save, real_encode, real_train = builder._save_npy, indexing.IndexStream.encode, indexing.IndexStream.train
    builder._save_npy = lambda a, p: saved.append(p.name) or real_save(a, p)
    indexing.IndexStream.encode = lambda self, s, *a: encoded.append(s) or real_encode(self, s, *a)
    indexing.IndexStream.train = lambda self, shards, *a: trained.append(list(shards)) or real_train(self, shards, *a)
    try:
        root = tmp_path_factory.mktemp("stream")
        streamed = build(MINILM, DOCS, str(root / "streamed"), **OPTS)
        calls = {"saved": list(saved), "encoded": list(encoded), "trained": list(trained)}
    finally:
        builder._save_npy, indexing.IndexStream.encode, indexing.IndexStream.train = real_save, real_encode, real_train
    two_pass = build(MINILM, DOCS, str(root / "two-pass"), stream_indexes=False, keep_vectors=True, **OPTS)
    return streamed, two_pass, calls


def _table(folder: Path, rel: str):
    import pyarrow.parquet as pq

    return pq.read_table(sorted((folder / rel).glob("*.parquet"))).to_pydict()


def test_no_vector_files_after_training(builds):
    streamed, _, calls = builds
    (first,) = {tuple(t) for t in calls["trained"]}  # every index trained once, on the same shards
    assert len(calls["trained"]) == 2  # embedding and heads of layer 2
    later = sorted(set(calls["encoded"]) - set(first))
    assert later, "the build should go on after the training"
    written = {int(name.split("-")[1].split(".")[0]) for name in calls["saved"]}
    assert written == set(first)  # vector files only before the training
    assert not (streamed / cf.KEPT_VECTORS_DIR).exists() and not (streamed / cf.BUILD_DIR).exists()
    meta = cf.read_card(streamed)
    assert all(st["streamed"] and st["tier"] == cf.COMPRESSED for per in meta["indexes"].values() for st in per.values())


def test_same_content_as_the_two_pass_build(builds):
    streamed, two_pass, _ = builds
    for rel in (cf.SENTENCES_DIR, cf.TOKENS_DIR):
        assert _table(streamed, rel) == _table(two_pass, rel)
    a, b = cf.read_card(streamed), cf.read_card(two_pass)
    assert a["counts"] == b["counts"]
    for kind in cf.KINDS:
        assert a["indexes"][kind][2]["vectors"] == b["indexes"][kind][2]["vectors"] == a["counts"]["vectors"]


@pytest.mark.parametrize("kind", cf.KINDS)
def test_recall_as_before(builds, kind):
    """Recall@50 at each build's own nprobe, against exact search over the kept float16 vectors, with
    200 corpus tokens as queries (their own row left out): the streamed index within 0.03 of the two-pass one."""
    import faiss

    from corpus_builder import indexing

    streamed, two_pass, _ = builds
    files = sorted((two_pass / cf.kept_vectors_dir(kind, 2)).glob("*.npy"))
    X = np.concatenate([np.load(f) for f in files]).astype(np.float32)
    rng = np.random.default_rng(7)
    rows = rng.choice(len(X), size=200, replace=False)
    truth = indexing.without_self(indexing.exact_topk(indexing.VectorSource([X]), X[rows], 51), rows, 50)
    from exbert_hub.corpus import CorpusCache, head_codes_nprobe, load_corpus

    got = {}
    for name, folder in (("streamed", streamed), ("two-pass", two_pass)):
        info = cf.read_card(folder)["indexes"][kind][2]
        if kind == "heads":  # format 2: per-head cells and codes, searched by the reader's own code (all heads)
            hc = load_corpus(str(folder), cache=CorpusCache())._head_codes(2)
            heads = list(range(hc.centroids.shape[0]))
            nprobe = head_codes_nprobe(info, len(heads))
            found = np.stack([hc.search(q, heads, nprobe, 51)[1] for q in X[rows]])
        else:
            index = faiss.read_index(str(folder / info["file"]))
            faiss.extract_index_ivf(index).nprobe = info["nprobe"]
            _, found = index.search(X[rows], 51)
        got[name] = indexing.recall(indexing.without_self(found, rows, 50), truth)
    assert got["streamed"] >= got["two-pass"] - 0.03, got
    assert got["streamed"] >= 0.9, got


def test_killed_after_training_resumes_to_the_same_corpus(builds, tmp_path):
    streamed, _, calls = builds
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "corpus_builder", "build", "--model", MINILM, "--source", DOCS, "--out", str(out),
           "--max-sentences", "150", "--workers", "0", "--exact-limit", "0", "--recall-queries", "60",
           "--layers", "2", "--shard-chars", "4000", "--quiet"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    trained_on = max(calls["trained"][0])
    marker = out / cf.build_shard_done_file(trained_on + 1)
    deadline = time.time() + 600
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the build finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (out / cf.BUILD_DIR / "streaming.json").exists()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resuming" in done.stderr
    for rel in (cf.SENTENCES_DIR, cf.TOKENS_DIR):
        assert _table(out, rel) == _table(streamed, rel)
    a, b = cf.read_card(out), cf.read_card(streamed)
    assert a["counts"] == b["counts"]
    for kind in cf.KINDS:
        x, y = a["indexes"][kind][2], b["indexes"][kind][2]
        assert x["vectors"] == y["vectors"]
        assert x.get("nlist") == y.get("nlist") and x["factory"] == y["factory"]  # heads (format 2): no nlist
        assert abs(x["recall_at_50"] - y["recall_at_50"]) <= 0.03


def _without_timings(indexes: dict) -> dict:
    return {kind: {layer: {k: v for k, v in st.items() if k != "seconds_finish"} for layer, st in per.items()}
            for kind, per in indexes.items()}


def test_indexes_finished_in_worker_processes_equal_the_in_process_ones(builds, tmp_path, monkeypatch):
    """The training and the index stage in two worker processes (index_workers, as on a multi-core machine
    with large indexes): every index file is byte-identical to the in-process build's, and so is the card.
    (Each worker has one thread, the builder's process two: the k-means is the builder's own, in torch;
    FAISS's k-means, used before S21, rounded differently on another thread count.)"""
    from corpus_builder import build, index_workers

    streamed, _, _ = builds
    started = []
    real_init = index_workers.IndexWorkers.__init__
    monkeypatch.setattr(index_workers, "process_count", lambda jobs, *a, **k: 2)
    monkeypatch.setattr(index_workers.IndexWorkers, "__init__",
                        lambda self, n, threads: started.append((n, threads)) or real_init(self, n, threads))
    out = build(MINILM, DOCS, str(tmp_path / "workers"), **OPTS)
    assert started and started[0][0] == 2
    a, b = _without_timings(cf.read_card(out)["indexes"]), _without_timings(cf.read_card(streamed)["indexes"])
    assert a == b
    files = sorted(p.relative_to(streamed) for p in (streamed / cf.INDEX_DIR).rglob("*") if p.is_file())
    assert files and files == sorted(p.relative_to(out) for p in (out / cf.INDEX_DIR).rglob("*") if p.is_file())
    assert any(rel.name.startswith("embedding-") for rel in files)
    for rel in files:
        assert (out / rel).read_bytes() == (streamed / rel).read_bytes(), rel


def test_a_failing_index_worker_names_its_index(tmp_path, monkeypatch):
    """A worker that cannot finish its index (here: a shard's codes file cut short) stops the build with
    a message naming the index and saying it can be resumed; no worker process is left running."""
    from corpus_builder import BuildError, build, builder, index_workers

    made = []
    real_init = index_workers.IndexWorkers.__init__
    monkeypatch.setattr(index_workers, "process_count", lambda jobs, *a, **k: 2)
    monkeypatch.setattr(index_workers.IndexWorkers, "__init__",
                        lambda self, n, threads: made.append(self) or real_init(self, n, threads))
    real_stage = builder.Builder._index_stage

    def damaged(self, progress):
        codes = sorted((self.out / cf.BUILD_DIR / "codes" / cf.index_stem("embedding", 2)).glob("shard-*.npy"))
        codes = [p for p in codes if p.name.count(".") == 1]  # the RaBitQ codes, not cells or truth
        codes[0].write_bytes(codes[0].read_bytes()[:40])
        return real_stage(self, progress)

    monkeypatch.setattr(builder.Builder, "_index_stage", damaged)
    with pytest.raises(BuildError) as err:
        build(MINILM, DOCS, str(tmp_path / "damaged"), **OPTS)
    msg = str(err.value)
    assert "the embedding index of layer 2" in msg and "resumed" in msg and "\n" not in msg
    assert made and all(p.poll() is not None for w in made for p in w.procs)


class _Noisy:
    """An index job that writes to file descriptor 1, as a C library does (FAISS when verbose), then answers."""

    def work(self, value):
        os.write(1, b"\x80\x05 not an answer\n")
        print("nor this")
        return value * 2


def test_index_worker_answers_survive_writes_to_its_stdout():
    from corpus_builder import index_workers

    workers = index_workers.IndexWorkers(1, 1)
    try:
        got = dict(workers.run([("work", _Noisy(), (21,)), ("work", _Noisy(), (5,))], ["a", "b"]))
    finally:
        workers.close()
    assert got == {0: 42, 1: 10}


def test_a_garbled_worker_answer_is_an_error_not_a_hang(monkeypatch):
    """Were an answer ever unreadable, the build stops with a message instead of waiting forever."""
    import pickle

    from corpus_builder import index_workers, pipes

    real = pipes.recv
    monkeypatch.setattr(pipes, "recv", lambda stream: pickle.loads(b"\xcb" + real(stream).__repr__().encode()))
    workers = index_workers.IndexWorkers(1, 1)
    with pytest.raises(index_workers.IndexWorkerError) as err:
        dict(workers.run([("work", _Noisy(), (1,))], ["the test index"]))
    workers.kill()
    assert "the test index" in str(err.value) and "could not be read" in str(err.value)


def test_a_garbled_spacy_worker_answer_is_an_error_not_a_hang(monkeypatch):
    import pickle

    from corpus_builder import annotate, pipes

    real = pipes.recv
    monkeypatch.setattr(pipes, "recv", lambda stream: pickle.loads(b"\xcb" + real(stream).__repr__().encode()))
    worker = annotate.Worker("en_core_web_sm")
    try:
        with pytest.raises(annotate.SpacyError, match="the spaCy worker's answer could not be read"):
            worker.info()
    finally:
        worker.close()
    assert worker.proc.wait(timeout=10) is not None


def test_openblas_kernels_chosen_only_for_an_amd_cpu_with_avx512():
    from corpus_builder import pipes

    avx512 = pipes.AVX512_CORE_FLAGS | {"avx2", "fma"}
    assert pipes.openblas_core(avx512, "AMD EPYC 9B45") == "SkylakeX"
    assert pipes.openblas_core({"avx2", "fma", "avx512f"}, "AMD EPYC 7B13") is None  # AVX-512 in part: not SkylakeX's
    assert pipes.openblas_core(avx512, "Intel(R) Xeon(R) Platinum 8481C") is None  # OpenBLAS knows Intel's own
    assert pipes.openblas_core(set(), "") is None


def test_a_worker_runs_the_openblas_kernels_its_environment_names(monkeypatch):
    """In a real subprocess with worker_env: numpy's OpenBLAS reports the kernels chosen (this CPU's choice,
    or the caller's own setting, which is kept)."""
    from corpus_builder import pipes
    from exbert_hub.analyses.lens_kernel import cpu_flags

    probe = ("import numpy, threadpoolctl; print([i.get('architecture') for i in threadpoolctl.threadpool_info()"
             " if i['internal_api'] == 'openblas'][0])")
    monkeypatch.delenv("OPENBLAS_CORETYPE", raising=False)
    env = pipes.worker_env(threads=1)
    core = pipes.openblas_core(*cpu_flags())
    assert env.get("OPENBLAS_CORETYPE") == core
    got = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True).stdout.strip()
    if core:
        assert got == core
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    env = pipes.worker_env(threads=1)
    assert env["OPENBLAS_CORETYPE"] == "Haswell"
    got = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert got == "Haswell"
