"""The exported folder over the real all-MiniLM-L6-v2: the layout every engine reads, Sentence-Transformers, the
engines' order, transformers (``SMECModel``, ``AutoModel``), round trips, fresh processes and the Hub.

One randomised (non-identity) bias-free SMEC chain is exported once per module; every check compares with the
directions of ``chain(base.encode(texts))``, the SMEC definition the export must reproduce.
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
from transformers import AutoModel

from beir_files import write_beir
from fake_hub import FakeHub
from chains import randomised_chain
from engines import engine_order, unit
from smec_hf.hf import SMECModel
from smec_hf.hf.export import export_model
from smec_hf.hf.hub import push_model
from smec_hf.smec.chain import SMECChain
from tiny_models import tiny_bert

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


def assert_state_dicts_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# --- the folder ----------------------------------------------------------------------------------------------------

def test_the_encoder_is_at_the_root_with_its_own_config_and_keys(exported: Path, minilm_path: str) -> None:
    files = {str(p.relative_to(exported)) for p in exported.rglob("*") if p.is_file()}
    assert not {f for f in files if Path(f).suffix in PICKLE_SUFFIXES}
    assert {f for f in files if f.endswith(".safetensors")} == {"model.safetensors", "2_Dense/model.safetensors"}
    assert {"config.json", "modeling_smec.py", "modules.json", "README.md", "smec_run.json", "tokenizer.json",
            "config_sentence_transformers.json", "sentence_bert_config.json"} <= files
    from safetensors import safe_open
    with safe_open(str(exported / "model.safetensors"), "pt") as f:       # the encoder's own key names, as
        exported_keys = set(f.keys())                                          # vLLM and TEI look them up
    assert exported_keys == set(SentenceTransformer(minilm_path, device="cpu")[0].auto_model.state_dict())
    with safe_open(str(exported / "2_Dense/model.safetensors"), "pt") as f:
        assert set(f.keys()) == {"linear.weight"}                                # no bias: TEI's and vLLM's key


def test_modules_json_and_pooling_are_in_the_form_tei_reads(exported: Path) -> None:
    modules = json.loads((exported / "modules.json").read_text())
    assert [(m["path"], m["type"]) for m in modules] == [
        ("", "sentence_transformers.models.Transformer"), ("1_Pooling", "sentence_transformers.models.Pooling"),
        ("2_Dense", "sentence_transformers.models.Dense"), ("3_Normalize", "sentence_transformers.models.Normalize")]
    pooling = json.loads((exported / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode_mean_tokens"] is True and pooling["pooling_mode_cls_token"] is False
    assert pooling["word_embedding_dimension"] == 384
    assert json.loads((exported / "sentence_bert_config.json").read_text())["max_seq_length"] == 256
    dense = json.loads((exported / "2_Dense" / "config.json").read_text())
    assert dense["bias"] is False and dense["activation_function"] == "torch.nn.modules.linear.Identity"


def test_root_config_is_the_encoders_with_the_matryoshka_keys(exported: Path) -> None:
    config = json.loads((exported / "config.json").read_text())
    assert config["model_type"] == "bert" and config["architectures"] == ["BertModel"]
    assert config["matryoshka_dimensions"] == sorted(DIMS) and config["is_matryoshka"] is True
    assert config["auto_map"] == {"AutoModel": "modeling_smec.SMECModel"}
    assert "_name_or_path" not in config


def test_no_exported_file_names_a_local_path(exported: Path, minilm_path: str) -> None:
    for file in exported.rglob("*"):
        if file.is_file() and file.suffix in (".json", ".md", ".txt", ".py"):
            text = file.read_text()
            assert minilm_path not in text and str(Path.home()) not in text and "/tmp/" not in text, file
    assert "huggingface.co//" not in (exported / "README.md").read_text()


def test_code_file_is_self_contained(exported: Path) -> None:
    """auto_map users may not have smec_hf installed: the root code imports only third-party modules."""
    tree = ast.parse((exported / "modeling_smec.py").read_text())
    imported = [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    imported += [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    assert not [m for m in imported if m.startswith(("smec_hf", "."))]


def test_export_checks_the_run_folder(run_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="smec train"):
        export_model(tmp_path, tmp_path / "out")
    shutil.copytree(run_dir / "head", tmp_path / "head")
    run = json.loads((run_dir / "smec_run.json").read_text())
    (tmp_path / "smec_run.json").write_text(json.dumps({**run, "dims": [384, 128]}))
    with pytest.raises(ValueError, match=r"dims \[384, 128\]"):
        export_model(tmp_path, tmp_path / "out")


def test_export_refuses_a_base_model_of_another_size_before_writing(tmp_path: Path, minilm_path: str) -> None:
    write_run(tmp_path / "run", randomised_chain([256, 64]), minilm_path)
    run = json.loads((tmp_path / "run" / "smec_run.json").read_text())
    (tmp_path / "run" / "smec_run.json").write_text(json.dumps({**run, "dims": [256, 64]}))
    with pytest.raises(ValueError, match=r"--base-model .* gives 384-d embeddings .* 256-d"):
        export_model(tmp_path / "run", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    (tmp_path / "run" / "smec_run.json").write_text(json.dumps({**run, "dims": [256, 64], "base_model": "precomputed"}))
    with pytest.raises(ValueError, match="pass --base-model"):
        export_model(tmp_path / "run", tmp_path / "out")


def test_export_refuses_a_non_empty_folder(run_dir: Path, exported: Path) -> None:
    with pytest.raises(FileExistsError, match="--overwrite"):
        export_model(run_dir, exported)


def test_the_card_names_no_local_base_and_says_where_the_licence_came_from(exported: Path) -> None:
    card = (exported / "README.md").read_text()
    assert "license: cc-by-nc-2.0" in card and "non-commercial" in card
    assert "base_model:" not in card.split("---")[1]            # a local encoder is not a Hub id
    assert "Before publishing" in card and "vllm serve" in card and "dimensions" in card
    assert "trust_remote_code=True" in card


# --- Sentence-Transformers and the serving engines' order ----------------------------------------------------------

def test_sentence_transformers_truncate_dim_has_smecs_directions(st_model: SentenceTransformer,
                                                               st_embeddings: dict[int, np.ndarray],
                                                               expected: np.ndarray) -> None:
    assert st_model.get_embedding_dimension() == 384
    for k in DIMS:
        assert st_embeddings[k].shape == (len(TEXTS), k)
        np.testing.assert_allclose(unit(st_embeddings[k]), unit(expected[:, :k]), rtol=0, atol=ATOL)


def test_the_engines_order_gives_sentence_transformers_directions(st_model: SentenceTransformer,
                                                                  st_embeddings: dict[int, np.ndarray]) -> None:
    for k in DIMS:
        cosine = (engine_order(st_model, TEXTS, k) * unit(st_embeddings[k])).sum(axis=1)
        assert cosine.min() >= 1 - 1e-6, (k, cosine)


def test_sentence_transformers_save_load_round_trip(st_model: SentenceTransformer,
                                                    st_embeddings: dict[int, np.ndarray], tmp_path: Path) -> None:
    st_model.save(str(tmp_path), create_model_card=False)
    reloaded = SentenceTransformer(str(tmp_path), device="cpu")
    assert_state_dicts_equal(st_model.state_dict(), reloaded.state_dict())
    np.testing.assert_allclose(reloaded.encode(TEXTS), st_embeddings[384], rtol=0, atol=1e-6)


# --- transformers --------------------------------------------------------------------------------------------------

def test_smec_model_equals_sentence_transformers_at_every_dim(smec_model: SMECModel,
                                                              st_embeddings: dict[int, np.ndarray]) -> None:
    for k in DIMS:
        np.testing.assert_allclose(smec_model.encode(TEXTS, truncate_dim=k).numpy(), st_embeddings[k], rtol=0,
                                   atol=ATOL)


def test_smec_model_rejects_an_untrained_dimension(smec_model: SMECModel) -> None:
    with pytest.raises(ValueError, match=r"truncate_dim=100 was not trained.*\[384, 256, 128, 64, 32\]"):
        smec_model.encode(TEXTS[:1], truncate_dim=100)


def test_auto_model_needs_the_flag_for_smec_and_gives_the_encoder_without_it(exported: Path,
                                                                           smec_model: SMECModel) -> None:
    plain = AutoModel.from_pretrained(str(exported))
    assert type(plain).__name__ == "BertModel"
    remote = AutoModel.from_pretrained(str(exported), trust_remote_code=True)
    assert type(remote).__name__ == "SMECModel" and type(remote).__module__.startswith("transformers_modules.")
    assert_state_dicts_equal(remote.state_dict(), smec_model.state_dict())
    assert_state_dicts_equal(plain.state_dict(), smec_model.encoder.state_dict())


def test_sentence_transformers_with_remote_code_loads_smec_model_into_its_transformer(
        exported: Path, st_embeddings: dict[int, np.ndarray]) -> None:
    """Infinity's default: SentenceTransformer(repo, trust_remote_code=True) puts SMECModel in its Transformer."""
    model = SentenceTransformer(str(exported), device="cpu", trust_remote_code=True)
    assert type(model[0].auto_model).__name__ == "SMECModel"
    np.testing.assert_allclose(model.encode(TEXTS, truncate_dim=64), st_embeddings[64], rtol=0, atol=ATOL)


