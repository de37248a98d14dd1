"""The exported repository: Sentence-Transformers and transformers views, round trips, fresh processes, the Hub.

One randomised (non-identity, non-default) SMEC chain over all-MiniLM-L6-v2 is exported once per module; every
check compares against ``chain(base.encode(texts))``, the SMEC definition the export must reproduce.
"""
from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer
from transformers import AutoConfig, AutoModel, AutoTokenizer

from fake_hub import FakeHub
from smec_hf.hf import SMECConfig, SMECModel, register_auto_classes
from smec_hf.hf.export import export_model
from smec_hf.hf.hub import push_model
from chains import randomised_chain
from smec_hf.smec.chain import SMECChain

DIMS = [384, 256, 128, 64, 32]
ATOL = 1e-5
TEXTS = [
    "SMEC compresses sentence embeddings one stage at a time.",
    "Short.",
    "A long passage " + "about retrieval, compression and nested Matryoshka prefixes " * 60,  # > 256 tokens
]
FRESH_TEXTS = TEXTS[:2]  # the long text is covered in-process; fresh processes only need to agree
PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt"}


def write_run(run_dir: Path, chain: SMECChain, base_model: str) -> None:
    chain.save(run_dir / "head")
    ndcg = {"smec": {str(d): 0.6 + d / 10_000 for d in DIMS}, "frozen": {"384": 0.6451},
            "pca": {str(d): 0.55 for d in DIMS}, "truncation": {str(d): 0.5 for d in DIMS}}
    run = {"base_model": base_model, "dims": DIMS, "dataset": "scifact",
           "config": {"dims": DIMS, "later_stage_map": "orthogonal", "use_ads": True, "lr": 0.001},
           "results": {"ndcg@10": ndcg}, "timings_s": {"embed": 1.0, "train": 2.0}}
    (run_dir / "smec_run.json").write_text(json.dumps(run))


@pytest.fixture(scope="module")
def chain() -> SMECChain:
    return randomised_chain(DIMS)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, chain: SMECChain, minilm_path: str) -> Path:
    run_dir = tmp_path_factory.mktemp("run")
    write_run(run_dir, chain, minilm_path)
    return run_dir


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, run_dir: Path) -> Path:
    return export_model(run_dir, tmp_path_factory.mktemp("export") / "model")


@pytest.fixture(scope="module")
def expected(chain: SMECChain, minilm_path: str) -> np.ndarray:
    """SMEC's full output for TEXTS: the chain applied to the base model's (normalised) embeddings."""
    base = SentenceTransformer(minilm_path, device="cpu").encode(TEXTS, convert_to_tensor=True).clone()
    with torch.no_grad():
        return chain(base).numpy()


@pytest.fixture(scope="module")
def smec_model(exported: Path) -> SMECModel:
    return SMECModel.from_pretrained(exported).eval()


@pytest.fixture(scope="module")
def st_model(exported: Path) -> SentenceTransformer:
    return SentenceTransformer(str(exported), device="cpu")  # no trust_remote_code, no smec_hf needed


@pytest.fixture(scope="module")
def st_embeddings(st_model: SentenceTransformer) -> dict[int, np.ndarray]:
    return {k: st_model.encode(TEXTS, truncate_dim=k) for k in DIMS}


def tokenize(path: str | Path, config: SMECConfig) -> dict[str, torch.Tensor]:
    tokenizer = AutoTokenizer.from_pretrained(str(path), subfolder=config.encoder_subfolder)
    return tokenizer(TEXTS, padding=True, truncation=True, max_length=config.max_seq_length, return_tensors="pt")


def smec_outputs(model: SMECModel, batch: dict[str, torch.Tensor]) -> dict[int, np.ndarray]:
    with torch.no_grad():
        return {k: model(**batch, truncate_dim=k).sentence_embedding.numpy() for k in DIMS}


def assert_state_dicts_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# --- the folder ----------------------------------------------------------------------------------------------------

def test_layout_has_safetensors_only_and_the_encoder_once(exported: Path) -> None:
    files = {str(p.relative_to(exported)) for p in exported.rglob("*") if p.is_file()}
    assert not {f for f in files if Path(f).suffix in PICKLE_SUFFIXES}
    assert {f for f in files if f.endswith(".safetensors")} == {"0_Transformer/model.safetensors",
                                                                "3_Dense/model.safetensors"}
    assert {"config.json", "configuration_smec.py", "modeling_smec.py", "modules.json", "README.md",
            "smec_run.json", "config_sentence_transformers.json"} <= files
    modules = json.loads((exported / "modules.json").read_text())
    assert [m["path"] for m in modules] == ["0_Transformer", "1_Pooling", "2_Normalize", "3_Dense"]
    assert all(m["type"].startswith("sentence_transformers.") for m in modules)
    st_config = json.loads((exported / "config_sentence_transformers.json").read_text())
    assert st_config["similarity_fn_name"] == "cosine"


