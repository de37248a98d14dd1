"""The multi-seed benchmark's validation fold, tables and paired intervals (the benchmark's figures are not tested)."""
import dataclasses
import json

import numpy as np
import pytest

from benchmarks.common import shared_dataset
from benchmarks.seeds import (dataset_path, floored, interval_markdown, mean_table, paired_intervals, run_seeds,
                              validation_split, write_report)
from smec_hf.core.config import FitConfig
from smec_hf.core.io import atomic_write_json
from smec_hf.core.retrieval import ndcg_by_dim
from smec_hf.data.examples import split_for


def test_validation_fold_is_disjoint_deterministic_and_seeded(scifact):
    train = scifact.qrels["train"]
    fit, validation = validation_split(train, 0.2, seed=0, group_by="positive")
    assert not set(fit) & set(validation)
    assert set(fit) | set(validation) == set(train)
    assert 0.15 < len(validation) / len(train) < 0.25       # 20% of the groups (by positive document)
    positives = [{d for q in ids for d in train[q]} for ids in (fit, validation)]
    assert not positives[0] & positives[1]
    assert validation == validation_split(train, 0.2, seed=0, group_by="positive")[1]
    assert set(validation) != set(validation_split(train, 0.2, seed=1, group_by="positive")[1])


def test_run_seeds_scores_test_and_the_validation_fold(scifact_small, scifact_small_cache, tmp_path):
    records = run_seeds(scifact_small_cache, scifact_small, ["pca", "truncation"], [0, 1], 0.2, tmp_path,
                        "unused-for-baselines", dims=[384, 64])
    assert [(r["method"], r["seed"]) for r in records] == [("pca", 0), ("truncation", 0), ("pca", 1), ("truncation", 1)]
    for r in records:
        assert set(r["test"]) == set(r["validation"]) == {384, 64}
        assert all(0.0 < v <= 1.0 for v in r["test"].values())
        for split in ("test", "validation"):     # the means are the per-query scores' means
            assert set(r["per_query"][split]) == {384, 64}
            assert r[split][64] == pytest.approx(np.mean(list(r["per_query"][split][64].values())), abs=1e-12)
    assert set(records[0]["per_query"]["test"][64]) == set(scifact_small.qrels["test"])
    # truncation is x[:, :d]: the per-query search reproduces the library's ndcg_by_dim exactly
    frozen = ndcg_by_dim(lambda x, d: x[:, :d], scifact_small_cache, scifact_small.qrels["test"], [384, 64])
    assert records[1]["test"] == pytest.approx(frozen, abs=1e-12)
    # truncation to the full dimension is the frozen encoder: the same score, whatever the fold
    assert records[1]["test"][384] == pytest.approx(records[3]["test"][384])
    header, rows = mean_table(records, "validation")
    assert header == ["method", "seeds", "384", "64"]
    assert [row[:2] for row in rows] == [["pca", "2"], ["truncation", "2"]]
    assert float(rows[0][3]) == pytest.approx((records[0]["validation"][64] + records[2]["validation"][64]) / 2, abs=5e-4)

    intervals = paired_intervals(records, "test", reference="truncation")
    # every seed scores every test query, so both intervals centre on the seeds' mean difference
    mean_diff = np.mean([records[i]["test"][64] - records[i - 1]["test"][64] for i in (1, 3)])
    assert intervals["queries"]["pca"]["64"]["diff"] == pytest.approx(mean_diff, abs=1e-12)
    assert intervals["seeds"]["pca"]["64"]["diff"] == pytest.approx(mean_diff, abs=1e-12)
    assert intervals["seeds"]["truncation"]["64"] == {"diff": 0.0, "low": 0.0, "high": 0.0, "significant": False}


SEEDS, DIMS, N_QUERIES = (0, 1, 2), (64, 32), 200


