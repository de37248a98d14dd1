"""The SMRL chain: nested prefixes, folding, the orthogonal freeze, persistence."""
import pytest
import torch
import torch.nn.functional as F

from chains import randomised_chain
from smec_hf.smec.chain import SMECChain, default_dimension_path, validate_dimension_path

DIMS = [48, 32, 16, 8]


def _randomised_chain(later_stage_map="orthogonal", seed=0, bias=True) -> SMECChain:
    return randomised_chain(DIMS, seed, scale=0.5, later_stage_map=later_stage_map, bias=bias)


def test_default_path_halves_through_powers_of_two():
    assert default_dimension_path(384) == [384, 256, 128, 64, 32]
    assert default_dimension_path(1024) == [1024, 512, 256, 128, 64, 32]
    assert default_dimension_path(3584)[:3] == [3584, 2048, 1024]


@pytest.mark.parametrize("dims", [[64], [64, 64], [32, 64], [64, 0]])
def test_bad_dimension_paths_are_rejected(dims):
    with pytest.raises(ValueError, match="dims"):
        validate_dimension_path(dims)


@pytest.mark.parametrize("later", ["orthogonal", "general"])
def test_folded_map_reproduces_the_chain_and_every_prefix(later):
    torch.manual_seed(0)                  # float32 rounding of the unfolded chain, not a random draw, sets the error
    chain = _randomised_chain(later)
    x = torch.randn(20, DIMS[0])
    y = chain(x)
    weight, bias = chain.fold()
    assert weight.shape == (DIMS[0], DIMS[0])
    for k in DIMS:
        assert torch.allclose((x @ weight[:k].T + bias[:k]), y[:, :k], atol=1e-5 * float(y.abs().max()))


def test_input_basis_is_applied_before_stage_one():
    chain = _randomised_chain()
    x = torch.randn(5, DIMS[0])
    assert torch.allclose(chain(x, n_stages=0), x @ chain.basis_weight.T + chain.basis_bias)
    assert not any(b.requires_grad for b in chain.buffers())


def test_orthogonal_later_stages_leave_every_larger_level_exactly_frozen():
    chain = _randomised_chain("orthogonal")
    x = torch.randn(30, DIMS[0])
    for s in range(1, len(DIMS)):
        level = DIMS[s]
        after_own_stage = F.normalize(chain(x, n_stages=s)[:, :level], dim=-1)
        after_all = F.normalize(chain(x)[:, :level], dim=-1)
        assert torch.allclose(after_own_stage @ after_own_stage.T, after_all @ after_all.T, atol=1e-5)


def test_general_later_stages_do_rewrite_larger_levels():
    chain = _randomised_chain("general")
    x = torch.randn(30, DIMS[0])
    before = F.normalize(chain(x, n_stages=1)[:, : DIMS[1]], dim=-1)
    after = F.normalize(chain(x)[:, : DIMS[1]], dim=-1)
    assert not torch.allclose(before @ before.T, after @ after.T, atol=1e-3)


def test_save_load_round_trip_is_exact(tmp_path):
    chain = _randomised_chain()
    chain.save(tmp_path / "head")
    loaded = SMECChain.load(tmp_path / "head")
    x = torch.randn(7, DIMS[0])
    assert torch.equal(loaded(x), chain(x))
    assert loaded.stages[1].ads.selected_indices().tolist() == chain.stages[1].ads.selected_indices().tolist()


def test_loading_a_folder_without_a_chain_names_the_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="chain_config.json"):
        SMECChain.load(tmp_path)


def test_wrong_input_dimension_is_a_clear_error():
    with pytest.raises(ValueError, match="dimension 48"):
        SMECChain(DIMS)(torch.randn(2, 40))


def test_a_saved_chain_from_another_version_loads_or_says_why(tmp_path, caplog):
    import json
    import logging

    chain = SMECChain([16, 8, 4]).eval()
    chain.save(tmp_path / "head")
    config_file = tmp_path / "head" / "chain_config.json"
    config = json.loads(config_file.read_text())
    assert config["format_version"] == 2 and config["bias"] is False
    config_file.write_text(json.dumps({**config, "added_in_a_later_release": 3}))
    with caplog.at_level(logging.WARNING):
        loaded = SMECChain.load(tmp_path / "head")
    assert "added_in_a_later_release" in caplog.text
    x = torch.randn(3, 16)
    assert torch.equal(loaded(x), chain(x))
    SMECChain([16, 8, 4], bias=True).save(tmp_path / "old")                          # as format 1 wrote it:
    old_file = tmp_path / "old" / "chain_config.json"
    old = {k: v for k, v in json.loads(old_file.read_text()).items() if k not in ("format_version", "bias")}
    old_file.write_text(json.dumps(old))
    assert SMECChain.load(tmp_path / "old").bias is True                              # format 1 chains had one
    config_file.write_text(json.dumps({**config, "format_version": 99}))
    with pytest.raises(ValueError, match="format_version 99 is newer"):
        SMECChain.load(tmp_path / "head")


@pytest.mark.parametrize("later", ["orthogonal", "general"])
def test_a_bias_free_chain_folds_to_a_homogeneous_map(later):
    """What the serving engines need: scaling the input (an un-normalised pooled vector) scales the output."""
    chain = _randomised_chain(later, bias=False)
    weight, bias = chain.fold()
    assert torch.equal(bias, torch.zeros_like(bias))
    x = torch.randn(6, DIMS[0])
    assert torch.allclose(chain(3.5 * x), 3.5 * chain(x), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="bias-free"):
        chain.set_input_basis(torch.eye(DIMS[0]), torch.ones(DIMS[0]))
