"""Corpora opened for visitors of a served app: the policy first, Hub downloads of the corpus's own files
only (size checked), files confined to the corpus folder, a bounded cache, messages without server paths
or existence hints, damaged files as one-line CorpusErrors, and the model fingerprint."""

from __future__ import annotations

import os
import shutil
import threading
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from exbert_hub import corpus_format as cf

DOCS = "builtin:python-docs"


# --- fixtures ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A tiny random BERT of this module's own (the fingerprint test overwrites a copy of it)."""
    import tiny_models

    return tiny_models.build("bert", tmp_path_factory.mktemp("model") / "tiny-bert")


@pytest.fixture(scope="module")
def engine(model_dir):
    import exbert_hub

    return exbert_hub.load(str(model_dir), cache=exbert_hub.ModelCache())


@pytest.fixture(scope="module")
def built(model_dir, engine, tmp_path_factory):
    """A finished exact-tier corpus of the tiny BERT (30 sentences, layers 0 and 1)."""
    from corpus_builder import build

    return build(str(model_dir), DOCS, str(tmp_path_factory.mktemp("built") / "corpus"), max_sentences=30,
                 workers=0, progress=False)


@pytest.fixture(scope="module")
def built_ivf(model_dir, engine, tmp_path_factory):
    """The same with compressed (IVF) indexes."""
    from corpus_builder import build

    return build(str(model_dir), DOCS, str(tmp_path_factory.mktemp("ivf") / "corpus"), max_sentences=30,
                 workers=0, progress=False, exact_limit=0, recall_queries=20, layers=[1])


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True)
    return dst


def _edit_card(folder: Path, change) -> None:
    meta = cf.read_card(folder)
    change(meta)
    cf.write_card(folder, meta, "edited\n")


def _open(name, **kw):
    from exbert_hub.corpus import CorpusCache, load_corpus

    return load_corpus(str(name), cache=kw.pop("cache", None) or CorpusCache(), **kw)


def _one_line(err) -> str:
    text = str(err.value if hasattr(err, "value") else err)
    assert "\n" not in text and len(text) < 400, text
    return text


# --- (a) the policy first; folders never looked at when not allowed ---------------------------------------
def test_policy_is_asked_first(built, tmp_path):
    from exbert_hub.policy import Policy, PolicyError

    strict = Policy(corpora=("someone/*",))
    with pytest.raises(PolicyError, match="does not open folders for visitors") as err:
        _open(built, policy=strict, remote=True)
    _one_line(err)
    with pytest.raises(PolicyError, match="does not open the corpus 'other/name'"):
        _open("other/name", policy=strict, remote=True)
    # the operator's own corpus is always allowed, and loopback visitors may name folders
    assert _open(built, policy=strict.with_operator(corpora=[str(built)]), remote=True).num_sentences == 30
    assert _open(built, policy=strict, remote=False).num_sentences == 30


def test_hub_id_shaped_name_is_never_a_folder_for_visitors(built, tmp_path, monkeypatch):
    """A relative folder 'someone/corpus' exists in the working directory: a visitor's 'someone/corpus'
    still means the Hub dataset, never that folder (the operator, without policy, gets the folder)."""
    import huggingface_hub

    from exbert_hub.corpus import CorpusError
    from exbert_hub.policy import Policy

    monkeypatch.chdir(tmp_path)
    _copy(built, tmp_path / "someone" / "corpus")
    asked = []

    def fake_snapshot_download(repo_id, **kw):
        asked.append(repo_id)
        raise huggingface_hub.errors.LocalEntryNotFoundError("Cannot find an appropriate cached snapshot folder")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    with pytest.raises(CorpusError, match="could not get the corpus 'someone/corpus' from the Hugging Face Hub") as err:
        _open("someone/corpus", policy=Policy(corpora=("someone/*",)), remote=True)
    assert asked == ["someone/corpus"] and str(tmp_path) not in _one_line(err)
    assert _open("someone/corpus").num_sentences == 30 and asked == ["someone/corpus"]


def test_tilde_is_not_expanded_for_visitors(built, tmp_path, monkeypatch):
    from exbert_hub.corpus import CorpusError
    from exbert_hub.policy import Policy

    home = tmp_path / "home"
    _copy(built, home / "corp")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    open_paths = Policy(local_paths=True)
    with pytest.raises(CorpusError, match="cannot open the corpus '~/corp'") as err:
        _open("~/corp", policy=open_paths, remote=True)
    assert str(home) not in _one_line(err)
    assert _open("~/corp").num_sentences == 30  # the operator's ~ is the operator's home


