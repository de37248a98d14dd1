"""SMECModule: the trainable SMEC chain as a Sentence-Transformers module, and its folded built-in Dense."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.modules import Dense

from smec_hf.hf.st_module import SMECModule
from chains import randomised_chain

DIMS = [384, 256, 128, 64, 32]


def unit_vectors(n: int = 8) -> torch.Tensor:
    return F.normalize(torch.randn(n, DIMS[0], generator=torch.Generator().manual_seed(2)), dim=-1)


def test_forward_and_folded_dense_reproduce_the_chain() -> None:
    chain = randomised_chain(DIMS)
    module = SMECModule.from_chain(chain).eval()
    x = unit_vectors()
    with torch.no_grad():
        want = chain(x)
        assert torch.equal(module({"sentence_embedding": x})["sentence_embedding"], want)
        dense = module.to_dense()
        got = dense({"sentence_embedding": x})["sentence_embedding"]
    assert type(dense) is Dense and dense.get_config_dict()["activation_function"] == "torch.nn.modules.linear.Identity"
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert module.get_embedding_dimension() == dense.get_embedding_dimension() == 384
    selections = module.selected_dimensions()
    assert [len(s) for s in selections] == DIMS[1:]
    assert selections[0] != list(range(256))  # the randomised ADS really reorders


def test_pipeline_save_load_round_trip(minilm_path: str, tmp_path: Path) -> None:
    base = SentenceTransformer(minilm_path, device="cpu")
    model = SentenceTransformer(modules=[*base, SMECModule.from_chain(randomised_chain(DIMS)).eval()], device="cpu")
    model.save(str(tmp_path), create_model_card=False)
    assert (tmp_path / "3_SMECModule" / "model.safetensors").is_file()
    assert not [p for p in tmp_path.rglob("*") if p.suffix in {".bin", ".pt", ".pth", ".pkl"}]
    with pytest.raises(ValueError, match="trust_remote_code"):  # why `smec export` ships a built-in Dense instead
        SentenceTransformer(str(tmp_path), device="cpu")
    reloaded = SentenceTransformer(str(tmp_path), device="cpu", trust_remote_code=True).eval()
    assert isinstance(reloaded[3], SMECModule)
    state, reloaded_state = model.state_dict(), reloaded.state_dict()
    assert state.keys() == reloaded_state.keys()
    assert all(torch.equal(state[k], reloaded_state[k]) for k in state)
    texts = ["a sentence", "another, different sentence"]
    np.testing.assert_allclose(reloaded.encode(texts), model.encode(texts), rtol=0, atol=1e-6)


def test_trains_inside_a_pipeline() -> None:
    module = SMECModule(DIMS).train()
    out = module({"sentence_embedding": unit_vectors()})["sentence_embedding"]
    F.normalize(out[:, :32], dim=-1).sum().backward()
    assert all(p.grad is not None for p in module.chain.stages[0].parameters())


def test_refuses_pickled_weights(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="safetensors only"):
        SMECModule(DIMS).save(str(tmp_path), safe_serialization=False)
