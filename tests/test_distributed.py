"""Distributed training through ``accelerate launch``: a real 2-process CPU (gloo) run against a 1-process run.

Both go through ``training/accelerate_smec.py`` and the shipped launch configs, on the real SciFact subset and its
MiniLM cache, with one thread per process so that both runs do the same float arithmetic per process.
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
from smec_hf.smec.chain import SMECChain

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


def test_both_processes_fill_the_same_sxbm_memory(runs):
    one, two, _ = runs
    for a, b in zip((r for r in _log(one) if "epoch" in r), (r for r in _log(two) if "epoch" in r)):
        (total,) = a["sxbm_rows_by_process"]
        pairs = total // 2                      # each pair enqueues its query and its positive
        batches = [min(BATCH, pairs - start) for start in range(0, pairs, BATCH)]
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
