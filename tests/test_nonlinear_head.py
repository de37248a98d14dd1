"""A residual-MLP stage 1 (``x + W2 relu(W1 x)`` in the PCA basis): its start, its two built-in Dense layers, the
engines' order, the export, the shrink towards the start and a short real training run.

Every export check compares with ``chain(base.encode(texts))``, the SMEC definition, on a chain whose every parameter
(W1, W2, ADS logits, the later orthogonal stages, the basis) was moved off its default.
"""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.modules import Dense, Normalize

from chains import randomised_chain
from engines import engine_order, unit
from smec_hf.hf import SMECModel
from smec_hf.hf.export import export_model
from smec_hf.hf.st_module import SMECModule
from smec_hf.smec.chain import RELU, IDENTITY, ResidualMLPStage, SMECChain, SMRLStage
from smec_hf.smec.compressor import SMECCompressor
from smec_hf.smec.settings import SMECSettings
from smec_hf.smec.trainer import SMECTrainer, TrainerCallback

DIMS = [48, 32, 16, 8]
HIDDEN = 20
EXPORT_DIMS = [384, 128, 32]
TEXTS = ["SMEC compresses sentence embeddings one stage at a time.", "Short.",
         "A residual MLP in the PCA basis, exported as two built-in Dense layers."]


def rotation(dim: int, seed: int) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(dim, dim, generator=torch.Generator().manual_seed(seed)))[0]


def residual_chain(dims=DIMS, hidden=HIDDEN, seed=0, scale=0.2, later_stage_map="orthogonal") -> SMECChain:
    """Every parameter moved off its start (W2 too, so the MLP is active), in a random rotation basis."""
    chain = SMECChain(dims, later_stage_map=later_stage_map, stage1="residual_mlp", hidden=hidden)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in chain.parameters():
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator))
    chain.set_input_basis(rotation(dims[0], seed + 1))
    return chain.eval()


def apply_dense(layers: list[Dense], x: torch.Tensor) -> torch.Tensor:
    features = {"sentence_embedding": x}
    for layer in layers:
        features = layer(features)
    return features["sentence_embedding"]


def with_identity_stage_one(chain: SMECChain) -> SMECChain:
    """The linear chain with ``chain``'s basis, ADS and later stages and stage 1 the identity: the start map."""
    start = SMECChain(chain.dims, chain.later_stage_map).eval()
    state = {k: v for k, v in chain.state_dict().items() if not k.startswith("stages.0.fc.")}
    start.load_state_dict({**state, "stages.0.fc.weight": torch.eye(chain.dims[0])})
    return start


# --- the chain ------------------------------------------------------------------------------------------------------

def test_a_residual_chain_starts_where_the_linear_chain_starts():
    torch.manual_seed(0)
    residual = SMECChain(DIMS, stage1="residual_mlp", hidden=HIDDEN).eval()
    linear = SMECChain(DIMS).eval()
    assert not residual.is_linear and linear.is_linear
    assert isinstance(residual.stages[0], ResidualMLPStage) and isinstance(residual.stages[1], SMRLStage)
    assert residual.stages[0].fc.w1.weight.abs().sum() > 0 and not residual.stages[0].fc.w2.weight.any()
    basis = rotation(DIMS[0], 3)
    for chain in (residual, linear):
        chain.set_input_basis(basis)
    x = torch.randn(25, DIMS[0])
    with torch.no_grad():
        torch.testing.assert_close(residual(x), linear(x), rtol=0, atol=1e-6)
        torch.testing.assert_close(residual(x), x @ linear.fold()[0].T, rtol=0, atol=1e-5)


def test_bad_residual_settings_are_refused():
    with pytest.raises(ValueError, match="stage1 must be"):
        SMECChain(DIMS, stage1="mlp")
    with pytest.raises(ValueError, match="hidden"):
        SMECChain(DIMS, stage1="residual_mlp", hidden=0)
    with pytest.raises(ValueError, match="bias-free"):
        SMECChain(DIMS, stage1="residual_mlp", hidden=4, bias=True)
    with pytest.raises(ValueError, match="residual MLP.*dense_layers"):
        residual_chain().fold()
    with pytest.raises(ValueError, match="stage1_head"):
        SMECSettings(stage1_head="mlp")
    with pytest.raises(ValueError, match="stage1_hidden"):
        SMECSettings(stage1_head="residual_mlp", stage1_hidden=0)
    with pytest.raises(ValueError, match="head_bias"):
        SMECSettings(stage1_head="residual_mlp", head_bias=True)


