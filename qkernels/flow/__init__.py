"""Exact k-sparse code assignment by min-cost flow (Deep Hash Table, ICML 2018)."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from .. import _gpu
from .._arrays import HOST, origin_of, read_only, to_cupy, to_numpy, torch_stream
from .._checks import (
    as_float_array,
    as_index_array,
    check_finite,
    check_int,
    check_nonnegative,
    check_rank,
)
from . import _flat_cpu, _hierarchical_cpu

# (the kernels' modules are imported here, not in the functions: an import statement in a
# function runs importlib's Python code on every call, ~2 us when the caches are cold, about a
# twentieth of a crowded 64-class solve)

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
        incr = np.zeros(1)
    # read-only, as the penalty's schedule: one compiled solver for both (``read_only``)
    return read_only(np.ascontiguousarray(incr[:length]))


def solve_sparse_codes(
    scores: Any, k: int, penalty: float = 1.0, *, bucket_costs: Any = None
) -> Any:
    """Exact k-sparse codes of ``n`` classes over ``d`` buckets, by min-cost flow.

    The code assignment of Deep Hash Table (Jeong & Song, ICML 2018, section 3): minimises,
    over codes with exactly ``k`` distinct buckets per class,

    .. math::

        -\\sum_i \\sum_{r \\in codes_i} scores_{i,r} + \\sum_r F(c_r), \\qquad
        F(c) = penalty \\cdot c (c - 1) / 2,

    where ``c_r`` is the number of classes in bucket ``r``: every pair of classes that share
    a bucket pays ``penalty``. With ``bucket_costs`` the bucket cost is any convex
    ``F(c) = bucket_costs[0] + ... + bucket_costs[c - 1]`` instead.

    Parameters
    ----------
    scores : array_like, shape (n, d) or (B, n, d)
        numpy array, torch tensor (CPU or CUDA) or cupy array; float32 or float64 (integer
        and bool input is cast). A tensor that requires grad is detached: codes carry no
        gradient. A batch of ``B`` problems is solved in parallel, each as if alone.
    k : int
        Buckets per class, ``1 <= k <= d``.
    penalty : float, default 1.0
        The cost of each pair of classes sharing a bucket, ``>= 0``.
    bucket_costs : array_like, shape (L,), optional
        A convex per-bucket schedule with ``L >= n`` non-decreasing entries: entry ``c`` is
        the cost of the ``(c + 1)``-th class in a bucket. Replaces ``penalty``.

    Returns
    -------
    codes : array of int64, shape (n, k) or (B, n, k)
        Each row sorted ascending; the caller's array library, on the caller's device.

    Raises
    ------
    ValueError
        If ``scores`` has another rank, an empty axis, NaN or Inf; if ``k`` is outside
        ``1..d``; if ``penalty`` is negative or not finite; if ``bucket_costs`` is shorter
        than ``n`` or decreases, or is given together with a ``penalty`` other than 1.
    TypeError
        If ``scores`` does not hold real numbers, is a Python list, or ``k`` is not an
        integer.

    See Also
    --------
    sparse_code_objective : the value this minimises, for any codes.
    qkernels.losses.assign_batch_codes : the codes of a training batch's classes.

    Notes
    -----
    The solver is successive shortest paths specialised to the bipartite class-by-bucket
    network: each class starts in its top ``k`` buckets and only the excess load moves, along
    shortest paths found by Dijkstra with potentials; where ``n * k >= d``, under-filled
    buckets first raise their potentials until enough classes prefer them (one auction step
    each, exact). It computes in float64:
    integer-valued scores, penalty and bucket costs (below ``2**50`` in magnitude) give the
    exact optimum; other floats are optimal up to float64 rounding in the potentials, about
    ``1e-15 * n * k * (max |scores| + max bucket cost)``. The result is deterministic: the
    same on every run and thread count.

    Scores on a GPU (a torch CUDA tensor or a cupy array) are solved there, one CUDA block per
    problem, on torch's current stream; without cupy they are solved on a host copy and the
    codes returned to the device.

    Examples
    --------
    >>> import numpy as np, qkernels as qk
    >>> scores = np.array([[3.0, 2.0, 0.0], [3.0, 1.0, 0.0]])
    >>> qk.solve_sparse_codes(scores, k=1, penalty=0.5)  # both want bucket 0: one pays
    array([[0],
           [0]])
    >>> qk.solve_sparse_codes(scores, k=1, penalty=2.5)  # sharing costs more than moving
    array([[1],
           [0]])
    """
    if (type(scores) is np.ndarray and scores.ndim == 2 and scores.dtype == np.float64
            and scores.flags.carray and type(k) is int and type(penalty) is float
            and bucket_costs is None and 0 < k <= scores.shape[1]):
        # the common call from a host loop in one dispatch (the kernel checks the penalty and
        # the scores; anything it does not accept takes the checked path below, which says
        # what is wrong)
        codes = np.empty((scores.shape[0], k), dtype=np.int64)
        if _flat_cpu.solve_linear(scores, k, penalty, codes):
            return codes
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
        batch = s.reshape(s.shape[0] if s.ndim == 3 else 1, n, d)  # (-1 fails at n = 0)
        codes = cupy.empty((batch.shape[0], n, k), dtype=cupy.int64)
        _flat_gpu.solve_batch(batch, k, incr, codes)
    return origin.wrap(codes.reshape(*s.shape[:-1], k))


def sparse_code_objective(
    scores: Any, codes: Any, penalty: float = 1.0, *, bucket_costs: Any = None
) -> Any:
    """The objective :func:`solve_sparse_codes` minimises, for given codes.

    Parameters
    ----------
    scores : array_like, shape (n, d) or (B, n, d)
        The scores, as for :func:`solve_sparse_codes`.
    codes : array_like of int, shape (n, k) or (B, n, k)
        Distinct buckets per row, each in ``0..d-1``.
    penalty : float, default 1.0
        The cost of each pair of classes sharing a bucket, ``>= 0``.
    bucket_costs : array_like, shape (L,), optional
        The convex schedule of :func:`solve_sparse_codes`, replacing ``penalty``.

    Returns
    -------
    value : float or array of float64, shape (B,)
        ``-sum_i sum_{r in codes[i]} scores[i, r] + sum_r F(c_r)``; for a batch, one value
        per problem in the caller's array type.

    Raises
    ------
    ValueError
        If the shapes disagree, a row repeats a bucket, a bucket is outside ``0..d-1``, or
        the scores hold NaN or Inf; for a bad ``penalty`` or ``bucket_costs`` as in
        :func:`solve_sparse_codes`.
    TypeError
        If ``codes`` does not hold integers or ``scores`` does not hold real numbers.

    Examples
    --------
    >>> import numpy as np, qkernels as qk
    >>> scores = np.array([[3.0, 2.0, 0.0], [3.0, 1.0, 0.0]])
    >>> qk.sparse_code_objective(scores, np.array([[0], [0]]), penalty=0.5)
    -5.5
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
    (:func:`solve_sparse_codes` with ``k = 1``): ``p(i)``, class ``i``'s parent bucket.
    Level 2 gives each class ``k2`` child buckets, minimising

    .. math::

        -\\sum_i \\sum_{t \\in codes2_i} scores2_{i,t}
        + penalty\\_sibling \\sum_p \\sum_t \\binom{c_{p,t}}{2}
        + penalty\\_global \\sum_t \\binom{c_t}{2}

    where ``c_{p,t}`` counts the classes with parent ``p`` in child ``t`` (siblings are kept
    apart) and ``c_t`` all classes in child ``t``. Solved exactly by successive shortest paths
    on the paper's level-2 network (class, group ``(p, t)``, child, sink; two convex costs).
    A class's compound buckets are ``p(i) * d2 + t``.

    Parameters
    ----------
    scores1 : array_like, shape (n, d1) or (B, n, d1)
        Level-1 scores; numpy array or torch tensor.
    scores2 : array_like, shape (n, d2) or (B, n, d2)
        Level-2 scores of the same classes (and batch).
    k2 : int
        Child buckets per class, ``1 <= k2 <= d2``.
    penalty_sibling : float, default 100.0
        The cost of two classes of one parent sharing a child, ``>= 0``.
    penalty_global : float, default 1.0
        The cost of two classes sharing a parent (level 1) or a child (level 2), ``>= 0``.

    Returns
    -------
    level1 : array of int64, shape (n,) or (B, n)
        Each class's parent bucket.
    level2 : array of int64, shape (n, k2) or (B, n, k2)
        Each class's children, rows sorted ascending. Both in the caller's array type.

    Raises
    ------
    ValueError
        If the scores differ in batch or class dimensions, have an empty axis, NaN or Inf;
        if ``k2`` is outside ``1..d2``; if a penalty is negative or not finite.
    TypeError
        If the scores do not hold real numbers or ``k2`` is not an integer.

    See Also
    --------
    hierarchical_code_objective : the two values this minimises, for any codes.
    qkernels.HierarchicalHashTable : the table these codes index.

    Examples
    --------
    >>> import numpy as np, qkernels as qk
    >>> rng = np.random.default_rng(0)
    >>> parents, children = qk.solve_hierarchical_codes(rng.standard_normal((6, 4)),
    ...                                                 rng.standard_normal((6, 8)), k2=2)
    >>> parents.shape, children.shape
    ((6,), (6, 2))
    """
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
    """The two objectives :func:`solve_hierarchical_codes` minimises, for given codes.

    Parameters
    ----------
    scores1 : array_like, shape (n, d1) or (B, n, d1)
        Level-1 scores.
    scores2 : array_like, shape (n, d2) or (B, n, d2)
        Level-2 scores.
    level1 : array_like of int, shape (n,) or (B, n)
        Each class's parent bucket.
    level2 : array_like of int, shape (n, k2) or (B, n, k2)
        Each class's distinct children.
    penalty_sibling : float, default 100.0
        As in :func:`solve_hierarchical_codes`.
    penalty_global : float, default 1.0
        As in :func:`solve_hierarchical_codes`.

    Returns
    -------
    first : float or array of float64, shape (B,)
        The level-1 objective (:func:`sparse_code_objective` with ``k = 1`` and
        ``penalty_global``).
    second : float or array of float64, shape (B,)
        The level-2 objective of :func:`solve_hierarchical_codes`.

    Raises
    ------
    ValueError
        If the shapes disagree, a code is out of range or repeats in a row, or the scores
        hold NaN or Inf; if a penalty is negative or not finite.
    TypeError
        If the codes do not hold integers or the scores do not hold real numbers.
    """
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
    # (rows of n * k2 entries; -1 would fail for an empty batch)
    for b, row in enumerate(compound.reshape(second.size, compound.shape[-2] * compound.shape[-1])):
        c = np.bincount(row, minlength=d1 * d2)
        pairs[b] = (c * (c - 1) // 2).sum()
    second = np.asarray(second, dtype=np.float64).reshape(-1) + sibling * pairs
    if s1.ndim == 2:
        return float(first), float(second[0])
    # s1 was converted to numpy above: both values go back as the caller's array type
    return origin.wrap(np.asarray(first, dtype=np.float64)), origin.wrap(second)
