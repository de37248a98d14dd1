"""Write an in-memory dataset as a BEIR folder: for code that must load its data itself (launched processes,
``smec train --data``), and for renamed copies of real datasets."""
from __future__ import annotations

import json
from pathlib import Path

from smec_hf.data import RetrievalData


def write_beir(data: RetrievalData, folder: Path) -> Path:
    """``folder`` with ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/<split>.tsv`` of ``data``."""
    (folder / "qrels").mkdir(parents=True)
    for name, ids, texts in (("corpus", data.corpus_ids, data.corpus_texts),
                             ("queries", data.query_ids, data.query_texts)):
        lines = [json.dumps({"_id": i, "text": t}) + "\n" for i, t in zip(ids, texts)]
        (folder / f"{name}.jsonl").write_text("".join(lines))
    for split, qrels in data.qrels.items():
        rows = [f"{q}\t{d}\t{s}\n" for q, docs in qrels.items() for d, s in docs.items()]
        (folder / "qrels" / f"{split}.tsv").write_text("query-id\tcorpus-id\tscore\n" + "".join(rows))
    return folder
