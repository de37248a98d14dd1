"""A randomised SMEC chain for tests: every parameter and the input basis moved off their identity
defaults, so an export or fold check cannot pass by reproducing an identity map."""
from __future__ import annotations

from typing import Sequence

import torch

from smec_hf.smec.chain import SMECChain


def randomised_chain(dims: Sequence[int], seed: int = 0, scale: float = 0.2,
                     later_stage_map: str = "orthogonal", bias: bool = False) -> SMECChain:
    chain = SMECChain(dims, later_stage_map=later_stage_map, bias=bias)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in chain.parameters():
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator))
    rotation = torch.linalg.qr(torch.randn(dims[0], dims[0], generator=generator))[0]
    offset = 0.1 * torch.randn(dims[0], generator=generator)
    chain.set_input_basis(rotation, offset if bias else None)
    return chain.eval()