# --- (b) Hub corpora: only the corpus's files, size checked first ------------------------------------------
def _fake_siblings(folder: Path, extra: dict[str, int]):
    files = {p.relative_to(folder).as_posix(): p.stat().st_size for p in folder.rglob("*") if p.is_file()}
    files.update(extra)
    return [SimpleNamespace(rfilename=name, size=size, lfs=None) for name, size in sorted(files.items())]


@pytest.fixture()
def fake_hub(built, monkeypatch):
    """The Hub online, holding ``built`` plus files a reader does not need (kept vectors: 10 GB, a binary)."""
    import huggingface_hub

    from exbert_hub import corpus as corpus_mod

    state = SimpleNamespace(downloads=[], infos=[], folder=built,
                            extra={"vectors/embedding-layer01/shard-00000.npy": 10**10, "model.bin": 10**10,
                                   ".build/state.json": 10, "data/notes.txt": 5})

    def dataset_info(self, repo_id, revision=None, files_metadata=False, **kw):
        state.infos.append((repo_id, revision, files_metadata))
        return SimpleNamespace(sha="a" * 40, siblings=_fake_siblings(state.folder, state.extra))

    def snapshot_download(repo_id, repo_type=None, revision=None, allow_patterns=None, **kw):
        state.downloads.append({"repo_id": repo_id, "repo_type": repo_type, "revision": revision,
                                "allow_patterns": allow_patterns, **kw})
        return str(state.folder)

    monkeypatch.setattr(corpus_mod, "_offline", lambda: False)
    monkeypatch.setattr(corpus_mod, "_HUB_MEMO", {})
    monkeypatch.setattr(huggingface_hub.HfApi, "dataset_info", dataset_info)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    return state


def test_hub_download_takes_only_the_corpus_files(fake_hub, built):
    from huggingface_hub.utils import filter_repo_objects

    from exbert_hub.policy import Policy

    corpus = _open("someone/corpus", policy=Policy(corpora=("someone/*",)), remote=True)
    assert corpus.num_sentences == 30 and corpus.label == "someone/corpus"
    assert fake_hub.infos == [("someone/corpus", None, True)]
    (call,) = fake_hub.downloads
    assert call["repo_type"] == "dataset" and call["revision"] == "a" * 40  # the commit whose size was checked
    assert not call.get("local_dir") and not call.get("cache_dir")  # into the HF cache
    # what huggingface_hub downloads with these patterns: the card, the parquet shards, the indexes
    names = [s.rfilename for s in _fake_siblings(built, fake_hub.extra)]
    taken = set(filter_repo_objects(names, allow_patterns=call["allow_patterns"]))
    assert taken == {n for n in names if n == "README.md" or n.endswith(".parquet") or n.startswith("index/")}
    assert {"README.md", "data/tokens/shard-00000.parquet"} <= taken
    assert not taken & set(fake_hub.extra)


