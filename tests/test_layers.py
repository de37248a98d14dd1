"""The layer contracts in ``.importlinter`` hold for the package, and they do catch an upward import."""
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")


def _lint(package_parent: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT), "--config", str(ROOT / ".importlinter"), "--no-cache"], cwd=package_parent,
                          env={"PYTHONPATH": str(package_parent), "PATH": "/usr/bin:/bin"}, capture_output=True,
                          text=True)


def test_the_package_keeps_its_layers():
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 kept, 0 broken" in result.stdout


def test_a_lower_layer_importing_a_higher_one_is_caught(tmp_path):
    shutil.copytree(ROOT / "smec_hf", tmp_path / "smec_hf", ignore=shutil.ignore_patterns("__pycache__"))
    with (tmp_path / "smec_hf" / "core" / "retrieval.py").open("a") as f:
        f.write("\nfrom .. import registry  # noqa: E402  (core must not know the methods)\n")
    result = _lint(tmp_path)
    assert result.returncode != 0
    assert "smec_hf.core.retrieval -> smec_hf.registry" in result.stdout
