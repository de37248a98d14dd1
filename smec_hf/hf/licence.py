"""The exported model's licence: the training data's or the base model's terms (or ``--license``), never the
licence of smec-hf's own code, which the card states apart (the repository's ``modeling_smec.py`` is that code).

The training data is recognised by content (:mod:`~smec_hf.hf.known_corpora`): from the ``training_corpus`` that
``smec train`` records; for a run recorded before that, from the whole corpus's text fingerprint in its embedding
cache; failing both (an old record of a subset), from the dataset's name. Where content is recorded it decides: a
renamed SciFact folder is SciFact's, a folder merely named like it is not. The name is used only where no content
was recorded, since there it can only make the licence stricter.
"""
from __future__ import annotations

import logging
from pathlib import Path

from huggingface_hub import ModelCard, hf_hub_download

from .known_corpora import FORMAT, KNOWN_CORPORA, KnownCorpus, corpus_by_fingerprint, held_corpora

logger = logging.getLogger(__name__)

UNKNOWN = "unknown"   # the Hub's licence id for "not determined"
CODE_LICENSE = "Apache-2.0"
CODE_LICENSE_NOTE = (f"The licence above is the model's. smec-hf, the code that trained and packaged it (including "
                     f"`modeling_smec.py` in this repository), is licensed {CODE_LICENSE}.")


def base_model_license(base_model: str, base_model_id: str | None = None) -> str | None:
    """The ``license`` in the base model's card: a local folder's ``README.md``, else the Hub card of
    ``base_model_id`` (or of ``base_model`` when it is a Hub id), from the cache when offline; None when no card
    says (or none can be read, which the model card then says)."""
    folder = Path(base_model).expanduser()
    try:
        if (folder / "README.md").is_file():
            card = ModelCard.load(folder / "README.md")
        elif base_model_id or not folder.exists():
            card = ModelCard.load(hf_hub_download(base_model_id or base_model, "README.md"))
        else:
            return None
    except (OSError, ValueError) as error:
        logger.warning("could not read the base model's licence (%s); the card will say so", error)
        return None
    license = card.data.get("license")
    return str(license) if isinstance(license, str) and license else None


def training_data(run: dict) -> tuple[list[tuple[KnownCorpus, int | None]], str]:
    """The known datasets the run trained on (each with the number of its documents, None where only known to be
    the whole corpus) and how they were recognised."""
    identity = run.get("training_corpus") or {}
    if identity.get("format") == FORMAT:      # counts made by another rule are not comparable: as if unrecorded
        return held_corpora(identity), f"of its {identity['documents']} documents"
    cached = ((run.get("embedding_cache") or {}).get("dataset") or {}).get("corpus_texts")
    whole = corpus_by_fingerprint(cached)
    if whole:
        return [(whole, None)], "the whole corpus, by its text fingerprint"
    name = str(run.get("dataset", "")).lower()
    named = [(corpus, None) for key, corpus in KNOWN_CORPORA.items() if key in name]
    return named, "by the dataset's name (the run record predates content identification)"


def model_license(run: dict, given: str | None = None) -> tuple[str, str]:
    """The card's licence id and the sentence that says where it came from."""
    dataset = run.get("dataset", "the training data")
    if given:
        return given, f"Licence: {given}, given at export."
    held, how = training_data(run)
    base = run.get("base_model_license")
    base_words = f"the base model is licensed {base}" if base else "no licence was found in the base model's card"
    if held:
        licences = sorted({corpus.license for corpus, _ in held})
        found = "; ".join(f"{corpus.title} ({corpus.license.upper()}, {corpus.restriction})"
                          + (f": {count} {how}" if count is not None else f": {how}") for corpus, count in held)
        return (licences[0] if len(licences) == 1 else "other",
                f"The training data `{dataset}` contains {found}; the model's licence follows it ({base_words}; "
                "`smec export --license` to set another).")
    if base:
        return base, (f"Licence: {base}, the base model's. The training data `{dataset}` was not recognised as a "
                      "dataset with its own licence; if its terms restrict use, set them with "
                      "`smec export --license`.")
    return UNKNOWN, (f"Licence: not determined ({base_words}, and the training data `{dataset}` was not "
                     "recognised): set it with `smec export --license`.")
