"""Fine-tuning the encoder itself, shared by the methods that do (``mrl_finetune``, ``smec_lora``).

:func:`tune_encoder` trains a copy of the base encoder with Sentence-Transformers' trainer and
``MatryoshkaLoss(MultipleNegativesRankingLoss)`` at the given dims, as a LoRA adapter by default, then encodes the
dataset with it into its own embedding cache. It trains on what the other supervised methods train on: the fit
pairs of the shared :class:`~smec_hf.data.examples.TrainingExamples` split, each as an (anchor, positive, negative)
row whose negative is drawn once from the query's mined pool (frozen top results it does not judge relevant) and its
given negatives; MNRL's scale is the shared ``similarity_scale``. After each epoch it scores the held-out queries
(mean nDCG@10 over the dims) against their judged documents and mined pools, encoded by the model in training (the
whole corpus would cost a corpus pass per epoch), stops after ``patience`` epochs without a better score and keeps
the best epoch.

Training saves a checkpoint every epoch and an interrupted run resumes from the last one; the finished encoder is
saved with a record of how it was trained, so a rerun into the same folder reloads it instead of training again (and
refuses a folder trained with other settings); the re-encoding resumes chunk by chunk like every embedding cache.

:class:`TunedVectors` pairs each base-cache row with the tuned encoder's vector of the same text, so a method that
changed the encoder still answers ``transform(base vectors, k)`` like the heads on frozen vectors do.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from datasets import Dataset
from peft import LoraConfig
from safetensors.torch import load_file, save_file
from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
from sentence_transformers.base.evaluation.evaluator import BaseEvaluator
from sentence_transformers.sentence_transformer.losses import MatryoshkaLoss, MultipleNegativesRankingLoss
from sentence_transformers.sentence_transformer.training_args import BatchSamplers
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from ..core.io import atomic_write_json
from ..core.retrieval import evaluate_retrieval
from ..core.types import Embeddings, Qrels
from ..data.beir import RetrievalData
from ..data.cache import EmbeddingCache, load_or_encode
from ..data.examples import RankingExamples, TrainingExamples

ENCODER_DIR = "encoder"            # the tuned encoder as Sentence-Transformers saves it (LoRA: the adapter only)
ENCODER_RECORD = "encoder_record.json"   # written last: its presence means the encoder finished training
EMBEDDINGS_DIR = "embeddings"      # its embedding cache
TRAINER_DIR = "trainer"            # the trainer's checkpoints while it trains
SCORE = "held_out_ndcg@10"


@dataclass(frozen=True)
class FinetuneSettings:
    """The fine-tune's own settings; ``lr`` defaults to 2e-4 with LoRA and 2e-5 for full fine-tuning (the usual
    orders of magnitude for each; the shared ``FitConfig.lr`` is a head's)."""

    lora: bool = True
    lora_rank: int = 16
    lora_alpha: int = 32
    lr: float | None = None
    batch_size: int = 32
    max_epochs: int = 3
    patience: int = 1

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else (2e-4 if self.lora else 2e-5)


def training_table(examples: TrainingExamples, data: RetrievalData, seed: int) -> Dataset:
    """One (anchor, positive, negative) row per fit pair, the negative drawn (seeded) from the query's given
    negatives and mined pool."""
    query_text = dict(zip(data.query_ids, data.query_texts))
    doc_text = dict(zip(data.corpus_ids, data.corpus_texts))
    doc_ids = examples.cache.corpus_ids
    fit = examples.fit
    generator = torch.Generator().manual_seed(seed)
    columns: dict[str, list[str]] = {"anchor": [], "positive": [], "negative": []}
    for q_row, d_row in fit.pairs.tolist():
        candidates = [g for g in fit.given_negatives[q_row].tolist() if g >= 0] + fit.negative_pool[q_row].tolist()
        negative = candidates[int(torch.randint(len(candidates), (1,), generator=generator))]
        columns["anchor"].append(query_text[fit.query_ids[q_row]])
        columns["positive"].append(doc_text[doc_ids[d_row]])
        columns["negative"].append(doc_text[doc_ids[negative]])
    return Dataset.from_dict(columns)


