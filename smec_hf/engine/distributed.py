"""What data-parallel training needs beyond Accelerate's collectives: a process's share of a global batch,
every process's rows gathered back in process order (with or without gradient), and CPU threads per process."""
from __future__ import annotations

import os
from typing import Sequence

import torch
import torch.nn.functional as F
from accelerate import Accelerator


def my_shard(n_rows: int, accelerator: Accelerator) -> torch.Tensor:
    """The rows of a global batch this process trains on (contiguous shards that differ by at most one row)."""
    return torch.tensor_split(torch.arange(n_rows), accelerator.num_processes)[accelerator.process_index]


def gather_shards(accelerator: Accelerator, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every process's ``rows`` in process order (on the accelerator's device when there are several processes),
    and how many each sent (shards may differ by one row)."""
    counts = accelerator.gather(torch.tensor([len(rows)], device=accelerator.device)).cpu()
    if accelerator.num_processes == 1:
        return rows, counts
    padded = accelerator.pad_across_processes(rows.to(accelerator.device), dim=0)
    gathered = accelerator.gather(padded).split(padded.shape[0])
    return torch.cat([g[:n] for g, n in zip(gathered, counts.tolist())]), counts


def gather_with_grad(rows: torch.Tensor, counts: Sequence[int]) -> torch.Tensor:
    """Every process's ``rows`` in process order, differentiable: the backward pass hands each process the sum,
    over all processes, of the gradient on the rows it sent. ``counts``: how many rows each process sends, known
    to all in advance (shards may differ by one row, so they travel padded to the largest)."""
    if len(counts) == 1:
        return rows
    from torch.distributed.nn.functional import all_gather   # only here: builds without torch.distributed lack it

    padded = F.pad(rows, (0, 0, 0, max(counts) - len(rows)))
    return torch.cat([g[:n] for g, n in zip(all_gather(padded), counts)])


def spread_cpu_threads() -> int | None:
    """Give each of several local CPU training processes its share of the cores; return the thread count set.

    ``torchrun`` and ``accelerate launch`` (unless told ``--num_cpu_threads_per_process``) set
    ``OMP_NUM_THREADS=1`` in every process they start, which leaves all but P cores idle in a CPU run. Whether
    the 1 came from the launcher or the user cannot be told apart, so the rule is: when ``OMP_NUM_THREADS`` is
    exactly ``"1"`` and the launcher set ``LOCAL_WORLD_SIZE``, torch gets ``max(1, cores // LOCAL_WORLD_SIZE)``
    threads; any other value (the user's choice, e.g. ``OMP_NUM_THREADS=2``) is left as it is. Call it only on
    CPU processes: a GPU process's host threads are not the bottleneck this fixes.
    """
    local = os.environ.get("LOCAL_WORLD_SIZE")
    if os.environ.get("OMP_NUM_THREADS") != "1" or not local:
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    threads = max(1, cores // max(int(local), 1))
    torch.set_num_threads(threads)
    return threads
