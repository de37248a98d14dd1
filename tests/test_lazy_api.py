"""``import smec_hf`` is light, and its lazy API is still discoverable."""
import json
import subprocess
import sys


def test_dir_lists_the_lazy_api_without_importing_it() -> None:
    code = ("import json, sys, smec_hf; print(json.dumps({'dir': dir(smec_hf), 'all': smec_hf.__all__, "
            "'torch': 'torch' in sys.modules}))")
    report = json.loads(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                       timeout=120).stdout)
    assert {"train", "export", "SMECModel", "SMECSettings", "load_retrieval_data"} <= set(report["dir"])
    assert set(report["all"]) <= set(report["dir"]) and not report["torch"]