class HeldOutNDCG(BaseEvaluator):
    """Mean over ``dims`` of the held-out queries' nDCG@10 over their candidates (judged documents and mined
    pools), encoded by the model being trained; the trainer calls it after every epoch."""

    def __init__(self, held: RankingExamples, doc_ids: Sequence[str], data: RetrievalData, qrels: Qrels,
                 dims: Sequence[int]) -> None:
        super().__init__()
        rows = set(held.labels.indices.tolist()) | set(held.negative_pool.flatten().tolist())
        rows |= {g for g in held.given_negatives.flatten().tolist() if g >= 0}
        query_text = dict(zip(data.query_ids, data.query_texts))
        doc_text = dict(zip(data.corpus_ids, data.corpus_texts))
        self.query_ids = list(held.query_ids)
        self.query_texts = [query_text[q] for q in self.query_ids]
        self.doc_ids = [doc_ids[r] for r in sorted(rows)]
        self.doc_texts = [doc_text[d] for d in self.doc_ids]
        self.qrels, self.dims = qrels, list(dims)
        self.primary_metric = SCORE

    @torch.no_grad()
    def __call__(self, model: SentenceTransformer, output_path: str | None = None, epoch: int = -1,
                 steps: int = -1) -> dict[str, float]:
        queries = model.encode_query(self.query_texts, convert_to_tensor=True).float().cpu()
        docs = model.encode_document(self.doc_texts, convert_to_tensor=True).float().cpu()
        by_dim = {k: evaluate_retrieval(self.query_ids, queries[:, :k], self.doc_ids, docs[:, :k], self.qrels)
                  for k in self.dims}
        return {SCORE: float(np.mean(list(by_dim.values()))), **{f"{SCORE}_{k}": v for k, v in by_dim.items()}}


class KeepBest(TrainerCallback):
    """Early stopping for the trainer: after each evaluation keep a copy of the trainable weights if the score is
    the best so far, stop after ``patience`` evaluations without one; :meth:`restore` puts the best back. Its state
    goes into every checkpoint the trainer saves (:meth:`load` reads it back), so a resumed run stops where the
    uninterrupted one would."""

    STATE_FILE, WEIGHTS_FILE = "keep_best.json", "keep_best.safetensors"

    def __init__(self, model: torch.nn.Module, patience: int) -> None:
        self.model, self.patience = model, patience
        self.best, self.best_epoch, self.since_best = -np.inf, 0, 0
        self.state: dict[str, torch.Tensor] = {}
        self.history: list[dict[str, float]] = []

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict[str, float] | None = None,
                    **kwargs: Any) -> None:
        scores = {k.removeprefix("eval_"): v for k, v in (metrics or {}).items() if SCORE in k}
        epoch = round(state.epoch or 0)
        self.history.append({"epoch": epoch, **scores})
        if scores[SCORE] > self.best:
            self.best, self.best_epoch, self.since_best = scores[SCORE], epoch, 0
            self.state = {n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}
        else:
            self.since_best += 1
            control.should_training_stop = self.since_best >= self.patience

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        folder = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        save_file({name: value.contiguous() for name, value in self.state.items()}, folder / self.WEIGHTS_FILE)
        atomic_write_json(folder / self.STATE_FILE, {"best": self.best, "best_epoch": self.best_epoch,
                                                     "since_best": self.since_best, "history": self.history})

    def load(self, checkpoint: str | Path) -> None:
        values = json.loads((Path(checkpoint) / self.STATE_FILE).read_text())
        self.best, self.best_epoch, self.since_best = values["best"], values["best_epoch"], values["since_best"]
        self.history = values["history"]
        self.state = load_file(Path(checkpoint) / self.WEIGHTS_FILE)

    @torch.no_grad()
    def restore(self) -> None:
        parameters = dict(self.model.named_parameters())
        for name, value in self.state.items():
            parameters[name].copy_(value)


