"""Export over every kind of base encoder, on tiny randomly initialised models: a BERT with each pooling mode, a BERT
with a ``Dense(tanh)`` after CLS pooling, a decoder with last-token pooling, left padding and a query prompt, and
the same decoder given as a PEFT LoRA adapter. For each, Sentence-Transformers (no flag), ``SMECModel`` (through
``AutoModel`` with ``trust_remote_code=True``) and the serving engines' order agree at every trained size."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.modules import Dense
from transformers import AutoModel

from chains import randomised_chain
from engines import engine_order, unit
from smec_hf.hf.base_model import load_base_model
from smec_hf.hf.export import export_model
from tiny_models import tiny_bert, tiny_bert_with_dense, tiny_decoder, tiny_decoder_lora, tiny_remote_code_bert

QUERIES = ["what compresses an embedding?", "short"]
DOCS = ["SMEC trains a small head on a frozen encoder.", "A second, somewhat longer document about retrieval."]
ATOL = 1e-5

BASES = {
    "bert-mean": lambda d: tiny_bert(d, pooling="mean"),
    "bert-cls": lambda d: tiny_bert(d, pooling="cls", normalize=False),
    "bert-max": lambda d: tiny_bert(d, pooling="max"),
    "bert-weightedmean": lambda d: tiny_bert(d, pooling="weightedmean"),
    "bert-dense-tanh": tiny_bert_with_dense,
    "decoder-lasttoken-prompt": tiny_decoder,
    "decoder-lora": tiny_decoder_lora,
}



def dims_for(width: int) -> list[int]:
    return [width, width // 2, width // 4]


@pytest.fixture(scope="module", params=list(BASES))
def exported(request, tmp_path_factory) -> tuple[str, Path, list[int], SentenceTransformer]:
    """A run folder with a randomised bias-free chain over the base's output size, exported."""
    root = tmp_path_factory.mktemp(request.param)
    base_path = BASES[request.param](root / "base")
    base = load_base_model(str(base_path))
    dims = dims_for(base.get_embedding_dimension())
    run = root / "run"
    randomised_chain(dims).save(run / "head")
    (run / "smec_run.json").write_text(json.dumps({
        "base_model": str(base_path), "dims": dims, "dataset": "tiny", "config": {"dims": dims},
        "results": {"ndcg@10": {"smec": {str(d): 0.5 for d in dims}}}}))
    return request.param, export_model(run, root / "model"), dims, base


def test_root_config_is_the_encoders_own(exported) -> None:
    name, folder, dims, base = exported
    config = json.loads((folder / "config.json").read_text())
    encoder = base[0].auto_model.config
    assert config["model_type"] == encoder.model_type and config["architectures"] == [type(base[0].auto_model).__name__]
    assert name.startswith("decoder") or config["model_type"] == "bert"
    assert config["is_matryoshka"] is True and config["matryoshka_dimensions"] == sorted(dims)
    assert config["auto_map"] == {"AutoModel": "modeling_smec.SMECModel"}
    assert not (folder / "adapter_config.json").exists() and not (folder / "adapter_model.safetensors").exists()


def test_no_exported_file_names_the_exporting_machine(exported) -> None:
    name, folder, dims, base = exported
    for file in folder.rglob("*"):
        if file.is_file() and file.suffix in (".json", ".md", ".txt", ".py", ".jinja"):
            text = file.read_text()
            assert str(folder.parent) not in text and '"local_files_only": true' not in text, file


def test_sentence_transformers_smec_model_and_the_engines_agree(exported) -> None:
    name, folder, dims, base = exported
    st = SentenceTransformer(str(folder), device="cpu")
    smec = AutoModel.from_pretrained(str(folder), trust_remote_code=True).eval()
    prompt = st.prompts.get("query", "")
    for k in dims:
        queries = st.encode_query(QUERIES, truncate_dim=k)
        docs = st.encode_document(DOCS, truncate_dim=k)
        np.testing.assert_allclose(smec.encode(QUERIES, prompt_name="query" if prompt else None, truncate_dim=k)
                                   .numpy(), queries, rtol=0, atol=ATOL)
        np.testing.assert_allclose(smec.encode(DOCS, truncate_dim=k).numpy(), docs, rtol=0, atol=ATOL)
        assert (engine_order(st, QUERIES, k, prompt) * unit(queries)).sum(axis=1).min() >= 1 - 1e-6
        assert (engine_order(st, DOCS, k) * unit(docs)).sum(axis=1).min() >= 1 - 1e-6


