"""The model's licence comes from what it was trained on, recognised by content, and from the base model; never
from a folder's name where content was recorded, and never from smec-hf's own code licence."""
from __future__ import annotations

from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from beir_files import write_beir
from data_paths import SHARED_DATA, SHARED_SCIFACT
from smec_hf.data import RetrievalData, load_beir, load_retrieval_data
from smec_hf.hf import known_corpora
from smec_hf.hf.known_corpora import MIN_DOCUMENTS, build_hash_file, identify_corpus
from smec_hf.hf.licence import CODE_LICENSE_NOTE, base_model_license, model_license
from smec_hf.hf.model_card import build_model_card

DIMS = [384, 64]
RUN = {"base_model": "sentence-transformers/all-MiniLM-L6-v2", "dims": DIMS, "dataset": "sf",
       "config": {"dims": DIMS}, "results": {"ndcg@10": {"smec": {"384": 0.6, "64": 0.5}}}}


@pytest.fixture(scope="module")
def squad() -> RetrievalData:
    return load_beir(SHARED_DATA / "squad-v1.1-dev")


@pytest.fixture(scope="module")
def renamed_slice(scifact: RetrievalData, tmp_path_factory: pytest.TempPathFactory) -> RetrievalData:
    """A SciFact subset saved in a folder named ``sf``, loaded back the way ``smec train --data`` loads it."""
    folder = write_beir(scifact.subset({"train": 30, "test": 10}, n_extra_docs=60, seed=1),
                        tmp_path_factory.mktemp("data") / "sf")
    data = load_retrieval_data(folder)
    assert data.name == "sf"
    return data


def test_the_shipped_hashes_are_built_from_scifacts_corpus(tmp_path: Path) -> None:
    """The package file is what the documented builder makes of the shared SciFact corpus (one hash a document)."""
    assert build_hash_file(SHARED_SCIFACT / "corpus.jsonl", tmp_path / "scifact.txt") == 5183
    shipped = Path(known_corpora.__file__).with_name(known_corpora.HASH_FOLDER) / "scifact.txt"
    assert (tmp_path / "scifact.txt").read_text() == shipped.read_text()


def test_scifact_is_recognised_by_content_whatever_its_name_or_form(renamed_slice: RetrievalData) -> None:
    identity = identify_corpus(renamed_slice.corpus_texts)
    assert identity["known"] == {"scifact": len(renamed_slice.corpus_texts)}
    forms = ["passage: " + t.upper() for t in renamed_slice.corpus_texts]       # a prompt, other case
    assert identify_corpus(forms)["known"] == {"scifact": len(forms)}
    licence, note = model_license({**RUN, "training_corpus": identity})
    assert licence == "cc-by-nc-2.0" and "SciFact" in note and "non-commercial" in note


def test_another_corpus_is_not_scifact_even_in_a_folder_named_scifact(squad: RetrievalData) -> None:
    identity = identify_corpus(squad.corpus_texts)
    assert identity == {"format": known_corpora.FORMAT, "documents": len(squad.corpus_texts), "known": {}}
    run = {**RUN, "dataset": "scifact", "training_corpus": identity, "base_model_license": "apache-2.0"}
    licence, note = model_license(run)
    assert licence == "apache-2.0" and "the base model's" in note and "not recognised" in note


def test_a_few_shared_documents_bind_only_past_the_threshold(scifact: RetrievalData, squad: RetrievalData) -> None:
    """SciFact's abstracts are real papers' abstracts: a large corpus sharing a handful of them is not SciFact."""
    few = identify_corpus(squad.corpus_texts + scifact.corpus_texts[:3])
    assert few["known"] == {"scifact": 3} and model_license({**RUN, "training_corpus": few})[0] == "unknown"
    many = identify_corpus(squad.corpus_texts + scifact.corpus_texts[:MIN_DOCUMENTS])
    assert model_license({**RUN, "training_corpus": many})[0] == "cc-by-nc-2.0"


def test_records_without_content_fall_back_to_the_corpus_fingerprint_then_the_name(scifact: RetrievalData) -> None:
    whole = {"embedding_cache": {"dataset": {"corpus_texts": scifact.text_fingerprint("corpus")}}}
    assert model_license({**RUN, **whole})[0] == "cc-by-nc-2.0"                     # full SciFact, any folder name
    assert model_license({**RUN, "dataset": "scifact-subset"})[0] == "cc-by-nc-2.0"  # last resort: stricter only
    assert model_license(RUN)[0] == "unknown"


def test_the_card_keeps_the_models_licence_apart_from_the_code_licence(renamed_slice: RetrievalData) -> None:
    run = {**RUN, "training_corpus": identify_corpus(renamed_slice.corpus_texts), "base_model_license": "apache-2.0"}
    card = ModelCard(str(build_model_card(run)))
    assert card.data.license == "cc-by-nc-2.0" and card.data.datasets == ["mteb/scifact"]
    assert CODE_LICENSE_NOTE in card.text and "the base model is licensed apache-2.0" in card.text
    unknown = ModelCard(str(build_model_card({**RUN, "training_corpus": identify_corpus(["a b c"])})))
    assert unknown.data.license == "unknown" and "smec export --license" in unknown.text
    assert "smec-hf's Apache-2.0" not in unknown.text                       # the old default: the code's licence
    given = ModelCard(str(build_model_card(run, license="mit")))
    assert given.data.license == "mit" and "--license mit" in given.text


def test_the_base_models_licence_is_read_from_its_card(minilm_path: str, tmp_path: Path) -> None:
    assert base_model_license(minilm_path, "sentence-transformers/all-MiniLM-L6-v2") == "apache-2.0"   # local README
    (tmp_path / "README.md").write_text("# no metadata\n")
    assert base_model_license(str(tmp_path)) is None
