"""Evaluation helpers shared by the code methods: Hamming ranking with the H2Q tie-break."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import qkernels as qk

__all__ = ["PRECISION_KS", "hamming_keys", "hamming_ranking", "map_k", "matched_precision",
           "normalised", "ranked", "ranking_pr", "squared_l2_keys", "table_cells", "table_columns",
           "table_metrics", "timed"]

# the K of the DHT papers' tables: precision@K, and the search speed-up factor of that search
PRECISION_KS = (1, 4, 16)


def timed(fn: Callable[[], Any], repeat: int = 5) -> tuple[Any, float]:
    """``fn()``'s result and its median time in seconds over ``repeat`` calls, after one call
    that warms it up (table build, kernel loading)."""
    result = fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return result, statistics.median(times)


def table_metrics(table, search: Callable[[int], Any], db_labels: np.ndarray,
                  query_labels: np.ndarray, db_codes: np.ndarray) -> dict[str, float]:
    """A hash table evaluated by the DHT papers' protocol: one search per K in
    :data:`PRECISION_KS`, with the expansion rule applied for that K (a query takes its own
    buckets, then its next-ranked ones while it has fewer than K candidates), giving P@K and the
    SUF of that search, ``SUF@K``; NMI of the database codes; the median time of the K = 16
    search. The queries are not in the database, so the SUF divides by its size."""
    row: dict[str, float] = {}
    for K in PRECISION_KS:
        (_, I), seconds = timed(lambda K=K: search(K), repeat=5 if K == PRECISION_KS[-1] else 1)
        row[f"SUF@{K}"] = qk.metrics.search_speedup(table.candidate_counts, len(db_labels))
        row[f"P@{K}"] = qk.metrics.precision_at_k(I, db_labels, query_labels, K)
    row["NMI"] = qk.metrics.nmi(db_codes, db_labels)
    row["search_s"] = seconds
    return row


def table_columns(first: str) -> list[str]:
    """The header of a report of :func:`table_metrics` rows."""
    return [first, *[f"{m}@{K}" for K in PRECISION_KS for m in ("SUF", "P")], "NMI",
            "search ms"]


def table_cells(row: dict) -> list[str]:
    """One :func:`table_metrics` row as the cells of :func:`table_columns`."""
    cells = [row["method"]]
    for K in PRECISION_KS:
        cells += [f"{row[f'SUF@{K}']:.2f}", f"{row[f'P@{K}']:.3f}"]
    return [*cells, f"{row['NMI']:.3f}", f"{row['search_s'] * 1e3:.2f}"]


def normalised(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.where(norms > 0, norms, 1)).astype(np.float32)


def map_k(args, db_size: int) -> int:
    return min(db_size, args.map_k or 1000)


def hamming_ranking(db_codes, q_codes, db_features, q_features, k: int) -> np.ndarray:
    """Top-k database rows by Hamming distance, ties broken by Euclidean distance between the
    normalised continuous features (the H2Q evaluation rule)."""
    _, I = qk.hamming_topk(q_codes, db_codes, k,
                           tiebreak=(normalised(q_features), normalised(db_features)))
    return I


# PR curves rank the whole database for at most this many queries (a seeded sample): the
# curve of 10,000 queries x 60,000 items would cost a full sort per query for little change
PR_QUERIES = 1000


def ranking_pr(keys: Callable[[np.ndarray], np.ndarray], q_labels: np.ndarray,
               db_labels: np.ndarray, seed: int = 0, chunk: int = 256) -> dict[str, list]:
    """The precision-recall curve of ranking the whole database by ``keys(query_rows)`` (a
    ``(len(rows), N)`` array, smaller first; equal keys by lower index), at about 70 cutoffs
    from 1 to N, over at most :data:`PR_QUERIES` queries: ``{"precision", "recall",
    "cutoffs"}`` (qkernels.metrics.precision_recall_curve, CalcTopMapWithPR's rule)."""
    n = len(db_labels)
    rows = np.arange(len(q_labels))
    if len(rows) > PR_QUERIES:
        rows = np.sort(np.random.default_rng(seed).choice(rows, PR_QUERIES, replace=False))
    cutoffs = np.unique(np.concatenate([np.geomspace(1, n, 30), np.linspace(1, n, 40)])
                        .round().astype(np.int64))
    precision, recall = np.zeros(len(cutoffs)), np.zeros(len(cutoffs))
    counted = 0
    for part, I in _rankings(keys, rows, None, chunk):
        weight = int(np.isin(q_labels[part], db_labels).sum())  # queries with relevant items
        if weight:
            p, r = qk.metrics.precision_recall_curve(I, db_labels, q_labels[part], cutoffs)
            precision += weight * p
            recall += weight * r
            counted += weight
    counted = max(counted, 1)
    return {"precision": (precision / counted).tolist(), "recall": (recall / counted).tolist(),
            "cutoffs": cutoffs.tolist()}


def ranked(keys: Callable[[np.ndarray], np.ndarray], num_queries: int, k: int,
           chunk: int = 256) -> np.ndarray:
    """The top ``k`` database rows by ``keys`` (smaller first, equal keys by lower index) for
    every query, a chunk of queries at a time (an exhaustive reference ranking; the whole
    ``(Q, N)`` matrix of 10,000 x 60,000 would take gigabytes)."""
    out = [I for _, I in _rankings(keys, np.arange(num_queries), k, chunk)]
    return np.concatenate(out) if out else np.zeros((0, k), dtype=np.int64)


def _rankings(keys, rows: np.ndarray, k: int | None, chunk: int):
    """``(rows of a chunk, their first k database rows by keys)`` chunk by chunk (every row of
    the database when k is None): one stable sort per chunk, equal keys by lower index."""
    for start in range(0, len(rows), chunk):
        part = rows[start : start + chunk]
        yield part, np.argsort(keys(part), axis=1, kind="stable")[:, :k]


def squared_l2_keys(queries: np.ndarray, db: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """Squared Euclidean distances of query rows to every database vector (float32 BLAS: a
    curve's ranking, not a search result)."""
    db32 = np.ascontiguousarray(db, dtype=np.float32)
    norms = (db32 * db32).sum(axis=1)
    q32 = np.ascontiguousarray(queries, dtype=np.float32)
    return lambda rows: norms[None, :] - 2 * q32[rows] @ db32.T


def hamming_keys(db_codes, q_codes, nbits: int, db_features, q_features):
    """Hamming distance with the Euclidean tie-break of :func:`hamming_ranking` as one key:
    ``4 * hamming + ||a - b||`` of the normalised features (which lies in [0, 2])."""
    signs = lambda c: 2 * np.asarray(qk.unpack_bits(c, nbits), np.float32) - 1  # noqa: E731
    db_s, q_s = signs(db_codes), signs(q_codes)  # +-1: products are exact integers in float32
    db_f, q_f = normalised(db_features), normalised(q_features)

    def keys(rows):
        hamming = (nbits - q_s[rows] @ db_s.T) / 2
        cos = q_f[rows] @ db_f.T
        return 4 * np.rint(hamming) + np.sqrt(np.maximum(2 - 2 * cos, 0))

    return keys


def matched_precision(curves: dict[str, list[dict]], reference: str, suf: str,
                      metric: str) -> list[dict]:
    """The comparison at matched speed-up: for each point of ``reference``'s curve, every other
    method's ``metric`` at the same ``suf``, interpolated linearly in log(SUF) between the two
    points of its curve around it (None outside its curve: no extrapolation)."""
    out = []
    for point in curves[reference]:
        row = {"k": point["k"], suf: point[suf], reference: point[metric]}
        for name, rows in curves.items():
            if name == reference:
                continue
            xs = np.log([r[suf] for r in rows])
            ys = np.array([r[metric] for r in rows])
            order = np.argsort(xs)
            xs, ys = xs[order], ys[order]
            x = np.log(point[suf])
            row[name] = (float(np.interp(x, xs, ys)) if len(xs) and xs[0] <= x <= xs[-1]
                         else None)
        out.append(row)
    return out