def test_save_load_round_trip_keeps_the_residual_stage_and_old_chains_load_as_linear(tmp_path):
    chain = residual_chain()
    chain.save(tmp_path / "residual")
    loaded = SMECChain.load(tmp_path / "residual")
    assert loaded.stage1 == "residual_mlp" and loaded.hidden == HIDDEN
    x = torch.randn(7, DIMS[0])
    with torch.no_grad():
        assert torch.equal(loaded(x), chain(x))
    randomised_chain(DIMS).save(tmp_path / "old")
    config_file = tmp_path / "old" / "chain_config.json"
    config = json.loads(config_file.read_text())
    assert config["stage1"] == "linear" and config["hidden"] == 0
    config_file.write_text(json.dumps({k: v for k, v in config.items() if k not in ("stage1", "hidden")}))
    old = SMECChain.load(tmp_path / "old")
    with torch.no_grad():
        assert old.is_linear and torch.equal(old(x), randomised_chain(DIMS)(x))


@pytest.mark.parametrize("kind", ["general", "residual_mlp"])
def test_the_gradient_diagnostic_records_each_backward_pass_once(kind):
    """A hook on a leaf parameter would stay and fire once more for every forward pass so far."""
    stage = (SMRLStage(8, 4, "general", use_ads=False) if kind == "general"
             else ResidualMLPStage(8, 4, hidden=6, use_ads=False))
    x = torch.randn(5, 8)
    with torch.no_grad():
        stage(x)                                          # scoring passes register nothing
    grads = []
    for _ in range(3):
        stage.zero_grad()                                 # as the trainer's steps do
        stage.weight_grad = None
        stage(x).pow(2).sum().backward()
        grads.append(stage.weight_grad.clone())
    assert grads[0].abs().sum() > 0
    assert grads[0].shape[0] == 8                         # rows: the stage's output coordinates
    assert all(torch.equal(g, grads[0]) for g in grads[1:])


# --- the built-in Dense layers and the engines' order ---------------------------------------------------------------

def test_dense_layers_as_sentence_transformers_modules_reproduce_the_chain():
    chain = residual_chain()
    assert chain.stages[0].ads.selected_indices().tolist() != list(range(DIMS[1]))   # ADS really reorders
    layers = chain.dense_layers()
    assert [(tuple(w.shape), name) for w, name in layers] == [
        ((HIDDEN + 2 * DIMS[0], DIMS[0]), RELU), ((DIMS[0], HIDDEN + 2 * DIMS[0]), IDENTITY)]
    dense = SMECModule.from_chain(chain).eval().to_dense_layers()
    assert all(type(d) is Dense and d.linear.bias is None for d in dense)
    assert [d.get_config_dict()["activation_function"] for d in dense] == [RELU, IDENTITY]
    x = torch.randn(40, DIMS[0])
    with torch.no_grad():
        want = chain(x)
        torch.testing.assert_close(apply_dense(dense, x), want, rtol=0, atol=1e-5)
        assert (want - x @ rotation(DIMS[0], 1).T).abs().max() > 0.1   # the MLP and later stages do act


def test_the_engines_order_gives_sentence_transformers_directions_for_unnormalised_input():
    """vLLM/TEI feed the head the un-normalised pooled vector and normalise after the cut; SMEC is the chain on the
    normalised vector. They agree because the two ReLU layers have no bias (positively homogeneous)."""
    chain = residual_chain()
    dense = SMECModule.from_chain(chain).eval().to_dense_layers()
    scales = torch.tensor([0.05, 0.7, 1.0, 3.0, 40.0]).repeat(4)[:, None]
    x = scales * torch.randn(len(scales), DIMS[0])
    with torch.no_grad():
        head = apply_dense(dense, x)
        sentence_transformers = Normalize()({"sentence_embedding": head})["sentence_embedding"]
        smec = chain(F.normalize(x, dim=-1))
        for k in DIMS:
            engines = F.normalize(head[:, :k], dim=-1)
            torch.testing.assert_close(engines, F.normalize(sentence_transformers[:, :k], dim=-1), rtol=0, atol=1e-6)
            torch.testing.assert_close(engines, F.normalize(smec[:, :k], dim=-1), rtol=0, atol=1e-5)
            for c in (0.01, 2.5, 300.0):
                torch.testing.assert_close(F.normalize(apply_dense(dense, c * x)[:, :k], dim=-1), engines,
                                           rtol=0, atol=1e-5)


