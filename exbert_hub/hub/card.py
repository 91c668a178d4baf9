"""The model-card widget: a picture that links to the live view.

Model cards on the Hub render Markdown and images but run no iframe, so the widget is a badge and a
static preview (PNG of the explorer or head view for a sample sentence) linking to the Space's deep
link (``?model=…&text=…&tab=…&layer=…&heads=…``, see README "Links that reopen a view").

* ``exbert-hub card snippet --model ID --space user/name [--text ...]`` prints the Markdown and writes
  the preview (:func:`snippet`, :func:`preview_png`);
* ``exbert-hub card add ...`` opens a pull request on the model repo that adds the preview and appends
  the snippet to its README (:func:`add_to_card`): never a push to main, never a rewrite of the card;
  a card that already has the widget is left alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from ..errors import InputError
from .deploy import MODEL_ID, REPO_ID, app_url, hub_token

START = "<!-- exbert-hub:start -->"
END = "<!-- exbert-hub:end -->"
PREVIEW_PATH = "exbert-hub-preview.png"  # in the model repo
SAMPLE_TEXT = "The cat sat on the mat because it was tired."
BADGE = "https://huggingface.co/datasets/huggingface/badges/resolve/main/open-in-hf-spaces-sm.svg"
CARD_VIEWS = ("explorer", "head")


def deep_link(space: str, model: str, text: str, *, view: str = "explorer", layer: int | None = None,
              heads: list[int] | None = None) -> str:
    """The Space's address that opens ``view`` of ``model`` on ``text`` (the app's deep-link parameters)."""
    params: dict[str, str] = {"model": model, "text": text, "tab": view}
    if layer is not None:
        params["layer"] = str(int(layer))
    if heads is not None:
        params["heads"] = ",".join(str(int(h)) for h in heads) if heads else "none"
    return app_url(space) + "/?" + urlencode(params)


def image_url(model: str, path: str = PREVIEW_PATH) -> str:
    """Where the preview is served from once the pull request is merged."""
    return f"https://huggingface.co/{model}/resolve/main/{path}"


def _check(model: str, space: str, view: str) -> None:
    if not MODEL_ID.match(model or ""):
        raise InputError(f"--model {model!r} is not a Hub model id (bert-base-uncased or user/name)")
    if not REPO_ID.match(space or ""):
        raise InputError(f"--space {space!r} is not a Space id: give user/name")
    if view not in CARD_VIEWS:
        raise InputError(f"--view {view!r}: a card preview shows {' or '.join(CARD_VIEWS)}")


def snippet(model: str, space: str, *, text: str = SAMPLE_TEXT, view: str = "explorer", layer: int | None = None,
            heads: list[int] | None = None, image: str | None = None) -> str:
    """The card's Markdown: a badge and the preview, both linking to the live view in the Space.

    image: the preview's address (default: :data:`PREVIEW_PATH` in the model repo, where ``card add``
    puts it). Text in the alt text is escaped for Markdown.
    """
    _check(model, space, view)
    link = deep_link(space, model, text, view=view, layer=layer, heads=heads)
    alt = f"{view} view of {model}: {text}".replace("\\", "\\\\").replace("[", "\\[").replace("]", "\\]")
    return "\n".join([
        START,
        f"[![Open in exbert-hub]({BADGE})]({link})",
        "",
        f"[![{alt}]({image or image_url(model)})]({link})",
        "",
        f"*Attention of this model in [exbert-hub](https://huggingface.co/spaces/{space}): click the picture to explore it live.*",
        END,
        "",
    ])


def preview_png(analysis, view: str = "explorer", *, layer: int | None = None, heads: list[int] | None = None,
                browser: Any = None) -> bytes:
    """The card's picture: ``view`` of ``analysis`` drawn by the export code at 2x, as PNG bytes."""
    from .export import render_static
    from .standalone import ViewState

    if view not in CARD_VIEWS:
        raise InputError(f"--view {view!r}: a card preview shows {' or '.join(CARD_VIEWS)}")
    state = ViewState.of(layer=layer or 0, heads=heads).check(analysis)
    _, png = render_static(analysis, view, state, svg=False, png=True, width=900, browser=browser)
    return png


@dataclass
class CardResult:
    """What :func:`add_to_card` did: ``pr_url`` None when the card already had the widget."""

    model: str
    pr_url: str | None
    already: bool


def add_to_card(model: str, space: str, png: bytes, *, text: str = SAMPLE_TEXT, view: str = "explorer",
                layer: int | None = None, heads: list[int] | None = None, token: str | None = None,
                api: Any = None) -> CardResult:
    """Open a pull request on ``model`` that adds the preview and appends the snippet to its card.

    The card is read from the Hub (a repo without README.md gets one with the snippet alone); a card that
    already holds the widget (its start marker) is left as it is and no pull request is opened.
    """
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError

    _check(model, space, view)
    token = hub_token(token)
    api = api or HfApi()
    try:
        api.model_info(model, token=token)
    except RepositoryNotFoundError:
        raise InputError(f"the model {model!r} is not on the Hugging Face Hub: give the id of a Hub model") from None
    try:
        with open(api.hf_hub_download(model, "README.md", token=token), encoding="utf-8") as f:
            raw = f.read()
    except EntryNotFoundError:
        raw = ""
    if START in raw:
        return CardResult(model=model, pr_url=None, already=True)
    md = snippet(model, space, text=text, view=view, layer=layer, heads=heads)
    # appended to the card's own bytes: its metadata and text stay exactly as they were
    new_card = (raw.rstrip("\n") + "\n\n" + md) if raw.strip() else md
    commit = api.create_commit(
        repo_id=model, repo_type="model", token=token, create_pr=True,
        operations=[CommitOperationAdd(path_in_repo=PREVIEW_PATH, path_or_fileobj=png),
                    CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=new_card.encode("utf-8"))],
        commit_message="Add an exbert-hub attention widget to the model card",
        commit_description=f"A preview of the {view} view that links to the live view in the Space {space}. "
                           "Generated by `exbert-hub card add`; the card's text is kept as it was.",
    )
    return CardResult(model=model, pr_url=getattr(commit, "pr_url", None), already=False)
