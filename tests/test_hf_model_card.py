"""The model card: Hub metadata (parsed back by huggingface_hub), usage, results, training, reproduction, citation."""
from __future__ import annotations

from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from smec_hf.hf.known_corpora import FORMAT
from smec_hf.hf.model_card import MODEL_ID_PLACEHOLDER, build_model_card, hub_id, template_text, with_model_id

DIMS = [384, 256, 128, 64, 32]
SMEC = {"384": 0.651, "256": 0.648, "128": 0.633, "64": 0.601, "32": 0.54}
RUN = {
    "base_model": "sentence-transformers/all-MiniLM-L6-v2",
    "dims": DIMS,
    "dataset": "scifact",
    "config": {"dims": DIMS, "use_sxbm": False, "lr": 0.001, "later_stage_map": "orthogonal"},
    "results": {"ndcg@10": {"smec": SMEC, "pca": {d: 0.5 for d in SMEC}, "truncation": {d: 0.4 for d in SMEC},
                            "frozen": {"384": 0.6451}}},
    "timings_s": {"embed": 12.0, "train": 30.5},
    "notes": ["SciFact is CC BY-NC 2.0"],
    "served": {"auto_model": True, "why_not": None, "trust_remote_code": False},
    "training_corpus": {"format": FORMAT, "documents": 5183, "known": {"scifact": 5183}},   # what smec train records
    "base_model_license": "apache-2.0",
}


@pytest.fixture(scope="module")
def card() -> ModelCard:
    """The rendered card, parsed back the way the Hub client reads it (invalid metadata would raise here)."""
    return ModelCard(str(build_model_card(RUN, repo_id="org/minilm-smec")))


def test_metadata(card: ModelCard) -> None:
    data = card.data
    assert data.library_name == "sentence-transformers" and data.pipeline_tag == "sentence-similarity"
    assert data.base_model == "sentence-transformers/all-MiniLM-L6-v2"
    assert data.datasets == ["mteb/scifact"] and data.license == "cc-by-nc-2.0"     # SciFact's, by default
    assert {"smec", "matryoshka", "mteb", "sentence-transformers"} <= set(data.tags)


def test_model_index_has_ndcg_per_dimension(card: ModelCard) -> None:
    results = card.data.eval_results
    assert card.data.model_name == "org/minilm-smec"
    assert [r.metric_config for r in results] == [f"truncate_dim={d}" for d in DIMS]
    assert [r.metric_value for r in results] == [SMEC[str(d)] for d in DIMS]
    assert {(r.metric_type, r.dataset_type, r.dataset_split) for r in results} == {("ndcg_at_10", "mteb/scifact",
                                                                                   "test")}


def test_body(card: ModelCard) -> None:
    text = card.text
    assert 'SentenceTransformer("org/minilm-smec")' in text and "truncate_dim=128" in text
    assert "normalize_embeddings=True" in text
    assert 'AutoModel.from_pretrained("org/minilm-smec", trust_remote_code=True)' in text
    assert "| dims | SMEC (this model) | PCA | base, truncated | base, full size |" in text
    assert "| 384 | 0.6510 | 0.5000 | 0.4000 | 0.6451 |" in text
    assert "| 32 | 0.5400 | 0.5000 | 0.4000 | – |" in text
    assert "| `lr` | `0.001` |" in text and "SciFact is CC BY-NC 2.0" in text
    assert "--no-use-sxbm" in text and "--dims 384 256 128 64 32" in text
    assert "smec push model --repo-id org/minilm-smec" in text
    assert "2510.12474" in text and "SMEC}: Rethinking Matryoshka Representation Learning" in text


def test_the_licence_says_where_it_came_from() -> None:
    """The training data's licence, else the base model's, else given; details in tests/test_hf_licence.py."""
    assert "non-commercial" in build_model_card(RUN).text
    explicit = ModelCard(str(build_model_card(RUN, license="apache-2.0")))
    assert explicit.data.license == "apache-2.0" and "--license apache-2.0" in explicit.text
    other = ModelCard(str(build_model_card({**RUN, "dataset": "my-pairs",
                                            "training_corpus": {"format": FORMAT, "documents": 9, "known": {}}})))
    assert other.data.license == "apache-2.0" and "the base model's" in other.text and "--license" in other.text


