"""SMECConfig validation and SMECModel's pooling, which must equal Sentence-Transformers' Pooling bit for bit."""
from __future__ import annotations

import pytest
import torch
from sentence_transformers.sentence_transformer.modules import Pooling

from smec_hf.hf import SMECConfig, SMECModel
from smec_hf.hf.configuration_smec import POOLING_MODES
from smec_hf.hf.modeling_smec import pool


@pytest.mark.parametrize("mode", POOLING_MODES)
@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_pooling_equals_sentence_transformers(mode: str, padding_side: str) -> None:
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randn(4, 7, 16, generator=generator)
    lengths = torch.tensor([7, 5, 1, 3])
    positions = torch.arange(7)
    mask = positions < lengths[:, None] if padding_side == "right" else positions >= 7 - lengths[:, None]
    mask = mask.long()
    want = Pooling(16, pooling_mode=mode)({"token_embeddings": tokens, "attention_mask": mask})["sentence_embedding"]
    torch.testing.assert_close(pool(tokens, mask, mode), want, rtol=0, atol=1e-6)


def test_config_defaults_follow_the_dimension_path() -> None:
    config = SMECConfig(dimension_path=[384, 128, 32])
    assert config.matryoshka_dimensions == [384, 128, 32] and config.projection_dim == 384
    assert config.is_matryoshka is True and config.model_type == "smec"


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"dimension_path": [32, 64]}, "strictly decreasing"),
    ({"dimension_path": [64, 32], "matryoshka_dimensions": [128]}, "exceed"),
    ({"pooling_mode": "median"}, "pooling_mode"),
])
def test_config_rejects_inconsistent_values(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SMECConfig(**kwargs)


def test_model_needs_an_encoder_and_a_path() -> None:
    with pytest.raises(ValueError, match="encoder_config and dimension_path"):
        SMECModel(SMECConfig())
