"""nDCG@10 of one method at every precision x dimension, each with and without rescoring, and the bytes it costs.

Smaller dimensions are not the only way to shrink an index: Sentence-Transformers' quantization (int8 codes,
binary sign bits) stacks with them, and rescoring the first stage's candidates with the float query wins back
much of the loss. This module scores every cell so that methods are compared per byte, not per dimension.

Quantization is Sentence-Transformers' own ``quantize_embeddings`` on unit-normalised vectors (cosine search):
int8 with per-dimension ranges calibrated on the whole corpus at that dimension (the min / max that
``calibration_embeddings=<corpus>`` computes, gathered while streaming), binary as ``"ubinary"`` packed sign
bits. Queries are quantized the same way for the first stage. Search is exact within each representation:
float32 cosine; int8 inner product of the codes (the ``ip`` metric of ST's usearch path), integer-exact float32
products, never float64; binary Hamming distance by popcount of the packed bits (FAISS ``IndexBinaryFlat``).
Ties go to the lower corpus row.

Rescoring follows ST's ``semantic_search_usearch`` / ``semantic_search_faiss``: the first stage retrieves the
top ``r = rescore_multiplier * 10`` rows, and those are rescored with the *float* query against the stored
*int8* document vectors, dequantized with the corpus ranges (ST's rule for int8 candidates: the float query
dotted with each code's bucket start ``(c + 128) * step + min``, in float64); the final top 10 gives nDCG@10.
Binary first stages rescore against the same int8 store (the issue's "256-d binary codes, int8 rescoring of
the top 40"; ST's own binary path would rescore with the 0/1 bits instead, which is weaker).

Bytes per vector: ``index_bytes`` is the first-stage index (float32 ``4k``, int8 ``k``, binary ``ceil(k/8)``),
what must sit in RAM; ``total_bytes`` adds the rescoring store, which may live on disk: int8 rescores from its
own index (``k``), binary needs the int8 store beside its bits (``ceil(k/8) + k``), float32 has no rescoring.

``report.json`` key (:func:`grid_report`)::

    "precision_grid": {
      "top_k": 10, "rescore_multiplier": 4,           # rescoring reads the first stage's top 40
      "methods": {method: {precision: {str(dim): {     # precision in "float32", "int8", "binary"
          "ndcg@10": x,                               # plain: quantized query against the quantized index
          "ndcg@10_rescored": y,                      # int8 / binary only: top r rescored (rule above)
          "index_bytes": b,                           # first-stage bytes per vector
          "total_bytes": t}}}}}                       # b + the rescoring store's bytes (= b for float32, int8)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import faiss
import numpy as np
import torch
import torch.nn.functional as F
from sentence_transformers.util.quantization import quantize_embeddings

from ..core.retrieval import cached_queries, per_query_ndcg
from ..core.types import Embeddings, Qrels

PRECISIONS = ("float32", "int8", "binary")
QUANTIZED = ("int8", "binary")
TOP_K = 10
DEFAULT_RESCORE_MULTIPLIER = 4
DEFAULT_BUDGETS = (32, 64, 128, 256, 512, 1536)
BYTES_KEYS = ("index_bytes", "total_bytes")
EXACT_WIDTH = 1024          # int8 dims whose products float32 sums exactly (see _int_dot)
RESCORE_BLOCK = 256         # queries rescored at once (see _rescored)

Transform = Callable[[np.ndarray, int], np.ndarray | torch.Tensor]


def index_bytes(precision: str, dim: int) -> int:
    """Bytes per vector of the first-stage index."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return {"float32": 4 * dim, "int8": dim, "binary": math.ceil(dim / 8)}[precision]


def total_bytes(precision: str, dim: int, rescored: bool) -> int:
    """Bytes per vector of the whole search: the index plus, for rescored binary, the int8 rescoring store."""
    return index_bytes(precision, dim) + (dim if rescored and precision == "binary" else 0)


def variant(precision: str, rescored: bool) -> str:
    """The name of one search variant in :attr:`PrecisionGrid.per_query`: ``"int8"``, ``"int8_rescored"``, ..."""
    return f"{precision}_rescored" if rescored else precision


@dataclass(frozen=True)
class PrecisionGrid:
    """One method's grid. ``cells``: ``{precision: {str(dim): entry}}`` as in ``report.json`` (module doc);
    ``per_query``: ``{variant: {dim: {query id: nDCG@10}}}`` for paired tests (``evaluation.intervals``)."""

    cells: dict[str, dict[str, dict[str, float | int]]]
    per_query: dict[str, dict[int, dict[str, float]]]
    rescore_multiplier: int

    def as_sparse(self, bytes_per_vector: Callable[[int], int]) -> "PrecisionGrid":
        """The float32 cells alone, with a sparse method's own bytes per vector (value + index per active
        dimension): quantizing a sparse code's values is not what its users do, so no int8 / binary cells."""
        cells = {"float32": {d: {**e, "index_bytes": bytes_per_vector(int(d)), "total_bytes": bytes_per_vector(int(d))}
                             for d, e in self.cells["float32"].items()}}
        return PrecisionGrid(cells, {"float32": self.per_query["float32"]}, self.rescore_multiplier)