def test_a_card_without_auto_model_says_why() -> None:
    run = {**RUN, "served": {"auto_model": False, "why_not": "module LayerNorm has no SMECModel equivalent"}}
    text = build_model_card(run).text
    assert "trust_remote_code=True" not in text and "LayerNorm has no SMECModel equivalent" in text


def test_local_base_model_and_missing_repo_id(tmp_path: Path) -> None:
    run = {**RUN, "base_model": str(tmp_path)}
    card = ModelCard(str(build_model_card(run)))
    assert card.data.base_model is None and str(tmp_path) not in str(card)     # publishable: no local path
    assert "huggingface.co//" not in str(card) and "Before publishing" in card.text
    pushed = ModelCard(with_model_id(str(card), "org/pushed"))
    assert MODEL_ID_PLACEHOLDER not in pushed.text and 'SentenceTransformer("org/pushed")' in pushed.text
    assert pushed.data.model_name == "org/pushed" and "Before publishing" not in pushed.text


def test_hub_ids_recorded_in_the_run_name_a_local_base_model(tmp_path: Path) -> None:
    run = {**RUN, "base_model": str(tmp_path), "base_model_id": "sentence-transformers/all-MiniLM-L6-v2",
           "dataset": "scifact-subset", "dataset_id": "mteb/scifact"}
    data = ModelCard(str(build_model_card(run))).data
    assert data.base_model == "sentence-transformers/all-MiniLM-L6-v2" and data.datasets == ["mteb/scifact"]


def test_run_without_smec_results_is_refused() -> None:
    with pytest.raises(ValueError, match="no SMEC"):
        build_model_card({**RUN, "results": {"ndcg@10": {"pca": {}}}})


def test_hub_id() -> None:
    assert hub_id("scifact") == "mteb/scifact" and hub_id("BeIR/nq") == "BeIR/nq"
    assert hub_id("my-local-name") is None


def test_plot_is_embedded_only_when_given() -> None:
    with_plot = build_model_card(RUN, repo_id="org/smec", plot_file="ndcg_vs_dim.png").content
    assert "](ndcg_vs_dim.png)" in with_plot
    assert ".png)" not in build_model_card(RUN, repo_id="org/smec").content


def test_the_template_is_the_packages_model_cards_file() -> None:
    """Rendered from ``smec_hf.model_cards`` (the top-level model_cards/ folder, installed with the package)."""
    import smec_hf.model_cards

    assert Path(smec_hf.model_cards.__file__).parent == Path(__file__).resolve().parents[1] / "model_cards"
    assert template_text() == (Path(__file__).resolve().parents[1] / "model_cards" / "smec_model_card.md").read_text()


def test_the_card_says_how_a_resaved_copy_keeps_smec_model() -> None:
    text = build_model_card(RUN, repo_id="org/minilm-smec").text
    assert "`org/minilm-smec--modeling_smec.SMECModel`" in text and "copy that file along" in text


def test_a_held_out_only_run_publishes_no_evaluation_result() -> None:
    """Held-out queries chose the epochs: their scores are not test results for the Hub's widget."""
    card = ModelCard(str(build_model_card({**RUN, "evaluated_on": "held_out"}, repo_id="org/m")))
    assert not card.data.eval_results and "model-index" not in card.content
    assert "held-out train queries: the data has no test split" in card.text


def test_the_card_says_what_shipped_and_both_views() -> None:
    levels = {str(d): {"trained": 0.5, "pca": 0.6, "truncation": 0.4, "shipped": 0.6} for d in DIMS}
    choice = {"kept": "pca", "levels": levels, "split": "held-out train queries, not grouped",
              "shipped": "the encoder's PCA rotation (no trained level beat PCA on the held-out queries)"}
    views = {view: {"queries": n, "ndcg@10": {"smec": {str(d): 0.9 if view == "seen" else 0.5 for d in DIMS},
                                              "pca": {str(d): 0.7 for d in DIMS}}}
             for view, n in (("seen", 52), ("unseen", 28))}
    run = {**RUN, "head_choice": choice, "results": {**RUN["results"], "held_out_views": views}}
    text = ModelCard(str(build_model_card(run, repo_id="org/m"))).text
    assert "followed by the encoder's PCA rotation (no trained level beat PCA on the held-out queries)" in text
    assert "trained SMEC head" not in text
    assert "(52 seen, 28 unseen)" in text and "| 384 | 0.9000 | 0.7000 | 0.5000 | 0.7000 |" in text
