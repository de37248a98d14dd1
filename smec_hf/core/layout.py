"""The one declared layout of every folder the package writes, with format versions and tolerant loading.

A run folder (``smec train --output``)::

    smec_run.json         the run record: settings, dims, per-dimension results (RUN_FORMAT)
    run_config.json       the settings a resume must match
    head/                 the trained chain: chain_config.json (CHAIN_FORMAT) + chain.safetensors
    training_log.jsonl    one JSON record per stage start, epoch and stage end
    checkpoints/          resumable states, the newest two kept

A comparison folder (``smec evaluate --output``)::

    report.json  report.md  ndcg_vs_dim.png
    run/                  the exported method's run folder (as above)
    baselines/<method>/   the run folders of other methods that write one (SMEC's ablations)
    model/                the Hub-ready model
    mteb/                 MTEB's results folder

Config files carry a ``format_version``; loaders accept older versions, rename keys that moved and drop keys
they do not know with a warning (as Sentence-Transformers' ``Dense`` does), so a file written by another
release loads instead of crashing.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Mapping, TypeVar

logger = logging.getLogger(__name__)

RUN_FILE = "smec_run.json"
RUN_CONFIG_FILE = "run_config.json"
HEAD_DIR = "head"
TRAINING_LOG = "training_log.jsonl"
CHECKPOINT_DIR = "checkpoints"
CHAIN_CONFIG_FILE = "chain_config.json"
CHAIN_WEIGHTS_FILE = "chain.safetensors"

COMPARE_RUN_DIR = "run"
COMPARE_BASELINES_DIR = "baselines"
COMPARE_MODEL_DIR = "model"
COMPARE_MTEB_DIR = "mteb"

RUN_FORMAT = 1
CHAIN_FORMAT = 2          # 2: the chain records ``bias`` (format 1 chains always had one)
FORMAT_KEY = "format_version"

T = TypeVar("T")


def known_keys(values: Mapping[str, Any], accepted: set[str], source: str,
               renames: Mapping[str, str] | None = None) -> dict[str, Any]:
    """``values`` with renamed keys mapped and unknown ones dropped (with a warning naming ``source``)."""
    renamed = {(renames or {}).get(k, k): v for k, v in values.items() if k != FORMAT_KEY}
    unknown = sorted(set(renamed) - accepted)
    if unknown:
        logger.warning("%s: ignoring unknown keys %s (written by another smec_hf version?)", source, unknown)
    return {k: v for k, v in renamed.items() if k in accepted}


def dataclass_from_dict(cls: type[T], values: Mapping[str, Any], source: str,
                        renames: Mapping[str, str] | None = None) -> T:
    """Build the dataclass ``cls`` from a saved dict, tolerating renamed and unknown keys."""
    accepted = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return cls(**known_keys(values, accepted, source, renames))


def check_format(values: Mapping[str, Any], supported: int, source: str) -> None:
    """Refuse files from a newer format than this release reads (a missing version is the first format)."""
    version = values.get(FORMAT_KEY, 1)
    if not isinstance(version, int) or version > supported:
        raise ValueError(f"{source}: format_version {version!r} is newer than this smec_hf reads ({supported}); "
                         "upgrade smec_hf")
