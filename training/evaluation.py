"""Evaluation helpers shared by the code methods: Hamming ranking with the H2Q tie-break."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import qkernels as qk

__all__ = ["hamming_ranking", "map_k", "normalised", "timed"]


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
