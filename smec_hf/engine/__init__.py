"""One training engine for SMEC's stages and every baseline: the early-stopped loop, held-out scoring, losses,
checkpoints, data-parallel helpers and the weight average."""
