"""HierarchicalHashTable: a table over compound buckets of cascaded codes (CVPR 2019)."""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from .._arrays import origin_of, to_numpy
from .._checks import as_float_array, as_index_array, check_int, check_rank
from .._io import load_npz, save_npz
from . import _table_cpu
from .table import MAX_BUCKETS, SparseHashTable

__all__ = ["HierarchicalHashTable"]


def _ranks(activations: np.ndarray) -> np.ndarray:
    """rank[i, b]: position of bucket b when row i is sorted descending (ties: lower first)."""
    order = np.argsort(-activations, axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(activations.shape[1])[None, :], axis=1)
    return ranks


class HierarchicalHashTable:
    """A hash table over two-level codes: ``d`` parent buckets x ``d`` child buckets, the item
    in compound buckets ``b1 * d + b2`` (Jeong, Kim & Song, CVPR 2019).

    An item's parent is its best level-1 activation and its ``k`` children its best level-2
    activations (or its codes from :func:`qkernels.solve_hierarchical_codes`, through
    :meth:`add_codes`), so it sits in ``k`` compound buckets, all under one parent. A query
    walks compound buckets in order of (level-1 rank, level-2 rank): its ``k`` best children
    under its best parent, then, while it has fewer than ``topk`` candidates, its other
    children under that parent, then the second-best parent, and so on. Candidates are
    re-ranked by exact distance as in :class:`SparseHashTable`, on which this is built (with
    ``d * d`` buckets).

    Parameters
    ----------
    num_buckets : int
        ``d``, buckets per level (the compound table has ``d * d``).
    k : int
        Children per item and per query, ``1 <= k <= d``.
    metric : {"l2", "ip"}
    """

    _VERSION = 1

    def __init__(self, num_buckets: int, k: int, metric: str = "l2"):
        self.num_buckets = check_int(num_buckets, "num_buckets", 1, math.isqrt(MAX_BUCKETS))
        self.k = check_int(k, "k", 1, self.num_buckets)
        self._table = SparseHashTable(self.num_buckets**2, self.k, metric)

    def __repr__(self) -> str:
        return (f"HierarchicalHashTable(num_buckets={self.num_buckets}, k={self.k}, "
                f"metric={self.metric!r}, ntotal={self.ntotal})")

    @property
    def metric(self) -> str:
        return self._table.metric

    @property
    def ntotal(self) -> int:
        return self._table.ntotal

    def __len__(self) -> int:
        return self.ntotal

    @property
    def candidate_counts(self) -> np.ndarray:
        return self._table.candidate_counts

    def _levels(self, level1: Any, level2: Any, rows: int | None, names: tuple[str, str]):
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
        return (np.ascontiguousarray(as_float_array(a1, names[0])),
                np.ascontiguousarray(as_float_array(a2, names[1])))

    def add(self, level1_activations: Any, level2_activations: Any, embeddings: Any,
            ids: Any = None) -> HierarchicalHashTable:
        """Add items by their activations of each level ``(N, d)``. Returns the table."""
        origin_of(level1_activations, level2_activations, embeddings, ids,
                  names=("level1_activations", "level2_activations", "embeddings", "ids"))
        a1, a2 = self._levels(level1_activations, level2_activations, None,
                              ("level1_activations", "level2_activations"))
        parents = np.argmax(a1, axis=1) if a1.shape[0] else np.empty(0, dtype=np.int64)
        children = np.empty((a2.shape[0], self.k), dtype=np.int64)
        if a2.shape[0]:
            _table_cpu.topk_rows(a2, self.k, children)
        return self.add_codes(parents, children, embeddings, ids)

    def add_codes(self, level1: Any, level2: Any, embeddings: Any, ids: Any = None
                  ) -> HierarchicalHashTable:
        """Add items by their codes: parents ``(N,)`` and children ``(N, k)`` (the first child
        treated as the best). Returns the table."""
        p = as_index_array(to_numpy(level1, allow_device_copy=True), "level1", self.num_buckets)
        c = to_numpy(level2, allow_device_copy=True)
        check_rank(p, "level1", (1,), "(N,)")
        check_rank(c, "level2", (2,), f"(N, k = {self.k})")
        c = as_index_array(c, "level2", self.num_buckets)
        if c.shape != (p.shape[0], self.k):
            raise ValueError(f"level2 must be ({p.shape[0]}, {self.k}), got {tuple(c.shape)}")
        self._table.add_codes(p[:, None] * self.num_buckets + c, embeddings, ids)
        return self

    def search(self, query_level1: Any, query_level2: Any, query_embeddings: Any, topk: int,
               exclude_ids: Any = None) -> tuple[Any, Any]:
        """Search in the order of the paper (see the class docstring); the rest as
        :meth:`SparseHashTable.search`, whose ``candidate_counts`` this keeps."""
        origin = origin_of(query_level1, query_level2, query_embeddings, exclude_ids,
                           names=("query_level1", "query_level2", "query_embeddings",
                                  "exclude_ids"))
        dist, items = self._table.search(self._compound(query_level1, query_level2),
                                         to_numpy(query_embeddings, allow_device_copy=True),
                                         topk, exclude_ids=None if exclude_ids is None else
                                         to_numpy(exclude_ids, allow_device_copy=True))
        return origin.wrap(dist), origin.wrap(items)

    def _compound(self, query_level1: Any, query_level2: Any) -> np.ndarray:
        """The queries' scores of the ``d * d`` compound buckets, which sort as (level-1 rank,
        level-2 rank): exact in float32 for d * d < 2**24."""
        a1, a2 = self._levels(query_level1, query_level2, None, ("query_level1",
                                                                 "query_level2"))
        d = self.num_buckets
        ranks = _ranks(a1)[:, :, None] * d + _ranks(a2)[:, None, :]
        return -(ranks.reshape(len(a1), d * d)).astype(np.float32)

    def save(self, path: str | os.PathLike) -> None:
        """Write the table to ``path`` (.npz, no pickle)."""
        save_npz(path, "HierarchicalHashTable", self._VERSION,
                 buckets_per_level=np.array(self.num_buckets), **self._table._state())

    @classmethod
    def load(cls, path: str | os.PathLike) -> HierarchicalHashTable:
        """Read a table written by :meth:`save`."""
        fields = dict(SparseHashTable._FIELDS, buckets_per_level=("iu", 0))
        arrays = load_npz(path, "HierarchicalHashTable", cls._VERSION, fields)
        inner = SparseHashTable._from_state(arrays, path, "HierarchicalHashTable")
        d = int(arrays["buckets_per_level"])
        if d * d != inner.num_buckets:
            raise ValueError(f"{os.fspath(path)!r} is a corrupted HierarchicalHashTable file "
                             f"({d} buckets per level but {inner.num_buckets} compound)")
        table = cls(d, inner.k, inner.metric)
        table._table = inner
        return table
