"""The SMRL training loop on Accelerate: one stage at a time, each frozen before the next starts.

Stage ``s`` trains only ``chain.stages[s]`` (its FC layer and ADS logits) on
``L_rank(D(s-1)) + L_rank(D(s)) + w * L_unsup(D(s)) + lookahead * sum_{k < D(s)} L_rank(k)``; the earlier
stages run under ``no_grad``.
Early stopping uses nDCG@10 on held-out *train* queries (the test split is never seen here), starting
with the untrained stage, so a stage never leaves its levels below where it found them; with
``ema_decay`` > 0 it scores, and the stage keeps, an exponential moving average of the stage's weights.
Every ``checkpoint_every`` epochs the full state (stage weights, optimizer, RNG, S-XBM memory,
early-stopping bookkeeping, the weight average) is written atomically, and an interrupted run resumes from it.

Under DDP (``accelerate launch``) every process walks the same global batches and trains on its own
shard of each batch's queries, ranked against the candidates of the *whole* batch; each shard's loss is
weighted by its share of the batch's pairs, so the averaged gradient is the one-process gradient and the
trained head does not depend on the process count (up to float noise). S-XBM enqueues the rows gathered
from all processes, so every replica holds the same memory.
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Mapping

import numpy as np
import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import broadcast_object_list, gather_object, parse_flag_from_env, set_seed
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..baselines.pca import PCACompressor
from ..config import SMECTrainingConfig
from ..evaluation.retrieval import MappedRows, evaluate_retrieval, rows_as_tensor
from .batches import split_train_examples
from .chain import SMECChain, SMRLStage, default_dimension_path
from .losses import graded_ranking_loss, similarity_preservation_loss
from .memory import SelectableCrossBatchMemory

if TYPE_CHECKING:
    from ..data.cache import EmbeddingCache

STATE_FILE = "trainer_state.json"
RUN_CONFIG_FILE = "run_config.json"
AVERAGE_FILE = "average_stage.safetensors"


@dataclass
class StageProgress:
    """Early-stopping bookkeeping of the stage being trained (saved in every checkpoint)."""

    stage: int = 0
    epoch: int = -1                      # last finished epoch of ``stage``; -1 = not started
    best_score: float = -math.inf
    best_epoch: int = -1
    bad_evals: int = 0
    history: list[dict] = field(default_factory=list)


class SMECTrainer:
    """Trains an :class:`SMECChain` on an :class:`EmbeddingCache` and the train qrels."""

    def __init__(self, config: SMECTrainingConfig, cache: "EmbeddingCache", train_qrels: Mapping[str, Mapping[str, int]],
                 output_dir: str | Path, show_progress_bar: bool = True, cpu: bool | None = None) -> None:
        self.config = config
        self.cache = cache
        self.output_dir = Path(output_dir)
        self.checkpoint_dir = self.output_dir / "checkpoints"
        self.show_progress_bar = show_progress_bar
        self.cpu = cpu
        self.dims = config.dims or default_dimension_path(cache.dim)
        if self.dims[0] != cache.dim:
            raise ValueError(f"--dims must start at the embedding dimension {cache.dim}, got {self.dims}")
        self.fit, self.held, self.train_qrels = split_train_examples(
            cache, train_qrels, config.held_out_fraction, config.seed, config.hard_negative_pool)
        self.log_path = self.output_dir / "training_log.jsonl"
        self._best_state: dict[str, torch.Tensor] | None = None
        self._average: StageAverage | None = None          # the stage's EMA weights (config.ema_decay > 0)

    # ------------------------------------------------------------------ evaluation on held-out train queries
    @torch.no_grad()
    def held_out_ndcg(self, chain: SMECChain, dim: int, n_stages: int | None = None) -> float:
        """nDCG@10 of held-out train queries at ``dim``, through the first ``n_stages`` stages."""
        weight, bias = copy.deepcopy(chain).cpu().fold(n_stages)   # fold builds its identity matrix on the CPU
        docs = MappedRows(self.cache.corpus, lambda x: torch.as_tensor(x) @ weight[:dim].T + bias[:dim])
        queries = self.held.queries @ weight[:dim].T + bias[:dim]
        return evaluate_retrieval(self.held.query_ids, queries, self.cache.corpus_ids, docs, self.train_qrels)

    @torch.no_grad()
    def held_out_loss(self, chain: SMECChain, n_stages: int, levels: tuple[int, ...]) -> float:
        """Ranking loss on held-out queries with fixed candidates (their positives + top mined negatives)."""
        was_training = chain.training
        chain.eval()
        batch = self.held.batch(torch.arange(len(self.held.pairs)), self.config.hard_negatives, deterministic=True)
        device = _device(chain)
        q, d = chain(batch.queries.to(device), n_stages), chain(batch.docs.to(device), n_stages)
        labels = batch.labels.to(device)
        loss = sum(graded_ranking_loss(q[:, :k], d[:, :k], labels, self.config.similarity_scale) for k in levels)
        chain.train(was_training)
        return float(loss)

    # ------------------------------------------------------------------ training
    def train(self) -> SMECChain:
        """Train every stage (resuming from the last checkpoint if there is one); return the frozen chain."""
        cfg = self.config
        self.output_dir.mkdir(parents=True, exist_ok=True)
        # ACCELERATE_USE_CPU=1 (multi-process CPU runs) is read by Accelerator, not by PartialState
        state = PartialState(cpu=bool(self.cpu) or parse_flag_from_env("ACCELERATE_USE_CPU"))
        self._check_run_config(state.is_main_process)
        set_seed(cfg.seed)
        chain = SMECChain(self.dims, cfg.later_stage_map, cfg.use_ads, cfg.ads_temperature_start)
        memory = SelectableCrossBatchMemory(self.dims[0], cfg.memory_size, cfg.memory_top_k)
        progress = StageProgress()
        checkpoint = latest_checkpoint(self.checkpoint_dir)
        if checkpoint is not None:
            progress = self._restore(checkpoint, chain, memory)
        elif cfg.pca_init:
            pca = PCACompressor(self.dims).fit_vectors(self.cache.corpus)
            components = torch.as_tensor(pca.components)
            chain.set_input_basis(components, -components @ torch.as_tensor(pca.mean))
        for s in range(progress.stage):
            chain.freeze_stage(s)
        for s in range(progress.stage, len(chain.stages)):
            self._train_stage(chain, memory, progress, checkpoint if progress.epoch >= 0 else None)
            checkpoint = None
            progress = StageProgress(stage=s + 1)
            self._save_checkpoint(None, chain, memory, progress, name=f"stage{s}-done")
        chain.eval()
        if state.is_main_process:
            chain.save(self.output_dir / "head")
        state.wait_for_everyone()
        return chain

    def _train_stage(self, chain: SMECChain, memory: SelectableCrossBatchMemory, progress: StageProgress,
                     checkpoint: Path | None) -> None:
        cfg, s = self.config, progress.stage
        levels = (self.dims[s], self.dims[s + 1])
        stage = chain.stage(s)
        stage.requires_grad_(True)
        chain.train()
        set_seed(cfg.seed + s)      # each stage starts from its own seed; a mid-stage resume then restores the RNG
        accelerator = Accelerator(mixed_precision=cfg.mixed_precision, cpu=self.cpu)
        chain.to(accelerator.device)   # the whole chain on the stage's device (frozen stages run there too)
        if checkpoint is None and stage.ads is not None:
            self._init_ads(chain, s)
        params = [{"params": list(stage.fc.parameters()), "lr": cfg.lr}]
        if stage.ads is not None:
            params.append({"params": [stage.ads.logits], "lr": cfg.ads_lr})
        optimizer = torch.optim.Adam(params)
        trainable, optimizer = accelerator.prepare(stage, optimizer)
        average = self._average = StageAverage(stage, cfg.ema_decay) if cfg.ema_decay else None
        if average is not None and checkpoint is not None and (checkpoint / AVERAGE_FILE).exists():
            average.load_state_dict(load_file(str(checkpoint / AVERAGE_FILE)))
        if checkpoint is not None:
            accelerator.load_state(str(checkpoint))
        elif cfg.eval_every <= cfg.max_epochs:   # without any evaluation the stage keeps its last epoch
            self._score_start(chain, stage, progress, levels, accelerator)
        start = time.perf_counter()
        bar = tqdm(range(progress.epoch + 1, cfg.max_epochs), desc=f"stage {s + 1}/{len(chain.stages)} "
                   f"{levels[0]}->{levels[1]}", disable=not (self.show_progress_bar and accelerator.is_main_process))
        for epoch in bar:
            if stage.ads is not None:
                stage.ads.temperature = _annealed(cfg.ads_temperature_start, cfg.ads_temperature_end, epoch, cfg.max_epochs)
            # the epoch's order is a function of (seed, stage, epoch), the same in every process, so a resume
            # replays it; it equals what a seedable RandomSampler would draw
            order = torch.randperm(len(self.fit.pairs), generator=torch.Generator().manual_seed(cfg.seed + s + epoch))
            generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + s * 1009 + epoch)
            totals = torch.zeros(5, dtype=torch.float64)   # loss, rank, unsup, grad_kept, grad_dropped
            rows_by_process = torch.zeros(accelerator.num_processes, dtype=torch.long)
            steps = 0
            for pair_index in order.split(cfg.batch_size):
                batch = self.fit.batch(pair_index, cfg.hard_negatives, generator)   # the global batch
                mine = torch.tensor_split(torch.arange(len(pair_index)), accelerator.num_processes)[
                    accelerator.process_index]
                with accelerator.autocast():
                    loss, rank, unsup = self._step_loss(chain, trainable, s, levels, batch, mine, memory, accelerator)
                optimizer.zero_grad()
                stage.weight_grad = None
                accelerator.backward(loss)
                kept, dropped = _gradient_split(stage, levels[1], accelerator)
                optimizer.step()
                if average is not None:
                    average.update()
                if cfg.use_sxbm:
                    queries, rows = _gather_shards(accelerator, batch.queries[mine])
                    positives, _ = _gather_shards(accelerator, batch.positives[mine])
                    memory.enqueue(torch.cat([queries, positives]))
                    rows_by_process += 2 * rows
                totals += torch.tensor([float(loss.detach()), float(rank.detach()), float(unsup.detach()),
                                        kept, dropped], dtype=torch.float64)
                steps += 1
            # each process's loss is its weighted share, so the mean over processes is the global batch loss
            totals = accelerator.reduce(totals.to(accelerator.device), "mean").cpu() / max(steps, 1)
            record = {"stage": s, "levels": list(levels), "epoch": epoch,
                      **dict(zip(("loss", "rank", "unsup", "grad_kept", "grad_dropped"), totals.tolist())),
                      "temperature": stage.ads.temperature if stage.ads is not None else None,
                      "sxbm_rows_by_process": rows_by_process.tolist()}
            progress.epoch = epoch
            stop = False
            if (epoch + 1) % cfg.eval_every == 0:
                chain.eval()
                with average.swapped() if average is not None else contextlib.nullcontext():
                    record["held_out_ndcg@10"], score = self._held_out_scores(chain, s, levels)
                    record["held_out_loss"] = self.held_out_loss(chain, s + 1, levels)
                    # every process computed the same score; the main process's decision is the one all follow
                    improved = broadcast_object_list([score > progress.best_score + 1e-6])[0]
                    if improved:
                        progress.best_score, progress.best_epoch, progress.bad_evals = score, epoch, 0
                        self._best_state = _snapshot(stage)
                    else:
                        progress.bad_evals += 1
                chain.train()
                stop = progress.bad_evals >= cfg.patience
                bar.set_postfix(loss=f"{record['loss']:.4f}", ndcg=f"{score:.4f}", best=f"{progress.best_score:.4f}")
            progress.history.append(record)
            self._log(record, accelerator)
            if (epoch + 1) % cfg.checkpoint_every == 0 or stop:
                self._save_checkpoint(accelerator, chain, memory, progress)
            if stop:
                break
        bar.close()
        if self._best_state is not None:
            stage.load_state_dict(self._best_state)
        self._best_state = self._average = None
        chain.freeze_stage(s)
        self._log({"stage": s, "levels": list(levels), "done": True, "best_epoch": progress.best_epoch,
                   "best_held_out_ndcg@10": progress.best_score, "seconds": time.perf_counter() - start,
                   "selected": stage.ads.selected_indices().tolist() if stage.ads is not None else None}, accelerator)
        accelerator.free_memory()
        chain.cpu()

    def _held_out_scores(self, chain: SMECChain, s: int, levels: tuple[int, int]) -> tuple[dict[int, float], float]:
        """Held-out nDCG@10 at the stage's two levels, and their mean: the early-stopping score."""
        scores = {k: self.held_out_ndcg(chain, k, s + 1) for k in levels}
        return scores, float(np.mean(list(scores.values())))

    def _score_start(self, chain: SMECChain, stage: SMRLStage, progress: StageProgress, levels: tuple[int, int],
                     accelerator: Accelerator) -> None:
        """Score the stage before its first step, so a stage whose training never beats its start (the prefix a
        later stage inherits, PCA for stage 1) keeps it (``best_epoch`` -1) instead of its best trained epoch."""
        chain.eval()
        scores, score = self._held_out_scores(chain, progress.stage, levels)
        chain.train()
        progress.best_score = broadcast_object_list([score])[0]
        self._best_state = _snapshot(stage)
        self._log({"stage": progress.stage, "levels": list(levels), "start": True, "held_out_ndcg@10": scores}, accelerator)

    def _step_loss(self, chain: SMECChain, trainable: torch.nn.Module, s: int, levels: tuple[int, int], batch,
                   mine: torch.Tensor, memory: SelectableCrossBatchMemory, accelerator: Accelerator):
        """This process's share of ``L_rank`` at both levels (+ the weighted lookahead levels) + ``w * L_unsup``
        at the new level.

        ``mine`` are the batch's query rows this process owns; they are ranked against every candidate of
        the global batch (cross-process in-batch negatives). Each loss is rescaled from the shard's mean to
        ``num_processes * shard sum / batch count``: DDP averages gradients, so the result is the gradient
        of the whole batch's mean loss, as in one process. Candidates are re-encoded here, not all-gathered:
        the head is one linear map, so that is cheaper than a differentiable all-gather, and exact.

        Queries, documents and memory neighbours go through the stage in ONE forward pass, so they share
        the step's ADS sample: separate passes would compare queries and documents on different coordinates.
        """
        cfg, device, n_proc = self.config, accelerator.device, accelerator.num_processes
        queries, labels = batch.queries[mine], batch.labels[mine]
        frozen = torch.cat([queries, batch.positives[mine]]).to(device)
        neighbours, valid = memory.select(frozen) if cfg.use_sxbm and len(memory) else (None, None)
        rows = [queries.to(device), batch.docs.to(device)]
        if neighbours is not None:
            rows += [frozen, neighbours.reshape(-1, self.dims[0])]
        out = _forward_stage(chain, trainable, s, torch.cat(rows))
        q, d = out[: len(rows[0])], out[len(rows[0]) : len(rows[0]) + len(rows[1])]
        rank = sum(graded_ranking_loss(q[:, :k], d[:, :k], labels.to(device), cfg.similarity_scale) for k in levels)
        if cfg.lookahead_weight:
            rank = rank + cfg.lookahead_weight * sum(
                graded_ranking_loss(q[:, :k], d[:, :k], labels.to(device), cfg.similarity_scale)
                for k in self.dims[s + 2:])
        rank = rank * (n_proc * _ranking_pairs(labels) / max(_ranking_pairs(batch.labels), 1))
        unsup = torch.zeros((), device=device)
        if neighbours is not None:
            start = len(rows[0]) + len(rows[1])
            ours = out[start : start + len(frozen)]
            theirs = out[start + len(frozen) :].reshape(len(frozen), neighbours.shape[1], out.shape[1])
            if cfg.sxbm_target == "frozen":
                target = (frozen, neighbours)
            else:
                target = (ours[:, : levels[0]].detach(), theirs[:, :, : levels[0]].detach())
            unsup = similarity_preservation_loss(*target, ours[:, : levels[1]], theirs[:, :, : levels[1]], valid)
            pairs = valid.sum()
            unsup = unsup * (n_proc * pairs / accelerator.reduce(pairs, "sum").clamp_min(1))
        return rank + cfg.unsup_weight * unsup, rank, unsup

    @torch.no_grad()
    def _init_ads(self, chain: SMECChain, s: int) -> None:
        """Start ADS from each coordinate's second moment on the corpus (PCA order for stage 1)."""
        if s > 0 and self.config.lookahead_weight:
            # the earlier stages trained this block's prefixes for the smaller levels: start from the prefix
            chain.stage(s).ads.init_from_importance(torch.arange(self.dims[s], 0, -1, dtype=torch.float64))
            return
        sample = rows_as_tensor(self.cache.corpus, slice(0, 20000)).to(_device(chain))
        block = chain(sample, n_stages=s)[:, : self.dims[s]]
        chain.stage(s).ads.init_from_importance(chain.stage(s).fc(block).pow(2).mean(dim=0))

    # ------------------------------------------------------------------ persistence
    def _check_run_config(self, is_main_process: bool) -> None:
        """Refuse to resume a run directory that was started with different settings (the main process writes it),
        and refuse processes that disagree on the settings or the embedding cache."""
        path = self.output_dir / RUN_CONFIG_FILE
        current = {"config": self.config.to_dict(), "dims": self.dims, "cache": self.cache.meta.get("key")}
        if PartialState().num_processes > 1:
            differs = [r for r, other in enumerate(gather_object([current])) if other != current]
            if differs:
                raise ValueError(f"processes {differs} train with other settings or another embedding cache than "
                                 f"process {PartialState().process_index}")
        if path.exists():
            saved = json.loads(path.read_text())
            if saved != json.loads(json.dumps(current)):
                raise ValueError(f"{path} was written by a run with other settings; use a new --output "
                                 f"or delete {self.output_dir} to start over")
        elif is_main_process:
            _atomic_write_text(path, json.dumps(current, indent=2))

    def _save_checkpoint(self, accelerator: Accelerator | None, chain: SMECChain, memory: SelectableCrossBatchMemory,
                         progress: StageProgress, name: str | None = None) -> None:
        name = name or f"stage{progress.stage}-epoch{progress.epoch:03d}"
        final = self.checkpoint_dir / name
        tmp = self.checkpoint_dir / f".tmp-{name}"
        processes = PartialState()
        if processes.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        processes.wait_for_everyone()
        if accelerator is not None:
            accelerator.save_state(str(tmp))
            processes.wait_for_everyone()   # every process's random_states_<rank>.pkl is in tmp before the rename
        if processes.is_main_process:
            chain.save(tmp / "chain")
            save_file({"buffer": memory.buffer.contiguous()}, str(tmp / "memory.safetensors"))
            if self._best_state:
                save_file({k: v.contiguous() for k, v in self._best_state.items()}, str(tmp / "best_stage.safetensors"))
            if self._average is not None:
                save_file(self._average.state_dict(), str(tmp / AVERAGE_FILE))
            state = {**progress.__dict__, "memory_pointer": memory.pointer, "memory_filled": memory.filled}
            (tmp / STATE_FILE).write_text(json.dumps(state, indent=1))   # written last: marks a complete checkpoint
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            for old in sorted(_checkpoints(self.checkpoint_dir), key=_checkpoint_order)[:-2]:
                shutil.rmtree(old, ignore_errors=True)
        processes.wait_for_everyone()

    def _restore(self, checkpoint: Path, chain: SMECChain, memory: SelectableCrossBatchMemory) -> StageProgress:
        state = json.loads((checkpoint / STATE_FILE).read_text())
        chain.load_state_dict(load_file(str(checkpoint / "chain" / "chain.safetensors")))
        memory.load_state_dict({"buffer": load_file(str(checkpoint / "memory.safetensors"))["buffer"],
                                "pointer": state.pop("memory_pointer"), "filled": state.pop("memory_filled")})
        best = checkpoint / "best_stage.safetensors"
        self._best_state = load_file(str(best)) if best.exists() else None
        return StageProgress(**state)

    def _log(self, record: dict, accelerator: Accelerator) -> None:
        if accelerator.is_main_process:
            with self.log_path.open("a") as f:
                f.write(json.dumps(record) + "\n")


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def latest_checkpoint(directory: Path) -> Path | None:
    """The newest complete checkpoint (one whose state file was written), or None."""
    done = [c for c in _checkpoints(directory) if (c / STATE_FILE).exists()]
    return max(done, key=_checkpoint_order) if done else None


