"""The `smec` command: documented options, an end-to-end `smec train`, clear errors for bad input."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from smec_hf.cli import build_parser, main, settings_from
from smec_hf.smec.settings import SMECSettings


def _write_beir(data, folder: Path) -> Path:
    (folder / "qrels").mkdir(parents=True)
    with (folder / "corpus.jsonl").open("w") as f:
        for did, text in zip(data.corpus_ids, data.corpus_texts):
            f.write(json.dumps({"_id": did, "title": "", "text": text}) + "\n")
    with (folder / "queries.jsonl").open("w") as f:
        for qid, text in zip(data.query_ids, data.query_texts):
            f.write(json.dumps({"_id": qid, "text": text}) + "\n")
    for split, qrels in data.qrels.items():
        rows = [f"{q}\t{d}\t{s}" for q, docs in qrels.items() for d, s in docs.items()]
        (folder / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + "\n".join(rows) + "\n")
    return folder


def test_help_shows_the_options_their_defaults_and_why():
    text = subprocess.run([sys.executable, "-m", "smec_hf.cli", "train", "--help"], capture_output=True, text=True,
                          check=True).stdout
    flat = " ".join(text.split())
    assert "settings every method shares" in flat and "SMEC hyperparameters" in flat
    assert "--unsup-weight UNSUP_WEIGHT" in flat and "(default: 0.002)" in flat
    assert "--use-ads, --no-use-ads" in flat and "--later-stage-map {orthogonal,general}" in flat
    assert "--dims DIM [DIM ...]" in flat and "(20% of SciFact's train queries each)" in flat   # % survives argparse
    top = subprocess.run([sys.executable, "-m", "smec_hf.cli", "--help"], capture_output=True, text=True).stdout
    assert all(command in top for command in ("train", "evaluate", "export", "push"))


def test_default_options_give_the_default_settings():
    assert settings_from(build_parser().parse_args(["train", "--output", "x"])) == SMECSettings()


def test_parser_maps_options_onto_the_config():
    args = build_parser().parse_args(["train", "--output", "x", "--dims", "384", "64", "--no-use-ads", "--lr", "0.01"])
    assert (args.dims, args.use_ads, args.lr, args.use_sxbm) == ([384, 64], False, 0.01, True)


def test_smec_train_end_to_end_on_precomputed_embeddings(scifact_small, scifact_small_cache, tmp_path, capsys,
                                                         monkeypatch):
    for name in ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS"):   # --no-progress sets them; restored after
        monkeypatch.setenv(name, "")
    data_dir = _write_beir(scifact_small, tmp_path / "data")
    out = tmp_path / "run"
    code = main(["train", "--data", str(data_dir), "--embeddings", str(scifact_small_cache.path), "--output", str(out),
                 "--dims", "384", "128", "32", "--max-epochs", "2", "--batch-size", "32", "--memory-size", "128",
                 "--no-progress"])
    assert code == 0
    captured = capsys.readouterr()
    printed = captured.out
    assert "it/s]" not in captured.err and "%|" not in captured.err      # --no-progress: no bar at all
    assert "| smec |" in printed and "| pca |" in printed and "| 2 | 128->32 |" in printed
    assert re.search(r"note: only \d+ held-out train queries decide early stopping", printed)   # said plainly
    assert "| neighbour recall@10 (held-out corpus documents, no labels) |" in printed
    run = json.loads((out / "smec_run.json").read_text())
    assert run["dims"] == [384, 128, 32]
    for method in ("smec", "pca", "truncation"):
        assert set(run["results"]["ndcg@10"][method]) == {"384", "128", "32"}
        assert all(0.0 <= v <= 1.0 for v in run["results"]["ndcg@10"][method].values())
    assert run["config"]["max_epochs"] == 2
    assert [st["levels"] for st in run["stages"]] == [[384, 128], [128, 32]]
    assert all(st["grad_kept"] > 0 for st in run["stages"])
    assert (out / "head" / "chain.safetensors").exists()


@pytest.mark.parametrize("argv, message", [
    (["--dims", "384", "400"], "strictly decreasing"),
    (["--dims", "256", "128"], "must start at the embedding dimension 384"),
    (["--held-out-fraction", "1.5"], "held_out_fraction=1.5"),
])
def test_bad_options_fail_with_a_message_naming_them(argv, message, scifact_small, scifact_small_cache, tmp_path,
                                                    capsys):
    data_dir = _write_beir(scifact_small, tmp_path / "data")
    code = main(["train", "--data", str(data_dir), "--embeddings", str(scifact_small_cache.path),
                 "--output", str(tmp_path / "run"), "--no-progress", *argv])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run" / "run_config.json").exists()     # a corrected rerun into --output is not refused


def test_a_corpus_too_small_to_train_on_is_refused_before_any_encoding(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"document number {i}\n" for i in range(5)))
    assert main(["train", "--data", str(corpus), "--base-model", str(tmp_path / "no-such-encoder"),
                 "--output", str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache")]) == 2
    assert "too few to train without labels" in capsys.readouterr().err   # not the missing encoder: nothing loaded
    assert not (tmp_path / "cache").exists() and not (tmp_path / "run").exists()


def test_missing_data_folder_and_incomplete_embeddings_are_named(scifact, scifact_small_cache, tmp_path, capsys):
    assert main(["train", "--data", str(tmp_path / "nowhere"), "--output", str(tmp_path / "r")]) == 2
    assert "nowhere" in capsys.readouterr().err
    other = _write_beir(scifact.subset({"train": 50, "test": 20}, n_extra_docs=100, seed=7), tmp_path / "other")
    assert main(["train", "--data", str(other), "--embeddings", str(scifact_small_cache.path),
                 "--output", str(tmp_path / "r2")]) == 2
    assert "have no vector" in capsys.readouterr().err


def test_ctrl_c_says_how_to_resume_and_the_rerun_says_it_resumed(scifact_small, scifact_small_cache, tmp_path):
    """SIGINT to a real `smec train`: one line, no traceback; the same command then resumes and says so."""
    import os
    import signal
    import time

    data_dir = _write_beir(scifact_small, tmp_path / "data")
    out = tmp_path / "run"
    command = [sys.executable, "-m", "smec_hf.cli", "train", "--data", str(data_dir), "--embeddings",
               str(scifact_small_cache.path), "--output", str(out), "--dims", "384", "128", "32", "--max-epochs", "40",
               "--patience", "40", "--memory-size", "256", "--no-progress", "--search"]   # (a search restarts a stage)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not list((out / "checkpoints").glob("stage0-epoch*/trainer_state.json")):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted; rerun the same command to resume from stage 1, epoch" in err
    resumed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stderr and "from stage 1 of 2, epoch" in resumed.stderr


def _write_pairs(path: Path, n: int, shared_positive: bool = False) -> Path:
    """``n`` (anchor, positive) rows; ``shared_positive``: every anchor has the same positive (and a negative of its
    own, so that the corpus still has ``n + 1`` documents)."""
    rows = [{"anchor": f"question {i}", "positive": f"answer {i}"} for i in range(n)]
    if shared_positive:
        rows = [{**row, "positive": "answer 0", "negative": f"other {i}"} for i, row in enumerate(rows)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


TINY_RUN = ["--dims", "32", "16", "--max-epochs", "1", "--batch-size", "4", "--memory-size", "8",
            "--hard-negatives", "2", "--hard-negative-pool", "4", "--no-progress", "--search"]


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory) -> Path:
    from tiny_models import tiny_bert

    return tiny_bert(tmp_path_factory.mktemp("encoder") / "tiny-bert")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_encoder) -> Path:
    """A finished run folder: 12 pairs encoded by a tiny random BERT (32-d), one epoch per stage."""
    root = tmp_path_factory.mktemp("tiny_run")
    pairs = _write_pairs(root / "pairs.jsonl", 12)
    assert main(["train", "--data", str(pairs), "--base-model", str(tiny_encoder), "--cache-dir", str(root / "cache"),
                 "--output", str(root / "run"), *TINY_RUN]) == 0
    return root / "run"


@pytest.mark.parametrize("write, args, says", [
    # 3 pairs: trained, then neighbour recall@10 found too few documents at the end (the reported case)
    (lambda p: _write_pairs(p.with_suffix(".jsonl"), 3), [],
     ["3 documents are too few to report neighbour recall@10", "pass more pairs, or more documents to search over "
                                                                "with --corpus"]),
    # every anchor shares its positive: no group of queries can be held out for early stopping
    (lambda p: _write_pairs(p.with_suffix(".jsonl"), 20, shared_positive=True), ["--group-by", "positive"],
     ["cannot be split for early stopping", "or --group-by query"]),
    # a corpus whose held-out fraction leaves one document to fit on
    (lambda p: p.with_suffix(".txt").write_text("".join(f"document {i}\n" for i in range(12))),
     ["--held-out-fraction", "0.95"], ["12 documents are too few to train without labels",
                                       "or a smaller --held-out-fraction"]),
])
def test_data_too_small_for_any_later_step_is_refused_before_encoding_and_writes_nothing(write, args, says, tmp_path,
                                                                                        capsys):
    """Each size a run needs later (the held-out split, the label-free split, neighbour recall's documents) is
    refused before an encoder is loaded (the given one does not exist), naming the file and what to pass."""
    write(tmp_path / "data")
    data = next(tmp_path.glob("data.*"))
    code = main(["train", "--data", str(data), "--base-model", str(tmp_path / "no-such-encoder"), "--output",
                 str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache"), "--no-progress", *args])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"smec train: error: --data {data}: ") and err.count("\n") == 1, err
    assert all(fragment in err for fragment in says), err
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()


def test_rerunning_other_data_into_a_run_folder_says_so_plainly(tiny_run, tiny_encoder, tmp_path, capsys):
    """The corrected rerun into the same --output (one more pair) is refused in words, not with two cache hashes."""
    pairs = _write_pairs(tmp_path / "more_pairs.jsonl", 13)
    code = main(["train", "--data", str(pairs), "--base-model", str(tiny_encoder), "--cache-dir",
                 str(tmp_path / "cache"), "--output", str(tiny_run), *TINY_RUN])
    err = capsys.readouterr().err
    assert code == 2
    assert f"the data differ from the run already in --output ({tiny_run}" in err, err
    assert err.rstrip().endswith("use a new --output or delete it") and not re.search(r"[0-9a-f]{16}", err), err


def test_an_offline_hub_id_for_the_base_model_is_one_line(tmp_path, capsys, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))      # nothing cached
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("".join(f"document number {i}\n" for i in range(30)))
    code = main(["train", "--data", str(corpus), "--base-model", "some-org/some-encoder", "--output",
                 str(tmp_path / "run"), "--cache-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "--base-model some-org/some-encoder: not a local folder, and the Hub is offline" in err
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()


def test_an_existing_file_as_output_is_one_line_naming_the_option(tiny_run, tiny_encoder, tmp_path, capsys):
    taken = tmp_path / "taken"
    taken.write_text("not a folder")
    pairs = _write_pairs(tmp_path / "pairs.jsonl", 12)
    assert main(["train", "--data", str(pairs), "--base-model", str(tiny_encoder), "--cache-dir",
                 str(tmp_path / "cache"), "--output", str(taken), *TINY_RUN]) == 2
    err = capsys.readouterr().err
    assert err == f"smec train: error: --output {taken} is an existing file, not a folder: pass a folder\n"
    assert main(["export", str(tiny_run), str(taken)]) == 2
    err = capsys.readouterr().err
    assert err == f"smec export: error: export destination {taken} is an existing file, not a folder: pass a folder\n"
    assert taken.read_text() == "not a folder"
