"""Synthetic embedding caches of any size, written chunk by chunk into a memory-mapped .npy.

:func:`write_synthetic_cache`: random unit vectors. The figures measured on it (throughput, memory, search
time, index bytes) depend on the sizes, not on what the vectors mean. Each query is a noisy copy of one
document, its only positive.

:func:`write_structured_set`: vectors with structure (clusters, sub-topics, a power-law spectrum, queries a
distorted noisy view of their positives, some with graded positives), plus the BEIR folder that ``smec train``
reads beside them; what ``python -m benchmarks.scale`` trains on, so that early stopping and do no harm see
something like real data. Measured with the package's scorer (:func:`structure_figures`: test nDCG@10,
seed 0, default :class:`Structure`, D 1024, 1,000 test queries; 2026-12-08):

    N        frozen 1024 | PCA 256 / 128 / 64 / 32       | truncation 256 / 128 / 64 / 32
    20,000   0.706       | 0.704 / 0.705 / 0.553 / 0.354 | 0.559 / 0.405 / 0.211 / 0.066
    50,000   0.680       | 0.680 / 0.681 / 0.449 / 0.205 | 0.514 / 0.327 / 0.153 / 0.051

The frozen score stays put as N grows (clusters keep 200 documents), the small dims lose more (more clusters
to tell apart). Without the query-side distortions (nuisance 0, gain_spread 0, query_offset 0) the same
20k set scores 0.783 frozen and 0.629 with PCA 64: the headroom a head that undoes them can reach.
(5,000 x 128, 400 test queries, as in tests/test_scale_bench.py: frozen 0.709, PCA 64 / 32 0.571 / 0.378.)
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from smec_hf.data import EmbeddingCache

CHUNK_ROWS = 65536


def write_synthetic_cache(path: Path, n_docs: int, dim: int, n_queries: int, seed: int = 0
                          ) -> tuple[EmbeddingCache, dict[str, dict[str, int]]]:
    """Write ``path`` as an :class:`EmbeddingCache` folder without ever holding the corpus in memory."""
    path.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    corpus = np.lib.format.open_memmap(path / "corpus.npy", mode="w+", dtype=np.float32, shape=(n_docs, dim))
    for start in range(0, n_docs, CHUNK_ROWS):
        rows = min(CHUNK_ROWS, n_docs - start)
        corpus[start:start + rows] = F.normalize(torch.randn(rows, dim, generator=generator), dim=1).numpy()
    corpus.flush()
    positives = torch.randperm(n_docs, generator=generator)[:n_queries].sort().values
    source = torch.from_numpy(np.asarray(corpus[positives.numpy()]))
    queries = F.normalize(source + 0.5 * torch.randn(n_queries, dim, generator=generator) / dim**0.5, dim=1)
    np.save(path / "queries.npy", queries.numpy())
    del corpus
    doc_ids = [f"d{i}" for i in range(n_docs)]
    query_ids = [f"q{i}" for i in range(n_queries)]
    (path / "ids.json").write_text(json.dumps({"corpus": doc_ids, "queries": query_ids}))
    (path / "meta.json").write_text(json.dumps({"dim": dim, "key": f"synthetic-{n_docs}x{dim}-{seed}",
                                                "encoder": "synthetic (random unit vectors)"}))
    qrels = {q: {doc_ids[int(p)]: 1} for q, p in zip(query_ids, positives)}
    return EmbeddingCache.load(path), qrels


# --- structured sets: what `python -m benchmarks.scale` trains on -------------------------------------------------

STRUCTURED_FORMAT = 1


@dataclass(frozen=True)
class Structure:
    """The latent model of :func:`write_structured_set` (see its docstring); every field is part of the set's key."""

    rank: int = 128                 # latent dimensions (a random orthonormal basis maps them into ``dim``)
    decay: float = 0.3              # latent j's scale is (j + 1) ** -decay: a power-law spectrum
    docs_per_cluster: int = 200     # clusters (topics) keep this many documents whatever N is
    family: int = 3                 # consecutive documents sharing a sub-topic (the graded positives' source)
    family_scale: float = 0.7       # sub-topic deviation from the cluster centre (times the spectrum)
    doc_scale: float = 0.9          # a document's own deviation from its sub-topic (times the spectrum)
    doc_noise: float = 0.02         # isotropic noise energy in documents, relative to the latent's
    nuisance: float = 0.1           # share of latent dims that queries do not share (document style)
    gain_spread: float = 0.3        # log-normal spread of the query side's per-dim gain
    query_offset: float = 0.3       # a fixed query-style direction in the latent space (relative norm)
    query_noise: float = 2.8        # query latent noise: its energy relative to a cluster centre's
    noise_tilt: float = 0.0         # its scale per latent dim ~ spectrum ** tilt (0: isotropic, so the frozen
    #                                 cosine is the right score but for the distortions; 1: whitening would win)
    query_iso_noise: float = 0.02   # isotropic noise energy in queries, relative to the latent's
    multi_positive: float = 0.3     # share of queries judging their whole sub-topic (grade 2 + grade 1s)
    family_focus: float = 0.3       # such a query keeps this much of its primary document's own deviation


