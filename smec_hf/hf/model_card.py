"""The model card of an exported SMEC model, rendered from the package's ``smec_hf.model_cards`` template
(``model_cards/smec_model_card.md`` in the repository).

The YAML header carries what the Hub indexes (library, pipeline tag, base model, datasets, tags, licence) and a
``model-index`` with SMEC's nDCG@10 at every trained size; the body shows usage, the per-size results beside the
baselines of the run, the hyperparameters, how to reproduce and the citation. The rendered card goes through
:func:`~smec_hf.hf.scrub.scrub_text`, so no local path reaches it whoever renders it.
"""
from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .licence import CODE_LICENSE_NOTE, model_license, training_data
from .scrub import scrub_text

TEMPLATE_PACKAGE = "smec_hf.model_cards"
TEMPLATE_NAME = "smec_model_card.md"
MODEL_ID_PLACEHOLDER = "your-org/your-smec-model"  # replaced by `push_model` with the real repo id
PLACEHOLDER_NOTE = "**Before publishing:**"         # the card's line that flags the placeholder (dropped with it)
METRIC = "ndcg@10"
TAGS = ["sentence-transformers", "sentence-similarity", "feature-extraction", "smec", "matryoshka", "mteb",
        "embedding-compression"]
METHOD_LABELS = {"smec": "SMEC (this model)", "truncation": "base, truncated", "pca": "PCA",
                 "frozen": "base, full size"}
METHOD_LEGEND = ("*base, truncated*: the frozen base embedding cut to the first k coordinates; *PCA*: a PCA "
                 "projection fitted on the same embeddings; *base, full size*: the frozen base model.")
# MTEB's copies of the BEIR retrieval sets, used as Hub dataset ids when a run names one of them.
MTEB_RETRIEVAL_SETS = ("arguana", "climate-fever", "cqadupstack", "dbpedia-entity", "fever", "fiqa", "hotpotqa",
                       "msmarco", "nfcorpus", "nq", "quora", "scidocs", "scifact", "touche2020", "trec-covid")
HUB_ID = re.compile(r"[\w.-]+/[\w.-]+")


def template_text() -> str:
    """The card template, installed with the package (editable installs map it to ``model_cards/``)."""
    return (resources.files(TEMPLATE_PACKAGE) / TEMPLATE_NAME).read_text(encoding="utf-8")


def hub_id(name: str) -> str | None:
    """The Hub id behind a run's model/dataset name, or None when it is a local folder or unknown."""
    if Path(name).exists():
        return None
    if name.lower() in MTEB_RETRIEVAL_SETS:
        return f"mteb/{name.lower()}"
    return name if HUB_ID.fullmatch(name) else None


def cli_flags(config: dict) -> list[str]:
    """``smec train`` options that reproduce ``config`` (each field is a ``--field-name`` option)."""
    flags = []
    for key, value in config.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(value, bool):
            flags.append(flag if value else "--no-" + flag[2:])
        elif isinstance(value, (list, tuple)):
            flags.append(f"{flag} {' '.join(str(v) for v in value)}")
        elif value is not None:
            flags.append(f"{flag} {value}")
    return flags


def search_and_fallback(run: dict) -> dict:
    """The card's per-stage search rows and do-no-harm rows (empty where the run had neither)."""
    stage_rows = [{"stage": st["stage"], "levels": f"{st['levels'][0]} → {st['levels'][1]}", "chosen": st["chosen"],
                   "candidates": ", ".join(f"`{name}` {score:.4f}" for name, score in st["candidates"].items())}
                  for st in run.get("stages", []) if "chosen" in st]
    choice = run.get("head_choice") or {}
    rows = [{"dim": dim, **{k: f"{v:.4f}" for k, v in level.items()}} for dim, level in choice.get("levels", {}).items()]
    return {"stage_rows": stage_rows, "head_choice_rows": rows,
            "shipped_head": choice.get("shipped", "a trained SMEC head"),
            "held_out_label": choice.get("split", "held-out train queries"), **seen_unseen_rows(run)}


def seen_unseen_rows(run: dict) -> dict:
    """The card's rows of SMEC and PCA on the held-out queries about seen and unseen documents (empty without)."""
    views = run["results"].get("held_out_views") or {}
    if not all(views.get(v, {}).get("ndcg@10") for v in ("seen", "unseen")):
        return {"view_rows": [], "view_counts": ""}
    score = {(name, view): views[view]["ndcg@10"][name] for view in ("seen", "unseen") for name in ("smec", "pca")}
    rows = [{"dim": d, **{f"{name}_{view}": f"{by_dim[str(d)]:.4f}" for (name, view), by_dim in score.items()}}
            for d in run["dims"]]
    return {"view_rows": rows,
            "view_counts": f"{views['seen']['queries']} seen, {views['unseen']['queries']} unseen"}


def result_table(scores: dict[str, dict[str, float]], dims: list[int]) -> tuple[list[str], list[dict]]:
    """Column labels (SMEC first) and one row per size; a method without a score at a size shows a dash."""
    methods = ["smec"] + [m for m in scores if m != "smec"]
    rows = [{"dim": d, "scores": [f"{scores[m][str(d)]:.4f}" if str(d) in scores[m] else "–" for m in methods]}
            for d in dims]
    return [METHOD_LABELS.get(m, m) for m in methods], rows