def test_hub_corpus_over_the_size_limit_is_refused_before_downloading(fake_hub, built):
    from exbert_hub.policy import Policy, PolicyError

    size = sum(p.stat().st_size for p in built.rglob("*") if p.is_file())
    with pytest.raises(PolicyError, match=r"the corpus 'someone/corpus' is .* on the Hub; this server opens corpora "
                                          r"of at most") as err:
        _open("someone/corpus", policy=Policy(corpora=("someone/*",), max_corpus_bytes=size // 2), remote=True)
    _one_line(err)
    assert fake_hub.downloads == []
    # the 20 GB of other files are not counted; the operator's own corpora have no limit
    assert _open("someone/corpus", policy=Policy(corpora=("someone/*",), max_corpus_bytes=size * 2), remote=True)
    operator = Policy(corpora=(), max_corpus_bytes=10).with_operator(corpora=["someone/corpus"])
    assert _open("someone/corpus", policy=operator, remote=True).num_sentences == 30


def test_cached_hub_corpus_over_the_limit_offline(built, monkeypatch):
    """Offline the Hub cannot give sizes: the cached files are measured before being read."""
    import huggingface_hub

    from exbert_hub import corpus as corpus_mod
    from exbert_hub.policy import Policy, PolicyError

    monkeypatch.setattr(corpus_mod, "_HUB_MEMO", {})
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id, **kw: str(built))
    with pytest.raises(PolicyError, match="this server opens corpora of at most"):
        _open("someone/corpus", policy=Policy(corpora=("someone/*",), max_corpus_bytes=1000), remote=True)


def test_hub_errors_are_one_line_without_paths(monkeypatch, tmp_path):
    import huggingface_hub

    from exbert_hub import corpus as corpus_mod
    from exbert_hub.corpus import CorpusError
    from exbert_hub.policy import Policy

    monkeypatch.setattr(corpus_mod, "_offline", lambda: False)
    monkeypatch.setattr(corpus_mod, "_HUB_MEMO", {})

    def not_found(self, repo_id, **kw):
        import httpx2

        response = httpx2.Response(404, request=httpx2.Request("GET", "https://huggingface.co/api/datasets/x"))
        raise huggingface_hub.errors.RepositoryNotFoundError(f"404 for {tmp_path}/secret\nmore text", response=response)

    monkeypatch.setattr(huggingface_hub.HfApi, "dataset_info", not_found)
    with pytest.raises(CorpusError, match="no such dataset") as err:
        _open("someone/missing", policy=Policy(corpora=("someone/*",)), remote=True)
    assert str(tmp_path) not in _one_line(err)

    def broken(self, repo_id, **kw):
        raise RuntimeError(f"disk trouble in {tmp_path}/cache")

    monkeypatch.setattr(huggingface_hub.HfApi, "dataset_info", broken)
    with pytest.raises(CorpusError, match=r"the Hub answered with an error \(RuntimeError\)") as err:
        _open("someone/missing", policy=Policy(corpora=("someone/*",)), remote=True)
    assert str(tmp_path) not in _one_line(err)


def test_a_hub_cache_layout_opens(built, tmp_path, monkeypatch):
    """Files of a snapshot are links into the repo's blobs/ folder: allowed, nothing else outside."""
    import huggingface_hub

    from exbert_hub import corpus as corpus_mod
    from exbert_hub.corpus import CorpusError

    repo = tmp_path / "datasets--someone--corpus"
    snap = repo / "snapshots" / ("b" * 40)
    (repo / "blobs").mkdir(parents=True)
    for i, p in enumerate(sorted(q for q in built.rglob("*") if q.is_file())):
        rel = p.relative_to(built)
        blob = repo / "blobs" / f"{i:040d}"
        shutil.copyfile(p, blob)
        (snap / rel).parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, (snap / rel).parent), snap / rel)
    monkeypatch.setattr(corpus_mod, "_HUB_MEMO", {})
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda repo_id, **kw: str(snap))
    corpus = _open("someone/corpus")
    assert corpus.num_sentences == 30 and (repo / "blobs").resolve() in corpus.location.roots
    # a link to a file beside the repo's folder is still refused
    (tmp_path / "outside.parquet").write_bytes((built / cf.tokens_file(0)).read_bytes())
    link = snap / cf.tokens_file(0)
    link.unlink()
    os.symlink(tmp_path / "outside.parquet", link)
    monkeypatch.setattr(corpus_mod, "_HUB_MEMO", {})
    with pytest.raises(CorpusError, match="leads outside the corpus folder"):
        _open("someone/corpus")


# --- (c) files confined to the corpus folder --------------------------------------------------------------
@pytest.mark.parametrize("file,message", [
    ("../../../etc", "outside the corpus folder"),
    ("/dev/zero", "outside the corpus folder"),
    ("index/../../x", "outside the corpus folder"),
    ("~/x", "outside the corpus folder"),
    ("index/nothing-here", "is incomplete: it lacks 'index/nothing-here'"),
])
def test_card_files_outside_the_corpus_are_refused(built, tmp_path, file, message):
    from exbert_hub.corpus import CorpusError

    for tier in (cf.EXACT, cf.COMPRESSED):
        folder = _copy(built, tmp_path / f"c-{tier}")

        def change(meta):
            meta["indexes"]["embedding"][1]["file"] = file
            meta["indexes"]["embedding"][1]["tier"] = tier

        _edit_card(folder, change)
        with pytest.raises(CorpusError, match=message) as err:
            _open(folder)
        assert str(tmp_path) not in _one_line(err) and f"c-{tier}" in str(err.value)
        shutil.rmtree(folder)


