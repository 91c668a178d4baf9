"""Space deployment and the model-card widget against a recording fake of huggingface_hub.HfApi
(every argument asserted; the Hub's real exception classes for its failures); nothing needs the network."""

from __future__ import annotations

import sys
import zipfile
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from huggingface_hub import CommitOperationAdd
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, RepositoryNotFoundError

import exbert_hub
from exbert_hub import cli
from exbert_hub.errors import InputError
from exbert_hub.hub import card as cards
from exbert_hub.hub.deploy import SpaceConfig, deploy_space, readme, requirements, space_folder

REPO = Path(__file__).resolve().parents[1]


def http_error(cls, status: int, url: str = "https://huggingface.co/api/repos/create"):
    return cls(f"{status} error", response=httpx.Response(status, request=httpx.Request("POST", url)))


class FakeHfApi:
    """Records every call; answers like the Hub (or raises what the Hub raises) as configured."""

    def __init__(self, models=("bert-base-uncased",), datasets=("me/corpus",), create_error=None, readme=None):
        self.calls: list[tuple[str, tuple, dict]] = []
        self.models, self.datasets, self.create_error, self.readme = set(models), set(datasets), create_error, readme
        self.uploaded: dict[str, bytes] = {}

    def model_info(self, repo_id, **kw):
        self.calls.append(("model_info", (repo_id,), kw))
        if repo_id not in self.models:
            raise http_error(RepositoryNotFoundError, 404, f"https://huggingface.co/api/models/{repo_id}")
        return {"id": repo_id}

    def dataset_info(self, repo_id, **kw):
        self.calls.append(("dataset_info", (repo_id,), kw))
        if repo_id not in self.datasets:
            raise http_error(RepositoryNotFoundError, 404, f"https://huggingface.co/api/datasets/{repo_id}")
        return {"id": repo_id}

    def create_repo(self, repo_id, **kw):
        self.calls.append(("create_repo", (repo_id,), kw))
        if self.create_error:
            raise self.create_error
        return f"https://huggingface.co/spaces/{repo_id}"

    def upload_folder(self, **kw):
        self.calls.append(("upload_folder", (), kw))
        folder = Path(kw["folder_path"])  # read now: it is a temporary folder
        self.uploaded = {p.name: p.read_bytes() for p in folder.iterdir()}

    def add_space_variable(self, repo_id, key, value, **kw):
        self.calls.append(("add_space_variable", (repo_id, key, value), kw))

    def hf_hub_download(self, repo_id, filename, **kw):
        self.calls.append(("hf_hub_download", (repo_id, filename), kw))
        if self.readme is None:
            raise EntryNotFoundError(f"{filename} not found in {repo_id}")
        path = Path(kw.get("cache_dir") or self.tmp) / "README.md"
        path.write_text(self.readme, encoding="utf-8")
        return str(path)

    def create_commit(self, **kw):
        self.calls.append(("create_commit", (), kw))
        return type("CommitInfo", (), {"pr_url": f"https://huggingface.co/{kw['repo_id']}/discussions/1"})()

    def names(self):
        return [c[0] for c in self.calls]


@pytest.fixture
def token(monkeypatch):
    monkeypatch.setattr("huggingface_hub.get_token", lambda: "hf_test_token")
    return "hf_test_token"


# --------------------------------------------------------------------------------------------------
# the Space's folder
# --------------------------------------------------------------------------------------------------
def test_committed_spaces_folder_is_a_fresh_generation(tmp_path):
    fresh = space_folder(tmp_path / "space", SpaceConfig(model="bert-base-uncased"), wheel=False)
    committed = sorted(p.name for p in (REPO / "spaces").iterdir() if p.is_file())
    assert committed == sorted(p.name for p in fresh.iterdir()) == ["README.md", "app.py", "packages.txt", "requirements.txt"]
    for name in committed:
        assert (REPO / "spaces" / name).read_text() == (fresh / name).read_text(), (
            f"spaces/{name} is stale: run exbert-hub space deploy --model bert-base-uncased --dry-run --out spaces --no-wheel")


def test_readme_front_matter_follows_the_hub():
    import gradio
    import yaml

    text = readme(SpaceConfig(model="google-bert/bert-base-cased", corpus="me/corpus").check())
    meta = yaml.safe_load(text.split("---")[1])
    assert meta["sdk"] == "gradio" and meta["sdk_version"] == gradio.__version__ and meta["app_file"] == "app.py"
    assert meta["models"] == ["google-bert/bert-base-cased"] and meta["datasets"] == ["me/corpus"]
    assert meta["title"] and meta["emoji"] and meta["colorFrom"] and meta["colorTo"] and "interpretability" in meta["tags"]
    assert len(meta["short_description"]) <= 60
    assert "datasets" not in yaml.safe_load(readme(SpaceConfig()).split("---")[1])