def _checkpoints(directory: Path) -> list[Path]:
    return [p for p in directory.glob("stage*") if p.is_dir()] if directory.exists() else []


def _checkpoint_order(path: Path) -> tuple[int, int]:
    stage, _, rest = path.name[len("stage"):].partition("-")
    return int(stage), (10**6 if rest == "done" else int(rest[len("epoch"):]))


def _forward_stage(chain: SMECChain, trainable: torch.nn.Module, s: int, x: torch.Tensor) -> torch.Tensor:
    """The running vector after stage ``s``: frozen stages without gradient, then the trainable one."""
    with torch.no_grad():
        y = chain(x, n_stages=s)
    lead = chain.dims[s]
    return torch.cat([trainable(y[:, :lead]), y[:, lead:]], dim=1)


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of the module's state (the best stage so far), safe from later optimizer steps."""
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def _device(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


def _ranking_pairs(labels: torch.Tensor) -> int:
    """How many ordered pairs ``y_ij > y_ik`` :func:`graded_ranking_loss` averages over (its denominator)."""
    if not labels.numel():
        return 0
    ordered = labels.sort(dim=1).values
    return int(torch.searchsorted(ordered, labels, side="left").sum())


def _gather_shards(accelerator: Accelerator, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every process's ``rows`` in process order, and how many each sent (shards may differ by one row)."""
    counts = accelerator.gather(torch.tensor([len(rows)], device=accelerator.device)).cpu()
    if accelerator.num_processes == 1:
        return rows, counts
    padded = rows.new_zeros(int(counts.max()), *rows.shape[1:])
    padded[: len(rows)] = rows
    gathered = accelerator.gather(padded.to(accelerator.device)).cpu().split(len(padded))
    return torch.cat([g[:n] for g, n in zip(gathered, counts.tolist())]), counts


def _gradient_split(stage: SMRLStage, kept_dim: int, accelerator: Accelerator) -> tuple[float, float]:
    """Mean |grad| of the FC rows whose outputs the stage keeps vs drops (the paper's SMRL diagnostic).

    The per-process gradients are averaged first (as DDP does), so the figure is the whole batch's.
    """
    grad, stage.weight_grad = stage.weight_grad, None
    if grad is None:
        return 0.0, 0.0
    grad = accelerator.reduce(grad.contiguous(), "mean").cpu()
    kept = stage.ads.selected_indices().cpu() if stage.ads is not None else torch.arange(kept_dim)
    mask = torch.zeros(grad.shape[0], dtype=torch.bool)
    mask[kept] = True
    return float(grad[mask].abs().mean()), float(grad[~mask].abs().mean()) if (~mask).any() else 0.0


def _annealed(start: float, end: float, epoch: int, epochs: int) -> float:
    return start * (end / start) ** (epoch / max(epochs - 1, 1))


class StageAverage:
    """An exponential moving average (EMA) of a stage's trainable parameters.

    Held-out scores and the kept best state are taken from the averaged weights. With ~7 steps per epoch on
    SciFact, single steps move the head noticeably; averaging them smooths what early stopping chooses from.
    The orthogonal parametrisation's free parameters are averaged, so the averaged map stays orthogonal.
    """

    def __init__(self, stage: torch.nn.Module, decay: float) -> None:
        self.params = {name: p for name, p in stage.named_parameters() if p.requires_grad}
        self.shadow = {name: p.detach().clone() for name, p in self.params.items()}
        self.decay = decay

    @torch.no_grad()
    def update(self) -> None:
        for name, p in self.params.items():
            self.shadow[name].lerp_(p.detach(), 1.0 - self.decay)

    @contextlib.contextmanager
    def swapped(self) -> Iterator[None]:
        """Inside the block the stage holds the averaged weights; the live ones come back after it."""
        with torch.no_grad():
            live = {name: p.detach().clone() for name, p in self.params.items()}
            for name, p in self.params.items():
                p.copy_(self.shadow[name])
        try:
            yield
        finally:
            with torch.no_grad():
                for name, p in self.params.items():
                    p.copy_(live[name])

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {name: v.detach().cpu().contiguous() for name, v in self.shadow.items()}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        for name, value in state.items():
            self.shadow[name].copy_(value)
