"""Export a fine-tuned encoder (``mrl_finetune``; ``smec_lora`` with its SMEC head) as one Sentence-Transformers
folder that serves every trained size: the adapter merged into the weights, the served layout of
:func:`~smec_hf.hf.export.write_served_layout` (``matryoshka_dimensions`` and ``is_matryoshka`` in ``config.json``,
which vLLM and SGLang need to accept ``dimensions``). Its first ``k`` coordinates are its ``k``-dim embedding, so
``encode(..., truncate_dim=k)`` is all a user needs. Without a head no custom code is written; with one the folder
is laid out like every exported SMEC model (:func:`~smec_hf.hf.export.save_with_head`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .base_model import load_base_model
from ..smec.chain import SMECChain
from .export import prepare_output_dir, save_with_head, write_served_layout
from .scrub import scrub_folder


def export_finetuned(encoder_dir: str | Path, output_dir: str | Path, dims: Sequence[int], *,
                     head: SMECChain | None = None, trust_remote_code: bool = False, overwrite: bool = False) -> Path:
    """Write the encoder saved in ``encoder_dir`` (a LoRA adapter is merged), and ``head`` behind it if given, to
    ``output_dir`` with ``dims`` recorded; returns ``output_dir``. No text file written names a local path."""
    output_dir = Path(output_dir)
    model = load_base_model(str(encoder_dir), trust_remote_code=trust_remote_code)
    prepare_output_dir(output_dir, overwrite)
    if head is not None:
        save_with_head(model, head.eval(), output_dir, trust_remote_code)
    else:
        model.save(str(output_dir), create_model_card=False)
        write_served_layout(output_dir, list(dims), model.max_seq_length, auto_map=False)
    scrub_folder(output_dir, [str(encoder_dir), str(output_dir)])
    return output_dir
