"""The report files: schema, the markdown table (best per column in bold), the plot and the summary."""
from __future__ import annotations

import json

import pytest

from smec_hf.registry import NAMES as METHOD_ORDER
from smec_hf.evaluation.report import (
    build_report,
    markdown_table,
    summary,
    to_markdown,
    validate_report,
    write_report,
)

DIMS = [384, 128, 32]


def make_report(**overrides) -> dict:
    scores = {m: {d: 0.5 + i / 100 + d / 10_000 for d in DIMS} for i, m in enumerate(reversed(METHOD_ORDER))}
    scores["pca"][32] = 0.99          # a column whose best is not SMEC
    args = dict(dataset="scifact", base_model="/models/all-MiniLM-L6-v2", dims=DIMS, scores=scores,
                timings={"embed": 12.3, "train_smec": 40.0, "total": 100.0}, frozen_full_dim=0.6451)
    args.update(overrides)
    return build_report(**args)


def test_schema_and_method_order():
    report = make_report()
    assert list(report) == ["dataset", "base_model", "dims", "ndcg@10", "timings_s", "frozen_full_dim", "split",
                            "notes"]
    assert report["dims"] == DIMS
    assert list(report["ndcg@10"]) == list(METHOD_ORDER)            # smec first, frozen baselines last
    assert set(report["ndcg@10"]["smec"]) == {"384", "128", "32"}
    assert report["ndcg@10"]["pca"]["32"] == 0.99
    json.dumps(report)                                              # JSON-serialisable as is


@pytest.mark.parametrize("breakage, key", [
    (lambda r: r.pop("dataset"), "dataset"),
    (lambda r: r["ndcg@10"]["pca"].pop("128"), "pca"),
    (lambda r: r["ndcg@10"]["smec"].update({"32": 1.5}), "smec"),
    (lambda r: r["timings_s"].update({"embed": -1.0}), "embed"),
    (lambda r: r.update({"dims": []}), "dims"),
])
def test_validate_names_the_broken_key(breakage, key):
    report = make_report()
    breakage(report)
    with pytest.raises(ValueError, match=key):
        validate_report(report)


def test_missing_dim_in_scores_is_an_error():
    with pytest.raises(KeyError):
        make_report(scores={"smec": {384: 0.7, 128: 0.6}})


def test_markdown_bolds_the_best_of_each_column():
    table = markdown_table(make_report())
    rows = {line.split("|")[1].strip(): line for line in table.splitlines()[2:]}
    assert "**0.9900**" in rows["pca"]                                 # best at 32
    assert rows["smec"].count("**") == 4                               # best at 384 and 128, not at 32
    assert sum(line.count("**") for line in rows.values()) == 2 * len(DIMS)


def test_write_report_writes_all_three_files(tmp_path):
    report = make_report()
    paths = write_report(report, tmp_path)
    assert json.loads(paths["json"].read_text()) == report
    markdown = paths["markdown"].read_text()
    assert markdown_table(report) in markdown and "| total | 100.0 |" in markdown and "0.6451" in markdown
    png = paths["plot"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    text = summary(report, paths)
    assert str(paths["json"]) in text and "total time: 100 s" in text
    assert len(text.splitlines()) <= 24                                # one screen


def test_the_label_free_recall_is_an_optional_validated_key_with_its_own_table():
    recall = {m: {d: 0.3 + d / 1000 for d in DIMS} for m in ("truncation", "smec")}
    report = make_report(neighbour_recall=recall)
    assert list(report["neighbour_recall@10"]) == ["smec", "truncation"]           # registry order
    assert "## Neighbour recall@10" in to_markdown(report) and "neighbour recall@10" in summary(report)
    report["neighbour_recall@10"]["smec"]["32"] = 1.2
    with pytest.raises(ValueError, match="neighbour_recall@10"):
        validate_report(report)
    assert "neighbour_recall@10" not in make_report()


def test_the_do_no_harm_choice_is_reported_beside_the_test_scores():
    levels = {str(d): {"trained": 0.60, "pca": 0.62, "truncation": 0.55, "shipped": 0.62} for d in DIMS}
    choice = {"kept": "pca", "below_floor": DIMS, "levels": levels,
              "split": "held-out train queries, grouped by article"}
    report = make_report(extra={"head_choice": {"smec": choice}})
    validate_report(report)
    markdown = to_markdown(report)
    assert "## Do no harm: smec on the held-out train queries, grouped by article" in markdown
    assert "**pca**" in markdown and "| shipped | 0.6200 | 0.6200 | 0.6200 |" in markdown
    # two PCAs, named apart: the do-no-harm floor (bias-free rotation) and the results table's centred PCA
    assert "| pca rotation (bias-free, the floor) | 0.6200 | 0.6200 | 0.6200 |" in markdown
    assert "| pca |" not in markdown.split("## Do no harm")[1]


def test_the_seen_and_unseen_views_are_reported_with_the_table_pca():
    views = {"seen": {"queries": 50, "ndcg@10": {"smec": {str(d): 0.9 for d in DIMS}, "pca": {str(d): 0.7 for d in DIMS}}},
             "unseen": {"queries": 30, "ndcg@10": {"smec": {str(d): 0.5 for d in DIMS},
                                                   "pca": {str(d): 0.6 for d in DIMS}}}}
    markdown = to_markdown(make_report(extra={"held_out_views": {"smec": views}}))
    assert "## smec on held-out queries about seen and unseen documents" in markdown
    assert "`pca` is the results table's (centred) PCA" in markdown
    assert "| documents training never saw (30): smec | " + " | ".join(["0.5000"] * len(DIMS)) + " |" in markdown