def test_a_linear_chain_keeps_its_one_folded_dense():
    chain = randomised_chain(DIMS)
    (weight, name), = chain.dense_layers()
    assert name == IDENTITY and torch.equal(weight, chain.fold()[0])
    dense, = SMECModule.from_chain(chain).to_dense_layers()
    assert torch.equal(dense.linear.weight, chain.fold()[0])
    biased = randomised_chain(DIMS, bias=True)
    with pytest.raises(ValueError, match="bias"):
        biased.dense_layers()
    assert SMECModule.from_chain(biased).to_dense_layers()[0].linear.bias is not None   # to_dense keeps the bias


# --- shrinking towards the start ------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["linear", "residual_mlp"])
def test_shrunk_towards_start_runs_from_the_start_map_to_the_chain(kind):
    chain = randomised_chain(DIMS, scale=0.3) if kind == "linear" else residual_chain()
    x = torch.randn(30, DIMS[0])
    with torch.no_grad():
        full, half, start = (chain.shrunk_towards_start(a) for a in (1.0, 0.5, 0.0))
        assert all(c.stage1 == kind and c is not chain for c in (full, half, start))
        assert all(torch.equal(a, b) for a, b in zip(full.state_dict().values(), chain.state_dict().values()))
        assert torch.equal(full(x), chain(x))
        torch.testing.assert_close(start(x), with_identity_stage_one(chain)(x), rtol=0, atol=1e-5)
        assert (start(x) - chain(x)).abs().max() > 0.1
        # the output is affine in stage 1's change, so half way moves half way
        torch.testing.assert_close(half(x), (start(x) + chain(x)) / 2, rtol=0, atol=1e-5)
        untouched = [k for k in chain.state_dict() if not k.startswith("stages.0.fc.")]
        assert all(torch.equal(start.state_dict()[k], chain.state_dict()[k]) for k in untouched)
    with pytest.raises(ValueError, match="alpha"):
        chain.shrunk_towards_start(1.5)


# --- export ---------------------------------------------------------------------------------------------------------

def write_run(run_dir: Path, chain: SMECChain, base_model: str) -> None:
    chain.save(run_dir / "head")
    run = {"base_model": base_model, "dims": chain.dims, "dataset": "scifact",
           "config": {"dims": chain.dims, "stage1_head": chain.stage1, "stage1_hidden": chain.hidden},
           "results": {"ndcg@10": {"smec": {str(d): 0.6 for d in chain.dims}}}}
    (run_dir / "smec_run.json").write_text(json.dumps(run))


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory, minilm_path: str):
    chain = residual_chain(EXPORT_DIMS, hidden=64, scale=0.1)
    run_dir = tmp_path_factory.mktemp("run")
    write_run(run_dir, chain, minilm_path)
    folder = export_model(run_dir, tmp_path_factory.mktemp("export") / "model")
    base = SentenceTransformer(minilm_path, device="cpu").encode(TEXTS, convert_to_tensor=True).clone()
    with torch.no_grad():
        expected = chain(base).numpy()
    return folder, expected