def test_requirements_pin_the_installed_versions():
    from importlib.metadata import version

    lines = requirements().splitlines()
    for pkg in ("torch", "transformers", "huggingface_hub", "datasets", "spacy", "faiss-cpu", "numpy"):
        assert f"{pkg}=={version(pkg).split('+')[0]}" in lines
    assert lines[-1] == f"./exbert_hub-{exbert_hub.__version__}-py3-none-any.whl"
    assert not any(line.startswith("gradio") for line in lines)  # the Hub installs sdk_version


@pytest.mark.parametrize("config, words", [
    (SpaceConfig(model="../etc"), "not a Hub model id"),
    (SpaceConfig(model="/srv/models/x"), "not a Hub model id"),
    (SpaceConfig(corpus="just-a-name"), "not a Hub dataset id"),
    (SpaceConfig(short_description="x" * 61), "at most 60"),
])
def test_bad_config_is_one_line(config, words):
    with pytest.raises(InputError, match=words):
        config.check()


# --------------------------------------------------------------------------------------------------
# deploy against the fake Hub
# --------------------------------------------------------------------------------------------------
def test_deploy_creates_uploads_and_sets_variables(token, tmp_path):
    api = FakeHfApi()
    done = deploy_space("bert-base-uncased", "me/exbert", corpus="me/corpus", private=True, hardware="cpu-upgrade",
                        api=api, folder=tmp_path / "space")
    assert api.names() == ["model_info", "dataset_info", "create_repo", "upload_folder", "add_space_variable",
                           "add_space_variable"]
    assert api.calls[0] == ("model_info", ("bert-base-uncased",), {"token": token})
    assert api.calls[1] == ("dataset_info", ("me/corpus",), {"token": token})
    assert api.calls[2] == ("create_repo", ("me/exbert",), {"token": token, "repo_type": "space", "space_sdk": "gradio",
                                                           "exist_ok": True, "private": True,
                                                           "space_hardware": "cpu-upgrade"})
    up = api.calls[3][2]
    assert up == {"repo_id": "me/exbert", "folder_path": str(tmp_path / "space"), "repo_type": "space", "token": token,
                  "commit_message": "exbert-hub space deploy: bert-base-uncased with me/corpus"}
    assert api.calls[4] == ("add_space_variable", ("me/exbert", "EXBERT_HUB_MODEL", "bert-base-uncased"), {"token": token})
    assert api.calls[5] == ("add_space_variable", ("me/exbert", "EXBERT_HUB_CORPUS", "me/corpus"), {"token": token})
    wheel = f"exbert_hub-{exbert_hub.__version__}-py3-none-any.whl"
    assert sorted(api.uploaded) == sorted(["README.md", "app.py", "packages.txt", "requirements.txt", wheel])
    assert api.uploaded["packages.txt"] == b"chromium\n"  # SVG/PNG export draws in Chromium on the Space
    assert b"models:\n  - bert-base-uncased" in api.uploaded["README.md"]
    assert b"datasets:\n  - me/corpus" in api.uploaded["README.md"]
    with zipfile.ZipFile(tmp_path / "space" / wheel) as z:  # the package itself, with the views' assets
        names = z.namelist()
    assert "exbert_hub/app.py" in names and "exbert_hub/views/export.js" in names and "exbert_hub/hub/deploy.py" in names
    assert done.url == "https://huggingface.co/spaces/me/exbert" and done.app_url == "https://me-exbert.hf.space"
    assert done.variables == {"EXBERT_HUB_MODEL": "bert-base-uncased", "EXBERT_HUB_CORPUS": "me/corpus"}


def test_deploy_without_a_token(monkeypatch):
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    api = FakeHfApi()
    with pytest.raises(InputError, match="no Hugging Face token: run `hf auth login`"):
        deploy_space("bert-base-uncased", "me/exbert", api=api)
    assert api.calls == []


@pytest.mark.parametrize("status", [409, 403])
def test_deploy_to_a_taken_name(token, status, tmp_path):
    api = FakeHfApi(create_error=http_error(HfHubHTTPError, status))
    with pytest.raises(InputError, match="name is taken") as err:
        deploy_space("bert-base-uncased", "someone/exbert", api=api, folder=tmp_path / "s")
    assert "\n" not in str(err.value) and "upload_folder" not in api.names()


