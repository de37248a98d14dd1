"""The SMRL stage schedule on Accelerate: one stage at a time, each frozen before the next starts.

Stage ``s`` trains only ``chain.stages[s]`` (its FC layer and ADS logits) on the objective of
:mod:`smec_hf.smec.objective`; the earlier stages run under ``no_grad``. Each stage is one run of the
engine's early-stopped loop (:func:`~smec_hf.engine.loop.fit_early_stopped`), scored by nDCG@10 of
held-out *train* queries at the stage's two levels (the test split is never seen here), or, on a corpus with no
queries, by the neighbour recall@10 of held-out documents; with
``ema_decay`` > 0 it scores, and the stage keeps, a moving average of the stage's weights. Every
``checkpoint_every`` epochs the full state (stage weights, optimizer, RNG, S-XBM memory, the loop's
bookkeeping, the weight average) is written atomically, and an interrupted run resumes from it.

Under DDP (``accelerate launch``) every process walks the same global batches but reads and encodes only its
part of each: its shard of the queries and of the batch's unique candidates (see the objective); S-XBM enqueues
the rows gathered from all processes, so every replica holds the same memory, kept on the training device.
Several CPU processes on one machine share its cores (:func:`~smec_hf.engine.distributed.spread_cpu_threads`).
"""
from __future__ import annotations

import contextlib
import copy
import json
import logging
import time
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import parse_flag_from_env, set_seed
from safetensors.torch import load_file

from ..core import layout
from ..core.pca import fit_pca
from ..core.types import Embeddings, Qrels
from ..data.examples import Batch, CorpusBatch, CorpusExamples, TrainingExamples, epoch_pieces, probe_documents
from ..engine.checkpoint import Checkpoints, refuse_other_settings
from ..engine.ema import WeightAverage
from ..engine.distributed import gather_shards, my_shard, spread_cpu_threads
from ..engine.held_out import held_out_ndcg_per_query, held_out_neighbour_recall_per_doc
from ..engine.loop import PER_QUERY, LoopCallback, LoopState, fit_early_stopped
from .chain import SMECChain, default_dimension_path, validate_dimension_path
from .memory import SelectableCrossBatchMemory
from .no_harm import choose_head, describe
from .selection import CANDIDATES, choose_candidate, stage_candidates
from .objective import annealed, corpus_stage_loss, gradient_split, held_out_loss, init_ads, stage_loss
from .settings import SMECSettings
from .stage_state import AVERAGE_FILE, checkpoint_state, restore_checkpoint, write_checkpoint_files

logger = logging.getLogger(__name__)


class TrainerCallback:
    """Hooks into :class:`SMECTrainer`; override what you need (raising stops the run, checkpoints stay)."""

    def on_stage_start(self, stage: int, chain: SMECChain) -> None:
        """Before stage ``stage`` trains (after a resume too)."""

    def on_record(self, record: dict) -> None:
        """Every training-log record (a stage's scored start, each epoch, a stage's end), as it is logged."""

    def on_stage_end(self, stage: int, chain: SMECChain) -> None:
        """After stage ``stage`` was restored to its best state and frozen."""