def precision_grid(transform: Transform, cache: Embeddings, qrels: Qrels, dims: Sequence[int], *,
                   rescore_multiplier: int = DEFAULT_RESCORE_MULTIPLIER, chunk_size: int = 65536) -> PrecisionGrid:
    """Score ``transform(x, dim)`` (queries and corpus) on ``qrels``' queries in every precision x dim cell.

    The corpus (possibly a memmap) is read in ``chunk_size`` rows, twice per dim: once for the int8 ranges and
    the float32 search, once for the int8 and binary first stages (which carry their candidates' int8 codes,
    so rescoring needs no third read).
    """
    if not dims:
        raise ValueError("dims is empty")
    query_ids, raw_queries = cached_queries(cache, qrels)
    judged = {q: qrels[q] for q in query_ids}
    cells: dict[str, dict[str, dict[str, float | int]]] = {p: {} for p in PRECISIONS}
    per_query: dict[str, dict[int, dict[str, float]]] = {}
    for dim in dims:
        tops = search_variants(transform, cache.corpus, raw_queries, int(dim), rescore_multiplier, chunk_size)
        for name, rows in tops.items():
            run = {q: {cache.corpus_ids[j]: float(TOP_K - rank) for rank, j in enumerate(row)}
                   for q, row in zip(query_ids, rows.tolist())}
            per_query.setdefault(name, {})[int(dim)] = per_query_ndcg(run, judged)
        for precision in PRECISIONS:
            entry: dict[str, float | int] = {"ndcg@10": _mean(per_query[precision][int(dim)])}
            if precision in QUANTIZED:
                entry["ndcg@10_rescored"] = _mean(per_query[variant(precision, True)][int(dim)])
            entry["index_bytes"] = index_bytes(precision, int(dim))
            entry["total_bytes"] = total_bytes(precision, int(dim), precision in QUANTIZED)
            cells[precision][str(int(dim))] = entry
    return PrecisionGrid(cells, per_query, rescore_multiplier)


def grid_report(grids: Mapping[str, PrecisionGrid]) -> dict:
    """The ``report.json`` entry ``{"precision_grid": ...}`` (module doc) for several methods' grids."""
    if not grids:
        raise ValueError("grids is empty")
    multipliers = {g.rescore_multiplier for g in grids.values()}
    if len(multipliers) != 1:
        raise ValueError(f"grids were scored with different rescore_multiplier values {sorted(multipliers)}")
    return {"precision_grid": {"top_k": TOP_K, "rescore_multiplier": multipliers.pop(),
                               "methods": {m: g.cells for m, g in grids.items()}}}


# -- search -------------------------------------------------------------------------------------------------


def search_variants(transform: Transform, corpus: np.ndarray, raw_queries: np.ndarray, dim: int,
                    rescore_multiplier: int = DEFAULT_RESCORE_MULTIPLIER, chunk_size: int = 65536
                    ) -> dict[str, np.ndarray]:
    """Top-10 corpus rows ``[queries, 10]`` of every search variant (:func:`variant` names) at ``dim``, the
    corpus and the raw base ``raw_queries`` mapped by ``transform``."""
    if not isinstance(rescore_multiplier, int) or rescore_multiplier < 1:
        raise ValueError(f"rescore_multiplier must be a positive integer, got {rescore_multiplier!r}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")

    def mapped(rows: slice) -> np.ndarray:
        return _unit(transform(np.array(corpus[rows], dtype=np.float32), dim))

    chunks = [slice(s, s + chunk_size) for s in range(0, len(corpus), chunk_size)]
    queries = _unit(transform(raw_queries, dim))
    r = min(rescore_multiplier * TOP_K, len(corpus))
    q_float = torch.from_numpy(queries)
    float_top = _RunningTop(TOP_K)
    width = queries.shape[1]            # ``dim``, or a sparse method's code width
    low, high = np.full(width, np.inf, np.float32), np.full(width, -np.inf, np.float32)
    for rows in chunks:
        docs = mapped(rows)
        low, high = np.minimum(low, docs.min(axis=0)), np.maximum(high, docs.max(axis=0))
        top = (q_float @ torch.from_numpy(docs).T).topk(min(TOP_K, len(docs)), dim=1)
        float_top.add(top.values, top.indices + rows.start)
    ranges = np.vstack((low, high))

    q_codes = torch.from_numpy(quantize_embeddings(queries, "int8", ranges=ranges)).float()
    q_bits = quantize_embeddings(queries, "ubinary")
    n = len(corpus)
    int8_top, binary_top = _RunningTop(r), _RunningTop(r)
    for rows in chunks:
        docs = mapped(rows)
        codes = torch.from_numpy(quantize_embeddings(docs, "int8", ranges=ranges))
        keys = _tie_key(_int_dot(q_codes, codes), torch.arange(rows.start, rows.start + len(docs)), n)
        top = keys.topk(min(r, len(docs)), dim=1)
        int8_top.add(top.values, top.indices + rows.start, codes[top.indices])
        keys, local = _hamming_top(q_bits, quantize_embeddings(docs, "ubinary"), r, rows.start, n)
        binary_top.add(keys, local + rows.start, codes[local])

    tops = {"float32": _sorted(float_top.values.double().numpy(), float_top.index.numpy())[:, :TOP_K]}
    for precision, top in (("int8", int8_top), ("binary", binary_top)):
        tops[precision] = top.index[:, :TOP_K].numpy()        # keys are unique, so already in final order
        tops[variant(precision, True)] = _rescored(queries, top.payload.numpy(), top.index.numpy(), ranges)[:, :TOP_K]
    return tops


