"""``accelerate launch`` entry point: ``smec train`` on every process of a CPU, GPU, multi-GPU or multi-node job.

Named apart from the package's trainer (``smec_hf/smec/trainer.py``), which it drives on every process; the
launch configs are beside it in ``training/configs/``.

It takes exactly the options of ``smec train``. The main process runs the whole command (embedding
cache, training, the test table, the run folder); the other processes join only the training, which is
the part worth sharing: the trainer's collectives pair them with the main process (see
``smec_hf/smec/trainer.py``). They train on the same embedding cache, which every process encodes a share of
(every WORLD_SIZE-th chunk, on its own GPU) before one of them assembles it; processes on several nodes share
the work when ``--cache-dir`` is on a filesystem they all see.

``accelerate launch --mixed_precision bf16`` (or a config's ``mixed_precision``) is honoured unless
``--mixed-precision`` is given explicitly.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import Sequence

from accelerate import PartialState
from accelerate.utils import parse_flag_from_env

from smec_hf.cli import build_parser, settings_from
from smec_hf.cli import main as smec_main
from smec_hf.data import load_retrieval_data
from smec_hf.pipelines.train import prepare_embeddings, with_groups
from smec_hf.smec.chain import default_dimension_path
from smec_hf.smec.compressor import SMECCompressor


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    precision = os.environ.get("ACCELERATE_MIXED_PRECISION")
    if precision and not any(a.split("=")[0] == "--mixed-precision" for a in argv):
        argv += ["--mixed-precision", precision]
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))   # as Accelerator reads it
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and state.num_processes == 1:
        # each process would train alone and they would overwrite each other's checkpoints
        print(f"training/accelerate_smec.py: error: {launched} processes were launched but are not connected (no GPU?); "
              "for CPU processes set ACCELERATE_USE_CPU=1", file=sys.stderr)
        return 2
    if state.is_main_process:
        return smec_main(["train", *argv])
    _join_training(build_parser().parse_args(["train", *argv]))
    return 0


def _join_training(args: argparse.Namespace) -> None:
    """What ``smec train`` does up to the end of training, as a non-main process (no evaluation, no output)."""
    # the same data as the main process: its corpus, config, split and --group-by field
    dataset = load_retrieval_data(args.data, config=args.data_config, split=args.data_split, corpus=args.corpus)
    cache, _, _ = prepare_embeddings(dataset, args.base_model, Path(args.cache_dir).expanduser(), args.embeddings,
                                     show_progress_bar=False, trust_remote_code=args.trust_remote_code)
    settings = with_groups(settings_from(args), args.data, dataset)
    settings = dataclasses.replace(settings, dims=settings.dims or default_dimension_path(cache.dim))
    SMECCompressor(settings, args.output, show_progress_bar=False).fit(cache, dataset.qrels["train"])


if __name__ == "__main__":
    sys.exit(main())
