"""``smec push``: create the Hub repo and upload a folder written by ``smec export``, in its published form.

What is sent is computed, the folder is not changed: every text file scrubbed of local paths
(:mod:`~smec_hf.hf.scrub`), the card's placeholder id replaced by the repo id, and ``config.json``'s ``auto_map``
written in transformers' ``"<repo_id>--modeling_smec.SMECModel"`` form. That form names where the code lives, so a
copy re-saved with ``save_pretrained`` (which keeps ``config.json`` but not ``modeling_smec.py``) still loads
``SMECModel`` with ``AutoModel``; the local folder keeps the plain form, which loads offline before any push.

The token comes from the usual places (``HF_TOKEN``, ``hf auth login``) unless one is passed; the endpoint from
``HF_ENDPOINT``.
"""
from __future__ import annotations

import json
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi
from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects

from .export import AUTO_MAP, CODE_FILE
from .model_card import with_model_id
from .scrub import is_text, publishable_text

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


def published_config(config: dict, repo_id: str, has_code: bool) -> dict:
    """``config`` with the SMEC ``auto_map`` pointing at ``repo_id``'s code (other auto_maps are the encoder's own)."""
    if not has_code or config.get("auto_map") != AUTO_MAP:
        return config
    return {**config, "auto_map": {name: f"{repo_id}--{ref}" for name, ref in AUTO_MAP.items()}}


def publishable_files(folder: Path, repo_id: str) -> dict[str, bytes | Path]:
    """Path in the repo -> what is sent: the published text of text files, the file itself otherwise."""
    on_disk = {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}
    local_paths = [str(folder), str(folder.resolve())]
    files: dict[str, bytes | Path] = {}
    for name in filter_repo_objects(on_disk, ignore_patterns=DEFAULT_IGNORE_PATTERNS):
        file = on_disk[name]
        if not is_text(file):
            files[name] = file
            continue
        text = publishable_text(file, local_paths)
        if name == "README.md":
            text = with_model_id(text, repo_id)
        elif name == "config.json":
            config = published_config(json.loads(text), repo_id, has_code=CODE_FILE in on_disk)
            text = json.dumps(config, indent=2, ensure_ascii=False)
        files[name] = text.encode("utf-8")
    return files


def push_model(folder: str | Path, repo_id: str, *, private: bool = False, revision: str | None = None,
               token: str | None = None, commit_message: str = "Upload SMEC model") -> str:
    """Create ``repo_id`` (if missing), optionally the branch ``revision``, upload ``folder``'s published form
    (:func:`publishable_files`); returns the commit URL."""
    folder = Path(folder)
    check_export_folder(folder)
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=content)
                  for name, content in publishable_files(folder, repo_id).items()]
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    if revision is not None:
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    commit = api.create_commit(repo_id, operations, commit_message=commit_message, revision=revision)
    return commit.commit_url