def _shift(by_split: dict, change) -> dict:
    """``{split: {dim: {query: change(i, score)}}}``, ``i`` the query's position."""
    return {s: {d: {q: change(i, v) for i, (q, v) in enumerate(by_q.items())} for d, by_q in by_d.items()}
            for s, by_d in by_split.items()}


def synthetic_records() -> list[dict]:
    """smec, pca (exactly 0.05 below smec on every query) and truncation (smec shifted by a per-seed offset of
    mean 1/300 and by ±0.2 on alternate queries: no real difference); validation folds of 50 queries per seed."""
    rng = np.random.default_rng(0)
    queries = [f"q{i:03d}" for i in range(N_QUERIES)]
    offsets = {0: 0.02, 1: -0.02, 2: 0.01}
    records = []
    for seed in SEEDS:
        folds = {"test": queries, "validation": queries[50 * seed: 50 * seed + 50]}
        smec = {split: {d: {q: float(rng.uniform(0.3, 0.7)) for q in ids} for d in DIMS}
                for split, ids in folds.items()}

        shifted = {"smec": smec, "pca": _shift(smec, lambda i, v: v - 0.05),
                   "truncation": _shift(smec, lambda i, v: v + offsets[seed] + (0.2 if i % 2 else -0.2))}
        for method, per_query in shifted.items():
            record = {"method": method, "seed": seed, "seconds": 1.0, "per_query": per_query}
            record.update({s: {d: float(np.mean(list(by_q.values()))) for d, by_q in by_d.items()}
                           for s, by_d in per_query.items()})
            records.append(record)
    return records


@pytest.mark.parametrize("split", ["test", "validation"])
def test_paired_intervals_cover_every_method_and_dim_and_flag_what_excludes_zero(split):
    intervals = paired_intervals(synthetic_records(), split)
    assert set(intervals) == {"seeds", "queries"}
    for kind, by_method in intervals.items():
        assert list(by_method) == ["smec", "pca", "truncation"]
        for method, cells in by_method.items():
            assert list(cells) == ["64", "32"]
            for cell in cells.values():
                assert cell["low"] <= cell["diff"] <= cell["high"]
                assert cell["significant"] == (cell["low"] > 0 or cell["high"] < 0)
        for cell in by_method["smec"].values():
            assert cell == {"diff": 0.0, "low": 0.0, "high": 0.0, "significant": False}
        for cell in by_method["pca"].values():
            assert cell["diff"] == pytest.approx(0.05) and cell["significant"]
        for cell in by_method["truncation"].values():
            assert cell["diff"] == pytest.approx(-0.01 / 3) and not cell["significant"]
    # the seed interval is a t-interval of three per-seed differences: wider than the ±0.02 they spread
    seeds = intervals["seeds"]["truncation"]["64"]
    assert seeds["high"] - seeds["low"] > 0.04


def test_paired_intervals_pair_only_shared_seeds_and_need_two_for_a_seed_interval():
    records = [r for r in synthetic_records() if r["method"] == "smec" or r["seed"] == 0]
    intervals = paired_intervals(records, "test")
    assert list(intervals["seeds"]) == ["smec"]              # pca and truncation ran one seed
    assert intervals["queries"]["truncation"]["64"]["diff"] == pytest.approx(-0.02)   # seed 0's offset only
    with pytest.raises(ValueError, match="'csr'"):
        paired_intervals(records, "test", reference="csr")


