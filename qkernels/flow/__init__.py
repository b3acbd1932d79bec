"""Exact k-sparse code assignment by min-cost flow (Deep Hash Table, ICML 2018)."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from .. import _gpu
from .._arrays import HOST, origin_of, to_cupy, to_numpy, torch_stream
from .._checks import (
    as_float_array,
    as_index_array,
    check_finite,
    check_int,
    check_nonnegative,
    check_rank,
)

__all__ = [
    "hierarchical_code_objective",
    "solve_hierarchical_codes",
    "solve_sparse_codes",
    "sparse_code_objective",
]

_SHAPES = "(n, d) or batched (B, n, d)"


def _scores(scores: Any, name: str = "scores") -> np.ndarray:
    s = to_numpy(scores, allow_device_copy=True)
    check_rank(s, name, (2, 3), _SHAPES)
    return np.ascontiguousarray(as_float_array(s, name, dtype=np.float64))


@functools.lru_cache(maxsize=64)
def _linear_increments(length: int, penalty: float) -> np.ndarray:
    """penalty * [0, 1, ..., length - 1], read-only: a training loop asks for the same one at
    every step, so it is made once."""
    incr = penalty * np.arange(length, dtype=np.float64)
    incr.setflags(write=False)
    return incr


def _increments(n: int, penalty: Any, bucket_costs: Any, name: str = "penalty") -> np.ndarray:
    """incr[c]: the cost of the (c + 1)-th class in one bucket, c = 0..n-1 (at least one entry)."""
    length = max(n, 1)
    if bucket_costs is None:
        return _linear_increments(length, check_nonnegative(penalty, name))
    if penalty != 1.0:
        raise ValueError(
            "pass either penalty or bucket_costs, not both (bucket_costs replaces the "
            "penalty * c schedule)"
        )
    incr = to_numpy(bucket_costs, allow_device_copy=True, name="bucket_costs")
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
    ``qkernels/flow/_flat_cpu.py``). It computes in float64: integer-valued scores, penalty and
    bucket costs (below 2**50 in magnitude) give the exact optimum; for other floats the
    objective is optimal up to float64 rounding in the shortest-path potentials, about
    ``1e-15 * n * k * (max |scores| + max bucket cost)``. The result is deterministic, the same
    on every run and thread count.

    Scores on a GPU (a torch CUDA tensor or a cupy array) are solved there, one CUDA block per
    problem, on torch's current stream (qkernels/cuda/flow.cu); without cupy they are solved on
    a host copy and the codes returned to the device.
    """
    from . import _flat_cpu

    if (type(scores) is np.ndarray and scores.dtype == np.float64 and scores.ndim in (2, 3)
            and scores.flags.c_contiguous and scores.flags.aligned):
        # the common call from a host loop: nothing to convert, and the kernel checks that the
        # scores are finite while it reads them (cold-cache Python here costs as much as a
        # small solve)
        origin, s = HOST, scores
    else:
        origin = origin_of(scores, names=("scores",))
        if origin.is_cuda and _gpu.available():
            return _solve_on_device(origin, scores, k, penalty, bucket_costs)
        s = _scores(scores)
    n, d = s.shape[-2:]
    if d == 0:
        raise ValueError("scores has d = 0 buckets; need at least k >= 1 of them")
    k = check_int(k, "k", 1, d)
    incr = _increments(n, penalty, bucket_costs)
    codes = np.empty((*s.shape[:-1], k), dtype=np.int64)
    if s.ndim == 2:
        finite = _flat_cpu.solve_one(s, k, incr, codes)
    else:
        finite = s.shape[0] == 0 or _flat_cpu.solve_batch(s, k, incr, codes)
    if not finite:
        check_finite(s, "scores")  # raises, naming the first NaN or Inf
    return origin.wrap(codes)


def _solve_on_device(origin, scores: Any, k: int, penalty: Any, bucket_costs: Any) -> Any:
    """solve_sparse_codes for GPU input: one CUDA block per problem, on torch's stream."""
    import cupy

    from . import _flat_gpu

    s = to_cupy(scores)
    check_rank(s, "scores", (2, 3), _SHAPES)
    s = cupy.ascontiguousarray(as_float_array(s, "scores", dtype=np.float64))
    n, d = s.shape[-2:]
    if d == 0:
        raise ValueError("scores has d = 0 buckets; need at least k >= 1 of them")
    k = check_int(k, "k", 1, d)
    with torch_stream(origin):
        incr = cupy.asarray(_increments(n, penalty, bucket_costs))
        batch = s.reshape(-1, n, d)
        codes = cupy.empty((batch.shape[0], n, k), dtype=cupy.int64)
        _flat_gpu.solve_batch(batch, k, incr, codes)
    return origin.wrap(codes.reshape(*s.shape[:-1], k))


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
    if d == 0:
        raise ValueError("scores has d = 0 buckets; need at least k >= 1 of them")
    if c.shape[-1] == 0:
        raise ValueError(f"codes has shape {tuple(c.shape)}: 0 buckets per class; k >= 1")
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