# --- fresh processes and the Hub -----------------------------------------------------------------------------------

LOAD_SCRIPT = """
import json, sys
import numpy as np, torch
from sentence_transformers import SentenceTransformer
from transformers import AutoModel
sources, texts, dims, out = json.loads(sys.argv[1])
arrays, classes = {}, []
for i, source in enumerate(sources):
    st = SentenceTransformer(source, device="cpu")
    assert st.get_embedding_dimension() == dims[0]
    for k in dims:
        arrays[f"st{i}_{k}"] = st.encode(texts, truncate_dim=k)
    model = AutoModel.from_pretrained(source, trust_remote_code=True).eval()
    for k in dims:
        arrays[f"auto{i}_{k}"] = model.encode(texts, truncate_dim=k).numpy()
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
            want = unit(expected[: len(FRESH_TEXTS), :k])
            np.testing.assert_allclose(unit(arrays[f"st{i}_{k}"]), want, rtol=0, atol=ATOL)
            np.testing.assert_allclose(unit(arrays[f"auto{i}_{k}"]), want, rtol=0, atol=ATOL)


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch):
    """A FakeHub that this process's huggingface_hub pushes to (``smec push`` in-process)."""
    import huggingface_hub.constants

    with FakeHub() as hub:
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", hub.url)
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setenv("HF_TOKEN", "dummy")
        yield hub


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