def precision_table(grid: dict | None, dims: list[int], method: str = "smec") -> str | None:
    """The card's bytes view: ``method``'s nDCG@10 at every size in float32, int8 and binary (plain / rescored),
    each with its bytes per vector; None when the run has no grid."""
    cells = (grid or {}).get("methods", {}).get(method)
    if not cells:
        return None
    lines = ["| dims | float32 | int8 | int8, rescored | binary | binary, int8-rescored |", "|---:|---:|---:|---:|---:|---:|"]
    for d in dims:
        f, i, b = (cells[p][str(d)] for p in ("float32", "int8", "binary"))
        lines.append(f"| {d} | {f['ndcg@10']:.4f} ({f['index_bytes']} B) | {i['ndcg@10']:.4f} ({i['index_bytes']} B) "
                     f"| {i['ndcg@10_rescored']:.4f} | {b['ndcg@10']:.4f} ({b['index_bytes']} B) "
                     f"| {b['ndcg@10_rescored']:.4f} (+{b['total_bytes'] - b['index_bytes']} B on disk) |")
    return "\n".join(lines)


def eval_results(scores: dict[str, float], dims: list[int], dataset_name: str, dataset_type: str,
                 split: str) -> list[EvalResult]:
    """One model-index entry per trained size (the size in ``metric_config``), SMEC's own scores only."""
    return [EvalResult(task_type="Retrieval", task_name="Retrieval", dataset_type=dataset_type,
                       dataset_name=dataset_name, dataset_split=split, metric_type="ndcg_at_10",
                       metric_name=f"nDCG@10 ({d} dims)", metric_config=f"truncate_dim={d}",
                       metric_value=round(float(scores[str(d)]), 6))
            for d in dims if str(d) in scores]


def dataset_ids(run: dict, dataset_id: str | None) -> list[str] | None:
    """The card's datasets: the run's Hub id and every known dataset recognised in its training corpus."""
    ids = ([dataset_id] if dataset_id else []) + [corpus.hub_id for corpus, _ in training_data(run)[0]]
    return list(dict.fromkeys(ids)) or None


def build_model_card(run: dict, *, repo_id: str | None = None, base_model_id: str | None = None,
                     dataset_id: str | None = None, license: str | None = None,
                     plot_file: str | None = None) -> ModelCard:
    """Render the card for a training run (the parsed ``smec_run.json``).

    Hub ids for the metadata: the arguments, else the run's optional ``base_model_id`` / ``dataset_id``, else
    ``base_model`` / ``dataset`` when they are Hub ids. A local base model is not linked and not named by its
    path; ``base_model`` is left out of the metadata.
    """
    dims = [int(d) for d in run["dims"]]
    model_id = repo_id or MODEL_ID_PLACEHOLDER
    base_model_id = base_model_id or run.get("base_model_id") or hub_id(str(run["base_model"]))
    dataset_name = str(run["dataset"])
    dataset_id = dataset_id or run.get("dataset_id") or hub_id(dataset_name)
    split = run.get("evaluated_on", run.get("split", "test"))
    scores = run["results"].get(METRIC) or {}
    recall = run["results"].get("neighbour_recall@10") or {}
    if "smec" not in scores and "smec" not in recall:
        raise ValueError(f"the run has no SMEC {METRIC} or neighbour recall results (methods: {sorted(scores)})")
    labels, rows = result_table(scores, dims) if "smec" in scores else (None, None)
    recall_labels, recall_rows = result_table(recall, dims) if "smec" in recall else (None, None)
    license_id, license_note = model_license(run, license)
    served = run.get("served") or {}
    base_display = base_model_id or f"a local encoder ({Path(str(run['base_model'])).name})"
    card_data = ModelCardData(
        model_name=model_id, base_model=base_model_id, library_name="sentence-transformers",
        pipeline_tag="sentence-similarity", license=license_id, tags=TAGS,
        datasets=dataset_ids(run, dataset_id),
        # only a test split is an evaluation result: held-out scores chose the epochs and are optimistic
        eval_results=eval_results(scores["smec"], dims, dataset_name, dataset_id or dataset_name, split)
        if "smec" in scores and split == "test" else None,
    )
    card = ModelCard.from_template(
        card_data, template_str=template_text(), model_id=model_id, dims=dims, full_dim=dims[0],
        base_model_display=base_display,
        base_model_url=f"https://huggingface.co/{base_model_id}" if base_model_id else None,
        base_model_arg=base_model_id or "PATH/TO/BASE_MODEL", dataset_name=dataset_name,
        data_arg=dataset_id or dataset_name, split=split, placeholder_id=repo_id is None,
        split_label={"held_out": "held-out train queries: the data has no test split"}.get(split, f"{split} split"),
        license_note=license_note, code_license_note=CODE_LICENSE_NOTE, license_arg=license,
        auto_model=served.get("auto_model", False), why_no_auto_model=served.get("why_not"),
        trust_remote_code=served.get("trust_remote_code", False),
        prompts=sorted((run.get("prompts") or {}).items()),
        method_labels=labels, method_legend=METHOD_LEGEND, result_rows=rows, recall_labels=recall_labels,
        recall_rows=recall_rows,
        precision_table=precision_table(run["results"].get("precision_grid"), dims),
        rescore_top=(run["results"].get("precision_grid") or {}).get("rescore_multiplier", 4) * 10,
        training_config=sorted(run["config"].items()), train_flags=cli_flags(run["config"]),
        timings=[(k, f"{float(v):.1f}") for k, v in run.get("timings_s", {}).items()],
        notes=run.get("notes", []), plot_file=plot_file, head_layers=int(served.get("head_layers", 1)),
        **search_and_fallback(run),
    )
    return ModelCard(scrub_text(card.content, [str(run["base_model"])]))


def with_model_id(card: str, repo_id: str) -> str:
    """A card written without a repo id, pointed at ``repo_id`` (cards that already name one are returned as
    they are)."""
    if MODEL_ID_PLACEHOLDER not in card:
        return card
    lines = [line for line in card.split("\n") if PLACEHOLDER_NOTE not in line]
    return "\n".join(lines).replace(MODEL_ID_PLACEHOLDER, repo_id)