def test_the_exported_folder_has_two_dense_layers_in_the_form_the_engines_read(export):
    folder, _ = export
    modules = json.loads((folder / "modules.json").read_text())
    assert [(m["path"], m["type"]) for m in modules] == [
        ("", "sentence_transformers.models.Transformer"), ("1_Pooling", "sentence_transformers.models.Pooling"),
        ("2_Dense", "sentence_transformers.models.Dense"), ("3_Dense", "sentence_transformers.models.Dense"),
        ("4_Normalize", "sentence_transformers.models.Normalize")]
    inner, outer = (json.loads((folder / f / "config.json").read_text()) for f in ("2_Dense", "3_Dense"))
    width = 64 + 2 * 384
    assert (inner["in_features"], inner["out_features"], inner["bias"], inner["activation_function"]) == (
        384, width, False, RELU)
    assert (outer["in_features"], outer["out_features"], outer["bias"], outer["activation_function"]) == (
        width, 384, False, IDENTITY)
    config = json.loads((folder / "config.json").read_text())
    assert config["matryoshka_dimensions"] == sorted(EXPORT_DIMS)
    assert config["auto_map"] == {"AutoModel": "modeling_smec.SMECModel"}
    served = json.loads((folder / "smec_run.json").read_text())["served"]
    assert served["head_layers"] == 2 and served["stage1_head"] == "residual_mlp" and served["auto_model"]


def test_plain_sentence_transformers_smec_model_and_the_engines_agree_with_the_chain(export):
    folder, expected = export
    st_model = SentenceTransformer(str(folder), device="cpu")          # no trust_remote_code, no smec_hf
    assert [type(m).__name__ for m in st_model] == ["Transformer", "Pooling", "Dense", "Dense", "Normalize"]
    smec_model = SMECModel.from_pretrained(folder)
    for k in EXPORT_DIMS:
        st = st_model.encode(TEXTS, truncate_dim=k)
        np.testing.assert_allclose(unit(st), unit(expected[:, :k]), rtol=0, atol=1e-5)
        np.testing.assert_allclose(smec_model.encode(TEXTS, truncate_dim=k).numpy(), st, rtol=0, atol=1e-5)
        assert (engine_order(st_model, TEXTS, k) * unit(st)).sum(axis=1).min() >= 1 - 1e-6


# --- a short real training run --------------------------------------------------------------------------------------

def test_a_short_residual_run_trains_scores_through_the_chain_and_transforms_like_it(scifact_small,
                                                                                   scifact_small_cache, tmp_path):
    settings = SMECSettings(dims=[384, 128, 32], max_epochs=2, patience=2, batch_size=32, memory_size=256,
                            hard_negatives=4, hard_negative_pool=20, seed=0, stage1_head="residual_mlp",
                            stage1_hidden=64, search=())        # the fixed settings: no per-stage search
    trained = {}

    class KeepTrained(TrainerCallback):
        def on_stage_end(self, stage, chain):
            trained[stage] = SMECChain.from_state(chain.config_dict(), chain.state_dict())

    trainer = SMECTrainer(settings, scifact_small_cache, scifact_small.qrels["train"], tmp_path,
                          show_progress_bar=False, callbacks=[KeepTrained()])
    shipped = trainer.train()
    chain = trained[1]
    assert chain.stage1 == "residual_mlp" and chain.hidden == 64
    assert chain.stages[0].fc.w2.weight.abs().sum() > 0                     # the MLP did train
    records = [json.loads(line) for line in (tmp_path / "training_log.jsonl").read_text().splitlines()]
    start = next(r for r in records if r.get("start") and r["stage"] == 0)
    done = next(r for r in records if r.get("done") and r["stage"] == 0)
    assert done["best_held_out_ndcg@10"] >= np.mean(list(start["held_out_ndcg@10"].values()))
    rescored = trainer.held_out_scores(chain, 1, (384, 128))              # the non-linear scoring path
    assert np.mean(list(rescored.values())) == pytest.approx(done["best_held_out_ndcg@10"], abs=1e-6)
    assert all(r["grad_kept"] > 0 for r in records if r.get("stage") == 0 and "epoch" in r)
    assert SMECChain.load(tmp_path / "head").stage1 == shipped.stage1

    compressor = pickle.loads(pickle.dumps(SMECCompressor.from_chain(chain)))   # as it returns from a worker
    vectors = scifact_small_cache.queries[:50]
    with torch.no_grad():
        want = chain(torch.as_tensor(np.array(vectors, dtype=np.float32))).numpy()
    for k in chain.dims:
        np.testing.assert_allclose(compressor.transform(vectors, k), want[:, :k], rtol=0, atol=1e-5)
