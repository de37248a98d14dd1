"""FitConfig / SMECSettings: bad values are named, a saved config round-trips, and a file from another
version (renamed or unknown keys) loads with a warning instead of crashing."""
import json
import logging

import pytest

from smec_hf.core.config import FitConfig
from smec_hf.smec.settings import SMECSettings


@pytest.mark.parametrize("field, value", [("lookahead_weight", -0.1), ("unsup_weight", -1.0), ("batch_size", 1),
                                          ("held_out_fraction", 1.0), ("later_stage_map", "diagonal"),
                                          ("ads_temperature_end", 1.0)])
def test_an_invalid_value_is_named(field, value):
    with pytest.raises(ValueError, match=rf"{field}={value!r}"):
        SMECSettings(**{field: value})


def test_save_load_round_trip(tmp_path):
    config = SMECSettings(dims=[384, 64], lookahead_weight=0.5, seed=3)
    config.save(tmp_path / "config.json")
    assert SMECSettings.load(tmp_path / "config.json") == config


def test_unknown_keys_are_dropped_with_a_warning_naming_the_file(tmp_path, caplog):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"lr": 0.01, "lookahed": 0.1, "format_version": 1}))
    with caplog.at_level(logging.WARNING):
        config = SMECSettings.load(path)
    assert config.lr == 0.01 and config.lookahead_weight == SMECSettings().lookahead_weight
    assert "lookahed" in caplog.text and str(path) in caplog.text


def test_the_baselines_get_only_the_shared_part():
    settings = SMECSettings(dims=[384, 32], lr=0.02, use_ads=False)
    shared = FitConfig.fit_part(settings)
    assert type(shared) is FitConfig and (shared.dims, shared.lr) == ([384, 32], 0.02)
    assert not hasattr(shared, "use_ads")
