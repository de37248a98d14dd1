"""``smec_lora``: a LoRA adapter on the encoder as SMEC's stage 0, then SMEC's stages on its vectors; on a tiny random
BERT and a tiny synthetic dataset (seconds). The adapter changes the encoder, the head is trained on the tuned
vectors, the merged export reproduces the method at every size (Sentence-Transformers and the engines' order), and
an interrupted run resumes to the same weights without training the encoder again."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer

from smec_hf import registry
from smec_hf.data.cache import load_or_encode
from smec_hf.engine.encoder_finetune import ENCODER_RECORD, TRAINER_DIR, FinetuneSettings, KeepBest
from smec_hf.hf.finetuned import export_finetuned
from smec_hf.smec.end_to_end import HEAD_DIR, SMECLoRACompressor
from smec_hf.smec.settings import SMECSettings
from smec_hf.smec.trainer import SMECTrainer

from engines import engine_order, unit
from test_mrl_finetune import DIMS, tiny_dataset
from tiny_models import tiny_bert

SETTINGS = SMECSettings(dims=DIMS, hard_negatives=2, hard_negative_pool=4, held_out_fraction=0.25, batch_size=8,
                        max_epochs=3, patience=2, memory_size=64, do_no_harm=False)
FINETUNE = FinetuneSettings(lr=5e-3, batch_size=8, max_epochs=2)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_bert(tmp_path_factory.mktemp("tiny") / "bert")


@pytest.fixture(scope="module")
def data_and_cache(tiny_model, tmp_path_factory):
    data = tiny_dataset()
    return data, load_or_encode(data, str(tiny_model), tmp_path_factory.mktemp("cache"), show_progress_bar=False)


def fit(tiny_model, data, cache, run_dir: Path) -> SMECLoRACompressor:
    return SMECLoRACompressor(SETTINGS, data, str(tiny_model), run_dir, FINETUNE,
                              show_progress_bar=False).fit(cache, data.qrels["train"])


@pytest.fixture(scope="module")
def fitted(tiny_model, data_and_cache, tmp_path_factory) -> SMECLoRACompressor:
    data, cache = data_and_cache
    return fit(tiny_model, data, cache, tmp_path_factory.mktemp("run"))


def test_stage_0_tunes_the_encoder_and_the_head_maps_its_vectors(tiny_model, data_and_cache, fitted):
    data, cache = data_and_cache
    record = fitted.encoder_record
    assert record["lora"] and 0 < record["trainable_parameters"] < record["parameters"]
    tuned = SentenceTransformer(str(fitted.encoder_dir), device="cpu")
    base = SentenceTransformer(str(tiny_model), device="cpu")
    assert np.abs(tuned.encode(data.corpus_texts) - base.encode(data.corpus_texts)).max() > 1e-3
    docs = torch.from_numpy(tuned.encode_document(data.corpus_texts))
    with torch.no_grad():
        expected = fitted.chain(docs).numpy()
    for k in DIMS:     # transform(base vectors) = the head applied to the tuned encoder's vectors of the same texts
        assert np.abs(fitted.transform(np.asarray(cache.corpus), k) - expected[:, :k]).max() < 1e-5, k
    assert registry.check_methods(["smec_lora", "pca"]) == ["smec_lora", "pca"]
    assert "smec_lora" not in registry.check_methods(None)                   # opt-in


def test_the_merged_export_reproduces_it_at_every_size(fitted, data_and_cache, tmp_path):
    data, cache = data_and_cache
    folder = export_finetuned(fitted.encoder_dir, tmp_path / "model", DIMS, head=fitted.chain)
    assert not (folder / "adapter_config.json").exists()                     # merged into plain weights
    config = json.loads((folder / "config.json").read_text())
    assert config["matryoshka_dimensions"] == sorted(DIMS) and "auto_map" in config
    assert str(fitted.run_dir) not in "".join(p.read_text() for p in folder.rglob("*.json"))
    served = SentenceTransformer(str(folder), device="cpu")
    texts = data.corpus_texts[:8]
    for k in DIMS:
        expected = unit(fitted.transform(np.asarray(cache.corpus[:8]), k))
        assert np.abs(unit(served.encode(texts, truncate_dim=k)) - expected).max() < 1e-5, k   # same directions
        assert np.abs(engine_order(served, texts, k) - expected).max() < 1e-5, k


def test_an_interrupted_run_resumes_to_the_same_weights(tiny_model, data_and_cache, fitted, tmp_path, monkeypatch):
    data, cache = data_and_cache
    train_stage = SMECTrainer._train_stage

    def interrupt_at_stage_1(self, chain, memory, s, *args, **kwargs):
        if s == 1:
            raise KeyboardInterrupt          # Ctrl-C once the encoder is tuned and the head's stage 0 is done
        return train_stage(self, chain, memory, s, *args, **kwargs)

    monkeypatch.setattr(SMECTrainer, "_train_stage", interrupt_at_stage_1)
    with pytest.raises(KeyboardInterrupt):
        fit(tiny_model, data, cache, tmp_path)
    monkeypatch.setattr(SMECTrainer, "_train_stage", train_stage)
    record = (tmp_path / ENCODER_RECORD).stat().st_mtime_ns
    assert (tmp_path / HEAD_DIR / "checkpoints").is_dir()
    resumed = fit(tiny_model, data, cache, tmp_path)
    assert (tmp_path / ENCODER_RECORD).stat().st_mtime_ns == record         # the encoder was not trained again
    x = torch.randn(5, DIMS[0])
    with torch.no_grad():
        assert torch.allclose(resumed.chain(x), fitted.chain(x), atol=1e-5)
    for k in DIMS:
        assert np.abs(resumed.transform(np.asarray(cache.queries), k)
                      - fitted.transform(np.asarray(cache.queries), k)).max() < 1e-5


def test_an_encoder_interrupted_mid_training_resumes_from_its_checkpoint(tiny_model, data_and_cache, fitted, tmp_path,
                                                                        monkeypatch):
    data, cache = data_and_cache
    on_save = KeepBest.on_save

    def save_then_interrupt(self, args, state, control, **kwargs):
        on_save(self, args, state, control, **kwargs)
        raise KeyboardInterrupt                  # Ctrl-C right after the first epoch's checkpoint

    monkeypatch.setattr(KeepBest, "on_save", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        fit(tiny_model, data, cache, tmp_path)
    assert not (tmp_path / ENCODER_RECORD).exists() and any((tmp_path / TRAINER_DIR).glob("checkpoint-*"))
    monkeypatch.setattr(KeepBest, "on_save", on_save)
    resumed = fit(tiny_model, data, cache, tmp_path)
    assert [h["epoch"] for h in resumed.encoder_record["history"]] == [h["epoch"] for h in fitted.encoder_record["history"]]
    assert not (tmp_path / TRAINER_DIR).exists()                           # checkpoints go once the encoder is done
    texts = data.corpus_texts[:8]
    tuned, reference = (SentenceTransformer(str(m.encoder_dir), device="cpu") for m in (resumed, fitted))
    assert np.abs(tuned.encode(texts) - reference.encode(texts)).max() < 1e-5   # the uninterrupted run's encoder


def test_a_folder_tuned_otherwise_is_refused(tiny_model, data_and_cache, fitted):
    data, cache = data_and_cache
    other = SMECLoRACompressor(SETTINGS, data, str(tiny_model), fitted.run_dir, FinetuneSettings(lr=1e-3),
                               show_progress_bar=False)
    with pytest.raises(ValueError, match=r"fine-tuned with other settings \(settings\)"):
        other.fit(cache, data.qrels["train"])


def test_evaluate_scores_and_exports_it(tiny_model, data_and_cache, tmp_path):
    from smec_hf.pipelines.compare import evaluate_on_cache

    data, cache = data_and_cache
    report = evaluate_on_cache(cache, data, tmp_path / "out", base_model=str(tiny_model), settings=SETTINGS,
                               methods=["smec_lora", "truncation"], workers=1, show_progress_bar=False)
    assert report["tuned_encoders"]["smec_lora"]["head_s"] > 0
    served = SentenceTransformer(str(tmp_path / "out" / "baselines" / "smec_lora" / "model"), device="cpu")
    assert served.get_embedding_dimension() == DIMS[0] and set(report["ndcg@10"]["smec_lora"]) == set(map(str, DIMS))
