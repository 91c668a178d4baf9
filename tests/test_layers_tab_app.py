"""The Layers tab in the app: its HTTP endpoints (gradio_client) answer from analyze_examples, with the
numbers of the analysis itself; visitors' bad input gets one line; local files are the operator's only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from serving import launch_on_free_port

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "examples"
LINES = "The cat sat on the mat.\nA dog ran in the park.\nThe bank raised its rates.\nShe sat by the river bank."


@pytest.fixture(scope="module")
def app_client(tiny, tmp_path_factory):
    import os

    from gradio_client import Client

    from exbert_hub.app import AnalysisStore, build_app

    old = os.environ.get("EXBERT_HUB_CACHE")
    os.environ["EXBERT_HUB_CACHE"] = str(tmp_path_factory.mktemp("xl-cache"))
    model = str(tiny("bert"))
    demo = build_app(model, store=AnalysisStore())
    launch_on_free_port(demo)
    try:
        yield Client(demo.local_url, verbose=False), model
    finally:
        demo.close()
        # later tests (and their subprocesses) use the usual cache again, where the packaged models are converted
        if old is None:
            os.environ.pop("EXBERT_HUB_CACHE", None)
        else:
            os.environ["EXBERT_HUB_CACHE"] = old


def _reference(model: str, lines: list[str]):
    import exbert_hub
    from exbert_hub.examples import analyze_examples, load_examples

    eng = exbert_hub.load(model)
    return analyze_examples(eng, load_examples(lines), progress=False, spacy=None)


def test_head_summary_endpoint_is_the_mean_over_the_selection(app_client):
    client, model = app_client
    out = client.predict(LINES, "entropy", None, "lines", "text", None, None, None, None, 100, [0, 2], None, "0",
                         api_name="/layers_head_summary")
    ref = _reference(model, LINES.splitlines())
    want = ref.head_stats["entropy"][[0, 2]].astype(np.float64).mean(axis=0)
    np.testing.assert_allclose(np.asarray(out["summary"], dtype=np.float64), want, rtol=1e-5, atol=1e-6)
    assert out["examples"] == 2 and "std" in out["statistics"]


def test_projection_endpoint_gives_every_tracked_token(app_client):
    client, model = app_client
    out = client.predict(LINES, 0, "pca", None, "lines", api_name="/layers_projection")
    ref = _reference(model, LINES.splitlines())
    n_words = sum(1 for e, t in zip(ref.row_example, ref.row_token) if not ref.special[e][t])
    assert len(out["x"]) == len(out["y"]) == len(out["text"]) == n_words
    assert out["layer"] == 0 and out["states"] == ref.num_layers + 1
    assert out["text"][:3] == ["The", "cat", "sat"]


def test_distances_endpoint_groups_by_label(app_client):
    client, model = app_client
    f = str(FIXTURES / "winograd.jsonl")
    out = client.predict(f, "cosine", "label", None, "dataset", "text", None, "label", "pronoun,candidate", None, 100,
                         api_name="/layers_distances")
    import exbert_hub
    from exbert_hub.examples import analyze_examples, load_examples

    ex = load_examples(f, labels=["label"], spans=["pronoun", "candidate"], limit=100)
    ref = analyze_examples(exbert_hub.load(model), ex, progress=False)
    want = ref.span_distances("cosine", group_by="label")
    assert set(out["groups"]) == set(want) | {"difference"}
    for g, arr in want.items():
        np.testing.assert_allclose(out["groups"][g], arr, rtol=1e-5, atol=1e-6)


def test_endpoints_refuse_bad_input_in_one_line(app_client):
    from gradio_client.exceptions import AppError

    client, _ = app_client
    with pytest.raises(AppError, match="examples is empty"):
        client.predict("  ", api_name="/layers_projection")
    with pytest.raises(AppError, match="number of examples must be from 1 to 2000"):
        client.predict(LINES, 0, "pca", None, "lines", "text", None, None, None, None, 5000, api_name="/layers_projection")
    with pytest.raises(AppError, match="source must be one of"):
        client.predict(LINES, 0, "pca", None, "ftp", api_name="/layers_projection")


def test_visitors_cannot_open_server_files():
    from exbert_hub.errors import InputError
    from exbert_hub.tabs.layers import examples_request, load_request

    req = examples_request("dataset", str(FIXTURES / "winograd.jsonl"))
    with pytest.raises(InputError, match="files on the server cannot be opened"):
        load_request(req, remote=True, local_paths=False)
    assert len(load_request(req, remote=False, local_paths=False)) > 0
    long_line = examples_request("lines", "x" * 6000)
    with pytest.raises(InputError, match="line 1 has 6,000 characters"):
        load_request(long_line, remote=True, local_paths=False)
