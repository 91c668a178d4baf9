"""Upload a finished corpus folder to the Hugging Face Hub as a dataset repository."""

from __future__ import annotations

from pathlib import Path

from exbert_hub import corpus_format as cf
from exbert_hub.errors import InputError


class PublishError(InputError):
    pass


def publish(folder: str, repo_id: str, *, private: bool = False, token: str | None = None,
            commit_message: str | None = None, api=None) -> str:
    """Create (if needed) the dataset repo ``repo_id`` and upload ``folder`` to it. Returns the commit URL.

    Authentication is huggingface_hub's usual: ``token``, else ``HF_TOKEN`` or ``hf auth login``.
    """
    path = Path(folder).expanduser()
    if not path.is_dir():
        raise PublishError(f"{path} is not a folder")
    meta = cf.read_card(path)
    if meta is None:
        raise PublishError(f"{path} is not an exbert-hub corpus (its README.md has no {cf.CARD_KEY!r} section); build it first")
    if (path / cf.BUILD_DIR).exists():
        raise PublishError(f"{path} holds an unfinished build; rerun the build command to finish it before publishing")
    if not isinstance(repo_id, str) or repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise PublishError(f"--repo-id must look like 'user/name', got {repo_id!r}")
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    api.create_repo(repo_id=repo_id, repo_type="dataset", private=private, exist_ok=True)
    info = api.upload_folder(
        folder_path=str(path),
        repo_id=repo_id,
        repo_type="dataset",
        commit_message=commit_message or f"exbert-hub corpus for {meta.get('model')} ({meta.get('counts', {}).get('sentences', '?')} sentences)",
        ignore_patterns=[f"{cf.BUILD_DIR}/**", "*.tmp"],
    )
    return str(getattr(info, "commit_url", info))
