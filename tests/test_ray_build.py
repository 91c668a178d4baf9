"""corpus_builder --ray: the same corpus as the local build, on a local Ray cluster (2 CPUs); kill and resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from tolerances import f32_rel_bound

from exbert_hub import corpus_format as cf

ray = pytest.importorskip("ray", reason="pip install 'exbert-hub[ray]'")

ROOT = Path(__file__).resolve().parents[1]
# small shards: many of them, so the pipeline has work in flight and a kill lands between shards
OPTIONS = dict(shard_chars=1500, batch_size=8, exact_limit=0, recall_queries=60, keep_vectors=True, progress=False)


def _source(path: Path) -> Path:
    from corpus_builder.sources import _python_docs

    docs = []
    for doc in _python_docs():
        docs.append(doc)
        if len(docs) >= 40:
            break
    # repeats: the Ray build must leave them out like the local one (the seen set crosses shards)
    path.write_text("\n\n".join(docs) + "\n\n" + "\n\n".join(docs[:6]) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def built(tiny, tmp_path_factory, cluster):
    """(source, local corpus, Ray corpus) of the same settings."""
    from corpus_builder import build

    root = tmp_path_factory.mktemp("ray")
    source = _source(root / "docs.txt")
    model = str(tiny("bert"))
    local = build(model, str(source), str(root / "local"), workers=0, **OPTIONS)
    on_ray = build(model, str(source), str(root / "ray"), ray="local", **OPTIONS)  # joins the fixture's cluster
    return source, local, on_ray


def _tables(folder: Path) -> dict:
    import pyarrow.parquet as pq

    return {sub: pq.read_table(sorted((folder / sub).glob("*.parquet"))).to_pydict()
            for sub in (cf.SENTENCES_DIR, cf.TOKENS_DIR)}


def _kept_vectors(folder: Path, kind: str, layer: int) -> np.ndarray:
    files = sorted((folder / cf.kept_vectors_dir(kind, layer)).glob("*.npy"))
    assert files, folder
    return np.concatenate([np.load(f) for f in files]).astype(np.float32)


def _assert_same_corpus(a: Path, b: Path) -> None:
    ta, tb = _tables(a), _tables(b)
    assert len(ta[cf.SENTENCES_DIR]["text"]) > 40
    assert ta == tb  # same sentences in the same order, same ids, tokens and spaCy annotations
    ma, mb = cf.read_card(a), cf.read_card(b)
    assert ma["counts"] == mb["counts"] and ma["counts"]["duplicate_sentences_skipped"] > 0
    for kind in cf.KINDS:
        for layer in (0, 1):
            va, vb = _kept_vectors(a, kind, layer), _kept_vectors(b, kind, layer)
            assert va.shape == vb.shape and va.shape[0] == ma["counts"]["vectors"]
            # float32 rounding of another batch's padding, then float16 storage: at most one float16 step
            # (2**-11 relative, values <= 1) above the float32 bound of the tiny model (2 layers, 32 dims)
            bound = f32_rel_bound(32, depth=2) + 2.0 ** -11
            assert np.abs(va - vb).max() <= bound, (kind, layer, float(np.abs(va - vb).max()))
            sa, sb = ma["indexes"][kind][layer], mb["indexes"][kind][layer]
            assert sa["tier"] == sb["tier"] == cf.COMPRESSED
            assert sa["vectors"] == sb["vectors"]
            assert abs(sa["recall_at_50"] - sb["recall_at_50"]) <= 0.02, (kind, layer, sa, sb)


def test_ray_build_equals_local_build(built):
    _, local, on_ray = built
    _assert_same_corpus(local, on_ray)
    timings = cf.read_card(on_ray)["timings"]
    assert timings["resumed"] is False and timings["model_forward_all_shards"] > 0


def test_ray_corpus_searches_like_the_local_one(built, tiny):
    import exbert_hub
    from exbert_hub.corpus import load_corpus

    _, local, on_ray = built
    a_corpus, b_corpus = load_corpus(str(local)), load_corpus(str(on_ray))
    engine = exbert_hub.load(str(tiny("bert")))
    a = engine.analyze(a_corpus.sentence(7))
    ha = a_corpus.search(a, token=2, layer=1, by="embedding", k=10)
    hb = b_corpus.search(a, token=2, layer=1, by="embedding", k=10)
    assert (7, 2) in [(h.sentence_id, h.token_index) for h in hb]
    assert [(h.sentence_id, h.token_index) for h in ha][:3] == [(h.sentence_id, h.token_index) for h in hb][:3]


def test_bad_ray_address_is_one_line(tmp_path, tiny, built):
    source = built[0]
    proc = subprocess.run(_cmd(str(tiny("bert")), source, tmp_path / "x", "127.0.0.1:1"), cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: --ray 127.0.0.1:1: could not connect"), last


def _cmd(model: str, source: Path, out: Path, address: str) -> list[str]:
    return [sys.executable, "-m", "corpus_builder", "build", "--model", model, "--source", str(source), "--out", str(out),
            "--shard-chars", "1500", "--batch-size", "8", "--exact-limit", "0", "--recall-queries", "60",
            "--keep-vectors", "--quiet", "--ray", address]


def _env() -> dict:
    return dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
                PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def test_killed_driver_resumes_to_the_same_corpus(built, tiny, tmp_path, cluster):
    """The driver (a subprocess on the fixture's cluster) is SIGKILLed after its first finished shard; the
    rerun keeps those shards, finishes, and the corpus equals the local build."""
    source, local, _ = built
    out = tmp_path / "killed"
    proc = subprocess.Popen(_cmd(str(tiny("bert")), source, out, cluster), cwd=ROOT, env=_env(), stderr=subprocess.PIPE)
    done_dir = out / cf.BUILD_DIR / cf.SHARD_DONE_DIR
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if done_dir.exists() and any(done_dir.glob("*.json")):
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the build ended before it could be killed: " + proc.stderr.read().decode()[-2000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    finished = [int(p.stem) for p in done_dir.glob("*.json")]
    kept = {n: (out / cf.sentences_file(n)).stat().st_mtime_ns for n in finished
            if (out / cf.sentences_file(n)).exists()}
    assert kept and cf.read_card(out) is None

    rerun = subprocess.run(_cmd(str(tiny("bert")), source, out, cluster), cwd=ROOT, env=_env(),
                           capture_output=True, text=True, timeout=180)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resuming" in rerun.stderr
    meta = cf.read_card(out)
    assert meta["timings"]["resumed"] is True
    assert len(finished) < meta["counts"]["shards"]
    # the shards finished before the kill were kept, not redone
    assert {n: (out / cf.sentences_file(n)).stat().st_mtime_ns for n in kept} == kept
    _assert_same_corpus(local, out)
