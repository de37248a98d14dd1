"""Local SciFact scored under MTEB's own ``SciFact`` task: detected by content (never for a subset, an edited copy or
another dataset), scored exactly like the local task, and its results load back through ``mteb`` as ``SciFact``
with the official dataset revision, the full size in the default folder the leaderboard reads.

The vectors are hashed bags of words of the real texts (no encoder pass, no cache that CI lacks), served through
the same cached-vector MTEB model the demo scores its baselines with."""
from __future__ import annotations

import dataclasses
import inspect
import re
import zlib

import mteb
import numpy as np
import pytest
from mteb.models.sentence_transformer_wrapper import SentenceTransformerEncoderWrapper
from mteb.results import TaskResult

from data_paths import SHARED_DATA
from smec_hf.baselines.frozen import TruncationCompressor
from smec_hf.data.beir import RetrievalData, load_beir
from smec_hf.data.cache import EmbeddingCache
from smec_hf.evaluation import mteb_official
from smec_hf.evaluation.mteb_eval import compressor_meta, evaluate_meta
from smec_hf.evaluation.mteb_official import (evaluation_tasks, official_task_for, promote_full_dimension,
                                              submission_notes)
from smec_hf.evaluation.mteb_task import LocalRetrievalTask

DIMS = [384, 192]
SCIFACT_REVISION = "d56462d0e63a25450459c4f213e49ffdb866f7f9"


def hashed_bow(texts: list[str], dim: int = DIMS[0]) -> np.ndarray:
    """log(1 + count) of each word hashed into ``dim`` buckets, unit length: a real (weak) text retriever."""
    out = np.zeros((len(texts), dim), dtype=np.float32)
    for row, text in enumerate(texts):
        for word in re.findall(r"\w+", text.lower()):
            out[row, zlib.crc32(word.encode()) % dim] += 1
    out = np.log1p(out)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def scored(scifact: RetrievalData, tmp_path_factory) -> dict:
    """One truncation model scored on the official task and on the local task, then the full size promoted."""
    cache = EmbeddingCache.from_vectors(scifact.corpus_ids, hashed_bow(scifact.corpus_texts),
                                        scifact.query_ids, hashed_bow(scifact.query_texts))
    meta = compressor_meta(TruncationCompressor(DIMS), cache)
    official_dir, local_dir = tmp_path_factory.mktemp("official"), tmp_path_factory.mktemp("local")
    official = evaluate_meta(meta, [official_task_for(scifact)], official_dir, show_progress_bar=False)
    local = evaluate_meta(meta, [LocalRetrievalTask.from_data(scifact)], local_dir, show_progress_bar=False)
    return {"meta": meta, "official_dir": official_dir, "local_dir": local_dir, "official": official,
            "local": local, "promoted": promote_full_dimension(official_dir)}


def test_local_scifact_becomes_the_official_task(scifact):
    task = official_task_for(scifact)
    assert isinstance(task, type(mteb.get_task("SciFact")))
    assert task.metadata is type(mteb.get_task("SciFact")).metadata          # the official metadata, untouched
    assert task.metadata.name == "SciFact" and task.metadata.dataset["revision"] == SCIFACT_REVISION
    task.load_data()                                                          # from the local files: offline
    split = task.dataset["default"]["test"]
    assert len(split["corpus"]) == 5183 and len(split["queries"]) == 300
    assert split["relevant_docs"] == scifact.qrels["test"]
    renamed = dataclasses.replace(scifact, name="my-copy", corpus_ids=scifact.corpus_ids[::-1],
                                  corpus_texts=scifact.corpus_texts[::-1])
    assert official_task_for(renamed).metadata.name == "SciFact"               # content decides, not name or order


