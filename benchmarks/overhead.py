"""Head overhead: encode time of the exported SMEC SentenceTransformer against the bare base encoder.

Both encode the same texts with the same settings, alternating (A, B, A, B, ...) so that a shared
machine's load drifts over both alike. Short texts (SciFact's claims) are the worst case for the head:
the encoder's cost shrinks with the text, the head's does not.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Sequence

from sentence_transformers import SentenceTransformer


def encode_overhead(base_path: str, smec_path: str, texts: Sequence[str], repeats: int, batch_size: int = 32) -> dict:
    models = {name: SentenceTransformer(path, device="cpu") for name, path in (("base", base_path), ("smec", smec_path))}
    times: dict[str, list[float]] = {name: [] for name in models}
    for name, model in models.items():   # warm-up: first-call allocations, tokenizer caches
        model.encode(list(texts[:batch_size]), batch_size=batch_size)
    for _ in range(repeats):
        for name, model in models.items():
            start = time.perf_counter()
            model.encode(list(texts), batch_size=batch_size, convert_to_numpy=True)
            times[name].append(time.perf_counter() - start)
    base, smec = (statistics.median(times[n]) for n in ("base", "smec"))
    return {"texts": len(texts), "batch_size": batch_size, "base_s": base, "smec_s": smec,
            "overhead": smec / base - 1, "modules": [type(m).__name__ for m in models["smec"]]}
