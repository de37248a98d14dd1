"""Benchmarks of smec_hf: ``python -m benchmarks`` (``make bench``); see ``benchmarks/run.py``."""