def test_links_and_special_files_are_refused(built, tmp_path):
    from exbert_hub.corpus import CorpusError

    outside = tmp_path / "outside"
    outside.mkdir()
    def moved_out(p: Path) -> None:
        os.symlink(_move(p, outside), p)

    def replaced(p: Path, make) -> None:
        p.unlink()
        make(p)

    cases = {
        "parquet shard linked outside": (cf.tokens_file(0), moved_out, "leads outside"),
        "npy shard linked to /dev/zero": (f"{cf.index_file('heads', 0, cf.EXACT)}/shard-00000.npy",
                                          lambda p: replaced(p, lambda q: os.symlink("/dev/zero", q)), "leads outside"),
        "card linked to /dev/zero": (cf.CARD_FILE, lambda p: replaced(p, lambda q: os.symlink("/dev/zero", q)),
                                     "leads outside"),
        "tables folder linked outside": (cf.SENTENCES_DIR, moved_out, "leads outside"),
        "a fifo as npy shard": (f"{cf.index_file('embedding', 1, cf.EXACT)}/shard-00000.npy",
                                lambda p: replaced(p, os.mkfifo), "is not a regular file"),
    }
    for i, (what, (rel, damage, message)) in enumerate(cases.items()):
        folder = _copy(built, tmp_path / f"case{i}")
        damage(folder / rel)
        with pytest.raises(CorpusError, match=message) as err:
            _open(folder)
        assert str(tmp_path) not in _one_line(err), what
    # links that stay inside the corpus are fine
    folder = _copy(built, tmp_path / "inside")
    shard = folder / cf.tokens_file(0)
    shutil.move(shard, folder / "data" / "kept.bin")
    os.symlink("../kept.bin", shard)
    assert _open(folder).num_sentences == 30


def _move(path: Path, where: Path) -> Path:
    target = where / f"{path.parent.name}-{path.name}"
    shutil.move(str(path), str(target))
    return target


def test_damaged_tables_and_cards_are_one_line_errors(built, tmp_path):
    from exbert_hub.corpus import CorpusError

    folder = _copy(built, tmp_path / "garbage-parquet")
    (folder / cf.tokens_file(0)).write_bytes(b"not parquet at all" * 10)
    with pytest.raises(CorpusError, match=r"'garbage-parquet' is damaged: data/tokens/shard-00000.parquet cannot be read"):
        _open(folder)

    folder = _copy(built, tmp_path / "bad-yaml")
    (folder / cf.CARD_FILE).write_text("---\nexbert_corpus: [unclosed\n---\n")
    with pytest.raises(CorpusError, match="'bad-yaml' has a damaged card") as err:
        _open(folder)
    _one_line(err)

    folder = _copy(built, tmp_path / "bad-layers")
    _edit_card(folder, lambda m: m.update(layers=[0, 7]))
    with pytest.raises(CorpusError, match=r"damaged card: layers \[0, 7\] for 2 layers"):
        _open(folder)

    folder = _copy(built, tmp_path / "bad-counts")
    _edit_card(folder, lambda m: m["indexes"]["heads"][0].update(vectors=5))
    with pytest.raises(CorpusError, match="its heads index for layer 0 holds .* vectors, its card says 5"):
        _open(folder)


# --- (d) the bounded cache -----------------------------------------------------------------------------
def test_cache_is_bounded_by_count_and_bytes(built, tmp_path):
    from exbert_hub.corpus import CorpusCache, load_corpus

    folders = [_copy(built, tmp_path / f"c{i}") for i in range(3)]
    cache = CorpusCache(max_corpora=2, max_bytes=10**12)
    first = load_corpus(str(folders[0]), cache=cache)
    assert load_corpus(str(folders[0]), cache=cache) is first  # cached
    load_corpus(str(folders[1]), cache=cache)
    load_corpus(str(folders[0]), cache=cache)  # c0 used again: c1 is now the least recently used
    load_corpus(str(folders[2]), cache=cache)
    assert cache.labels() == ["c0", "c2"] and len(cache) == 2
    assert load_corpus(str(folders[0]), cache=cache) is first

    one = first.nbytes
    assert one > 0 and first.disk_bytes > 0
    cache = CorpusCache(max_corpora=10, max_bytes=int(one * 1.5))
    for f in folders:
        load_corpus(str(f), cache=cache)
    assert cache.labels() == ["c2"] and cache.nbytes <= one * 1.5
    cache.configure(max_corpora=1, max_bytes=1)  # the last one opened always stays
    assert cache.labels() == ["c2"]

    from exbert_hub.corpus import CORPUS_CACHE

    assert CORPUS_CACHE.max_corpora >= 1 and CORPUS_CACHE.max_bytes > 0


