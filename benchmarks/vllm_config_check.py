"""What vLLM makes of an exported folder, with vLLM's own config code (runs on CPU; no server, no GPU).

Run it with a Python that has vLLM (never a dependency of this project), e.g. a scratch virtual environment::

    python3 -m venv /tmp/vllm && /tmp/vllm/bin/pip install vllm==0.33.0
    /tmp/vllm/bin/python benchmarks/vllm_config_check.py outputs/demo/model

It prints the architecture vLLM picks, its pooling, whether it sees a Matryoshka model, the embedding size,
and for each trained size and a few others whether a request with ``dimensions=k`` is accepted.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def check(folder: Path) -> dict:
    from vllm import PoolingParams
    from vllm.config import ModelConfig

    config = ModelConfig(model=str(folder), runner="pooling", dtype="float32")
    trained = sorted(json.loads((folder / "config.json").read_text())["matryoshka_dimensions"])
    others = sorted({trained[0] - 1, trained[0] + 1, (trained[0] + trained[1]) // 2, config.embedding_size + 1})
    verdicts = {}
    for k in trained + [k for k in others if k not in trained]:
        try:
            PoolingParams(task="embed", dimensions=k).verify(config)
            verdicts[k] = "accepted"
        except Exception as error:  # vLLM raises its own validation error types
            verdicts[k] = f"rejected ({type(error).__name__}: {str(error)[:90]})"
    pooler = config.pooler_config
    return {"architectures": config.architectures, "pooling": getattr(pooler, "pooling_type", None) or
            getattr(pooler, "seq_pooling_type", None), "use_activation (normalise)": getattr(pooler, "use_activation", None),
            "is_matryoshka": config.is_matryoshka, "matryoshka_dimensions": config.matryoshka_dimensions,
            "embedding_size": config.embedding_size, "dimensions": verdicts}


if __name__ == "__main__":
    for key, value in check(Path(sys.argv[1])).items():
        print(f"{key}: {value}")
