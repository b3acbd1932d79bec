"""Evaluation helpers shared by the code methods: Hamming ranking with the H2Q tie-break."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import qkernels as qk

__all__ = ["PRECISION_KS", "hamming_ranking", "map_k", "normalised", "table_cells",
           "table_columns", "table_metrics", "timed"]

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
