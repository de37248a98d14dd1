"""Held-out splits by group: no positive document (or field value) on both sides of the split."""
import json

import pytest

from benchmarks.common import shared_dataset
from smec_hf.cli import build_parser
from smec_hf.data.beir import DatasetFormatError, load_beir
from smec_hf.data.examples import TrainingExamples, fit_and_held_out_ids, query_groups
from smec_hf.data.groups import field_groups
from smec_hf.pipelines.train import with_groups
from smec_hf.smec.settings import SMECSettings


def _positives(qrels, ids):
    return {d for q in ids for d, s in qrels[q].items() if s > 0}


def test_positive_split_keeps_queries_of_one_document_together(scifact):
    qrels = scifact.qrels["train"]
    fit, held = fit_and_held_out_ids(qrels, qrels, 0.2, seed=0, group_by="positive")
    assert not _positives(qrels, fit) & _positives(qrels, held)
    assert 0.1 < len(held) / (len(fit) + len(held)) < 0.3
    # the ungrouped split does put queries of one document on both sides, which is what grouping prevents
    fit_q, held_q = fit_and_held_out_ids(qrels, qrels, 0.2, seed=0, group_by="query")
    assert _positives(qrels, fit_q) & _positives(qrels, held_q)


def test_positive_groups_are_connected_components():
    qrels = {"a": {"d1": 1}, "b": {"d1": 1, "d2": 1}, "c": {"d2": 1}, "e": {"d3": 1}, "f": {"d4": 0, "d5": 1}}
    groups = query_groups(qrels, sorted(qrels), "positive")
    assert groups["a"] == groups["b"] == groups["c"]
    assert len({groups["a"], groups["e"], groups["f"]}) == 3      # a score-0 judgement joins nothing


def test_field_groups_from_a_beir_folder(tmp_path):
    (tmp_path / "qrels").mkdir()
    docs = [{"_id": f"p{i}", "title": "", "text": f"passage {i}", "metadata": {"article": f"A{i // 3}"}}
            for i in range(12)]
    queries = [{"_id": f"q{i}", "text": f"question {i}"} for i in range(24)]
    queries[0]["article"] = "own"          # a query's own field wins over its document's
    (tmp_path / "corpus.jsonl").write_text("\n".join(map(json.dumps, docs)))
    (tmp_path / "queries.jsonl").write_text("\n".join(map(json.dumps, queries)))
    qrels = {f"q{i}": {f"p{i // 2}": 1} for i in range(24)}
    groups = field_groups(tmp_path, "article", qrels)
    assert groups["q0"] == "own" and groups["q1"] == "A0" and groups["q23"] == "A3"
    fit, held = fit_and_held_out_ids(qrels, qrels, 0.25, 0, "article", groups)
    assert held and not {groups[q] for q in fit} & {groups[q] for q in held}
    with pytest.raises(DatasetFormatError, match=r"--group-by topic: 24 train queries .*'topic'.*queries.jsonl"):
        field_groups(tmp_path, "topic", qrels)


def test_field_grouping_needs_the_values():
    qrels = {"a": {"d1": 1}, "b": {"d2": 1}}
    with pytest.raises(ValueError, match="group_by='article' needs the field's values"):
        fit_and_held_out_ids(qrels, qrels, 0.5, 0, "article")
    with pytest.raises(ValueError, match="'b'"):
        fit_and_held_out_ids(qrels, qrels, 0.5, 0, "article", {"a": "x"})
    with pytest.raises(ValueError, match="empty fit or held-out set"):
        fit_and_held_out_ids(qrels, qrels, 0.5, 0, "article", {"a": "x", "b": "x"})


def test_squad_article_split_and_settings():
    folder = shared_dataset("squad-v1.1-dev")
    squad = load_beir(folder)
    settings = with_groups(SMECSettings(group_by="article"), folder, squad)
    groups = settings.query_groups
    assert len(set(groups.values())) == 24          # the 24 training articles
    fit, held = fit_and_held_out_ids(squad.qrels["train"], groups, 0.1, 0, "article", groups)
    assert not {groups[q] for q in fit} & {groups[q] for q in held}
    assert "query_groups" not in settings.to_dict() and settings.to_dict()["group_by"] == "article"


def test_cli_has_group_by_but_not_the_values():
    args = build_parser().parse_args(["train", "--output", "o", "--group-by", "article"])
    assert args.group_by == "article" and not hasattr(args, "query_groups")


def test_every_method_shares_the_grouped_split(scifact_small, scifact_small_cache):
    qrels = scifact_small.qrels["train"]
    examples = TrainingExamples.for_config(scifact_small_cache, qrels, SMECSettings(group_by="positive"))
    assert not _positives(qrels, examples.fit.query_ids) & _positives(qrels, examples.held.query_ids)
