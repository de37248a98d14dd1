"""``smec push``: create the Hub repo and upload a folder written by ``smec export``.

The token comes from the usual places (``HF_TOKEN``, ``hf auth login``) unless one is passed; the endpoint from
``HF_ENDPOINT``.
"""
from __future__ import annotations

from pathlib import Path

from huggingface_hub import HfApi

from .model_card import set_model_id

EXPORT_MARKERS = ("config.json", "modules.json", "config_sentence_transformers.json", "README.md")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


def check_export_folder(folder: Path) -> None:
    """Refuse folders that `smec export` did not write, or that picked up pickled weights since."""
    missing = [name for name in EXPORT_MARKERS if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{folder} lacks {missing}: push a folder written by `smec export`")
    pickles = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise ValueError(f"{folder} holds pickled files {pickles}; SMEC repos ship safetensors only")


def push_model(folder: str | Path, repo_id: str, *, private: bool = False, revision: str | None = None,
               token: str | None = None, commit_message: str = "Upload SMEC model") -> str:
    """Create ``repo_id`` (if missing), optionally the branch ``revision``, upload ``folder``; returns the commit URL.

    A card exported without a repo id gets ``repo_id`` written into its usage snippets first.
    """
    folder = Path(folder)
    check_export_folder(folder)
    set_model_id(folder / "README.md", repo_id)
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    if revision is not None:
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    commit = api.upload_folder(repo_id=repo_id, folder_path=folder, revision=revision, commit_message=commit_message)
    return commit.commit_url
