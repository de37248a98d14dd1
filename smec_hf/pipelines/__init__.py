"""End-to-end jobs: ``smec train`` (one SMEC run folder, ``train.py``) and ``smec evaluate`` (every registered
method on one cache, scored with MTEB, ``compare.py``), with the parallel fitting both share (``fitting.py``)."""
