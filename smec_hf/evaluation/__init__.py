"""Scoring: MTEB tasks over local data, per-dimension MTEB runs of fitted methods and exported models, and the
report (``report.json``, ``report.md``, the plot)."""