def test_the_head_sits_on_the_base_pipeline_unchanged(exported) -> None:
    """Up to the head, the exported pipeline is the base's: its directions at full size are the base's mapped
    by the head (a bias-free map of the base's vectors)."""
    name, folder, dims, base = exported
    st = SentenceTransformer(str(folder), device="cpu")
    assert st.prompts == base.prompts and st.default_prompt_name == base.default_prompt_name
    weight = torch.as_tensor(np.asarray([m for m in st if isinstance(m, Dense)][-1].linear.weight.detach()))
    mapped = (torch.as_tensor(base.encode_document(DOCS)) @ weight.T).numpy()
    np.testing.assert_allclose(unit(st.encode_document(DOCS)), unit(mapped), rtol=0, atol=ATOL)


def test_a_prompted_decoder_applies_its_query_prompt_everywhere(exported) -> None:
    name, folder, dims, base = exported
    if not name.startswith("decoder"):
        pytest.skip("only the decoders carry prompts")
    st = SentenceTransformer(str(folder), device="cpu")
    assert st.prompts["query"] and st[0].tokenizer.padding_side == "left"
    assert not np.allclose(st.encode_query(QUERIES), st.encode_document(QUERIES), atol=1e-4)


def _run_over(base_path: Path, run: Path, **record) -> list[int]:
    base = load_base_model(str(base_path), trust_remote_code=record.pop("trust_remote_code", False))
    dims = dims_for(base.get_embedding_dimension())
    randomised_chain(dims).save(run / "head")
    (run / "smec_run.json").write_text(json.dumps({
        "base_model": str(base_path), "dims": dims, "dataset": "tiny", "config": {"dims": dims},
        "results": {"ndcg@10": {"smec": {str(d): 0.5 for d in dims}}}, **record}))
    return dims


def test_an_encoder_with_custom_code_exports_for_sentence_transformers_with_the_flag(tmp_path) -> None:
    base_path = tiny_remote_code_bert(tmp_path / "base")
    dims = _run_over(base_path, tmp_path / "run", trust_remote_code=True)
    with pytest.raises(ValueError, match="--trust-remote-code"):
        export_model(tmp_path / "run", tmp_path / "refused")
    folder = export_model(tmp_path / "run", tmp_path / "model", trust_remote_code=True)
    config = json.loads((folder / "config.json").read_text())
    assert "modeling_smec.SMECModel" not in json.dumps(config) and not (folder / "modeling_smec.py").exists()
    st = SentenceTransformer(str(folder), device="cpu", trust_remote_code=True)
    assert st.encode(DOCS, truncate_dim=dims[-1]).shape == (2, dims[-1])
    card = (folder / "README.md").read_text()
    assert "trust_remote_code=True" in card and "AutoModel` loads the plain encoder only" in card


def test_export_refuses_another_encoder_than_the_one_the_cache_recorded(tmp_path) -> None:
    from smec_hf.data.cache import encoder_identity

    trained_on, other = tiny_bert(tmp_path / "a"), tiny_bert(tmp_path / "b", pooling="cls")
    _run_over(trained_on, tmp_path / "run", embedding_cache={"encoder": encoder_identity(str(trained_on))})
    with pytest.raises(ValueError, match="is not the encoder the run's embeddings came from"):
        export_model(tmp_path / "run", tmp_path / "model", base_model=str(other))
    assert not (tmp_path / "model").exists()
    assert export_model(tmp_path / "run", tmp_path / "model").is_dir()      # the recorded one is accepted
