"""The multi-seed benchmark's validation fold and tables (the benchmark's figures themselves are not tested)."""
import pytest

from benchmarks.seeds import mean_table, run_seeds, validation_split


def test_validation_fold_is_disjoint_deterministic_and_seeded(scifact):
    train = scifact.qrels["train"]
    fit, validation = validation_split(train, 0.2, seed=0)
    assert not set(fit) & set(validation)
    assert set(fit) | set(validation) == set(train)
    assert len(validation) == round(0.2 * len(train))
    assert validation == validation_split(train, 0.2, seed=0)[1]
    assert set(validation) != set(validation_split(train, 0.2, seed=1)[1])


def test_run_seeds_scores_test_and_the_validation_fold(scifact_small, scifact_small_cache, tmp_path):
    records = run_seeds(scifact_small_cache, scifact_small, ["pca", "truncation"], [0, 1], 0.2, tmp_path,
                        "unused-for-baselines", dims=[384, 64])
    assert [(r["method"], r["seed"]) for r in records] == [("pca", 0), ("truncation", 0), ("pca", 1), ("truncation", 1)]
    for r in records:
        assert set(r["test"]) == set(r["validation"]) == {384, 64}
        assert all(0.0 < v <= 1.0 for v in r["test"].values())
    # truncation to the full dimension is the frozen encoder: the same score, whatever the fold
    assert records[1]["test"][384] == pytest.approx(records[3]["test"][384])
    header, rows = mean_table(records, "validation")
    assert header == ["method", "seeds", "384", "64"]
    assert [row[:2] for row in rows] == [["pca", "2"], ["truncation", "2"]]
    assert float(rows[0][3]) == pytest.approx((records[0]["validation"][64] + records[2]["validation"][64]) / 2, abs=5e-4)


def test_set_overrides_parse_as_json_and_bad_ones_name_the_setting():
    from benchmarks.seeds import parse_overrides

    assert parse_overrides(["ema_decay=0", "use_ads=false", "sxbm_target=teacher"]) == {
        "ema_decay": 0, "use_ads": False, "sxbm_target": "teacher"}
    with pytest.raises(ValueError, match="no_such_setting"):
        parse_overrides(["no_such_setting=1"])
    with pytest.raises(ValueError, match="ema_decay"):
        parse_overrides(["ema_decay=1.5"])     # SMECSettings's own check, before any worker starts