def column_prompts(model: SentenceTransformer) -> dict[str, str]:
    """The model's query / document prompts for the table's columns, as ``encode_query`` / ``encode_document``
    apply them (none for an encoder without prompts)."""
    query, document = model.prompts.get("query"), model.prompts.get("document")
    return {column: prompt for column, prompt in (("anchor", query), ("positive", document), ("negative", document))
            if prompt}


def finetune(model: SentenceTransformer, table: Dataset, dims: Sequence[int], settings: FinetuneSettings, *,
             scale: float, seed: int, output_dir: Path, evaluator: BaseEvaluator | None = None,
             show_progress_bar: bool = True) -> dict:
    """Train ``model`` in place on ``table`` with ``MatryoshkaLoss(MNRL)`` at ``dims`` (adding a LoRA adapter first
    when ``settings.lora``); with an ``evaluator``, early-stopped on it and left at its best epoch, else trained for
    ``max_epochs``. Early-stopped training saves a checkpoint in ``output_dir`` every epoch and resumes from the
    last one found there. Returns what the report shows: parameters, epochs, held-out scores, seconds (of this
    call)."""
    if settings.lora:
        model.add_adapter(LoraConfig(r=settings.lora_rank, lora_alpha=settings.lora_alpha, lora_dropout=0.05))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    loss = MatryoshkaLoss(model, MultipleNegativesRankingLoss(model, scale=scale), matryoshka_dims=list(dims))
    args = SentenceTransformerTrainingArguments(
        output_dir=str(output_dir), num_train_epochs=settings.max_epochs, learning_rate=settings.learning_rate,
        per_device_train_batch_size=settings.batch_size, warmup_steps=0.1, seed=seed, data_seed=seed,
        batch_sampler=BatchSamplers.NO_DUPLICATES, prompts=column_prompts(model) or None,
        eval_strategy="epoch" if evaluator is not None else "no", save_strategy="epoch" if evaluator is not None else "no",
        save_total_limit=1, logging_strategy="epoch", report_to="none", disable_tqdm=not show_progress_bar)
    keep = KeepBest(model, settings.patience)
    checkpoint = get_last_checkpoint(str(output_dir)) if evaluator is not None and output_dir.is_dir() else None
    if checkpoint is not None:
        keep.load(checkpoint)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=table, loss=loss, evaluator=evaluator,
                                         callbacks=[keep] if evaluator is not None else None)
    start = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=checkpoint)
    if evaluator is not None:
        keep.restore()
    return {"lora": settings.lora, "trainable_parameters": trainable,
            "parameters": sum(p.numel() for p in model.parameters()), "train_rows": len(table),
            "epochs_trained": round(trainer.state.epoch or 0), "best_epoch": keep.best_epoch if evaluator else None,
            SCORE: keep.best if evaluator else None, "history": keep.history, "train_loss": output.training_loss,
            "train_s": time.perf_counter() - start, "settings": asdict(settings)}


def require_texts(method: str, data: RetrievalData | None, base_model: str | None) -> None:
    """A method that fine-tunes the encoder needs the texts and the encoder that made the cached vectors."""
    if data is None or base_model in (None, "precomputed"):
        raise ValueError(f"{method} fine-tunes the encoder itself: it needs the texts and the base model "
                         "(--base-model, the encoder that made the vectors)")


