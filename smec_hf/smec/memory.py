"""S-XBM — Selectable Cross-Batch Memory.

A FIFO ring buffer of *frozen* full-dimension embeddings from past batches. For each item of the
current batch, the ``top_k`` most cosine-similar stored entries are selected in the full-dimension
space; the trainer re-encodes them with the current head (so no compressed feature is ever stale)
and aligns compressed similarities to full-dimension ones (``losses.similarity_preservation_loss``).

Only frozen inputs are stored, so nothing in the memory carries a gradient. Under distributed
training the caller enqueues the batch gathered from all processes, which keeps every replica's
memory identical. The buffer lives on the training device (:meth:`to`), so selecting and enqueueing copy
nothing between host and device; its ``state_dict`` is on the CPU, for checkpoints.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

# Entries at least this similar to the query are the query itself (seen in an earlier epoch):
# their similarity is trivially preserved, so they would only waste a neighbour slot.
DUPLICATE_COSINE = 1.0 - 1e-6


class SelectableCrossBatchMemory:
    """FIFO memory of frozen embeddings with top-K cosine neighbour selection."""

    def __init__(self, dim: int, size: int = 5000, top_k: int = 10) -> None:
        if size < 1 or top_k < 1:
            raise ValueError(f"S-XBM needs size >= 1 and top_k >= 1, got size={size}, top_k={top_k}")
        self.dim, self.size, self.top_k = dim, size, top_k
        self.buffer = torch.zeros(size, dim)
        self.pointer = 0
        self.filled = 0

    def __len__(self) -> int:
        return self.filled

    def to(self, device: torch.device | str) -> "SelectableCrossBatchMemory":
        """Move the buffer to ``device`` (the training device), in place."""
        self.buffer = self.buffer.to(device)
        return self

    def entries(self) -> torch.Tensor:
        """The stored entries, oldest first."""
        if self.filled < self.size:
            return self.buffer[: self.filled]
        return torch.cat([self.buffer[self.pointer :], self.buffer[: self.pointer]])

    @torch.no_grad()
    def enqueue(self, batch: torch.Tensor) -> None:
        """Append a batch, overwriting the oldest entries once full (wrap-around)."""
        batch = batch.detach().to(self.buffer.device, self.buffer.dtype)[-self.size :]
        n = batch.shape[0]
        first = min(n, self.size - self.pointer)
        self.buffer[self.pointer : self.pointer + first] = batch[:first]
        self.buffer[: n - first] = batch[first:]
        self.pointer = (self.pointer + n) % self.size
        self.filled = min(self.size, self.filled + n)

    @torch.no_grad()
    def select(self, queries: torch.Tensor, top_k: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-K stored neighbours per query by full-dim cosine: ``(entries [B, K, D], valid [B, K])``.

        ``valid`` is False for slots beyond the memory's fill and for self-duplicates.
        """
        k = min(top_k or self.top_k, self.filled)
        if k == 0:
            return queries.new_zeros(queries.shape[0], 0, self.dim), queries.new_zeros(queries.shape[0], 0, dtype=torch.bool)
        stored = self.buffer[: self.filled].to(queries.device)   # a no-op once the buffer is on the device
        sims = F.normalize(queries.detach(), dim=-1) @ F.normalize(stored, dim=-1).T
        sims = sims.masked_fill(sims >= DUPLICATE_COSINE, -2.0)
        top = sims.topk(k, dim=1)
        return stored[top.indices].to(queries.dtype), top.values > -2.0

    def state_dict(self) -> dict:
        return {"buffer": self.buffer.to("cpu", copy=True), "pointer": self.pointer, "filled": self.filled}

    def load_state_dict(self, state: dict) -> None:
        if state["buffer"].shape != self.buffer.shape:
            raise ValueError(f"S-XBM state has shape {tuple(state['buffer'].shape)}, expected {tuple(self.buffer.shape)}")
        self.buffer = state["buffer"].to(self.buffer.device, copy=True)
        self.pointer, self.filled = int(state["pointer"]), int(state["filled"])
