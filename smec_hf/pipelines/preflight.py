"""Checks of the folders and the encoder a job is given, made before anything is encoded or written, so that a
wrong one is refused in one line naming its option instead of failing minutes later in a library's traceback."""
from __future__ import annotations

from pathlib import Path


def check_output_dir(path: str | Path, option: str) -> None:
    """``path`` is a folder to write into, or can become one: neither it nor a folder above it is a file."""
    path = Path(path).expanduser()
    blocking = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), None)
    if blocking == path:
        raise FileExistsError(f"{option} {path} is an existing file, not a folder: pass a folder")
    if blocking is not None:
        raise FileExistsError(f"{option} {path}: {blocking} is a file, not a folder: pass a folder")


def check_base_model(base_model: str | None) -> None:
    """``--base-model`` names a local folder, or a Hub id that can be loaded: online, or offline from the local
    Hub cache. A path that does not exist is refused as such (never looked up on the Hub)."""
    if base_model is None or Path(base_model).expanduser().exists():
        return
    if _path_like(base_model):
        raise FileNotFoundError(f"--base-model {base_model}: no such folder")
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE and not _in_hub_cache(base_model):
        raise FileNotFoundError(f"--base-model {base_model}: not a local folder, and the Hub is offline "
                                "(HF_HUB_OFFLINE=1) with no cached copy of it; pass a local Sentence-Transformers "
                                "folder, or go online")


def _path_like(name: str) -> bool:
    """What the data sources also take for a path, never a Hub id (``org/name`` has exactly one slash)."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1


def _in_hub_cache(repo_id: str) -> bool:
    """The model is in the local Hub cache (what an offline load reads)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        snapshot_download(repo_id, local_files_only=True)
    except (HFValidationError, LocalEntryNotFoundError):
        return False
    return True
