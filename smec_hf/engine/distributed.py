"""What data-parallel training needs beyond Accelerate's collectives: a process's share of a global batch,
and every process's rows gathered back in process order."""
from __future__ import annotations

import torch
from accelerate import Accelerator


def my_shard(n_rows: int, accelerator: Accelerator) -> torch.Tensor:
    """The rows of a global batch this process trains on (contiguous shards that differ by at most one row)."""
    return torch.tensor_split(torch.arange(n_rows), accelerator.num_processes)[accelerator.process_index]


def gather_shards(accelerator: Accelerator, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every process's ``rows`` in process order, and how many each sent (shards may differ by one row)."""
    counts = accelerator.gather(torch.tensor([len(rows)], device=accelerator.device)).cpu()
    if accelerator.num_processes == 1:
        return rows, counts
    padded = accelerator.pad_across_processes(rows.to(accelerator.device), dim=0)
    gathered = accelerator.gather(padded).cpu().split(padded.shape[0])
    return torch.cat([g[:n] for g, n in zip(gathered, counts.tolist())]), counts
