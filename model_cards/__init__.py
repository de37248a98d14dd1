"""Model-card templates, installed as ``smec_hf.model_cards`` (setup.py maps this folder there) and read with
``importlib.resources``; the ``__init__`` lets an editable install map the folder too."""