class SMECTrainer:
    """Trains an :class:`SMECChain` on cached embeddings and the train qrels."""

    def __init__(self, settings: SMECSettings, cache: Embeddings, train_qrels: Qrels, output_dir: str | Path,
                 show_progress_bar: bool = True, cpu: bool | None = None,
                 callbacks: Sequence[TrainerCallback] = (),
                 examples: TrainingExamples | CorpusExamples | None = None) -> None:
        """``examples``: the fit / held-out split of ``train_qrels`` if already built (repeated runs share its
        hard-negative mining); otherwise it is built here. Empty ``train_qrels`` (no queries at all) trains
        without labels on the corpus, leaving :func:`~smec_hf.data.examples.probe_documents` out."""
        self.settings, self.cache, self.cpu = settings, cache, cpu
        self.output_dir = Path(output_dir)
        self.checkpoints = Checkpoints(self.output_dir / layout.CHECKPOINT_DIR)
        self.show_progress_bar = show_progress_bar
        self.callbacks = list(callbacks)
        self.dims = validate_dimension_path(settings.dims or default_dimension_path(cache.dim))   # before any write
        if self.dims[0] != cache.dim:
            raise ValueError(f"--dims must start at the embedding dimension {cache.dim}, got {self.dims}")
        # no train queries at all (a corpus-only dataset): label-free stages, early-stopped on neighbour recall
        self.labelled = bool(train_qrels)
        # seconds by phase (mining, held-out scoring, do no harm), for the run record's timings
        self.timings = {"mine": 0.0, "held_out_scoring": 0.0, "no_harm": 0.0}
        started = time.perf_counter()
        if examples is not None:
            self.examples = examples
        elif self.labelled:
            self.examples = TrainingExamples.for_config(cache, train_qrels, settings)
        else:
            self.examples = CorpusExamples.build(cache, settings.held_out_fraction, settings.seed,
                                                 settings.memory_top_k, exclude=probe_documents(cache.corpus_ids))
        self.timings["mine"] = time.perf_counter() - started
        self.measure = "ndcg@10" if self.labelled else "neighbour_recall@10"
        self.log_path = self.output_dir / layout.TRAINING_LOG
        self.head_choice: dict | None = None     # set by the do-no-harm check after training
        self._corpus: CorpusExamples | None = None   # documents for corpus_weight > 0, built on first use

    def held_out_scores(self, chain: SMECChain, n_stages: int | None, levels: Sequence[int]) -> dict[int, float]:
        """The early-stopping score at ``levels`` through the first ``n_stages`` stages (the folded map, or a
        non-linear chain itself): held-out nDCG@10, or without labels the held-out documents' neighbour recall@10."""
        return {k: float(v.mean()) for k, v in self.held_out_per_query(chain, n_stages, levels).items()}

    def held_out_per_query(self, chain: SMECChain, n_stages: int | None, levels: Sequence[int],
                           full_scan: bool | None = None) -> dict[int, np.ndarray]:
        """:meth:`held_out_scores` per held-out query (or document, without labels): what decisions pair up."""
        started = time.perf_counter()
        encode = self._encoder(chain, n_stages)
        if not self.labelled:
            scores = held_out_neighbour_recall_per_doc(self.cache, self.examples.held_ids, encode, levels)
        else:
            scores = held_out_ndcg_per_query(self.examples, encode, levels, full_scan=full_scan)
        self.timings["held_out_scoring"] += time.perf_counter() - started
        return scores

    @staticmethod
    def _encoder(chain: SMECChain, n_stages: int | None) -> Callable[[torch.Tensor], torch.Tensor]:
        """The map through the first ``n_stages`` stages, on the CPU: the folded matrix of a linear chain, or a
        non-linear chain itself. Every level is a prefix of its output, so one pass serves them all."""
        head = copy.deepcopy(chain).cpu().eval()     # fold builds its identity on the CPU
        if not head.is_linear:                        # a residual-MLP stage 1 does not fold: run the chain
            return lambda x: head(x, n_stages)
        weight, bias = head.fold(n_stages)
        return lambda x: x @ weight.T + bias

    def train(self) -> SMECChain:
        """Train every stage (resuming from the last checkpoint if there is one); return the frozen chain."""
        cfg = self.settings
        self.output_dir.mkdir(parents=True, exist_ok=True)
        # ACCELERATE_USE_CPU=1 (multi-process CPU runs) is read by Accelerator, not by PartialState
        state = PartialState(cpu=bool(self.cpu) or parse_flag_from_env("ACCELERATE_USE_CPU"))
        if state.device.type == "cpu":
            spread_cpu_threads()
        refuse_other_settings(self.output_dir / layout.RUN_CONFIG_FILE,
                              {"config": cfg.to_dict(), "dims": self.dims, "cache": self.cache.meta.get("key")},
                              state.is_main_process)
        set_seed(cfg.seed)
        chain = SMECChain(self.dims, cfg.later_stage_map, cfg.use_ads, cfg.ads_temperature_start, cfg.head_bias,
                          stage1=cfg.stage1_head, hidden=cfg.stage1_hidden)
        memory = SelectableCrossBatchMemory(self.dims[0], cfg.memory_size, cfg.memory_top_k)
        first, loop = 0, LoopState()
        checkpoint = self.checkpoints.latest()
        if checkpoint is not None:
            first, loop = restore_checkpoint(self.checkpoints.state(checkpoint), checkpoint, chain, memory)
            if first >= len(chain.stages):
                logger.warning("%s: all %d stages were already trained (checkpoint %s); reusing them",
                               self.output_dir, len(chain.stages), checkpoint.name)
            else:
                logger.warning("resuming %s from stage %d of %d, epoch %d (checkpoint %s)", self.output_dir,
                               first + 1, len(chain.stages), loop.epoch + 2, checkpoint.name)
        elif cfg.pca_init:
            weight, offset = fit_pca(self.cache.corpus).affine()
            chain.set_input_basis(weight, offset if cfg.head_bias else None)
        for s in range(first):
            chain.freeze_stage(s)
        for s in range(first, len(chain.stages)):
            options = stage_candidates(cfg)
            if loop.epoch < 0 and len(options) > 1:     # a resumed stage was not searched (see _select_stage)
                chain, memory = self._select_stage(chain, memory, s, options)
            else:
                self._train_stage(chain, memory, s, loop, checkpoint if loop.epoch >= 0 else None)
            for callback in self.callbacks:
                callback.on_stage_end(s, chain)
            checkpoint, loop = None, LoopState()
            self.checkpoints.save(self.checkpoints.name(s), checkpoint_state(s + 1, loop, memory),
                                  write_files=lambda folder: write_checkpoint_files(folder, chain, memory, loop, None))
        chain.eval()
        if cfg.do_no_harm:
            scoring, no_harm_started = self.timings["held_out_scoring"], time.perf_counter()
            chain = self._no_harm(chain, state.is_main_process)
            self.timings["no_harm"] = time.perf_counter() - no_harm_started
            self.timings["held_out_scoring"] = scoring     # do no harm's scoring is counted as do no harm
        if state.is_main_process:
            chain.save(self.output_dir / layout.HEAD_DIR)
        state.wait_for_everyone()
        return chain

    def _no_harm(self, chain: SMECChain, main_process: bool) -> SMECChain:
        """The head to ship (:func:`~smec_hf.smec.no_harm.choose_head`), its record kept as ``head_choice``. PCA is
        stage 1's input basis when ``pca_init`` set it (also after a resume), so it is fitted only without it."""
        if self.settings.pca_init:
            basis = (chain.basis_weight, chain.basis_bias if chain.bias else None)
        else:
            weight, offset = fit_pca(self.cache.corpus).affine()
            basis = (weight, offset if chain.bias else None)
        # grouped held-out queries stand for new topics: there the floor holds by the means (see no_harm)
        # decided on the full search at every corpus size (one corpus pass per compared head, once per run): a
        # fixed candidate set cannot see documents a trained head pulls in from outside it
        shipped, self.head_choice = choose_head(chain, lambda c: self.held_out_per_query(c, None, self.dims, True),
                                                basis,
                                                strict=self.labelled and self.settings.group_by != "query")
        if main_process:
            with self.log_path.open("a") as f:
                f.write(json.dumps({"head_choice": self.head_choice}) + "\n")
        for note in describe(self.head_choice):
            logger.info(note)
        return shipped

    def _select_stage(self, chain: SMECChain, memory: SelectableCrossBatchMemory, s: int,
                      options: dict[str, SMECSettings]) -> tuple[SMECChain, SelectableCrossBatchMemory]:
        """Train stage ``s`` once per candidate (:mod:`smec_hf.smec.selection`), each from the same chain, memory and
        seed; return the chain and memory of the run's own settings unless a candidate beats them on the held-out
        queries by more than noise (:func:`~smec_hf.smec.selection.choose_candidate`).

        Candidates write no mid-stage checkpoints, so an interrupted search restarts the stage; the stage-end
        checkpoint after it holds the chosen chain."""
        trials = {}
        for name, settings in options.items():
            trial_chain, trial_memory = copy.deepcopy(chain), copy.deepcopy(memory)
            if not settings.use_ads:
                trial_chain.drop_ads(s)
            loop = self._train_stage(trial_chain, trial_memory, s, LoopState(), None, settings, candidate=name)
            trials[name] = (loop, trial_chain, trial_memory)
        chosen, evidence = choose_candidate({name: trial[0] for name, trial in trials.items()})
        self._log({"stage": s, "levels": [self.dims[s], self.dims[s + 1]], "chosen": chosen,
                   "changed": CANDIDATES[chosen](self.settings) if chosen in CANDIDATES else {},
                   f"selection_held_out_{self.measure}": {name: trial[0].best_score for name, trial in trials.items()},
                   "selection_evidence": evidence}, PartialState())
        return trials[chosen][1], trials[chosen][2]

    def _train_stage(self, chain: SMECChain, memory: SelectableCrossBatchMemory, s: int, loop: LoopState,
                     checkpoint: Path | None, settings: SMECSettings | None = None,
                     candidate: str | None = None) -> LoopState:
        """Train stage ``s`` with ``settings`` (the run's by default) and freeze it; ``candidate`` names a search
        candidate: its records carry the name and it writes no mid-stage checkpoints."""
        cfg = settings or self.settings
        tag = {"candidate": candidate} if candidate else {}
        levels = (self.dims[s], self.dims[s + 1])
        stage = chain.stages[s]
        stage.requires_grad_(True)
        chain.train()
        set_seed(cfg.seed + s)      # each stage starts from its own seed; a mid-stage resume then restores the RNG
        accelerator = Accelerator(mixed_precision=cfg.mixed_precision, cpu=self.cpu)
        chain.to(accelerator.device)   # the whole chain on the stage's device (frozen stages run there too)
        memory.to(accelerator.device)
        if checkpoint is None and stage.ads is not None:
            init_ads(chain, s, self.cache.corpus, lookahead=bool(cfg.lookahead_weight))
        params = [{"params": list(stage.fc.parameters()), "lr": cfg.lr}]
        if stage.ads is not None:
            params.append({"params": [stage.ads.logits], "lr": cfg.ads_lr})
        trainable, optimizer = accelerator.prepare(stage, torch.optim.Adam(params))
        average = WeightAverage(stage, cfg.ema_decay) if cfg.ema_decay else None
        if checkpoint is not None:
            if average is not None and (checkpoint / AVERAGE_FILE).exists():
                average.load_state_dict(load_file(str(checkpoint / AVERAGE_FILE)))
            accelerator.load_state(str(checkpoint))
        for callback in self.callbacks:
            callback.on_stage_start(s, chain)

        def train_epoch(epoch: int) -> dict:
            if stage.ads is not None:
                stage.ads.temperature = annealed(cfg.ads_temperature_start, cfg.ads_temperature_end, epoch,
                                                 cfg.max_epochs)
            # the epoch's order is a function of (seed, stage, epoch), the same in every process, so a resume
            # replays it; it equals what a seedable RandomSampler would draw. A large set's pass spans several
            # epochs (epoch_pairs): each is one piece of the pass's permutation
            sweep, piece = divmod(epoch, self._pieces)
            order = torch.Generator().manual_seed(cfg.seed + s + sweep)
            negatives = torch.Generator().manual_seed(cfg.seed * 1_000_003 + s * 1009 + epoch)
            totals = torch.zeros(5, dtype=torch.float64)   # loss, rank, unsup, grad_kept, grad_dropped
            rows_by_process = torch.zeros(accelerator.num_processes, dtype=torch.long)
            read = torch.zeros(3, dtype=torch.long)    # this process's queries, candidates, corpus rows read
            steps = 0
            corpus_rows = torch.Generator().manual_seed(cfg.seed * 7919 + s * 31 + epoch)   # own stream
            for batch in self._epoch_batches(order, negatives, accelerator, (piece, self._pieces)):
                with accelerator.autocast():
                    if self.labelled:
                        loss = stage_loss(chain, trainable, s, batch, memory, cfg, accelerator,
                                          self._corpus_batch(cfg, corpus_rows))
                        read += torch.tensor([len(batch.queries), len(batch.docs), batch.rows_read])
                    else:
                        loss = corpus_stage_loss(chain, trainable, s, batch, memory, cfg, accelerator)
                optimizer.zero_grad()
                stage.weight_grad = None
                accelerator.backward(loss.total)
                kept, dropped = gradient_split(stage, levels[1], accelerator)
                optimizer.step()
                if average is not None:
                    average.update()
                if cfg.use_sxbm:
                    frozen = [batch.queries, batch.positives] if self.labelled else [batch.docs]
                    gathered = [gather_shards(accelerator, x) for x in frozen]
                    memory.enqueue(torch.cat([x for x, _ in gathered]))
                    rows_by_process += sum(rows for _, rows in gathered)
                totals += torch.tensor([float(v.detach()) for v in loss] + [kept, dropped], dtype=torch.float64)
                steps += 1
            # each process's loss is its weighted share, so the mean over processes is the global batch loss
            totals = accelerator.reduce(totals.to(accelerator.device), "mean").cpu() / max(steps, 1)
            read = accelerator.gather(read.to(accelerator.device)).cpu().reshape(-1, 3).T.tolist()
            return {**dict(zip(("loss", "main", "unsup", "grad_kept", "grad_dropped"), totals.tolist())),
                    "temperature": stage.ads.temperature if stage.ads is not None else None,
                    "sxbm_rows_by_process": rows_by_process.tolist(),
                    **({"rows_read_by_process": dict(zip(("queries", "candidates", "corpus"), read))}
                       if self.labelled else {})}

        def score() -> tuple[float, dict]:
            per_query = self.held_out_per_query(chain, s + 1, levels)
            scores = {k: float(v.mean()) for k, v in per_query.items()}
            details = {f"held_out_{self.measure}": scores, PER_QUERY: np.mean(list(per_query.values()), axis=0)}
            if loop.epoch >= 0 and self.labelled:      # the start is scored by nDCG only
                details["held_out_loss"] = held_out_loss(chain, s + 1, levels, self.examples.held, cfg)
            return float(np.mean(list(scores.values()))), details

        trainer = self

        class StageEvents(LoopCallback):
            def on_start(self, record: dict, state: LoopState) -> None:
                trainer._log({"stage": s, "levels": list(levels), **tag, "start": True, **record}, accelerator)

            def on_epoch_end(self, record: dict, state: LoopState, stop: bool) -> None:
                trainer._log({"stage": s, "levels": list(levels), **tag, **record}, accelerator)
                if not candidate and ((record["epoch"] + 1) % cfg.checkpoint_every == 0 or stop):
                    trainer.checkpoints.save(
                        trainer.checkpoints.name(s, record["epoch"]), checkpoint_state(s, state, memory), accelerator,
                        lambda folder: write_checkpoint_files(folder, chain, memory, state, average))

        start = time.perf_counter()
        loop = fit_early_stopped(
            chain, train_epoch, score, cfg.stage_schedule, keep=stage, state=loop,
            evaluation=average.swapped if average is not None else contextlib.nullcontext, callbacks=[StageEvents()],
            desc=f"stage {s + 1}/{len(chain.stages)} {levels[0]}->{levels[1]}",
            show_progress_bar=self.show_progress_bar and accelerator.is_main_process)
        chain.freeze_stage(s)
        self._log({"stage": s, "levels": list(levels), **tag, "done": True, "best_epoch": loop.best_epoch,
                   f"best_held_out_{self.measure}": loop.best_score, "start_kept_over": loop.start_kept_over,
                   "seconds": time.perf_counter() - start,
                   "selected": stage.ads.selected_indices().tolist() if stage.ads is not None else None}, accelerator)
        accelerator.free_memory()
        chain.cpu()
        return loop

    def _corpus_batch(self, cfg: SMECSettings, generator: torch.Generator) -> CorpusBatch | None:
        """``batch_size`` random corpus documents with their frozen neighbours, for ``corpus_weight`` > 0."""
        if not cfg.corpus_weight:
            return None
        if self._corpus is None:
            self._corpus = CorpusExamples.build(self.cache, 0.0, cfg.seed, cfg.memory_top_k)
        return self._corpus.batch(torch.randint(len(self._corpus), (cfg.batch_size,), generator=generator))

    @property
    def _pieces(self) -> int:
        """How many epochs one pass over the fit pairs (or documents) spans (``epoch_pairs``)."""
        return epoch_pieces(len(self.examples.fit.pairs) if self.labelled else len(self.examples),
                            self.settings.epoch_pairs)

    def _epoch_batches(self, order: torch.Generator, negatives: torch.Generator, accelerator: Accelerator,
                       piece: tuple[int, int]) -> Iterator[Batch | CorpusBatch]:
        """This process's part of one epoch's global batches: ranking batches, or without labels batches of
        documents and neighbours; only the part's rows are read."""
        if self.labelled:
            return self.examples.epoch_batches(self.settings.batch_size, self.settings.hard_negatives, order,
                                               negatives, (accelerator.process_index, accelerator.num_processes),
                                               piece)
        return (self.examples.batch(rows[my_shard(len(rows), accelerator)])
                for rows in self.examples.epoch_rows(self.settings.batch_size, order, piece))

    def _log(self, record: dict, accelerator: Accelerator) -> None:
        """Append to the training log (main process) and tell the callbacks."""
        if accelerator.is_main_process:
            with self.log_path.open("a") as f:
                f.write(json.dumps(record) + "\n")
        for callback in self.callbacks:
            callback.on_record(record)
