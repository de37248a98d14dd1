"""SMEC itself, one file per part of the paper: ADS (``ads.py``), S-XBM (``memory.py``), the SMRL stage chain
(``chain.py``), a stage's objective (``objective.py``), the stage schedule (``trainer.py``), its settings and
its ``Compressor``."""