def test_intervals_print_as_markdown_and_are_saved_in_the_json(tmp_path):
    records = synthetic_records()
    report = write_report(tmp_path / "out" / "seeds.json", records, "smec", validation_fraction=0.2, overrides={})
    saved = json.loads((tmp_path / "out" / "seeds.json").read_text())
    assert saved == json.loads(json.dumps(report))
    assert saved["intervals"]["reference"] == "smec" and saved["intervals"]["confidence"] == 0.95
    assert saved["intervals"]["test"] == paired_intervals(records, "test")
    assert saved["intervals"]["validation"]["queries"]["pca"]["32"]["significant"] is True
    assert saved["validation_fraction"] == 0.2 and len(saved["runs"]) == 9
    assert all("per_query" not in run and set(run["test"]) == {"64", "32"} for run in saved["runs"])
    assert "intervals" not in write_report(tmp_path / "no_ref.json", records, "csr")

    markdown = interval_markdown(saved["intervals"]["test"], "test")
    seeds_table, queries_table = markdown.split("\n\n")[1], markdown.split("\n\n")[3]
    for table in (seeds_table, queries_table):
        assert table.splitlines()[0] == "| method | 64 | 32 |"
        assert "| smec | +0.0000 [+0.0000, +0.0000] | +0.0000 [+0.0000, +0.0000] |" in table
        assert "| pca | +0.0500 [+0.0500, +0.0500]* |" in table
        assert "| truncation | -0.0033 [" in table and table.count("*") == 2
    assert "t-interval over seeds" in markdown.split("\n\n")[0]


def test_data_takes_a_folder_or_a_shared_dataset_name(tmp_path):
    assert dataset_path("squad-v1.1-dev") == shared_dataset("squad-v1.1-dev")
    assert (dataset_path("squad-v1.1-dev") / "qrels" / "test.tsv").is_file()
    assert dataset_path(str(tmp_path)) == tmp_path
    with pytest.raises(Exception, match="no_such_set"):
        dataset_path("no_such_set")


def test_set_overrides_parse_as_json_and_bad_ones_name_the_setting():
    from benchmarks.seeds import parse_overrides

    assert parse_overrides(["ema_decay=0", "use_ads=false", "sxbm_target=teacher"]) == {
        "ema_decay": 0, "use_ads": False, "sxbm_target": "teacher"}
    with pytest.raises(ValueError, match="no_such_setting"):
        parse_overrides(["no_such_setting=1"])
    with pytest.raises(ValueError, match="ema_decay"):
        parse_overrides(["ema_decay=1.5"])     # SMECSettings's own check, before any worker starts


def test_run_seeds_keeps_each_run_and_trains_only_what_is_missing(scifact_small, scifact_small_cache, tmp_path):
    runs = tmp_path / "runs"
    first = run_seeds(scifact_small_cache, scifact_small, ["pca"], [0], 0.2, tmp_path / "w1", "unused",
                      dims=[384, 64], runs_dir=runs)
    assert sorted(p.name for p in runs.iterdir()) == ["pca-seed0.json"]
    stored = (runs / "pca-seed0.json").stat().st_mtime_ns
    again = run_seeds(scifact_small_cache, scifact_small, ["pca", "truncation"], [0], 0.2, tmp_path / "w2", "unused",
                      dims=[384, 64], runs_dir=runs)
    assert (runs / "pca-seed0.json").stat().st_mtime_ns == stored            # read back, not trained again
    assert not (tmp_path / "w2" / "seed0" / "pca").exists()
    assert [r["method"] for r in again] == ["pca", "truncation"]
    assert again[0]["test"] == first[0]["test"] and again[0]["per_query"] == first[0]["per_query"]   # int dims again
    pca_minus_prefix = paired_intervals(again, "validation", reference="pca")["queries"]["truncation"]["64"]
    assert pca_minus_prefix["diff"] > 0
    # another fold (here: another validation fraction) is another run
    run_seeds(scifact_small_cache, scifact_small, ["pca"], [0], 0.3, tmp_path / "w3", "unused", dims=[384, 64],
              runs_dir=runs)
    assert json.loads((runs / "pca-seed0.json").read_text())["key"]["validation_fraction"] == 0.3
    # other labels over the same texts (the same cache) are another run too
    five_tests = dict(list(scifact_small.qrels["test"].items())[:5])
    fewer_tests = dataclasses.replace(scifact_small, qrels={**scifact_small.qrels, "test": five_tests})
    relabelled = run_seeds(scifact_small_cache, fewer_tests, ["pca"], [0], 0.3, tmp_path / "w4", "unused",
                           dims=[384, 64], runs_dir=runs)
    assert len(relabelled[0]["per_query"]["test"][64]) == 5