def test_cache_opens_a_corpus_once_across_threads(built, tmp_path):
    from exbert_hub import corpus as corpus_mod
    from exbert_hub.corpus import CorpusCache, load_corpus

    folder = _copy(built, tmp_path / "shared")
    cache = CorpusCache()
    opened, results = [], []
    real_init = corpus_mod.Corpus.__init__

    def counting_init(self, *a, **kw):
        opened.append(1)
        real_init(self, *a, **kw)

    corpus_mod.Corpus.__init__ = counting_init
    try:
        threads = [threading.Thread(target=lambda: results.append(load_corpus(str(folder), cache=cache)))
                   for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        corpus_mod.Corpus.__init__ = real_init
    assert len(opened) == 1 and len({id(c) for c in results}) == 1


# --- 3. messages without paths and without existence hints -------------------------------------------
def test_visitor_messages_do_not_tell_what_exists(built, tmp_path, monkeypatch):
    from exbert_hub.corpus import CorpusError
    from exbert_hub.policy import Policy

    monkeypatch.chdir(tmp_path)
    (tmp_path / "a-file").write_text("x")
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "README.md").write_text("# a folder\n")
    (tmp_path / "unfinished" / cf.BUILD_DIR).mkdir(parents=True)
    (tmp_path / "broken-card").mkdir()
    (tmp_path / "broken-card" / "README.md").write_text("---\nexbert_corpus: [\n---\n")
    policy = Policy(local_paths=True)
    messages = {}
    for name in ("./missing", "./a-file", "./plain", "./unfinished", "./broken-card"):
        with pytest.raises(CorpusError) as err:
            _open(name, policy=policy, remote=True)
        messages[name] = _one_line(err).replace(repr(name), "NAME")
        assert str(tmp_path) not in messages[name]
    assert len(set(messages.values())) == 1, messages
    assert messages["./missing"] == ("cannot open the corpus NAME: it is not a corpus folder this server can open, "
                                   "nor a Hub dataset id like user/name")
    # the operator is told what is there
    with pytest.raises(CorpusError, match="is a file"):
        _open("a-file")
    with pytest.raises(CorpusError, match="unfinished build"):
        _open("unfinished")


def test_faiss_errors_become_one_line(built_ivf, engine, tmp_path):
    from exbert_hub.corpus import CorpusError

    folder = _copy(built_ivf, tmp_path / "ivf-damaged")
    index_file = folder / cf.index_file("embedding", 1, cf.COMPRESSED)
    index_file.write_bytes(b"\x00garbage" * 100)
    corpus = _open(folder)
    a = engine.analyze(corpus.sentence(0))
    with pytest.raises(CorpusError) as err:
        corpus.search(a, token=1, layer=1)
    text = _one_line(err)
    assert text == ("the corpus 'ivf-damaged' is damaged: its embedding index for layer 1 cannot be read; "
                    "rebuild it or get it again")
    assert corpus.search(a, token=1, layer=1, by="heads", k=3)[0].score > 0.9  # the other index still works

    # an index of another width (a valid faiss file)
    import faiss

    faiss.write_index(faiss.IndexFlatIP(16), str(index_file))
    corpus = _open(folder)
    with pytest.raises(CorpusError, match=r"embedding-layer01.faiss holds 0 vectors of width 16, its card says "
                                          r"\d+ of width 32") as err:
        corpus.search(a, token=1, layer=1)
    _one_line(err)


def test_model_mismatch_message_has_no_folder(built, engine):
    from exbert_hub.corpus import CorpusModelMismatch

    corpus = _open(built)
    with pytest.raises(CorpusModelMismatch, match="built with the model 'tiny-bert' \\(a local model folder\\)") as err:
        corpus.check_model("bert-base-uncased")
    text = _one_line(err)
    assert str(built) not in text and str(Path(corpus.model).parent) not in text
    assert "'corpus'" in text  # the corpus by its folder's own name


