"""load_base_model: every kind of base encoder ``--base-model`` accepts, on tiny random models built offline."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from peft import PeftModel
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors import safe_open
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Transformer
from torch import nn
from transformers import LlamaModel

from smec_hf.hf.base_model import load_base_model, merge_adapters
from tiny_models import (QUERY_PROMPT, tiny_bert, tiny_bert_with_dense, tiny_decoder, tiny_decoder_lora,
                         tiny_remote_code_bert)

TEXTS = ["what is a cell", "gene and protein effect on blood cancer risk", "a", "Study 42: the T-cell, again!"]
BUILDERS = {
    "bert-mean": lambda folder: tiny_bert(folder, "mean"),
    "bert-cls": lambda folder: tiny_bert(folder, "cls"),
    "bert-max-unnormalised": lambda folder: tiny_bert(folder, "max", normalize=False),
    "bert-weightedmean": lambda folder: tiny_bert(folder, "weightedmean"),
    "bert-dense": tiny_bert_with_dense,
    "decoder": tiny_decoder,
    "decoder-lora": tiny_decoder_lora,
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny_models")
    return {name: build(root / name) for name, build in BUILDERS.items()}


@pytest.fixture(scope="module")
def lora(folders: dict[str, Path]) -> SentenceTransformer:
    return load_base_model(str(folders["decoder-lora"]))


def peft_layers(model: nn.Module) -> list[str]:
    return [name for name, module in model.named_modules() if isinstance(module, BaseTunerLayer)]


@pytest.mark.parametrize("name", list(BUILDERS))
def test_each_base_encodes_deterministically(folders: dict[str, Path], name: str) -> None:
    model = load_base_model(str(folders[name]))
    assert isinstance(model, SentenceTransformer)
    queries, documents = model.encode_query(TEXTS), model.encode_document(TEXTS)
    dim = 16 if name == "bert-dense" else 32
    assert queries.shape == documents.shape == (len(TEXTS), dim) and np.isfinite(queries).all()
    np.testing.assert_array_equal(model.encode_query(TEXTS), queries)
    np.testing.assert_array_equal(model.encode_document(TEXTS), documents)
    norms = np.linalg.norm(documents, axis=1)
    assert np.allclose(norms, 1, atol=1e-5) != (name == "bert-max-unnormalised")
    if name.startswith("bert"):   # no prompts: a query is encoded as a document
        np.testing.assert_array_equal(queries, documents)
    if "lora" not in name:        # nothing to merge: exactly what Sentence-Transformers itself loads
        np.testing.assert_array_equal(SentenceTransformer(str(folders[name]), device="cpu").encode_document(TEXTS),
                                      documents)


def test_decoder_pads_left_appends_eos_and_pools_the_last_token(folders: dict[str, Path]) -> None:
    model = load_base_model(str(folders["decoder"]))
    tokenizer = model.tokenizer
    assert tokenizer.padding_side == "left"
    batch = tokenizer(["a", "what is a cell"], padding=True)
    assert batch["attention_mask"][0][0] == 0 and batch["attention_mask"][0][-1] == 1
    assert [ids[-1] for ids in batch["input_ids"]] == [tokenizer.eos_token_id] * 2
    assert model[1].pooling_mode == "lasttoken" and model.default_prompt_name is None
    # left padding shifts positions, but RoPE sees only differences: a text embeds as it does alone
    np.testing.assert_allclose(model.encode_document(TEXTS)[2], model.encode_document(TEXTS[2:3])[0], atol=1e-5)


def test_encode_query_applies_the_instruction_prompt(folders: dict[str, Path]) -> None:
    model = load_base_model(str(folders["decoder"]))
    assert model.prompts["query"] == QUERY_PROMPT
    queries = model.encode_query(TEXTS)
    assert not np.allclose(queries, model.encode_document(TEXTS), atol=1e-3)
    np.testing.assert_allclose(queries, model.encode_document([QUERY_PROMPT + text for text in TEXTS]), atol=1e-6)


def test_lora_is_merged_and_matches_the_peft_model(folders: dict[str, Path], lora: SentenceTransformer) -> None:
    unmerged = SentenceTransformer(str(folders["decoder-lora"]), device="cpu")   # ST 6.2 injects the adapter
    assert peft_layers(unmerged) and unmerged[0].model._hf_peft_config_loaded
    hf_model = lora[0].model
    assert type(hf_model) is LlamaModel and not peft_layers(lora)
    assert not hasattr(hf_model, "peft_config") and not hf_model._hf_peft_config_loaded
    for encode in ("encode_query", "encode_document"):
        np.testing.assert_allclose(getattr(lora, encode)(TEXTS), getattr(unmerged, encode)(TEXTS), atol=1e-5)
    base_llm = folders["decoder-lora"].with_name("decoder-lora-base")
    base = SentenceTransformer(modules=[Transformer(str(base_llm)), lora[1], lora[2]], device="cpu")
    assert np.abs(base.encode_document(TEXTS) - lora.encode_document(TEXTS)).max() > 0.05   # the adapter matters


def test_merged_lora_saves_plain_weights(folders: dict[str, Path], lora: SentenceTransformer, tmp_path: Path) -> None:
    lora.save(str(tmp_path))
    assert not list(tmp_path.glob("adapter_*")) and (tmp_path / "model.safetensors").is_file()
    base_llm = folders["decoder-lora"].with_name("decoder-lora-base")
    keys = [sorted(safe_open(str(folder / "model.safetensors"), "pt").keys()) for folder in (tmp_path, base_llm)]
    assert keys[0] == keys[1]   # the base model's own key names
    reloaded = SentenceTransformer(str(tmp_path), device="cpu")
    assert not peft_layers(reloaded) and reloaded.prompts["query"] == QUERY_PROMPT
    for encode in ("encode_query", "encode_document"):
        np.testing.assert_allclose(getattr(reloaded, encode)(TEXTS), getattr(lora, encode)(TEXTS), atol=1e-5)


def test_merge_adapters_also_unwraps_a_peft_model(folders: dict[str, Path], lora: SentenceTransformer) -> None:
    base_llm = folders["decoder-lora"].with_name("decoder-lora-base")
    holder = nn.ModuleDict({"llm": PeftModel.from_pretrained(LlamaModel.from_pretrained(base_llm),
                                                             str(folders["decoder-lora"]))})
    assert merge_adapters(holder) is holder and type(holder["llm"]) is LlamaModel and not peft_layers(holder)
    ids = torch.tensor([[5, 6, 7, 2]])
    with torch.no_grad():
        torch.testing.assert_close(holder["llm"](input_ids=ids).last_hidden_state,
                                   lora[0].model(input_ids=ids).last_hidden_state, rtol=0, atol=1e-5)


def test_a_bare_adapter_folder_is_refused(folders: dict[str, Path], tmp_path: Path) -> None:
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        shutil.copy(folders["decoder-lora"] / name, tmp_path)
    with pytest.raises(ValueError, match=r"--base-model .*bare PEFT adapter.*modules\.json"):
        load_base_model(str(tmp_path))


def test_a_missing_folder_names_the_argument(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"--base-model .*no such folder"):
        load_base_model(str(tmp_path / "missing"))


def test_remote_code_needs_the_flag(tmp_path: Path) -> None:
    folder = tiny_remote_code_bert(tmp_path / "remote")
    with pytest.raises(ValueError, match=r"--base-model .*--trust-remote-code"):
        load_base_model(str(folder))
    model = load_base_model(str(folder), trust_remote_code=True)
    assert type(model[0].model).__name__ == "TinyRemoteModel"
    assert model.encode_document(TEXTS).shape == (len(TEXTS), 32)