def _unit(vectors: np.ndarray | torch.Tensor) -> np.ndarray:
    """Rows scaled to unit length (cosine search), as float32."""
    return F.normalize(torch.from_numpy(np.array(vectors, dtype=np.float32)), dim=-1).numpy()


def _dequantize(codes: np.ndarray, ranges: np.ndarray) -> np.ndarray:
    """int8 codes back in the float query's coordinates (ST's rule for rescoring int8 candidates)."""
    ranges = ranges.astype(np.float32, copy=False)
    steps = (ranges[1] - ranges[0]) / 255
    steps = np.where(steps == 0, 1, steps)
    return (codes.astype(np.float64) + 128) * steps + ranges[0]


def _rescored(queries: np.ndarray, codes: np.ndarray, index: np.ndarray, ranges: np.ndarray) -> np.ndarray:
    """``index [queries, r]`` reordered by the float query against its candidates' dequantized int8 ``codes
    [queries, r, k]``, in blocks of queries so the float64 candidates never exceed ``RESCORE_BLOCK * r * k``."""
    scores = np.empty(index.shape, dtype=np.float64)
    for s in range(0, len(queries), RESCORE_BLOCK):
        block = slice(s, s + RESCORE_BLOCK)
        scores[block] = np.einsum("ij,ikj->ik", queries[block], _dequantize(codes[block], ranges))
    return _sorted(scores, index)


