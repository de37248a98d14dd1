"""Export a fine-tuned encoder (``mrl_finetune``) as a plain Sentence-Transformers folder that serves every trained
size: the adapter merged into the weights, the served layout of :func:`~smec_hf.hf.export.write_served_layout`
(``matryoshka_dimensions`` and ``is_matryoshka`` in ``config.json``, which vLLM and SGLang need to accept
``dimensions``), no custom code. The tuned encoder's first ``k`` coordinates are its ``k``-dim embedding, so
``encode(..., truncate_dim=k)`` is all a user needs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .base_model import load_base_model
from .export import prepare_output_dir, write_served_layout
from .scrub import scrub_folder


def export_finetuned(encoder_dir: str | Path, output_dir: str | Path, dims: Sequence[int], *,
                     trust_remote_code: bool = False, overwrite: bool = False) -> Path:
    """Write the encoder saved in ``encoder_dir`` (a LoRA adapter is merged) to ``output_dir`` with ``dims`` recorded;
    returns ``output_dir``. No text file written names a local path."""
    output_dir = Path(output_dir)
    model = load_base_model(str(encoder_dir), trust_remote_code=trust_remote_code)
    prepare_output_dir(output_dir, overwrite)
    model.save(str(output_dir), create_model_card=False)
    write_served_layout(output_dir, list(dims), model.max_seq_length, auto_map=False)
    scrub_folder(output_dir, [str(encoder_dir), str(output_dir)])
    return output_dir
