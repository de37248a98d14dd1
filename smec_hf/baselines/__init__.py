"""The methods SMEC is compared with: truncation and PCA (``frozen.py``), Matryoshka-Adaptor, Search-Adaptor and
joint MRL of SMEC's linear head, with the adaptor shape and fitting they share (``adaptors.py``)."""
