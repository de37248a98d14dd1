"""Settings of the wrong type are named with the field, the value and the type the field needs, before any value
check or training compares them (``smec_hf.train`` takes settings as keywords, so nothing else checks their type)."""
import json
import re

import numpy as np
import pytest

import smec_hf
from smec_hf.core.config import FitConfig
from smec_hf.smec.settings import SMECSettings


@pytest.mark.parametrize("field, value, expected", [
    ("max_epochs", "two", "int"), ("max_epochs", 2.0, "int"), ("lr", "3e-3", "float"), ("use_ads", 1, "bool"),
    ("dims", [384, "64"], r"list\[int\] \| None"), ("search", "corpus", r"tuple\[str, \.\.\.\]"),
    ("later_stage_map", 3, "Literal"), ("query_groups", {"q1": 7}, r"dict\[str, str\] \| None"),
    ("seed", None, "int"),
])
def test_a_setting_of_the_wrong_type_is_named_with_the_type_it_needs(field, value, expected):
    with pytest.raises(TypeError, match=rf"^invalid SMECSettings: {re.escape(f'{field}={value!r}')}: expected "
                                        rf"{expected}.*, got {type(value).__name__}$"):
        SMECSettings(**{field: value})


def test_what_json_numpy_and_python_users_pass_still_loads():
    settings = SMECSettings(dims=(384, np.int64(64)), lr=1, seed=np.int32(3), search=["corpus"],
                            query_groups={"q1": "a"})
    assert settings.search == ("corpus",) and settings.lr == 1
    saved = SMECSettings(dims=[384, 64], search=("corpus", "no_ads"))
    assert SMECSettings.from_dict(json.loads(json.dumps(saved.to_dict()))) == saved   # lists back, not tuples
    assert FitConfig(held_out_fraction=0.2).held_out_fraction == 0.2


def test_train_refuses_a_wrong_type_before_reading_anything(tmp_path):
    with pytest.raises(TypeError, match=r"max_epochs='two': expected int, got str"):
        smec_hf.train(None, tmp_path / "no-such-data.jsonl", tmp_path / "run", max_epochs="two")
    assert not (tmp_path / "run").exists()