def test_root_config_declares_the_trained_dimensions(exported: Path) -> None:
    config = json.loads((exported / "config.json").read_text())
    assert config["model_type"] == "smec"
    assert config["matryoshka_dimensions"] == DIMS and config["is_matryoshka"] is True
    assert config["dimension_path"] == DIMS and config["projection_dim"] == 384
    assert config["auto_map"] == {"AutoConfig": "configuration_smec.SMECConfig",
                                  "AutoModel": "modeling_smec.SMECModel"}
    assert config["encoder_config"]["model_type"] == "bert"


def test_code_files_are_self_contained(exported: Path) -> None:
    """auto_map users may not have smec_hf installed: the root code imports only third-party and sibling modules."""
    for name in ("configuration_smec.py", "modeling_smec.py"):
        tree = ast.parse((exported / name).read_text())
        imported = [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
        imported += [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
        assert not [m for m in imported if m.startswith("smec_hf")], name


def test_export_checks_the_run_folder(run_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="smec train"):
        export_model(tmp_path, tmp_path / "out")
    shutil.copytree(run_dir / "head", tmp_path / "head")
    run = json.loads((run_dir / "smec_run.json").read_text())
    (tmp_path / "smec_run.json").write_text(json.dumps({**run, "dims": [384, 128]}))
    with pytest.raises(ValueError, match=r"dims \[384, 128\]"):
        export_model(tmp_path, tmp_path / "out")


def test_export_refuses_a_non_empty_folder(run_dir: Path, exported: Path) -> None:
    with pytest.raises(FileExistsError, match="not empty"):
        export_model(run_dir, exported)


# --- Sentence-Transformers -----------------------------------------------------------------------------------------

def test_sentence_transformers_truncate_dim_is_exact(st_model: SentenceTransformer,
                                                     st_embeddings: dict[int, np.ndarray],
                                                     expected: np.ndarray) -> None:
    assert st_model.get_embedding_dimension() == 384
    for k in DIMS:
        assert st_embeddings[k].shape == (len(TEXTS), k)
        np.testing.assert_allclose(st_embeddings[k], expected[:, :k], rtol=0, atol=ATOL)


def test_normalize_embeddings_normalises_after_truncation(st_model: SentenceTransformer,
                                                         st_embeddings: dict[int, np.ndarray]) -> None:
    """What the card tells users: raw SMEC prefixes are not unit length; normalize_embeddings=True makes them so."""
    assert not np.allclose(np.linalg.norm(st_embeddings[32], axis=1), 1.0, atol=1e-3)
    unit = st_model.encode(TEXTS[:2], truncate_dim=32, normalize_embeddings=True)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(unit, st_embeddings[32][:2] / np.linalg.norm(st_embeddings[32][:2], axis=1,
                                                                          keepdims=True), rtol=0, atol=1e-6)


def test_sentence_transformers_save_load_round_trip(st_model: SentenceTransformer,
                                                    st_embeddings: dict[int, np.ndarray], tmp_path: Path) -> None:
    st_model.save(str(tmp_path), create_model_card=False)
    reloaded = SentenceTransformer(str(tmp_path), device="cpu")
    assert_state_dicts_equal(st_model.state_dict(), reloaded.state_dict())
    np.testing.assert_allclose(reloaded.encode(TEXTS), st_embeddings[384], rtol=0, atol=1e-6)


# --- transformers --------------------------------------------------------------------------------------------------

def test_smec_model_equals_sentence_transformers_at_every_dim(exported: Path, smec_model: SMECModel,
                                                              st_embeddings: dict[int, np.ndarray],
                                                              expected: np.ndarray) -> None:
    outputs = smec_outputs(smec_model, tokenize(exported, smec_model.config))
    for k in DIMS:
        np.testing.assert_allclose(outputs[k], expected[:, :k], rtol=0, atol=ATOL)
        np.testing.assert_allclose(outputs[k], st_embeddings[k], rtol=0, atol=ATOL)


def test_smec_model_rejects_an_untrained_dimension(exported: Path, smec_model: SMECModel) -> None:
    batch = tokenize(exported, smec_model.config)
    with pytest.raises(ValueError, match=r"truncate_dim=100 was not trained.*\[384, 256, 128, 64, 32\]"):
        smec_model(**batch, truncate_dim=100)


def test_smec_model_save_load_round_trip(exported: Path, smec_model: SMECModel, tmp_path: Path) -> None:
    smec_model.save_pretrained(tmp_path)
    files = {str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()}
    assert not {f for f in files if Path(f).suffix in PICKLE_SUFFIXES}
    reloaded = SMECModel.from_pretrained(tmp_path).eval()
    assert_state_dicts_equal(smec_model.state_dict(), reloaded.state_dict())
    assert reloaded.config.matryoshka_dimensions == DIMS
    batch = tokenize(exported, smec_model.config)
    with torch.no_grad():
        want, got = (m(**batch).sentence_embedding for m in (smec_model, reloaded))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)


def test_registered_auto_classes_need_no_trust_flag(exported: Path, smec_model: SMECModel) -> None:
    register_auto_classes()
    assert type(AutoConfig.from_pretrained(str(exported))) is SMECConfig
    model = AutoModel.from_pretrained(str(exported))
    assert type(model) is SMECModel
    assert_state_dicts_equal(model.state_dict(), smec_model.state_dict())


# --- fresh processes and the Hub -----------------------------------------------------------------------------------

LOAD_SCRIPT = """
import json, sys
import numpy as np, torch
from sentence_transformers import SentenceTransformer
from transformers import AutoModel, AutoTokenizer
sources, texts, dims, out = json.loads(sys.argv[1])
arrays, classes = {}, []
for i, source in enumerate(sources):
    st = SentenceTransformer(source, device="cpu")
    assert st.get_embedding_dimension() == dims[0]
    for k in dims:
        arrays[f"st{i}_{k}"] = st.encode(texts, truncate_dim=k)
    model = AutoModel.from_pretrained(source, trust_remote_code=True).eval()
    tok = AutoTokenizer.from_pretrained(source, subfolder=model.config.encoder_subfolder)
    batch = tok(texts, padding=True, truncation=True, max_length=model.config.max_seq_length, return_tensors="pt")
    with torch.no_grad():
        for k in dims:
            arrays[f"auto{i}_{k}"] = model(**batch, truncate_dim=k).sentence_embedding.numpy()
    classes.append(type(model).__module__)
np.savez(out, **arrays)
print(json.dumps({"classes": classes, "smec_hf_imported": "smec_hf" in sys.modules}))
"""


def load_in_fresh_process(sources: list[str], out: Path, env: dict[str, str]) -> dict:
    """Load every source with SentenceTransformer and AutoModel in a new interpreter that never imports smec_hf."""
    args = json.dumps([sources, FRESH_TEXTS, DIMS, str(out)])
    result = subprocess.run([sys.executable, "-c", LOAD_SCRIPT, args], env=env, cwd=out.parent,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["smec_hf_imported"] is False
    return report


def assert_loaded_outputs(out: Path, n_sources: int, expected: np.ndarray) -> None:
    arrays = np.load(out)
    for i in range(n_sources):
        for k in DIMS:
            want = expected[: len(FRESH_TEXTS), :k]
            np.testing.assert_allclose(arrays[f"st{i}_{k}"], want, rtol=0, atol=ATOL)
            np.testing.assert_allclose(arrays[f"auto{i}_{k}"], want, rtol=0, atol=ATOL)


def hub_env(hub: FakeHub, hf_home: Path, offline: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGINGFACE_")) and k != "PYTHONPATH"}
    env.update(HF_ENDPOINT=hub.url, HF_HOME=str(hf_home), HF_TOKEN="dummy", HF_HUB_DISABLE_TELEMETRY="1",
               HF_HUB_OFFLINE="1" if offline else "0", TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS="1")  # tiny batches: one thread avoids spin-waiting on a busy 2-core machine
    return env


def test_push_then_load_by_repo_id_online_and_offline(exported: Path, expected: np.ndarray, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """`smec push` to a fake Hub; fresh processes load the local folder and the repo id, then the cache offline."""
    import huggingface_hub.constants

    from smec_hf.cli import main

    folder = shutil.copytree(exported, tmp_path / "model")
    repo_id = "smec-org/minilm-smec"
    with FakeHub() as hub:
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", hub.url)
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setenv("HF_TOKEN", "dummy")
        assert main(["push", str(folder), "--repo-id", repo_id, "--private"]) == 0
        pushed = hub.files(repo_id)
        local = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}
        assert set(pushed) - {".gitattributes"} == local
        assert hub.repos[repo_id].private
        assert f'SentenceTransformer("{repo_id}")' in pushed["README.md"].decode()

        (folder / "NOTES.md").write_text("a second revision")
        assert main(["push", str(folder), "--repo-id", repo_id, "--revision", "v1"]) == 0  # the repo exists: fine
        assert set(hub.files(repo_id, "v1")) == set(pushed) | {"NOTES.md"}
        assert "NOTES.md" not in hub.files(repo_id)

        hf_home = tmp_path / "hf_home"
        online = load_in_fresh_process([str(folder), repo_id], tmp_path / "online.npz",
                                       hub_env(hub, hf_home, offline=False))
        assert all(c.startswith("transformers_modules.") for c in online["classes"]), online
        assert_loaded_outputs(tmp_path / "online.npz", 2, expected)
        assert not hub.unhandled, hub.unhandled
    load_in_fresh_process([repo_id], tmp_path / "offline.npz", hub_env(hub, hf_home, offline=True))
    assert_loaded_outputs(tmp_path / "offline.npz", 1, expected)


def test_push_refuses_a_folder_that_is_not_an_export(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="smec export"):
        push_model(tmp_path, "org/name")
