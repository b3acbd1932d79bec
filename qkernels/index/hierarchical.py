"""HierarchicalHashTable: a table over compound buckets of cascaded codes (CVPR 2019)."""

from __future__ import annotations

import io
import math
import os
import warnings
from typing import Any, ClassVar

import numpy as np

from .. import _gpu
from .._arrays import origin_of, to_cupy, to_numpy
from .._checks import (
    as_float_array,
    as_index_array,
    check_distinct_rows,
    check_int,
    check_rank,
)
from . import _table_cpu
from ._base import Index
from .table import MAX_BUCKETS, SparseHashTable

__all__ = ["HierarchicalHashTable"]


def _ranks(activations: Any) -> Any:
    """rank[i, b]: position of bucket b when row i is sorted descending (ties: lower first);
    numpy or cupy (the inverse permutation of each row's order is its argsort)."""
    xp = _gpu.array_module(activations)
    order = xp.argsort(-activations, axis=1, kind="stable")
    return xp.argsort(order, axis=1, kind="stable")


class HierarchicalHashTable(Index):
    """A hash table over two-level codes: ``d`` parent buckets x ``d`` child buckets, the item
    in compound buckets ``b1 * d + b2`` (Jeong, Kim & Song, CVPR 2019).

    An item's parent is its best level-1 activation and its ``k`` children its best level-2
    activations (or its codes from :func:`qkernels.solve_hierarchical_codes`, through
    :meth:`add_codes`), so it sits in ``k`` compound buckets, all under one parent. A query
    walks compound buckets in order of (level-1 rank, level-2 rank): its ``k`` best children
    under its best parent, then, while it has fewer than ``topk`` candidates, its other
    children under that parent, then the second-best parent, and so on. Candidates are
    re-ranked by exact distance as in :class:`SparseHashTable`, on which this is built (with
    ``d * d`` buckets), and which holds its items: the lifecycle (ids, ``remove_ids``,
    ``reset``, ``merge_from``, filtered search, bytes) is :class:`qkernels.index.Index`'s.

    Parameters
    ----------
    num_buckets : int
        ``d``, buckets per level (the compound table has ``d * d``), ``1..4096``.
    k : int
        Children per item and per query, ``1 <= k <= d``.
    metric : {"l2", "ip"}, default "l2"
        Re-ranking by squared Euclidean distance or inner product.
    storage : {"float32", "float16"} or ProductQuantizer, default "float32"
        How the embeddings are kept, as in :class:`SparseHashTable`.

    Raises
    ------
    ValueError
        If a parameter is out of range or ``metric`` unknown.
    TypeError
        If ``num_buckets`` or ``k`` is not an integer.

    See Also
    --------
    qkernels.solve_hierarchical_codes : the codes of the cascade's training.

    Examples
    --------
    >>> import numpy as np, qkernels as qk
    >>> rng = np.random.default_rng(0)
    >>> level1, level2 = rng.standard_normal((500, 16)), rng.standard_normal((500, 16))
    >>> embeddings = rng.standard_normal((500, 8))
    >>> table = qk.HierarchicalHashTable(16, k=2).add(level1, level2, embeddings)
    >>> D, I = table.search(level1[:2], level2[:2], embeddings[:2], topk=3)
    >>> I[:, 0]
    array([0, 1])
    """

    _KIND = "HierarchicalHashTable"
    _VERSION = 1

    def __init__(self, num_buckets: int, k: int, metric: str = "l2", *,
                 storage: str | Any = "float32"):
        self.num_buckets = check_int(num_buckets, "num_buckets", 1, math.isqrt(MAX_BUCKETS))
        self.k = check_int(k, "k", 1, self.num_buckets)
        self._table = SparseHashTable(self.num_buckets**2, self.k, metric, storage=storage)

    def __repr__(self) -> str:
        return (f"HierarchicalHashTable(num_buckets={self.num_buckets}, k={self.k}, "
                f"metric={self.metric!r}, ntotal={self.ntotal})")

    @property
    def metric(self) -> str:
        """``"l2"`` or ``"ip"``."""
        return self._table.metric

    @property
    def storage(self) -> Any:
        """How the embeddings are kept (``"float32"``, ``"float16"`` or a ProductQuantizer)."""
        return self._table.storage

    @property
    def dim(self) -> int | None:
        """The embeddings' dimension (None until the first add)."""
        return self._table.dim

    @property
    def candidate_counts(self) -> Any:
        """The candidates each query of the last search looked at: int64, shape ``(Q,)`` (on
        the queries' device after a search of queries on a GPU, as
        :attr:`SparseHashTable.candidate_counts`)."""
        return self._table.candidate_counts

    @property
    def compound(self) -> SparseHashTable:
        """The table over the ``d * d`` compound buckets that holds the items."""
        return self._table

    # the lifecycle is the compound table's: its items are this table's
    @property
    def ntotal(self) -> int:
        """Number of items in the table."""
        return self._table.ntotal

    @property
    def ids(self) -> np.ndarray:
        """The items' ids, int64, in the order the items were added (read-only)."""
        return self._table.ids

    @property
    def next_id(self) -> int:
        """The id the next item added without ids gets."""
        return self._table.next_id

    @property
    def version(self) -> int:
        """A number that changes whenever the items change."""
        return self._table.version

    @property
    def default_ids(self) -> bool:
        """Whether every id was given by the counter (no ``ids=`` since the last reset)."""
        return self._table.default_ids

    def remove_ids(self, ids: Any) -> int:
        return self._table.remove_ids(ids)

    def reset(self) -> None:
        self._table.reset()

    def merge_from(self, other: HierarchicalHashTable) -> None:
        if type(other) is not type(self):
            raise TypeError(f"merge_from takes a {type(self).__name__}, got "
                            f"{type(other).__name__}")
        if other.num_buckets != self.num_buckets:
            raise ValueError(f"the tables differ in num_buckets: {self.num_buckets} here, "
                             f"{other.num_buckets} there")
        self._table.merge_from(other._table)

    def reconstruct(self, ids: Any) -> np.ndarray:
        return self._table.reconstruct(ids)

    remove_ids.__doc__ = Index.remove_ids.__doc__
    reset.__doc__ = Index.reset.__doc__
    merge_from.__doc__ = Index.merge_from.__doc__
    reconstruct.__doc__ = Index.reconstruct.__doc__

    def _levels(self, level1: Any, level2: Any, rows: int | None, names: tuple[str, str],
                device: bool = False):
        """The two levels' activations, checked, as contiguous numpy arrays (cupy arrays on
        their device with ``device``)."""
        if device:
            a1, a2 = to_cupy(level1), to_cupy(level2)
        else:
            a1 = to_numpy(level1, allow_device_copy=True)
            a2 = to_numpy(level2, allow_device_copy=True)
        for name, a in zip(names, (a1, a2), strict=True):
            check_rank(a, name, (2,), f"(N, num_buckets = {self.num_buckets})")
            if a.shape[1] != self.num_buckets:
                raise ValueError(f"{name} has {a.shape[1]} columns; this table has "
                                 f"{self.num_buckets} buckets per level")
        if a1.shape[0] != a2.shape[0] or (rows is not None and a1.shape[0] != rows):
            raise ValueError(f"{names[0]} has {a1.shape[0]} rows and {names[1]} "
                             f"{a2.shape[0]}; they must match (and the embeddings)")
        xp = _gpu.array_module(a1)
        return (xp.ascontiguousarray(as_float_array(a1, names[0])),
                xp.ascontiguousarray(as_float_array(a2, names[1])))

    def add(self, level1_activations: Any, level2_activations: Any, embeddings: Any,
            ids: Any = None) -> HierarchicalHashTable:
        """Add items by their activations: parent = best level-1 bucket, children = best ``k``
        level-2 buckets.

        Parameters
        ----------
        level1_activations : array_like, shape (N, num_buckets)
            Level-1 hash-head outputs.
        level2_activations : array_like, shape (N, num_buckets)
            Level-2 hash-head outputs.
        embeddings : array_like, shape (N, dim)
            What the candidates are re-ranked by.
        ids : array_like of int, shape (N,), optional
            64-bit ids ``>= 0``, unique in the table (default: the next ``N`` of
            ``next_id``).

        Returns
        -------
        HierarchicalHashTable
            ``self``.

        Raises
        ------
        ValueError
            If the arrays disagree in rows, have another width, NaN or Inf, or an id is
            negative.
        TypeError
            If an array does not hold numbers of the right kind.
        """
        origin_of(level1_activations, level2_activations, embeddings, ids,
                  names=("level1_activations", "level2_activations", "embeddings", "ids"))
        a1, a2 = self._levels(level1_activations, level2_activations, None,
                              ("level1_activations", "level2_activations"))
        parents = np.argmax(a1, axis=1) if a1.shape[0] else np.empty(0, dtype=np.int64)
        children = np.empty((a2.shape[0], self.k), dtype=np.int64)
        if a2.shape[0]:
            _table_cpu.topk_rows(a2, self.k, children)
        return self._add_levels(parents, children, embeddings, ids)

    def add_codes(self, level1: Any, level2: Any, embeddings: Any, ids: Any = None
                  ) -> HierarchicalHashTable:
        """Add items by their codes (from :func:`qkernels.solve_hierarchical_codes`).

        Parameters
        ----------
        level1 : array_like of int, shape (N,)
            Parents.
        level2 : array_like of int, shape (N, k)
            Distinct children per row, the first treated as the best.
        embeddings : array_like, shape (N, dim)
            What the candidates are re-ranked by.
        ids : array_like of int, shape (N,), optional
            64-bit ids ``>= 0``, unique in the table (default: the next ``N`` of
            ``next_id``).

        Returns
        -------
        HierarchicalHashTable
            ``self``.

        Raises
        ------
        ValueError
            If a code is out of range, a row repeats a child, or the shapes disagree.
        TypeError
            If the codes do not hold integers.
        """
        origin_of(level1, level2, embeddings, ids,
                  names=("level1", "level2", "embeddings", "ids"))
        return self._add_levels(level1, level2, embeddings, ids)

    def _add_levels(self, level1: Any, level2: Any, embeddings: Any, ids: Any
                    ) -> HierarchicalHashTable:
        """add_codes of arrays already checked to be of one library (or, from add, the codes
        made on the host from the caller's activations)."""
        p = as_index_array(to_numpy(level1, allow_device_copy=True), "level1", self.num_buckets)
        c = to_numpy(level2, allow_device_copy=True)
        check_rank(p, "level1", (1,), "(N,)")
        check_rank(c, "level2", (2,), f"(N, k = {self.k})")
        c = as_index_array(c, "level2", self.num_buckets)
        if c.shape != (p.shape[0], self.k):
            raise ValueError(f"level2 must be ({p.shape[0]}, {self.k}), got {tuple(c.shape)}")
        check_distinct_rows(c, "level2")  # (named as given, before compounding)
        # the inner table gets host arrays alike (the compound codes are numpy)
        self._table.add_codes(p[:, None] * self.num_buckets + c,
                              to_numpy(embeddings, allow_device_copy=True, name="embeddings"),
                              None if ids is None else to_numpy(ids, allow_device_copy=True))
        return self

    def search(self, query_level1: Any, query_level2: Any, query_embeddings: Any, topk: int,
               exclude_ids: Any = None, *, include: Any = None, exclude: Any = None
               ) -> tuple[Any, Any]:
        """Search in the order of the paper (see the class docstring).

        Parameters
        ----------
        query_level1 : array_like, shape (Q, num_buckets)
            The queries' level-1 activations.
        query_level2 : array_like, shape (Q, num_buckets)
            The queries' level-2 activations.
        query_embeddings : array_like, shape (Q, dim)
            The queries' embeddings. Queries on a GPU are searched there, by the compound
            table's GPU probe (see :meth:`SparseHashTable.search`).
        topk : int
            Results per query.
        exclude_ids : array_like of int, shape (Q,) or (Q, m), optional
            Deprecated: ``exclude`` with one row per query.
        include : array_like of int, shape (n,), optional
            Only these ids may be returned.
        exclude : array_like of int, shape (n,) or (Q, m), optional
            These ids are never returned: one array for every query, or one row per query
            (-1 entries are padding). Not with ``include``.

        Returns
        -------
        D : array of float32, shape (Q, topk)
            As :meth:`SparseHashTable.search`.
        I : array of int64, shape (Q, topk)
            The ids; -1 where missing.

        Raises
        ------
        ValueError
            If a query array has another rank, width or number of rows, NaN or Inf, or
            ``topk`` is below 1 or its results would not fit in memory; if the filter is
            refused.
        TypeError
            If a query array does not hold real numbers, a filter does not hold integers, or
            arrays of two libraries or devices are mixed.
        """
        origin = origin_of(query_level1, query_level2, query_embeddings,
                           names=("query_level1", "query_level2", "query_embeddings"))
        exclude_ids = _exclude_rows(exclude_ids)
        on_device = origin.is_cuda and _gpu.available()  # the compound table's GPU probe
        compound = self._compound(query_level1, query_level2, device=on_device)
        embeddings = (to_cupy(query_embeddings) if on_device
                      else to_numpy(query_embeddings, allow_device_copy=True))
        with warnings.catch_warnings():  # the deprecation is said once, above
            warnings.simplefilter("ignore", DeprecationWarning)
            dist, items = self._table.search(compound, embeddings, topk, exclude_ids,
                                             include=include, exclude=exclude)
        return origin.wrap(dist), origin.wrap(items)

    def compound_activations(self, query_level1: Any, query_level2: Any) -> np.ndarray:
        """The queries' scores of the ``d * d`` compound buckets of :attr:`compound`.

        They rank the compound buckets in the paper's order, (level-1 rank, level-2 rank),
        exactly in float32 for ``d * d < 2**24``: a search of this table is the compound
        table's search of these scores (a hook for an exact merge of shards).

        Parameters
        ----------
        query_level1 : array_like, shape (Q, num_buckets)
            The queries' level-1 activations.
        query_level2 : array_like, shape (Q, num_buckets)
            The queries' level-2 activations.

        Returns
        -------
        ndarray of float32, shape (Q, num_buckets**2)
            Larger for the buckets probed first.

        Raises
        ------
        ValueError
            If the arrays have another width or number of rows, NaN or Inf.
        TypeError
            If they do not hold real numbers.
        """
        return self._compound(query_level1, query_level2)

    def _compound(self, query_level1: Any, query_level2: Any, device: bool = False) -> Any:
        """The queries' scores of the ``d * d`` compound buckets, which sort as (level-1 rank,
        level-2 rank): exact in float32 for d * d < 2**24 (on the queries' GPU with
        ``device``)."""
        a1, a2 = self._levels(query_level1, query_level2, None, ("query_level1",
                                                                 "query_level2"), device)
        d = self.num_buckets
        ranks = _ranks(a1)[:, :, None] * d + _ranks(a2)[:, None, :]
        return -(ranks.reshape(len(a1), d * d)).astype(np.float32)

    # ------------------------------------------------------------------ files

    _FIELDS: ClassVar[dict[str, tuple[str, int]]] = dict(SparseHashTable._FIELDS,
                                                         buckets_per_level=("iu", 0))

    def save(self, path: str | os.PathLike | io.IOBase) -> None:
        """Write the table to ``path``.

        Parameters
        ----------
        path : str, os.PathLike or file object
            A ``.npz`` file (no pickle inside); a file at a path is written whole or not at
            all.

        Raises
        ------
        OSError
            If the file cannot be written.
        """
        from .._io import save_npz

        save_npz(path, self._KIND, self._VERSION, buckets_per_level=np.array(self.num_buckets),
                 **self._table._arrays_of(self._table._state))

    @classmethod
    def _from_arrays(cls, arrays: dict[str, np.ndarray]) -> HierarchicalHashTable:
        inner = SparseHashTable._from_arrays(arrays)
        d = int(arrays["buckets_per_level"])
        if d * d != inner.num_buckets:
            raise ValueError(f"{d} buckets per level but {inner.num_buckets} compound")
        table = cls(d, inner.k, inner.metric, storage=inner.storage)
        table._table = inner
        return table


def _exclude_rows(exclude_ids: Any) -> Any:
    """The deprecated ``exclude_ids``, said once from here."""
    if exclude_ids is not None:
        warnings.warn("exclude_ids is deprecated: pass exclude= with one row of ids per query "
                      "(exclude=ids[:, None] for one id each)", DeprecationWarning, stacklevel=3)
    return exclude_ids