def test_a_damaged_stored_run_is_named(scifact_small, scifact_small_cache, tmp_path):
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "pca-seed0.json").write_text("{not json")
    with pytest.raises(ValueError, match="pca-seed0.json"):
        run_seeds(scifact_small_cache, scifact_small, ["pca"], [0], 0.2, tmp_path / "w", "unused", dims=[384, 64],
                  runs_dir=tmp_path / "runs")


def test_floor_keeps_a_method_only_where_its_own_early_stopping_queries_put_it_at_or_above_pca(
        scifact_small, scifact_small_cache, tmp_path):
    records = run_seeds(scifact_small_cache, scifact_small, ["pca", "truncation"], [0, 1], 0.2, tmp_path, "unused",
                        dims=[384, 16], overrides={"group_by": "positive"})
    # held_out is scored on the early-stopping queries of the fit part, the ones every method stopped on
    fit, validation = validation_split(scifact_small.qrels["train"], 0.2, seed=1, group_by="positive")
    held_ids = split_for(FitConfig(seed=1, group_by="positive"), fit, scifact_small_cache.query_ids)[1]
    assert not set(held_ids) & set(validation)
    expected = ndcg_by_dim(lambda x, d: x[:, :d], scifact_small_cache, {q: fit[q] for q in held_ids}, [384, 16])
    assert records[3]["held_out"] == pytest.approx(expected, abs=1e-12)
    assert set(records[3]["per_query"]["held_out"][16]) == set(held_ids)

    # truncation is above PCA at 384 but below it at 16 dims on the early-stopping queries, in both seeds: one size
    # below is enough for PCA's runs to take its place
    pairs = list(zip(records[::2], records[1::2]))
    assert all(r["held_out"][384] > p["held_out"][384] and r["held_out"][16] < p["held_out"][16] for p, r in pairs)
    held = floored(records, ["truncation"])
    assert [(r["method"], r["seed"], r["kept"]) for r in held] == [("truncation+floor", 0, "pca"),
                                                                   ("truncation+floor", 1, "pca")]
    assert held[1]["test"] == records[2]["test"] and held[1]["per_query"] == records[2]["per_query"]
    # the decision reads the early-stopping scores only: above PCA there, a run is kept whatever test says
    better = [{**r, "held_out": {d: 1.0 for d in r["held_out"]}} if r["method"] == "truncation" else r
              for r in records]
    kept = floored(better, ["truncation"])
    assert [r["kept"] for r in kept] == ["truncation", "truncation"] and kept[0]["test"] == records[1]["test"]
    header, rows = mean_table(records + held, "test")
    assert rows[-1][0] == "truncation+floor" and rows[-1][2:] == rows[0][2:]
    # a run stored before held-out scores were kept is named
    old = [{k: v for k, v in r.items() if k != "held_out"} if r["seed"] == 1 else r for r in records]
    with pytest.raises(ValueError, match="no held_out scores for truncation-seed1, pca-seed1"):
        floored(old, ["truncation"])


def test_versions_pairs_two_outputs_runs_after_minus_before(tmp_path, capsys):
    from benchmarks import versions

    records = synthetic_records()
    for folder, method in (("before", "pca"), ("after", "smec")):   # after is exactly 0.05 above before
        for record in (r for r in records if r["method"] == method):
            path = tmp_path / folder / "runs" / f"smec-seed{record['seed']}.json"
            atomic_write_json(path, {"key": {"seed": record["seed"]}, "record": {**record, "method": "smec"}})
    assert versions.main([str(tmp_path / "before"), str(tmp_path / "after")]) == 0
    out = capsys.readouterr().out
    assert "after minus each method" in out and "| before | +0.0500 [+0.0500, +0.0500]*" in out
    with pytest.raises(FileNotFoundError, match="holds no smec run"):
        versions.main([str(tmp_path / "nothing"), str(tmp_path / "after")])
