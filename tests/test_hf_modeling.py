"""SMECModel's pooling, which must equal Sentence-Transformers' Pooling, and its reading of ST folders."""
from __future__ import annotations

import pytest
import torch
from sentence_transformers.sentence_transformer.modules import Pooling

from smec_hf.hf.modeling_smec import POOLING_MODES, UnsupportedPipeline, pool, read_pipeline


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
    features = {"token_embeddings": tokens, "attention_mask": mask, "prompt_length": 2}
    want = Pooling(16, pooling_mode=mode, include_prompt=False)(features)["sentence_embedding"]
    torch.testing.assert_close(pool(tokens, mask, mode, prompt_length=2), want, rtol=0, atol=1e-6)


def _st_folder(root, modules, configs=None):
    import json

    root.mkdir()
    (root / "modules.json").write_text(json.dumps([{"idx": i, "name": str(i), "path": p, "type": t}
                                                   for i, (p, t) in enumerate(modules)]))
    for folder, config in (configs or {}).items():
        (root / folder).mkdir()
        (root / folder / "config.json").write_text(json.dumps(config))
    return str(root)


def test_read_pipeline_reads_both_pooling_schemas_and_refuses_what_it_cannot_reproduce(tmp_path) -> None:
    legacy = {"word_embedding_dimension": 8, "pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}
    path = _st_folder(tmp_path / "a", [("", "sentence_transformers.models.Transformer"),
                                       ("1_Pooling", "sentence_transformers.models.Pooling"),
                                       ("2_Normalize", "sentence_transformers.models.Normalize")], {"1_Pooling": legacy})
    assert read_pipeline(path)["steps"] == [("pool", {"mode": "cls", "include_prompt": True}), ("normalize", {})]
    compact = {"embedding_dimension": 8, "pooling_mode": "lasttoken", "include_prompt": False}
    path = _st_folder(tmp_path / "b", [("", "x.Transformer"), ("1_Pooling", "x.Pooling")], {"1_Pooling": compact})
    assert read_pipeline(path)["steps"] == [("pool", {"mode": "lasttoken", "include_prompt": False})]
    path = _st_folder(tmp_path / "c", [("", "x.Transformer"), ("1_Pooling", "x.Pooling"), ("2_LayerNorm", "x.LayerNorm")],
                      {"1_Pooling": compact, "2_LayerNorm": {}})
    with pytest.raises(UnsupportedPipeline, match="LayerNorm"):
        read_pipeline(path)


