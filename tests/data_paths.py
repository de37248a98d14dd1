"""Where the tests find the shared datasets: the benchmarks' rule (``../shared/data`` beside the repository, which
every developer machine and CI has, or the folder ``SMEC_SHARED_DATA`` names). Read in place, never copied in."""
from benchmarks.common import shared_dataset

SHARED_DATA = shared_dataset("")
SHARED_SCIFACT = shared_dataset("scifact")