def _int_dot(queries: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Exact inner products ``[queries, block]`` (int64) of int8 vectors (``queries`` as float32) by float32 BLAS
    products over slices of at most ``EXACT_WIDTH`` dimensions (CPU ``torch._int_mm`` is over ten times slower):
    every partial sum of up to 1024 int8 products is an integer of magnitude at most 2**24, which float32 holds
    exactly; the slices' integer results are then summed in int64."""
    total = torch.zeros(len(queries), len(codes), dtype=torch.int64)
    for s in range(0, codes.shape[1], EXACT_WIDTH):
        total += (queries[:, s:s + EXACT_WIDTH] @ codes[:, s:s + EXACT_WIDTH].float().T).to(torch.int64)
    return total


def _hamming_top(q_bits: np.ndarray, bits: np.ndarray, k: int, offset: int, n_rows: int
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` nearest of one block of packed sign bits by Hamming distance (FAISS ``IndexBinaryFlat``,
    popcount): their :func:`_tie_key` keys and block-local rows ``[queries, k]``. FAISS breaks ties by the lower
    id, so the block's best ``k`` are the ones the unique keys would pick (padding bits are 0 on both sides)."""
    index = faiss.IndexBinaryFlat(8 * bits.shape[1])
    index.add(np.ascontiguousarray(bits))
    distances, local = index.search(np.ascontiguousarray(q_bits), min(k, len(bits)))
    local = torch.from_numpy(local)
    return _tie_key(-torch.from_numpy(distances).to(torch.int64), local + offset, n_rows), local


def _tie_key(scores: torch.Tensor, rows: torch.Tensor, n_rows: int) -> torch.Tensor:
    """Integer ``scores`` of corpus ``rows`` (broadcastable) as unique int64 keys: higher score first, then the
    lower row."""
    return scores.to(torch.int64) * n_rows + (n_rows - 1 - rows)


def _sorted(scores: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``index [queries, r]`` reordered by score (descending), ties to the lower row."""
    order = np.lexsort((index, -scores), axis=1)
    return np.take_along_axis(index, order, axis=1)


class _RunningTop:
    """The ``k`` best candidates per query over streamed blocks, with an optional per-candidate payload (int8
    codes)."""

    def __init__(self, k: int) -> None:
        self.k = k
        self.values: torch.Tensor | None = None
        self.index: torch.Tensor | None = None
        self.payload: torch.Tensor | None = None

    def add(self, values: torch.Tensor, index: torch.Tensor, payload: torch.Tensor | None = None) -> None:
        """Merge one block's candidates: ``values`` and corpus rows ``index [queries, m]``, ``payload [queries,
        m, ...]``."""
        if self.values is not None:
            values, index = torch.cat([self.values, values], 1), torch.cat([self.index, index], 1)
            payload = None if payload is None else torch.cat([self.payload, payload], 1)
        keep = values.topk(min(self.k, values.shape[1]), dim=1).indices
        self.values, self.index = values.gather(1, keep), index.gather(1, keep)
        self.payload = None if payload is None else payload[torch.arange(len(keep))[:, None], keep]


# -- reading grids: cells, the Pareto front, the best cell per byte budget ------------------------------------


@dataclass(frozen=True)
class Cell:
    """One scored (method, precision, dim, rescored) search and its bytes per vector."""

    method: str
    precision: str
    dim: int
    rescored: bool
    ndcg: float
    index_bytes: int
    total_bytes: int

    def nbytes(self, bytes_key: str) -> int:
        if bytes_key not in BYTES_KEYS:
            raise ValueError(f"bytes_key must be one of {BYTES_KEYS}, got {bytes_key!r}")
        return getattr(self, bytes_key)


def cells(section: Mapping) -> list[Cell]:
    """Every cell of a ``report["precision_grid"]`` section (plain and rescored searches are separate cells;
    a plain search's ``total_bytes`` is its index)."""
    out = []
    for method, by_precision in section["methods"].items():
        for precision, by_dim in by_precision.items():
            for dim, entry in by_dim.items():
                out.append(Cell(method, precision, int(dim), False, float(entry["ndcg@10"]),
                                int(entry["index_bytes"]), int(entry["index_bytes"])))
                if "ndcg@10_rescored" in entry:
                    out.append(Cell(method, precision, int(dim), True, float(entry["ndcg@10_rescored"]),
                                    int(entry["index_bytes"]), int(entry["total_bytes"])))
    return out


def pareto_front(points: Sequence[Cell], bytes_key: str = "index_bytes") -> list[Cell]:
    """The non-dominated cells (no other is as good in fewer or equal bytes), by bytes ascending; of cells
    with the same bytes and score only the first is kept."""
    ranked = sorted(points, key=lambda c: (c.nbytes(bytes_key), -c.ndcg))
    front, best = [], -math.inf
    for cell in ranked:
        if cell.ndcg > best:
            front.append(cell)
            best = cell.ndcg
    return front


def best_per_budget(points: Sequence[Cell], budgets: Sequence[int] = DEFAULT_BUDGETS,
                    bytes_key: str = "index_bytes") -> list[tuple[int, Cell | None]]:
    """For each byte budget the best cell whose ``bytes_key`` fits in it (``None`` if none does); ties go to
    fewer bytes, then to the plain search."""
    rows = []
    for budget in budgets:
        fits = [c for c in points if c.nbytes(bytes_key) <= budget]
        best = max(fits, key=lambda c: (c.ndcg, -c.index_bytes, -c.total_bytes, not c.rescored), default=None)
        rows.append((int(budget), best))
    return rows


def budget_markdown(rows: Sequence[tuple[int, Cell | None]], bytes_key: str = "index_bytes") -> str:
    """:func:`best_per_budget` as a markdown table."""
    header = "bytes per vector (index)" if bytes_key == "index_bytes" else "bytes per vector (index + rescoring)"
    lines = [f"| {header} | method | precision | dim | rescored | nDCG@10 | index bytes | total bytes |",
             "|---:|---|---|---:|---|---:|---:|---:|"]
    for budget, cell in rows:
        if cell is None:
            lines.append(f"| {budget} | (nothing fits) | | | | | | |")
        else:
            lines.append(f"| {budget} | {cell.method} | {cell.precision} | {cell.dim} | "
                         f"{'int8' if cell.rescored else 'no'} | {cell.ndcg:.4f} | "
                         f"{cell.index_bytes} | {cell.total_bytes} |")
    return "\n".join(lines)


def _mean(scores: Mapping[str, float]) -> float:
    return float(np.mean(list(scores.values())))
