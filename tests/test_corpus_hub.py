"""A Hub corpus downloads only its own files, into the HF cache, with a progress bar naming it.

No network: ``huggingface_hub.snapshot_download`` and ``HfApi.dataset_info`` are replaced by fakes that
record their arguments and serve a corpus built here; the fake download applies the allow_patterns it was
given (with huggingface_hub's own filter) to a Hub repository that also holds files a reader never needs.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest

from exbert_hub import corpus_format as cf


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    import tiny_models

    from corpus_builder import build

    model = tiny_models.build("bert", tmp_path_factory.mktemp("model") / "tiny-bert")
    out = build(str(model), "builtin:python-docs", str(tmp_path_factory.mktemp("built") / "corpus"),
                max_sentences=20, workers=0, progress=False, layers=[1])
    return out


@pytest.fixture()
def hub(built, tmp_path, monkeypatch):
    """A Hub repo = the corpus + 3 files a reader must not fetch; the download copies what the patterns select."""
    import huggingface_hub
    from huggingface_hub.utils import filter_repo_objects

    from exbert_hub import corpus as corpus_mod

    repo = tmp_path / "repo"
    shutil.copytree(built, repo)
    for extra in ("vectors/heads-layer01/shard-00000.npy", "raw/wikipedia.jsonl", ".build/state.json"):
        (repo / extra).parent.mkdir(parents=True, exist_ok=True)
        (repo / extra).write_bytes(b"x" * 1000)
    names = sorted(p.relative_to(repo).as_posix() for p in repo.rglob("*") if p.is_file())
    state = SimpleNamespace(calls=[], fetched=None)

    def dataset_info(self, repo_id, revision=None, files_metadata=False, **kw):
        return SimpleNamespace(sha="b" * 40, siblings=[SimpleNamespace(rfilename=n, size=(repo / n).stat().st_size,
                                                                       lfs=None) for n in names])

    def snapshot_download(repo_id, **kw):
        state.calls.append(dict(kw, repo_id=repo_id))
        snap = tmp_path / "hf-cache" / "datasets--someone--corpus" / "snapshots" / kw["revision"]
        state.fetched = list(filter_repo_objects(names, allow_patterns=kw.get("allow_patterns"),
                                                 ignore_patterns=kw.get("ignore_patterns")))
        bar = kw["tqdm_class"](state.fetched, desc=f"Fetching {len(state.fetched)} files")  # as hf_thread_map does
        for rel in bar:
            (snap / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(repo / rel, snap / rel)
        bar.close()
        return str(snap)

    monkeypatch.setattr(corpus_mod, "_offline", lambda: False)
    monkeypatch.setattr(corpus_mod, "_HUB_MEMO", {})
    monkeypatch.setattr(huggingface_hub.HfApi, "dataset_info", dataset_info)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return state


def test_hub_corpus_fetches_only_its_files_into_the_cache_with_a_named_progress_bar(hub, built, capsys, monkeypatch):
    from huggingface_hub.utils import tqdm as hf_tqdm

    from exbert_hub.corpus import CorpusCache, load_corpus

    monkeypatch.setenv("TQDM_POSITION", "-1")  # huggingface_hub's bars: on even without a terminal
    corpus = load_corpus("someone/corpus", cache=CorpusCache())
    (call,) = hub.calls
    assert call["repo_id"] == "someone/corpus" and call["repo_type"] == "dataset"
    assert call["revision"] == "b" * 40  # the commit whose files were listed
    assert "local_dir" not in call and "cache_dir" not in call  # the HF cache
    assert call["allow_patterns"] == list(cf.CORPUS_PATTERNS)
    fetched = set(hub.fetched)
    assert fetched == {p.relative_to(built).as_posix() for p in built.rglob("*") if p.is_file()}
    assert not {n for n in fetched if n.startswith(("vectors/", "raw/", ".build/"))}
    assert issubclass(call["tqdm_class"], hf_tqdm)  # respects HF_HUB_DISABLE_PROGRESS_BARS
    err = capsys.readouterr().err
    assert f"corpus someone/corpus: Fetching {len(fetched)} files" in err and "100%" in err
    assert corpus.num_sentences == 20 and corpus.label == "someone/corpus"
    assert "hf-cache" in str(corpus.folder)


def test_progress_bar_is_off_when_huggingface_hub_bars_are_off(hub, capsys, monkeypatch):
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

    from exbert_hub.corpus import CorpusCache, load_corpus

    disable_progress_bars()
    try:
        load_corpus("someone/corpus", cache=CorpusCache())
    finally:
        enable_progress_bars()
    assert "corpus someone/corpus" not in capsys.readouterr().err
