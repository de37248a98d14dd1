"""SMEC's optional corpus regularisers (Matryoshka-Adaptor's): a weighted corpus_structure_loss beside L_rank."""
import json

import torch
from accelerate import Accelerator

from smec_hf.data.examples import CorpusExamples, TrainingExamples
from smec_hf.engine.losses import corpus_structure_loss
from smec_hf.smec.chain import SMECChain
from smec_hf.smec.memory import SelectableCrossBatchMemory
from smec_hf.smec.objective import stage_loss
from smec_hf.smec.settings import SMECSettings
from smec_hf.smec.trainer import SMECTrainer

DIMS = [384, 128, 32]


def test_the_corpus_term_is_added_with_its_weight(scifact_small, scifact_small_cache):
    settings = SMECSettings(dims=DIMS, corpus_weight=0.5, use_sxbm=False)
    examples = TrainingExamples.for_config(scifact_small_cache, scifact_small.qrels["train"], settings)
    corpus = CorpusExamples.build(scifact_small_cache, 0.0, 0, top_k=5)
    chain = SMECChain(DIMS)
    with torch.no_grad():       # a stage that is not the identity, so the term is not zero
        chain.stages[0].fc.weight.add_(0.05 * torch.randn(384, 384, generator=torch.Generator().manual_seed(0)))
    chain.eval()
    batch = examples.fit.batch(torch.arange(16), 4, torch.Generator().manual_seed(0))
    docs = corpus.batch(torch.arange(8))
    memory = SelectableCrossBatchMemory(384, 64, 5)
    args = (chain, chain.stages[0], 0, batch, memory, settings, Accelerator(cpu=True))
    with torch.no_grad():
        plain, with_corpus = stage_loss(*args), stage_loss(*args, corpus=docs)
        a = chain(docs.docs, 1)
        a_nb = chain(docs.neighbours.reshape(-1, 384), 1).reshape(8, 5, 384)
        expected = corpus_structure_loss(docs.docs, docs.neighbours, a, a_nb, (384, 128))
    assert expected > 0
    assert torch.allclose(with_corpus.total - plain.total, 0.5 * expected, atol=1e-6)


def test_training_with_the_corpus_term_changes_the_loss(scifact_small, scifact_small_cache, tmp_path):
    def first_loss(**overrides):
        settings = SMECSettings(dims=[384, 128], max_epochs=1, batch_size=32, memory_size=256, hard_negatives=4,
                                hard_negative_pool=20, search=(), do_no_harm=False, **overrides)
        trainer = SMECTrainer(settings, scifact_small_cache, scifact_small.qrels["train"], tmp_path / str(overrides),
                              show_progress_bar=False)
        trainer.train()
        records = [json.loads(line) for line in trainer.log_path.read_text().splitlines()]
        return next(r["loss"] for r in records if "epoch" in r)

    assert first_loss(corpus_weight=1.0) > first_loss()