RESAVE_SCRIPT = """
import json, os, sys
from sentence_transformers import SentenceTransformer
from transformers import AutoModel
repo_id, copy, texts = json.loads(sys.argv[1])
SentenceTransformer(repo_id, device="cpu").save_pretrained(copy)
assert not os.path.exists(os.path.join(copy, "modeling_smec.py"))
model = AutoModel.from_pretrained(copy, trust_remote_code=True).eval()
print(json.dumps({"class": type(model).__name__, "embedding": model.encode(texts, truncate_dim=64).tolist()}))
"""


def test_a_copy_resaved_from_the_hub_still_loads_smec_model(exported: Path, expected: np.ndarray, tmp_path: Path,
                                                            fake_hub: FakeHub) -> None:
    """The pushed auto_map names the repo's code, so save_pretrained (which drops modeling_smec.py) loses nothing;
    the local folder keeps the plain form, which loads offline before any push."""
    repo_id = "smec-org/resaved"
    push_model(exported, repo_id)
    pushed = json.loads(fake_hub.files(repo_id)["config.json"])
    assert pushed["auto_map"] == {"AutoModel": f"{repo_id}--modeling_smec.SMECModel"}
    assert json.loads((exported / "config.json").read_text())["auto_map"] == {"AutoModel": "modeling_smec.SMECModel"}
    args = json.dumps([repo_id, str(tmp_path / "copy"), FRESH_TEXTS])
    result = subprocess.run([sys.executable, "-c", RESAVE_SCRIPT, args], capture_output=True, text=True, timeout=300,
                            env=hub_env(fake_hub, tmp_path / "hf_home", offline=False), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["class"] == "SMECModel"
    np.testing.assert_allclose(unit(np.array(report["embedding"])), unit(expected[: len(FRESH_TEXTS), :64]), rtol=0,
                               atol=ATOL)


def test_push_refuses_a_folder_that_is_not_an_export(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="smec export"):
        push_model(tmp_path, "org/name")


def test_a_run_from_before_bias_free_heads_still_exports(tmp_path: Path, minilm_path: str) -> None:
    """A format-1 chain (with a bias) exports to the new layout; Sentence-Transformers reproduces it exactly."""
    chain = randomised_chain(DIMS, seed=3, bias=True)
    write_run(tmp_path / "run", chain, minilm_path)
    config_file = tmp_path / "run" / "head" / "chain_config.json"
    config_file.write_text(json.dumps({k: v for k, v in json.loads(config_file.read_text()).items()
                                       if k not in ("format_version", "bias")}))
    folder = export_model(tmp_path / "run", tmp_path / "model")
    assert json.loads((folder / "config.json").read_text())["model_type"] == "bert"
    base = SentenceTransformer(minilm_path, device="cpu").encode(TEXTS[:2], convert_to_tensor=True).clone()
    with torch.no_grad():
        want = chain(base).numpy()
    got = SentenceTransformer(str(folder), device="cpu").encode(TEXTS[:2], truncate_dim=64)
    np.testing.assert_allclose(got, want[:, :64], rtol=0, atol=ATOL)


# --- what is published: no local path, the licence by content ------------------------------------------------------

TINY_TRAIN = ["--dims", "32", "16", "8", "--max-epochs", "2", "--patience", "1", "--batch-size", "16",
              "--memory-size", "64", "--hard-negatives", "2", "--hard-negative-pool", "8", "--no-progress", "--search"]


@pytest.fixture(scope="module")
def local_run(tmp_path_factory: pytest.TempPathFactory, scifact) -> tuple[Path, dict[str, Path]]:
    """``smec train`` given absolute paths: a tiny BERT as --base-model, a SciFact slice in a folder named ``sf`` as
    --data, a text file as --corpus (its path lands in the run's notes), a --cache-dir; then ``smec export`` with an
    absolute --base-model. Returns the export and the paths that must not be published."""
    from smec_hf.cli import main

    root = tmp_path_factory.mktemp("local-paths")
    paths = {"base": tiny_bert(root / "encoders" / "tiny"), "cache": root / "cache", "run": root / "run",
             "data": write_beir(scifact.subset({"train": 40, "test": 20}, n_extra_docs=60, seed=2), root / "data" / "sf"),
             "corpus": root / "extra" / "more_documents.txt"}
    paths["corpus"].parent.mkdir()
    paths["corpus"].write_text("".join(f"An extra document, number {i}, about blood cells.\n" for i in range(30)))
    assert main(["train", "--base-model", str(paths["base"]), "--data", str(paths["data"]), "--corpus",
                 str(paths["corpus"]), "--cache-dir", str(paths["cache"]), "--output", str(paths["run"]),
                 *TINY_TRAIN]) == 0
    assert main(["export", str(paths["run"]), str(root / "model"), "--base-model", str(paths["base"])]) == 0
    return root / "model", {**paths, "root": root}


def assert_names_no_path(files: dict[str, bytes], paths: dict[str, Path]) -> None:
    """No file, text or binary, holds any of ``paths`` (as given or resolved), the home folder or /tmp/."""
    forbidden = {str(p) for p in paths.values()} | {str(p.resolve()) for p in paths.values()} | {"/tmp/"}
    forbidden |= {str(Path.home()) + "/"}
    for name, content in files.items():
        for path in forbidden:
            assert path.encode() not in content, (name, path)


def test_nothing_exported_or_pushed_names_a_local_path(local_run: tuple[Path, dict[str, Path]],
                                                      fake_hub: FakeHub) -> None:
    model, paths = local_run
    run = json.loads((model / "smec_run.json").read_text())
    assert "30 documents added from <local>/more_documents.txt" in run["notes"]        # scrubbed, not dropped
    assert run["base_model"] == "<local>/tiny"
    assert_names_no_path({str(p.relative_to(model)): p.read_bytes() for p in model.rglob("*") if p.is_file()}, paths)
    push_model(model, "smec-org/tiny-smec")
    assert_names_no_path(fake_hub.files("smec-org/tiny-smec"), paths)


def test_a_renamed_scifact_slice_is_exported_non_commercial(local_run: tuple[Path, dict[str, Path]]) -> None:
    """Trained on SciFact documents in a folder named ``sf``: the content, recorded at training, sets the licence."""
    model, _ = local_run
    assert json.loads((model / "smec_run.json").read_text())["training_corpus"]["known"]["scifact"] > 0
    assert "license: cc-by-nc-2.0" in (model / "README.md").read_text()
