"""Exact k-sparse code assignment by min-cost flow (Deep Hash Table, ICML 2018)."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._arrays import origin_of, to_numpy
from .._checks import as_float_array, as_index_array, check_int, check_nonnegative, check_rank

__all__ = ["solve_sparse_codes", "sparse_code_objective"]

_SHAPES = "(n, d) or batched (B, n, d)"


def _scores(scores: Any) -> np.ndarray:
    s = to_numpy(scores, allow_device_copy=True)
    check_rank(s, "scores", (2, 3), _SHAPES)
    return np.ascontiguousarray(as_float_array(s, "scores", dtype=np.float64))


def _increments(n: int, penalty: Any, bucket_costs: Any) -> np.ndarray:
    """incr[c]: the cost of the (c + 1)-th class in one bucket, c = 0..n-1 (at least one entry)."""
    length = max(n, 1)
    if bucket_costs is None:
        penalty = check_nonnegative(penalty, "penalty")
        return penalty * np.arange(length, dtype=np.float64)
    if penalty != 1.0:
        raise ValueError(
            "pass either penalty or bucket_costs, not both (bucket_costs replaces the "
            "penalty * c schedule)"
        )
    incr = to_numpy(bucket_costs, allow_device_copy=True)
    check_rank(incr, "bucket_costs", (1,), "(L,) with L >= n")
    incr = as_float_array(incr, "bucket_costs", dtype=np.float64)
    if incr.shape[0] < n:
        raise ValueError(
            f"bucket_costs has {incr.shape[0]} entries but a bucket can hold up to n = {n} "
            f"classes; give at least {n} (entry c is the cost of the (c + 1)-th class)"
        )
    drops = np.flatnonzero(np.diff(incr) < 0)
    if drops.size:
        c = int(drops[0]) + 1
        raise ValueError(
            "bucket_costs must be non-decreasing (a convex cost per bucket); entry "
            f"{c} ({incr[c]}) is smaller than entry {c - 1} ({incr[c - 1]})"
        )
    if incr.shape[0] == 0:
        return np.zeros(1)
    return np.ascontiguousarray(incr[:length])


def solve_sparse_codes(
    scores: Any, k: int, penalty: float = 1.0, *, bucket_costs: Any = None
) -> Any:
    """Exact k-sparse codes of ``n`` classes over ``d`` buckets, by min-cost flow.

    Minimises, over codes with exactly ``k`` distinct buckets per class::

        - sum_i sum_{r in codes[i]} scores[i, r]  +  sum_r F(c_r),
        F(c) = penalty * c (c - 1) / 2,   c_r = number of classes in bucket r

    i.e. every pair of classes that share a bucket pays ``penalty``. With ``bucket_costs``
    (shape ``(L,)``, ``L >= n``, non-decreasing) the bucket cost is any convex
    ``F(c) = bucket_costs[0] + ... + bucket_costs[c - 1]`` instead.

    Parameters
    ----------
    scores : array ``(n, d)`` or batched ``(B, n, d)``
        numpy array or torch tensor; float32/float64 (integer and bool input is cast). A tensor
        that requires grad is detached: codes carry no gradient.
    k : int
        Buckets per class, ``1 <= k <= d``.
    penalty : float
        ``>= 0``; the cost of each pair of classes sharing a bucket.
    bucket_costs : array ``(L,)``, optional
        Convex per-bucket schedule: entry ``c`` is the cost of the ``(c + 1)``-th class in a
        bucket. Replaces ``penalty``.

    Returns
    -------
    codes : int64 ``(n, k)`` or ``(B, n, k)``, each row sorted ascending, in the caller's array
        library and on the caller's device. Batched problems are solved in parallel and each
        equals its own unbatched solve.

    Notes
    -----
    The solver is successive shortest paths specialised to this bipartite network (see
    ``qkernels/flow/_cpu.py``). It computes in float64: integer-valued scores, penalty and
    bucket costs (below 2**50 in magnitude) give the exact optimum; for other floats the
    objective is optimal up to float64 rounding in the shortest-path potentials, about
    ``1e-15 * n * k * (max |scores| + max bucket cost)``. The result is deterministic, the same
    on every run and thread count.
    """
    from . import _cpu

    origin = origin_of(scores, names=("scores",))
    s = _scores(scores)
    n, d = s.shape[-2:]
    if d == 0:
        raise ValueError("scores has d = 0 buckets; need at least k >= 1 of them")
    k = check_int(k, "k", 1, d)
    incr = _increments(n, penalty, bucket_costs)
    codes = np.empty((*s.shape[:-1], k), dtype=np.int64)
    if s.ndim == 2:
        _cpu.solve_one(s, k, incr, codes)
    elif s.shape[0] > 0:
        _cpu.solve_batch(s, k, incr, codes)
    return origin.wrap(codes)


def sparse_code_objective(
    scores: Any, codes: Any, penalty: float = 1.0, *, bucket_costs: Any = None
) -> Any:
    """The objective ``solve_sparse_codes`` minimises, for given codes.

    ``-sum_i sum_{r in codes[i]} scores[i, r] + sum_r F(c_r)`` with ``F`` as in
    :func:`solve_sparse_codes`. ``codes`` is ``(n, k)`` (or ``(B, n, k)``) with distinct
    buckets per row. Returns a float, or a ``(B,)`` float64 array for a batch (the caller's
    array type).
    """
    origin = origin_of(scores, codes, names=("scores", "codes"))
    s = _scores(scores)
    c = to_numpy(codes, allow_device_copy=True)
    check_rank(c, "codes", (s.ndim,), "(n, k)" if s.ndim == 2 else "(B, n, k)")
    if c.shape[:-1] != s.shape[:-1]:
        raise ValueError(
            f"codes has shape {tuple(c.shape)} but scores has shape {tuple(s.shape)}; "
            f"codes must be {tuple(s.shape[:-1])} + (k,)"
        )
    n, d = s.shape[-2:]
    c = as_index_array(c, "codes", d)
    if c.shape[-1] > 1:
        ordered = np.sort(c, axis=-1)
        if (ordered[..., 1:] == ordered[..., :-1]).any():
            raise ValueError("codes must hold distinct buckets in each row")
    incr = _increments(n, penalty, bucket_costs)
    # F(c) for c = 0..n: cumulative sum of the increments
    cumulative = np.concatenate(([0.0], np.cumsum(incr)))
    batch = s.reshape(s.shape[0] if s.ndim == 3 else 1, n, d)
    cb = c.reshape(batch.shape[0], n, c.shape[-1])
    values = np.empty(batch.shape[0])
    for b in range(batch.shape[0]):
        gained = np.take_along_axis(batch[b], cb[b], axis=1).sum()
        occupancy = np.bincount(cb[b].ravel(), minlength=d)
        values[b] = cumulative[occupancy].sum() - gained
    if s.ndim == 2:
        return float(values[0])
    return origin.wrap(values)
