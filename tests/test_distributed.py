"""Distributed training through ``accelerate launch``: a real 2-process CPU (gloo) run against a 1-process run.

Both go through ``training/accelerate_smec.py`` and the shipped launch configs, on the real SciFact subset and its
MiniLM cache, with OMP_NUM_THREADS=1: the one-process run keeps one thread, the two processes share the cores
(one each on a 2-core machine), so both runs do the same float arithmetic up to summation order.
"""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from accelerate.commands.config.config_args import load_config_from_file
from safetensors.torch import load_file

from beir_files import write_beir
from smec_hf.data.examples import TrainingExamples
from smec_hf.engine.distributed import spread_cpu_threads
from smec_hf.smec.chain import SMECChain
from smec_hf.smec.settings import SMECSettings

ROOT = Path(__file__).resolve().parents[1]
ENTRY_POINT = "training/accelerate_smec.py"
CONFIGS = ROOT / "training" / "configs"
LAUNCH = [sys.executable, "-m", "accelerate.commands.launch"]
# batch 33 is odd, so every step splits 17 / 16 queries: the uneven-shard path runs on every step;
# memory 256 < 2 epochs x 238 enqueued rows, so the S-XBM FIFO wraps around
BATCH = 33
OPTIONS = ["--dims", "384", "128", "32", "--max-epochs", "2", "--batch-size", str(BATCH), "--memory-size", "256",
           "--hard-negatives", "4", "--hard-negative-pool", "20", "--no-progress", "--search"]   # fixed settings


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(args: list, **extra_env: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "ACCELERATE_USE_CPU"}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", **extra_env)
    return subprocess.run([*LAUNCH, *map(str, args)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def runs(scifact_small, scifact_small_cache, tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    script = [ENTRY_POINT, "--data", write_beir(scifact_small, root / "data"),
              "--embeddings", scifact_small_cache.path, *OPTIONS]
    one = _launch(["--config_file", CONFIGS / "cpu.yaml", *script, "--output", root / "one"])
    assert one.returncode == 0, one.stderr[-3000:]
    two = _launch(["--config_file", CONFIGS / "cpu_ddp.yaml", "--main_process_port", _free_port(), *script,
                   "--output", root / "two"], ACCELERATE_USE_CPU="1")
    assert two.returncode == 0, two.stderr[-3000:]
    return root / "one", root / "two", two


def _log(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "training_log.jsonl").read_text().splitlines()]


def _batch_sizes(pairs: int) -> list[int]:
    return [min(BATCH, pairs - start) for start in range(0, pairs, BATCH)]


def test_both_processes_fill_the_same_sxbm_memory(runs):
    one, two, _ = runs
    for a, b in zip((r for r in _log(one) if "epoch" in r), (r for r in _log(two) if "epoch" in r)):
        (total,) = a["sxbm_rows_by_process"]
        pairs = total // 2                      # each pair enqueues its query and its positive
        batches = _batch_sizes(pairs)
        # process 0 owns the first half of every batch (the larger one when it is odd), process 1 the rest
        assert b["sxbm_rows_by_process"] == [2 * sum((n + 1) // 2 for n in batches), 2 * sum(n // 2 for n in batches)]
    # the gathered rows are enqueued in the one-process order: identical FIFO after it wrapped around
    final = "checkpoints/stage1-done/memory.safetensors"
    assert torch.equal(load_file(str(one / final))["buffer"], load_file(str(two / final))["buffer"])


def test_two_processes_train_the_same_head_as_one(runs):
    one, two, launched = runs
    log_one, log_two = _log(one), _log(two)
    assert len(log_one) == len(log_two)           # the main process alone writes the log: no duplicate lines
    for a, b in zip(log_one, log_two):
        assert a.get("best_epoch") == b.get("best_epoch")   # the same early-stopping decisions
        if "held_out_ndcg@10" in a:      # the scored start of each stage and every trained epoch
            for k in a["levels"]:
                assert b["held_out_ndcg@10"][str(k)] == pytest.approx(a["held_out_ndcg@10"][str(k)], abs=1e-4)
        if "epoch" in a:
            assert b["loss"] == pytest.approx(a["loss"], rel=1e-3)
            assert b["unsup"] == pytest.approx(a["unsup"], rel=1e-3) and a["unsup"] > 0
    head_one, head_two = SMECChain.load(one / "head"), SMECChain.load(two / "head")
    (w1, b1), (w2, b2) = head_one.fold(1), head_two.fold(1)
    assert torch.allclose(w1, w2, atol=1e-4) and torch.allclose(b1, b2, atol=1e-4)
    # Adam's first step on a parameter is about lr * sign(grad): gradient entries that are ~0 and equal
    # up to float noise (1e-8) can move a weight by up to lr = 1e-3, so the whole chain is compared looser
    (w1, b1), (w2, b2) = head_one.fold(), head_two.fold()
    assert torch.allclose(w1, w2, atol=5e-3) and torch.allclose(b1, b2, atol=5e-3)
    ndcg_one = json.loads((one / "smec_run.json").read_text())["results"]["ndcg@10"]["smec"]
    ndcg_two = json.loads((two / "smec_run.json").read_text())["results"]["ndcg@10"]["smec"]
    assert ndcg_two == pytest.approx(ndcg_one, abs=2e-3)
    assert launched.stdout.count("| nDCG@10 (") == 1   # only the main process evaluates and reports


def test_each_process_reads_and_encodes_only_its_part_of_every_batch(runs):
    """Each process reads half the queries and half the candidate documents of every batch (plus the positives of
    its queries that the other half holds), so a step costs each process half of the one-process step."""
    one, two, _ = runs
    for a, b in zip((r for r in _log(one) if "epoch" in r), (r for r in _log(two) if "epoch" in r)):
        whole, parts = a["rows_read_by_process"], b["rows_read_by_process"]
        (queries,), (candidates,) = whole["queries"], whole["candidates"]
        assert whole["corpus"] == [candidates]          # one process reads each candidate once, positives among them
        batches = _batch_sizes(queries)
        assert parts["queries"] == [sum((n + 1) // 2 for n in batches), sum(n // 2 for n in batches)]
        assert sum(parts["candidates"]) == candidates   # the parts split the one-process candidates
        for n_candidates, n_read, n_queries in zip(parts["candidates"], parts["corpus"], parts["queries"]):
            assert abs(n_candidates - candidates / 2) <= len(batches) / 2
            assert n_candidates <= n_read <= n_candidates + n_queries


def test_the_parts_of_a_batch_are_the_whole_batch(scifact_small, scifact_small_cache):
    examples = TrainingExamples.for_config(scifact_small_cache, scifact_small.qrels["train"],
                                           SMECSettings(hard_negatives=4, hard_negative_pool=20))
    index = torch.arange(BATCH)
    whole = examples.fit.batch(index, 4, torch.Generator().manual_seed(0))
    parts = [examples.fit.batch(index, 4, torch.Generator().manual_seed(0), part=(i, 3)) for i in range(3)]
    assert [len(p.docs) for p in parts] == parts[0].doc_counts and sum(parts[0].doc_counts) == len(whole.docs)
    for name in ("queries", "docs", "labels", "positives"):
        assert torch.equal(torch.cat([getattr(p, name) for p in parts]), getattr(whole, name)), name
    assert whole.rows_read == len(whole.docs)


def test_local_cpu_processes_share_the_cores(monkeypatch):
    threads = torch.get_num_threads()
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
        assert spread_cpu_threads() is None                       # not launched: the user's 1 stays
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
        cores = len(os.sched_getaffinity(0))
        assert spread_cpu_threads() == max(1, cores // 2) == torch.get_num_threads()
        monkeypatch.setenv("OMP_NUM_THREADS", "3")
        assert spread_cpu_threads() is None                       # a count other than the launcher's 1 stays
    finally:
        torch.set_num_threads(threads)


def test_checkpoints_hold_every_process_state(runs):
    _, two, _ = runs
    checkpoint = two / "checkpoints" / "stage1-epoch001"
    assert {"random_states_0.pkl", "random_states_1.pkl", "model.safetensors", "trainer_state.json"} <= {
        p.name for p in checkpoint.iterdir()}
    assert not list((two / "checkpoints").glob(".tmp-*"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine the processes do connect over NCCL")
def test_unconnected_processes_are_refused(tmp_path):
    """Without ACCELERATE_USE_CPU=1, torchrun on a CPU machine starts processes that each train alone."""
    result = _launch(["--multi_gpu", "--num_processes", "2", "--main_process_port", _free_port(), ENTRY_POINT,
                      "--output", tmp_path / "run"])
    assert result.returncode != 0
    assert "not connected" in result.stderr and "ACCELERATE_USE_CPU=1" in result.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_each_launch_config_parses_and_its_usage_line_names_real_files(path):
    config = load_config_from_file(str(path))
    assert config.num_processes >= 1 and config.mixed_precision in ("no", "bf16", "fp16")
    usage = next(line for line in path.read_text().splitlines() if "accelerate launch" in line)
    root = Path(__file__).resolve().parents[1]
    assert f"--config_file training/configs/{path.name}" in usage
    script = next(word for word in usage.split() if word.endswith(".py"))
    assert script == ENTRY_POINT and (root / script).is_file(), usage