# --- 4. wrong data ---------------------------------------------------------------------------------------
def test_vectors_of_the_wrong_width(built, tmp_path):
    from exbert_hub.corpus import CorpusError

    folder = _copy(built, tmp_path / "wide")
    shard = folder / cf.index_file("embedding", 1, cf.EXACT) / "shard-00000.npy"
    rows = np.load(shard).shape[0]
    np.save(shard, np.zeros((rows, 16), dtype=np.float16))
    with pytest.raises(CorpusError) as err:
        _open(folder)
    assert _one_line(err) == ("the corpus 'wide' is damaged: index/embedding-layer01/shard-00000.npy holds vectors "
                              "of width 16, its card says 32 (its embedding index for layer 1); rebuild it")
    np.save(shard, np.zeros((rows,), dtype=np.float16))
    with pytest.raises(CorpusError, match=r"shard-00000.npy holds an array of shape \(\d+,\), not vectors of width 32"):
        _open(folder)
    shard.write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(CorpusError, match="shard-00000.npy .* is not a readable .npy file"):
        _open(folder)


def test_fingerprint_in_the_card(built, engine):
    meta = cf.read_card(built)
    fp = meta["probe_fingerprint"]
    assert fp["text"] == cf.PROBE_TEXT and fp["tokens"] == len(engine.analyze(cf.PROBE_TEXT).tokens)
    assert sorted(fp["embedding"]) == meta["layers"] == [0, 1]
    assert all(len(v) == cf.PROBE_VALUES for v in fp["embedding"].values())


def test_other_weights_under_the_same_name_are_refused(model_dir, tmp_path):
    """One random tiny BERT builds the corpus; another (same folder name, same config, other seed) is refused
    by load_corpus(engine=) and search(engine=); the same weights with float32-level noise pass."""
    import torch
    import transformers

    import exbert_hub
    from corpus_builder import build
    from exbert_hub.corpus import CorpusModelMismatch

    folder = tmp_path / "tiny-bert"
    shutil.copytree(model_dir, folder)
    first = exbert_hub.load(str(folder), cache=exbert_hub.ModelCache())
    out = build(str(folder), DOCS, str(tmp_path / "corpus"), max_sentences=20, workers=0, progress=False)
    assert _open(out, engine=first).num_sentences == 20

    # the same weights, re-saved with relative noise 1e-6 (float32 rounding is ~1e-7): still the model
    model = transformers.BertForMaskedLM.from_pretrained(folder)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1 + 1e-6 * torch.randn_like(p))
    model.save_pretrained(folder)
    noisy = exbert_hub.load(str(folder), cache=exbert_hub.ModelCache())
    assert _open(out, engine=noisy).num_sentences == 20

    torch.manual_seed(1)
    other = transformers.BertForMaskedLM(model.config)
    other.save_pretrained(folder)  # same folder (= same name), same config, other weights
    second = exbert_hub.load(str(folder), cache=exbert_hub.ModelCache())
    assert second.name == first.name
    with pytest.raises(CorpusModelMismatch, match=r"the corpus 'corpus' was built with other weights of the model "
                                                  r"'tiny-bert' \(a local model folder\).*layer 0") as err:
        _open(out, engine=second)
    assert str(tmp_path) not in _one_line(err)
    corpus = _open(out)
    a = second.analyze("The cat sat on the mat.")
    with pytest.raises(CorpusModelMismatch, match="other weights"):
        corpus.search(a, token=2, layer=1, engine=second)
    with pytest.raises(CorpusModelMismatch, match="other weights"):  # the verdict is kept, raised again
        corpus.search(a, token=2, layer=1, engine=second)
    corpus.check_engine(first)  # the first model still passes on the same Corpus object
    assert corpus.search(first.analyze(corpus.sentence(3)), token=1, layer=1, engine=first)[0].score == pytest.approx(1.0, abs=2e-3)


def test_old_corpus_without_fingerprint_warns_once(built, engine, tmp_path):
    from exbert_hub.corpus import CorpusWarning

    folder = _copy(built, tmp_path / "old")
    _edit_card(folder, lambda m: m.pop("probe_fingerprint"))
    with pytest.warns(CorpusWarning, match="'old' has no model fingerprint"):
        corpus = _open(folder, engine=engine)
    a = engine.analyze(corpus.sentence(2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert corpus.search(a, token=1, layer=0, engine=engine)[0].score == pytest.approx(1.0, abs=2e-3)
        _open(folder, engine=engine)  # reopened (another cache): still no second warning