def effective(structure: Structure, dim: int) -> Structure:
    """``structure`` with its rank capped at ``dim`` (small test sets)."""
    return replace(structure, rank=min(structure.rank, dim))


def structured_key(n_docs: int, dim: int, n_train: int, n_test: int, seed: int, structure: Structure) -> dict:
    structure = effective(structure, dim)
    return {"format": STRUCTURED_FORMAT, "docs": n_docs, "dim": dim, "train_queries": n_train,
            "test_queries": n_test, "seed": seed, "structure": asdict(structure)}


def write_structured_set(path: Path, n_docs: int, dim: int, n_train: int, n_test: int, seed: int = 0,
                         structure: Structure = Structure(), chunk_rows: int = CHUNK_ROWS) -> dict:
    """A synthetic retrieval set with structure: ``path/cache`` (an :class:`EmbeddingCache` folder) and
    ``path/beir`` (corpus.jsonl, queries.jsonl, qrels/train.tsv, qrels/test.tsv with the same ids), for
    ``smec train --data path/beir --embeddings path/cache``. The corpus is written chunk by chunk into a
    memory-mapped .npy and never held in memory (at 1M x 1024: 4 GB on disk, ~0.5 GB of RAM at peak).

    Documents: ``normalize(B z + noise)`` with ``B`` a random orthonormal ``dim x rank`` basis, ``z`` = cluster
    centre + sub-topic deviation + own deviation, all with the power-law scale ``(j+1)^-decay`` per latent dim,
    so that PCA to few dims loses information gradually (and prefix truncation, in a random basis, more).
    Clusters keep ``docs_per_cluster`` documents at every N, so the difficulty near a query barely moves with N.
    Queries: a noisy, transformed view of their positive's latent: a fixed per-dim gain (log-normal), a fixed
    query-style offset, fresh values in the ``nuisance`` dims (high corpus variance, no relevance: PCA keeps
    them, a trained head can learn to drop them), latent and isotropic noise. A ``multi_positive`` share of
    queries is about a whole sub-topic: its primary document has grade 2, its siblings grade 1.
    Deterministic given the arguments (and ``chunk_rows``); returns the key written to ``path/set.json``.
    """
    s = effective(structure, dim)
    if n_train + n_test > n_docs // s.family:
        raise ValueError(f"{n_train + n_test} queries need as many sub-topics; {n_docs} documents have "
                         f"{n_docs // s.family}")
    chunk_rows -= chunk_rows % s.family
    key = structured_key(n_docs, dim, n_train, n_test, seed, s)
    cache_dir, beir = path / "cache", path / "beir"
    cache_dir.mkdir(parents=True, exist_ok=True)
    (beir / "qrels").mkdir(parents=True, exist_ok=True)
    (path / "set.json").unlink(missing_ok=True)     # written last: its presence means the set is complete

    g = torch.Generator().manual_seed(seed)
    spectrum = (torch.arange(s.rank, dtype=torch.float64) + 1) ** -s.decay
    spectrum = (spectrum / spectrum.norm()).float()                       # E|z_centre|^2 = 1
    basis = torch.linalg.qr(torch.randn(dim, s.rank, generator=g, dtype=torch.float64))[0].float()  # dim x rank
    n_families = -(-n_docs // s.family)
    n_clusters = max(1, n_docs // s.docs_per_cluster)
    centres = torch.randn(n_clusters, s.rank, generator=g) * spectrum
    family_cluster = torch.randint(n_clusters, (n_families,), generator=g)
    latent_energy = 1 + s.family_scale ** 2 + s.doc_scale ** 2
    gains = torch.exp(s.gain_spread * torch.randn(s.rank, generator=g))
    nuisance = torch.zeros(s.rank, dtype=torch.bool)
    nuisance[torch.randperm(s.rank, generator=g)[:round(s.nuisance * s.rank)]] = True
    offset = torch.randn(s.rank, generator=g) * spectrum
    offset *= s.query_offset * latent_energy ** 0.5 / offset.norm()

    n_queries = n_train + n_test
    full_families = n_docs // s.family                                    # a query's sub-topic is never cut short
    query_family = torch.randperm(full_families, generator=g)[:n_queries]
    primary = query_family * s.family + torch.randint(s.family, (n_queries,), generator=g)
    multi = torch.rand(n_queries, generator=g) < s.multi_positive
    order = primary.argsort()
    query_latent = torch.empty(n_queries, s.rank)

    corpus = np.lib.format.open_memmap(cache_dir / "corpus.npy", mode="w+", dtype=np.float32, shape=(n_docs, dim))
    for number, start in enumerate(range(0, n_docs, chunk_rows)):
        rows = min(chunk_rows, n_docs - start)
        cg = torch.Generator().manual_seed(seed * 1_000_003 + number + 1)
        first_family = start // s.family
        families = torch.arange(start, start + rows) // s.family
        family_dev = torch.randn(-(-rows // s.family), s.rank, generator=cg) * spectrum * s.family_scale
        topic = centres[family_cluster[families]] + family_dev[families - first_family]
        own = torch.randn(rows, s.rank, generator=cg) * spectrum * s.doc_scale
        noise = torch.randn(rows, dim, generator=cg) * (s.doc_noise * latent_energy / dim) ** 0.5
        corpus[start:start + rows] = F.normalize((topic + own) @ basis.T + noise, dim=1).numpy()
        lo, hi = np.searchsorted(primary[order].numpy(), [start, start + rows])
        picked = order[lo:hi]
        local = primary[picked] - start
        own_weight = torch.where(multi[picked], s.family_focus, 1.0)[:, None]
        query_latent[picked] = topic[local] + own_weight * own[local]
    corpus.flush()
    del corpus

    qg = torch.Generator().manual_seed(seed * 1_000_003)
    q = query_latent * gains
    q[:, nuisance] = (torch.randn(n_queries, int(nuisance.sum()), generator=qg) * spectrum[nuisance]
                      * latent_energy ** 0.5)
    tilt = spectrum ** s.noise_tilt
    q += torch.randn(n_queries, s.rank, generator=qg) * tilt / tilt.norm() * s.query_noise + offset
    q = q @ basis.T + torch.randn(n_queries, dim, generator=qg) * (s.query_iso_noise * latent_energy / dim) ** 0.5
    np.save(cache_dir / "queries.npy", F.normalize(q, dim=1).numpy())

    doc_ids = [f"d{i}" for i in range(n_docs)]
    query_ids = [f"q{i}" for i in range(n_queries)]
    (cache_dir / "ids.json").write_text(json.dumps({"corpus": doc_ids, "queries": query_ids}))
    (cache_dir / "meta.json").write_text(json.dumps({
        "dim": dim, "key": "structured-" + hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16],
        "encoder": "synthetic (structured: benchmarks.synthetic.write_structured_set)", "synthetic": key}))
    with (beir / "corpus.jsonl").open("w") as f:
        for start in range(0, n_docs, chunk_rows):
            f.write("".join(f'{{"_id": "d{i}", "text": "document {i}"}}\n'
                            for i in range(start, min(start + chunk_rows, n_docs))))
    with (beir / "queries.jsonl").open("w") as f:
        f.write("".join(f'{{"_id": "{q}", "text": "query {q[1:]}"}}\n' for q in query_ids))
    for split, rows in (("train", range(n_train)), ("test", range(n_train, n_queries))):
        with (beir / "qrels" / f"{split}.tsv").open("w") as f:
            f.write("query-id\tcorpus-id\tscore\n")
            for i in rows:
                p = int(primary[i])
                f.write(f"q{i}\td{p}\t{2 if multi[i] else 1}\n")
                if multi[i]:
                    f.writelines(f"q{i}\td{d}\t1\n" for d in range(p - p % s.family, p - p % s.family + s.family)
                                 if d != p)
    (path / "set.json").write_text(json.dumps(key, indent=1))
    return key


def load_structured_set(path: Path) -> tuple[EmbeddingCache, dict[str, dict[str, dict[str, int]]]]:
    """The cache and the qrels by split of a set written by :func:`write_structured_set`."""
    qrels: dict[str, dict[str, dict[str, int]]] = {}
    for split in ("train", "test"):
        lines = (path / "beir" / "qrels" / f"{split}.tsv").read_text().splitlines()[1:]
        for q, d, score in (line.split("\t") for line in lines):
            qrels.setdefault(split, {}).setdefault(q, {})[d] = int(score)
    return EmbeddingCache.load(path / "cache"), qrels


def structure_figures(path: Path, dims: tuple[int, ...] = (1024, 256, 128, 64, 32), split: str = "test") -> dict:
    """nDCG@10 of the frozen vectors, truncation and PCA at ``dims`` on a set's ``split`` (the package's scorer)."""
    from smec_hf.baselines.frozen import PCACompressor, TruncationCompressor
    from smec_hf.core.retrieval import ndcg_by_dim

    cache, qrels = load_structured_set(path)
    dims = tuple(d for d in dims if d <= cache.dim)
    pca = PCACompressor(dims).fit(cache)
    return {"frozen": ndcg_by_dim(TruncationCompressor(dims).transform, cache, qrels[split], dims[:1])[dims[0]],
            "pca": ndcg_by_dim(pca.transform, cache, qrels[split], dims),
            "truncation": ndcg_by_dim(TruncationCompressor(dims).transform, cache, qrels[split], dims)}
