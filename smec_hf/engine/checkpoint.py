"""Resumable checkpoints: Accelerate's own state (model, optimizer, every process's RNG) plus the caller's files,
written into a temporary folder and renamed into place, so a crash never leaves half a checkpoint.

A checkpoint is complete once its state file exists (written last); :meth:`Checkpoints.latest` only returns
complete ones, and only the newest ``keep`` are kept.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable

from accelerate import Accelerator, PartialState
from accelerate.utils import gather_object

from ..core.io import atomic_write_json

STATE_FILE = "trainer_state.json"


class Checkpoints:
    """Checkpoints named ``<prefix><stage>-epoch<NNN>`` / ``<prefix><stage>-done`` in one folder."""

    def __init__(self, directory: str | Path, keep: int = 2, prefix: str = "stage") -> None:
        self.directory, self.keep, self.prefix = Path(directory), keep, prefix

    def name(self, stage: int, epoch: int | None = None) -> str:
        """``epoch=None`` names the checkpoint written after the stage finished."""
        return f"{self.prefix}{stage}-" + ("done" if epoch is None else f"epoch{epoch:03d}")

    def save(self, name: str, state: dict, accelerator: Accelerator | None = None,
             write_files: Callable[[Path], None] | None = None) -> Path:
        """Write ``accelerator.save_state`` (if given), ``write_files(folder)`` (main process) and ``state``."""
        final, tmp = self.directory / name, self.directory / f".tmp-{name}"
        processes = PartialState()
        if processes.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        processes.wait_for_everyone()
        if accelerator is not None:
            accelerator.save_state(str(tmp))
            processes.wait_for_everyone()   # every process's random_states_<rank>.pkl is in tmp before the rename
        if processes.is_main_process:
            if write_files is not None:
                write_files(tmp)
            (tmp / STATE_FILE).write_text(json.dumps(state, indent=1))   # written last: marks a complete checkpoint
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            for old in sorted(self._all(), key=self._order)[:-self.keep]:
                shutil.rmtree(old, ignore_errors=True)
        processes.wait_for_everyone()
        return final

    def latest(self) -> Path | None:
        """The newest complete checkpoint, or None."""
        done = [c for c in self._all() if (c / STATE_FILE).exists()]
        return max(done, key=self._order) if done else None

    @staticmethod
    def state(checkpoint: Path) -> dict:
        return json.loads((checkpoint / STATE_FILE).read_text())

    def _all(self) -> list[Path]:
        if not self.directory.exists():
            return []
        return [p for p in self.directory.glob(f"{self.prefix}*") if p.is_dir()]

    def _order(self, path: Path) -> tuple[int, int]:
        stage, _, rest = path.name[len(self.prefix):].partition("-")
        return int(stage), (10**6 if rest == "done" else int(rest[len("epoch"):]))


def refuse_other_settings(path: Path, current: dict, is_main_process: bool) -> None:
    """Refuse to resume a run folder started on other data or with other settings (``path`` records them; the
    main process writes it on the first run), and refuse processes that disagree on the settings. Other data is
    said in words: the recorded cache key is a hash of the encoder and the texts, which tells the user nothing."""
    if PartialState().num_processes > 1:
        differs = [r for r, other in enumerate(gather_object([current])) if other != current]
        if differs:
            raise ValueError(f"processes {differs} train with other settings or another embedding cache than "
                             f"process {PartialState().process_index}")
    if path.exists():
        saved, now = json.loads(path.read_text()), json.loads(json.dumps(current))
        if saved.get("cache") != now.get("cache"):
            raise ValueError(f"the data differ from the run already in --output ({path.parent}: its embeddings are "
                             "of other texts or from another encoder): use a new --output or delete it")
        if saved != now:
            raise ValueError(f"{path.parent} holds a run with other settings ({_differences(saved, now)}): rerun "
                             f"with its settings to resume it, or use a new --output, or delete {path.parent}")
    elif is_main_process:
        atomic_write_json(path, current)


def _differences(saved: dict, now: dict) -> str:
    """``--lr 0.003 there, 0.5 here; ...``: the settings (as CLI flags) in which two runs differ."""
    old, new = saved.get("config", {}), now.get("config", {})
    parts = [f"--{k.replace('_', '-')} {old.get(k)} there, {new.get(k)} here"
             for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    parts += [f"{k}: {saved.get(k)} there, {now.get(k)} here" for k in sorted(set(saved) | set(now))
              if k != "config" and saved.get(k) != now.get(k)]
    return "; ".join(parts)