def test_deploy_a_model_not_on_the_hub(token):
    api = FakeHfApi(models=())
    with pytest.raises(InputError, match="'me/nope' is not on the Hugging Face Hub"):
        deploy_space("me/nope", "me/exbert", api=api)
    assert api.names() == ["model_info"]
    with pytest.raises(InputError, match="'me/none' is not a dataset on the Hub"):
        deploy_space("bert-base-uncased", "me/exbert", corpus="me/none", api=FakeHfApi())


def test_cli_dry_run_writes_the_folder_and_launch_cli_still_parses(tmp_path, capsys):
    assert cli.main(["space", "deploy", "--model", "gpt2", "--dry-run", "--out", str(tmp_path / "s"), "--no-wheel"]) == 0
    assert "models:\n  - gpt2" in (tmp_path / "s" / "README.md").read_text()
    assert cli.main(["space", "deploy", "--model", "gpt2"]) == 2
    assert "needs --repo-id" in capsys.readouterr().err
    args = cli.parser().parse_args(["--model", "gpt2", "--port", "7999"])  # the app's launch flags
    assert (args.model, args.port) == ("gpt2", 7999)


# --------------------------------------------------------------------------------------------------
# the model-card widget
# --------------------------------------------------------------------------------------------------
def test_snippet_links_the_preview_to_the_deep_link():
    md = cards.snippet("google-bert/bert-base-uncased", "me/exbert", text="A [tricky] text & more", view="head",
                       layer=4, heads=[2, 7])
    assert md.startswith(cards.START) and md.rstrip().endswith(cards.END)
    links = [part.split(")")[0] for part in md.split("](")[1:]]
    deep = [u for u in links if u.startswith("https://me-exbert.hf.space/")]
    assert len(deep) == 2  # the badge and the picture both open the live view
    q = {k: v[0] for k, v in parse_qs(urlsplit(deep[0]).query).items()}
    assert q == {"model": "google-bert/bert-base-uncased", "text": "A [tricky] text & more", "tab": "head",
                 "layer": "4", "heads": "2,7"}
    assert "https://huggingface.co/google-bert/bert-base-uncased/resolve/main/exbert-hub-preview.png" in links
    assert "\\[tricky\\]" in md  # the alt text cannot break the Markdown


def test_card_add_opens_a_pr_and_never_overwrites(token, tmp_path):
    original = "---\nlicense: mit\ntags:\n- bert\n---\n# My model\n\nIt is good.\n"
    api = FakeHfApi(readme=original)
    api.tmp = tmp_path
    res = cards.add_to_card("bert-base-uncased", "me/exbert", b"\x89PNG fake", api=api, text="Hello there.")
    assert api.names() == ["model_info", "hf_hub_download", "create_commit"]
    assert api.calls[1] == ("hf_hub_download", ("bert-base-uncased", "README.md"), {"token": token})
    kw = api.calls[2][2]
    assert kw["create_pr"] is True and kw["repo_id"] == "bert-base-uncased" and kw["repo_type"] == "model"
    assert kw["token"] == token and kw["commit_message"]
    ops = {op.path_in_repo: op for op in kw["operations"]}
    assert set(ops) == {"README.md", "exbert-hub-preview.png"} and all(isinstance(o, CommitOperationAdd) for o in ops.values())
    assert ops["exbert-hub-preview.png"].path_or_fileobj == b"\x89PNG fake"
    new = ops["README.md"].path_or_fileobj.decode()
    assert new.startswith(original.rstrip("\n"))  # the card as it was, then the widget
    assert new.endswith(cards.snippet("bert-base-uncased", "me/exbert", text="Hello there."))
    assert res.pr_url == "https://huggingface.co/bert-base-uncased/discussions/1" and not res.already
    # a card that already has the widget is left alone: no commit
    again = FakeHfApi(readme=new)
    again.tmp = tmp_path
    res2 = cards.add_to_card("bert-base-uncased", "me/exbert", b"png", api=again)
    assert res2.already and res2.pr_url is None and "create_commit" not in again.names()


def test_card_add_without_readme_and_for_a_missing_model(token):
    api = FakeHfApi(readme=None)
    cards.add_to_card("bert-base-uncased", "me/exbert", b"png", api=api)
    ops = {op.path_in_repo: op for op in api.calls[-1][2]["operations"]}
    assert ops["README.md"].path_or_fileobj.decode() == cards.snippet("bert-base-uncased", "me/exbert")
    with pytest.raises(InputError, match="not on the Hugging Face Hub"):
        cards.add_to_card("me/missing", "me/exbert", b"png", api=FakeHfApi(models=()))
