"""SMECTrainingConfig: bad values are named in the error, and a saved config round-trips."""
import pytest

from smec_hf.config import SMECTrainingConfig


@pytest.mark.parametrize("field, value", [("lookahead_weight", -0.1), ("unsup_weight", -1.0), ("batch_size", 1),
                                          ("held_out_fraction", 1.0), ("later_stage_map", "diagonal"),
                                          ("ads_temperature_end", 1.0)])
def test_an_invalid_value_is_named(field, value):
    with pytest.raises(ValueError, match=rf"{field}={value!r}"):
        SMECTrainingConfig(**{field: value})


def test_save_load_round_trip_and_unknown_keys(tmp_path):
    config = SMECTrainingConfig(dims=[384, 64], lookahead_weight=0.5, seed=3)
    config.save(tmp_path / "config.json")
    assert SMECTrainingConfig.load(tmp_path / "config.json") == config
    with pytest.raises(ValueError, match="unknown SMEC config keys: \\['lookahed'\\]"):
        SMECTrainingConfig.from_dict({"lookahed": 0.1})