def tune_encoder(base_model: str, data: RetrievalData, examples: TrainingExamples, dims: Sequence[int],
                 settings: FinetuneSettings, *, scale: float, seed: int, run_dir: Path,
                 trust_remote_code: bool = False, show_progress_bar: bool = True) -> tuple[Path, dict, EmbeddingCache]:
    """Fine-tune ``base_model`` at ``dims`` on ``examples`` (see the module docstring) into ``run_dir/encoder`` and
    encode ``data`` with it; returns ``(encoder folder, training record, its embedding cache)``.

    A folder that already holds a finished encoder trained the same way is reused (the record says how); one trained
    otherwise is refused, naming the setting that differs."""
    run_dir = Path(run_dir)
    encoder_dir, record_file = run_dir / ENCODER_DIR, run_dir / ENCODER_RECORD
    how = {"base_model": base_model, "dims": [int(d) for d in dims], "seed": seed, "scale": scale,
           "settings": asdict(settings), "fit_queries": len(examples.fit.query_ids),
           "held_out_queries": len(examples.held.query_ids)}
    started_file = run_dir / TRAINER_DIR / "trained_with.json"
    for file in (record_file, started_file):
        if file.is_file():
            recorded = json.loads(file.read_text())
            recorded = recorded.get("trained_with", {}) if file == record_file else recorded
            differs = [key for key, value in how.items() if recorded.get(key) != value]
            if differs:
                raise ValueError(f"{run_dir} holds an encoder fine-tuned with other settings ({', '.join(differs)}); "
                                 "use another output folder or delete it")
    if record_file.is_file():
        record = json.loads(record_file.read_text())
    else:
        atomic_write_json(started_file, how)
        model = SentenceTransformer(base_model, trust_remote_code=trust_remote_code)
        evaluator = HeldOutNDCG(examples.held, examples.cache.corpus_ids, data, examples.qrels, dims)
        record = finetune(model, training_table(examples, data, seed), dims, settings, scale=scale, seed=seed,
                          output_dir=run_dir / TRAINER_DIR, evaluator=evaluator, show_progress_bar=show_progress_bar)
        model.save(str(encoder_dir), create_model_card=False)
        record = {**record, "trained_with": how}
        atomic_write_json(record_file, record)
        shutil.rmtree(run_dir / TRAINER_DIR, ignore_errors=True)    # its checkpoints served resuming only
    start = time.perf_counter()
    tuned = load_or_encode(data, str(encoder_dir), run_dir / EMBEDDINGS_DIR, show_progress_bar=show_progress_bar,
                           trust_remote_code=trust_remote_code)
    record = {key: value for key, value in record.items() if key != "trained_with"}
    return encoder_dir, {**record, "encode_s": time.perf_counter() - start}, tuned


def _digest(row: np.ndarray) -> bytes:
    return hashlib.blake2b(row.tobytes(), digest_size=16).digest()


class TunedVectors:
    """The tuned encoder's vector of every cached text, found by that text's *base* vector (its bytes): what a
    method that changed the encoder returns for the base vectors every scorer hands it. A vector of no cached text
    has no tuned counterpart and is refused."""

    def __init__(self, base: Embeddings, tuned: Embeddings, method: str) -> None:
        docs, queries = tuned.doc_index(), tuned.query_index()
        self.method = method
        self.vectors = np.concatenate([
            np.asarray(tuned.corpus, dtype=np.float32)[[docs[d] for d in base.corpus_ids]],
            np.asarray(tuned.queries, dtype=np.float32)[[queries[q] for q in base.query_ids]]])
        base_rows = np.concatenate([np.asarray(base.corpus, dtype=np.float32),
                                    np.asarray(base.queries, dtype=np.float32)])
        self.rows = {_digest(row): i for i, row in enumerate(base_rows)}

    def __call__(self, base_vectors: np.ndarray) -> np.ndarray:
        rows = [self.rows.get(_digest(row), -1) for row in np.ascontiguousarray(base_vectors, dtype=np.float32)]
        if -1 in rows:
            raise KeyError(f"{self.method}: {rows.count(-1)} vectors are no cached text's base vector; a fine-tuned "
                           "encoder maps texts, so encode them with its exported model instead")
        return self.vectors[rows]