def test_subsets_edited_copies_and_other_data_stay_local(scifact, monkeypatch):
    subset = scifact.subset({"train": 20, "test": 300}, n_extra_docs=100)      # every test query, fewer documents
    edited = dataclasses.replace(scifact, corpus_texts=[scifact.corpus_texts[0] + " x", *scifact.corpus_texts[1:]])
    other = load_beir(SHARED_DATA / "xquad-en")
    for data in (subset, edited, other):
        assert official_task_for(data) is None
        assert isinstance(evaluation_tasks(data)[0], LocalRetrievalTask)
    assert official_task_for(scifact, split="train") is None
    assert evaluation_tasks(scifact)[0].metadata.name == "SciFact"
    stale = tuple(dataclasses.replace(k, dataset_revision="0" * 40) for k in mteb_official.KNOWN_TASKS)
    monkeypatch.setattr(mteb_official, "KNOWN_TASKS", stale)                   # an mteb with other SciFact data
    assert official_task_for(scifact) is None


def test_official_task_scores_exactly_like_the_local_task(scored):
    official, local = scored["official"]["SciFact"], scored["local"]["LocalRetrieval-scifact"]
    assert official == local and set(official) == set(DIMS)
    assert official[384] > 0.25                                              # a real ranking (random: ~0.003)
    metrics = []
    for folder, name in ((scored["official_dir"], "SciFact"), (scored["local_dir"], "LocalRetrieval-scifact")):
        (path,) = (folder / "results").glob(f"*/*/experiments/embed_dim_384/{name}.json")
        metrics.append({k: v for k, v in TaskResult.from_disk(path).scores["test"][0].items() if "_at_" in k})
    assert metrics[0] == metrics[1] and len(metrics[0]) > 40                   # every nDCG/MAP/recall/MRR cut-off


def test_results_load_back_through_mteb_as_scifact(scored):
    meta, cache = scored["meta"], mteb.ResultCache(scored["official_dir"])
    default_file = scored["official_dir"] / "results" / meta.model_name_as_path() / meta.revision / "SciFact.json"
    assert scored["promoted"] == [default_file]
    loaded = cache.load_results(tasks=["SciFact"], include_remote=False, validate_and_filter=True)
    (model,) = loaded.model_results                                          # default folder only: the full size
    (result,) = model.task_results
    assert (model.model_name, model.model_revision, model.experiment_name) == (meta.name, meta.revision, None)
    assert result.task_name == "SciFact" and result.dataset_revision == SCIFACT_REVISION
    assert result.task.metadata.main_score == "ndcg_at_10"
    assert result.get_score() == pytest.approx(scored["official"]["SciFact"][384])
    by_experiment = {m.experiment_name: m.task_results[0].get_score()
                     for m in cache.load_results(tasks=["SciFact"], include_remote=False,
                                                 load_experiments="match_name").model_results}
    assert by_experiment == pytest.approx({None: scored["official"]["SciFact"][384],
                                           **{f"embed_dim_{d}": s for d, s in scored["official"]["SciFact"].items()}})


def test_submission_notes_give_a_valid_model_meta_and_the_real_submit_api():
    notes = submission_notes("your-org/minilm-smec", [384, 128, 32])
    code = re.search(r"```python\n(from mteb\.models\.model_meta import.*?)```", notes, re.S).group(1)
    namespace: dict = {}
    exec(code, namespace)                                                     # the entry a submitter pastes
    meta = namespace["model_meta"]
    assert meta.name == "your-org/minilm-smec" and meta.embed_dim == [384, 128, 32]
    assert meta.training_datasets == {"SciFact"}                             # trained on SciFact's train split
    assert meta.loader is SentenceTransformerEncoderWrapper and meta.experiment_kwargs is None
    documented = re.search(r"`ResultCache\.submit_results\((.*?)\)`", notes).group(1)
    named = [part.split("=")[0].strip() for part in documented.split(",") if part.strip() not in ("*",)]
    assert named == [p for p in inspect.signature(mteb.ResultCache.submit_results).parameters if p != "self"]
    with pytest.raises(ValueError, match="model_name"):
        submission_notes("minilm-smec", [384])
    with pytest.raises(ValueError, match="dims"):
        submission_notes("your-org/minilm-smec", [])
