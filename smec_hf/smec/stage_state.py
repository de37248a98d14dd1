"""What a SMEC checkpoint holds besides Accelerate's own state: the chain, the S-XBM memory, the stage's best
weights so far and its untrained start, its weight average, and the bookkeeping that lets a resumed stage take the
same decisions."""
from __future__ import annotations

from pathlib import Path

from safetensors.torch import load_file, save_file

from ..core import layout
from ..engine.ema import WeightAverage
from ..engine.loop import LoopState
from .chain import SMECChain
from .memory import SelectableCrossBatchMemory

AVERAGE_FILE = "average_stage.safetensors"
BEST_FILE = "best_stage.safetensors"
START_FILE = "start_stage.safetensors"
MEMORY_FILE = "memory.safetensors"
CHAIN_DIR = "chain"


def checkpoint_state(stage: int, loop: LoopState, memory: SelectableCrossBatchMemory) -> dict:
    """The JSON part: the stage being trained, the loop's counters, the memory's ring pointer."""
    return {"stage": stage, **loop.counters(), "memory_pointer": memory.pointer, "memory_filled": memory.filled}


def write_checkpoint_files(folder: Path, chain: SMECChain, memory: SelectableCrossBatchMemory, loop: LoopState,
                           average: WeightAverage | None) -> None:
    """The tensor part, as safetensors next to Accelerate's files."""
    chain.save(folder / CHAIN_DIR)
    save_file({"buffer": memory.state_dict()["buffer"].contiguous()}, str(folder / MEMORY_FILE))
    for name, state in ((BEST_FILE, loop.best_state), (START_FILE, loop.start_state)):
        if state:
            save_file({k: v.contiguous() for k, v in state.items()}, str(folder / name))
    if average is not None:
        save_file(average.state_dict(), str(folder / AVERAGE_FILE))


def restore_checkpoint(state: dict, folder: Path, chain: SMECChain,
                       memory: SelectableCrossBatchMemory) -> tuple[int, LoopState]:
    """Load the chain and the memory in place; return the stage to continue and its loop state.

    Stages the per-stage search left without ADS are dropped from ``chain`` first, so the weights fit."""
    saved = SMECChain.load(folder / CHAIN_DIR)
    for s, stage in enumerate(saved.stages):
        if stage.ads is None:
            chain.drop_ads(s)
    chain.load_state_dict(saved.state_dict())
    memory.load_state_dict({"buffer": load_file(str(folder / MEMORY_FILE))["buffer"],
                            "pointer": state["memory_pointer"], "filled": state["memory_filled"]})
    best, start = folder / BEST_FILE, folder / START_FILE
    loop = LoopState(**{k: state[k] for k in LoopState().counters() if k in state},
                     best_state=load_file(str(best)) if best.exists() else None,
                     start_state=load_file(str(start)) if start.exists() else None)
    return state["stage"], loop
