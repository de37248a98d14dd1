"""Where the tests find the shared datasets: ``../shared/data`` beside the repository (every developer machine
and CI has it), or the folder ``SMEC_SHARED_DATA`` names. The data is read in place, never copied in."""
import os
from pathlib import Path

SHARED_DATA = Path(os.environ.get("SMEC_SHARED_DATA", Path(__file__).resolve().parents[1].parent / "shared" / "data"))
SHARED_SCIFACT = SHARED_DATA / "scifact"