def _hierarchical_inputs(scores1: Any, scores2: Any):
    origin = origin_of(scores1, scores2, names=("scores1", "scores2"))
    s1, s2 = _scores(scores1, "scores1"), _scores(scores2, "scores2")
    for name, s in (("scores1", s1), ("scores2", s2)):
        check_rank(s, name, (s1.ndim,), _SHAPES)
        if s.shape[-1] == 0:
            raise ValueError(f"{name} has 0 buckets")
    if s1.shape[:-1] != s2.shape[:-1]:
        raise ValueError(f"scores1 {tuple(s1.shape)} and scores2 {tuple(s2.shape)} must have "
                         "the same batch and class dimensions")
    return origin, s1, s2


def solve_hierarchical_codes(scores1: Any, scores2: Any, k2: int, penalty_sibling: float = 100.0,
                             penalty_global: float = 1.0) -> tuple[Any, Any]:
    """Exact cascaded (two-level) codes of ``n`` classes (Jeong, Kim & Song, CVPR 2019).

    Level 1 is the DHT problem with one bucket per class and ``penalty_global``
    (:func:`solve_sparse_codes` with ``k = 1``): ``p(i)``, class i's parent bucket. Level 2 gives
    each class ``k2`` child buckets, minimising::

        - sum_i sum_{t in codes2[i]} scores2[i, t]
          + penalty_sibling * sum_p sum_t C(c_{p,t}, 2) + penalty_global * sum_t C(c_t, 2)

    where ``c_{p,t}`` counts the classes with parent ``p`` in child ``t`` (siblings kept apart;
    100 by default) and ``c_t`` all classes in child ``t``. Solved exactly by successive
    shortest paths on the level-2 network of the paper (class -> group (p, t) -> child ->
    sink, two convex costs), in Numba. A class's compound buckets are ``p(i) * d2 + t``.

    ``scores1`` ``(n, d1)`` and ``scores2`` ``(n, d2)``, or batched ``(B, n, d)``; numpy or
    torch. Returns ``(level1, level2)``: int64 ``(n,)`` and ``(n, k2)`` (rows sorted), the
    caller's array type. Exact for integer-valued input, like the flat solver.
    """
    from . import _hierarchical_cpu

    origin, s1, s2 = _hierarchical_inputs(scores1, scores2)
    n, d2 = s2.shape[-2:]
    k2 = check_int(k2, "k2", 1, d2)
    sibling = _increments(n, penalty_sibling, None, "penalty_sibling")
    glob = _increments(n, penalty_global, None, "penalty_global")
    level1 = solve_sparse_codes(s1, 1, penalty_global)[..., 0]
    level2 = np.empty((*s2.shape[:-1], k2), dtype=np.int64)
    parents = np.ascontiguousarray(level1)
    if s2.ndim == 2:
        _hierarchical_cpu.solve_level2(s2, parents, k2, sibling, glob, level2)
    elif s2.shape[0] > 0:
        _hierarchical_cpu.solve_level2_batch(s2, parents, k2, sibling, glob, level2)
    return origin.wrap(np.ascontiguousarray(level1)), origin.wrap(level2)


def hierarchical_code_objective(scores1: Any, scores2: Any, level1: Any, level2: Any,
                                penalty_sibling: float = 100.0, penalty_global: float = 1.0
                                ) -> tuple[Any, Any]:
    """The two objectives :func:`solve_hierarchical_codes` minimises, for given codes:
    level 1 (``sparse_code_objective`` with k = 1 and ``penalty_global``) and level 2 (its
    docstring's formula). Floats, or ``(B,)`` float64 arrays of the caller's type (numpy or
    torch) for a batch."""
    origin, s1, s2 = _hierarchical_inputs(scores1, scores2)
    l1 = to_numpy(level1, allow_device_copy=True)
    l2 = to_numpy(level2, allow_device_copy=True)
    check_rank(l1, "level1", (s1.ndim - 1,), "(n,) or (B, n)")
    first = sparse_code_objective(s1, np.ascontiguousarray(l1[..., None]), penalty_global)
    sibling = check_nonnegative(penalty_sibling, "penalty_sibling")
    d1, d2 = s1.shape[-1], s2.shape[-1]
    second = np.atleast_1d(sparse_code_objective(s2, l2, penalty_global))
    # the sibling term: penalty_sibling * C(c_{p,t}, 2) over compound buckets p * d2 + t
    compound = (as_index_array(l1, "level1", d1)[..., None] * d2
                + as_index_array(l2, "level2", d2))
    pairs = np.empty(second.size)
    for b, row in enumerate(compound.reshape(second.size, -1)):
        c = np.bincount(row, minlength=d1 * d2)
        pairs[b] = (c * (c - 1) // 2).sum()
    second = np.asarray(second, dtype=np.float64).reshape(-1) + sibling * pairs
    if s1.ndim == 2:
        return float(first), float(second[0])
    # s1 was converted to numpy above: both values go back as the caller's array type
    return origin.wrap(np.asarray(first, dtype=np.float64)), origin.wrap(second)
