"""SparseHashTable: the Deep Hash Table index over k-sparse codes."""

from __future__ import annotations

import os
from typing import Any, ClassVar, NamedTuple

import numba
import numpy as np

from .. import _gpu
from .._arrays import origin_of, to_cupy, to_numpy, torch_stream
from .._checks import (
    as_float_array,
    as_index_array,
    check_columns,
    check_distance_range,
    check_int,
    check_rank,
    check_same_rows,
    check_topk,
)
from .._heap import padded
from .._io import load_npz, save_npz
from .._shared import LazyState
from . import _table_cpu, _table_gpu

__all__ = ["SparseHashTable"]

_METRICS = ("l2", "ip")
# a build holds a few (threads x buckets) int64 count arrays: 2**24 buckets (a 4096 x 4096
# cascade) take about 1 GB there; more is a mistake, not a table
MAX_BUCKETS = 1 << 24


def _chunks(count: int) -> int:
    """Work units for a parallel loop: a few per thread so uneven units balance out."""
    return max(1, min(count, 4 * numba.get_num_threads()))


def _check_distinct(codes: np.ndarray, name: str) -> None:
    """Each row of ``(N, k)`` codes must name ``k`` different buckets (an item sits in a
    bucket once; a repeated bucket would return the same id twice)."""
    if codes.shape[1] > 1 and codes.shape[0]:
        ordered = np.sort(codes, axis=1)
        repeats = (ordered[:, 1:] == ordered[:, :-1]).any(axis=1)
        if repeats.any():
            row = int(np.flatnonzero(repeats)[0])
            raise ValueError(f"{name} must hold distinct buckets in each row; row {row} is "
                             f"{codes[row].tolist()}")


class _Built(NamedTuple):
    """The searchable state, published in one assignment: items sorted by their codes, the CSR
    of bucket -> positions, and the arrays in that order."""

    offsets: np.ndarray
    items: np.ndarray
    codes: np.ndarray
    emb: np.ndarray
    ids: np.ndarray
    rows: np.ndarray


class SparseHashTable(LazyState):
    """A hash table over k-sparse codes, re-ranked by exact distance (Jeong & Song, ICML 2018).

    Each item goes into the buckets of its ``k`` largest activations. A query looks at the
    union of the items in its own ``k`` best buckets (each item once) and, while that gives
    fewer than ``topk`` candidates, at its next-ranked buckets; the candidates are ranked by
    exact distance between embeddings. The table holds the embeddings once (float32) and
    ``N * k`` item ids.

    Parameters
    ----------
    num_buckets : int
        ``d``, the length of an activation vector, ``1..2**24``.
    k : int
        Buckets per item and per query, ``1 <= k <= num_buckets``.
    metric : {"l2", "ip"}, default "l2"
        Re-ranking by squared Euclidean distance (ascending) or inner product (descending).

    Attributes
    ----------
    candidate_counts : ndarray of int64, shape (Q,)
        The number of candidates each query of the last search looked at
        (:func:`qkernels.metrics.search_speedup` turns them into the SUF).
    dim : int or None
        The embeddings' dimension (None until the first add).

    Raises
    ------
    ValueError
        If a parameter is out of range or ``metric`` unknown.
    TypeError
        If ``num_buckets`` or ``k`` is not an integer.

    See Also
    --------
    qkernels.solve_sparse_codes : the codes of DHT's training.
    HierarchicalHashTable : the table of cascaded codes.

    Examples
    --------
    >>> import numpy as np, qkernels as qk
    >>> rng = np.random.default_rng(0)
    >>> activations, embeddings = rng.standard_normal((1000, 64)), rng.standard_normal((1000, 8))
    >>> table = qk.SparseHashTable(num_buckets=64, k=2).add(activations, embeddings)
    >>> D, I = table.search(activations[:3], embeddings[:3], topk=4)
    >>> I[:, 0]                     # each item finds itself first
    array([0, 1, 2])
    >>> speedup = qk.metrics.search_speedup(table.candidate_counts, table.ntotal)
    """

    _VERSION = 1

    def __init__(self, num_buckets: int, k: int, metric: str = "l2"):
        self.num_buckets = check_int(num_buckets, "num_buckets", 1, MAX_BUCKETS)
        self.k = check_int(k, "k", 1, self.num_buckets)
        if metric not in _METRICS:
            raise ValueError(f"metric must be one of {_METRICS}, got {metric!r}")
        self.metric = metric
        self.dim: int | None = None
        # items in insertion order until the table is built, then sorted by primary bucket
        self._emb = np.empty((0, 0), dtype=np.float32)
        self._codes = np.empty((0, self.k), dtype=np.int64)  # best bucket first
        self._ids = np.empty(0, dtype=np.int64)
        self._rows = np.empty(0, dtype=np.int64)  # insertion position: breaks distance ties
        self._built: _Built | None = None  # built on the first search, under the lock
        self._id_order = None  # (built, positions by id, sorted ids), on the first exclusion
        self._init_lock()
        self.candidate_counts = np.empty(0, dtype=np.int64)

    # ------------------------------------------------------------------ adding

    @property
    def ntotal(self) -> int:
        """Number of items in the table."""
        return int(self._ids.shape[0])

    def __len__(self) -> int:
        return self.ntotal

    def __repr__(self) -> str:
        return (f"SparseHashTable(num_buckets={self.num_buckets}, k={self.k}, "
                f"metric={self.metric!r}, ntotal={self.ntotal}, dim={self.dim})")

    def add(self, activations: Any, embeddings: Any, ids: Any = None) -> SparseHashTable:
        """Add items; each goes into the buckets of its ``k`` largest activations.

        Ties between activations go to the lower bucket index. Repeated calls append.

        Parameters
        ----------
        activations : array_like, shape (N, num_buckets)
            The items' hash-head outputs.
        embeddings : array_like, shape (N, dim)
            What the candidates are re-ranked by (stored as float32).
        ids : array_like of int, shape (N,), optional
            Ids ``>= 0`` returned by searches (default: the next ``N`` positions).

        Returns
        -------
        SparseHashTable
            ``self``.

        Raises
        ------
        ValueError
            If the arrays disagree in rows, have another width, NaN or Inf, an id is
            negative, or the table would hold ``2**31`` items.
        TypeError
            If an array does not hold numbers of the right kind, or arrays of two libraries
            or devices are mixed.
        """
        origin_of(activations, embeddings, ids, names=("activations", "embeddings", "ids"))
        act = self._activations(activations, "activations")
        codes = np.empty((act.shape[0], self.k), dtype=np.int64)
        if act.shape[0]:
            _table_cpu.topk_rows(act, self.k, codes)
        return self._append(codes, embeddings, ids, act.shape[0])

    def add_codes(self, codes: Any, embeddings: Any, ids: Any = None) -> SparseHashTable:
        """Add items whose codes are already known (from :func:`qkernels.solve_sparse_codes`).

        Parameters
        ----------
        codes : array_like of int, shape (N, k)
            Distinct buckets per row; the first column is treated as the item's best bucket.
        embeddings : array_like, shape (N, dim)
            What the candidates are re-ranked by.
        ids : array_like of int, shape (N,), optional
            Ids ``>= 0`` (default: the next ``N`` positions).

        Returns
        -------
        SparseHashTable
            ``self``.

        Raises
        ------
        ValueError
            If a row repeats a bucket, a bucket is out of range, or the arrays disagree as
            in :meth:`add`.
        TypeError
            If ``codes`` does not hold integers.
        """
        origin_of(codes, embeddings, ids, names=("codes", "embeddings", "ids"))
        c = to_numpy(codes, allow_device_copy=True)
        check_rank(c, "codes", (2,), f"(N, k = {self.k})")
        if c.shape[1] != self.k:
            raise ValueError(f"codes has {c.shape[1]} columns; this table has k = {self.k}")
        c = as_index_array(c, "codes", self.num_buckets)
        _check_distinct(c, "codes")
        return self._append(np.ascontiguousarray(c), embeddings, ids, c.shape[0])

    def _activations(self, activations: Any, name: str) -> np.ndarray:
        act = to_numpy(activations, allow_device_copy=True)
        check_rank(act, name, (2,), f"(N, num_buckets = {self.num_buckets})")
        if act.shape[1] != self.num_buckets:
            raise ValueError(
                f"{name} has {act.shape[1]} columns; this table has {self.num_buckets} buckets"
            )
        return np.ascontiguousarray(as_float_array(act, name))

    def _embeddings(self, embeddings: Any, name: str) -> np.ndarray:
        emb = to_numpy(embeddings, allow_device_copy=True, name=name)
        check_rank(emb, name, (2,), "(N, dim)")
        check_columns(emb, name, "dimensions")
        emb = np.ascontiguousarray(as_float_array(emb, name, dtype=np.float32))
        if self.dim is not None and emb.shape[1] != self.dim:
            raise ValueError(
                f"{name} has dimension {emb.shape[1]}; the table's embeddings have {self.dim}"
            )
        check_distance_range(emb, name)
        return emb

    def _append(self, codes: np.ndarray, embeddings: Any, ids: Any, n: int) -> SparseHashTable:
        emb = self._embeddings(embeddings, "embeddings")
        check_same_rows(codes, "the codes", emb, "embeddings")
        if ids is None:
            new_ids = np.arange(self.ntotal, self.ntotal + n, dtype=np.int64)
        else:
            new_ids = to_numpy(ids, allow_device_copy=True)
            check_rank(new_ids, "ids", (1,), "(N,)")
            check_same_rows(new_ids, "ids", emb, "embeddings")
            new_ids = as_index_array(new_ids, "ids").copy()
        if self.ntotal + n >= 2**31:
            raise ValueError("a SparseHashTable holds fewer than 2**31 items")
        if self.dim is None:
            self.dim = emb.shape[1]
            self._emb = emb.copy()
        else:
            self._emb = np.concatenate([self._emb, emb])
        self._codes = np.concatenate([self._codes, codes])
        self._ids = np.concatenate([self._ids, new_ids])
        self._rows = np.concatenate([self._rows, self._rows.shape[0] + np.arange(n)])
        self._built = None
        self._changed()
        return self

    def _build(self) -> _Built:
        """Sort the items by their codes, best bucket first, and build the CSR (counting
        sorts, in parallel); return the searchable state.

        Built once, under the table's lock (a search from another thread that finds it missing
        waits, then uses the same state), on local arrays that are published only when whole:
        two threads never rearrange the arrays at once, and a search never sees half of them.

        Sorting by the whole code tuple, not only the best bucket, makes every bucket's items
        fall into long contiguous runs: the items that rank the bucket first form one block,
        and those that rank it second come in one run per first bucket, which for learned codes
        are few. A search then streams rows instead of gathering them.
        """
        return self._once("_built", lambda built: built is not None, self._sorted)

    def _sorted(self) -> _Built:
        """The build itself (called under the lock by :meth:`_build`)."""
        emb, codes, ids, rows = self._emb, self._codes, self._ids, self._rows
        chunks = _chunks(ids.shape[0])
        order = np.arange(ids.shape[0])
        for t in reversed(range(self.k)):  # least significant key first; stable passes
            key = np.ascontiguousarray(codes[order, t : t + 1])
            _, by_key = _table_cpu.counting_sort(key, self.num_buckets, chunks)
            order = order[by_key]
        if not np.array_equal(order, np.arange(order.shape[0])):
            emb = self._gathered(emb, order)
            codes = self._gathered(codes, order)
            ids = ids[order]
            rows = rows[order]
        offsets, items = _table_cpu.counting_sort(codes, self.num_buckets, chunks)
        # the sorted order is kept as the table's order (no second copy of the embeddings)
        self._emb, self._codes, self._ids, self._rows = emb, codes, ids, rows
        return _Built(offsets, items, codes, emb, ids, rows)

    @staticmethod
    def _gathered(rows: np.ndarray, order: np.ndarray) -> np.ndarray:
        out = np.empty_like(rows)
        _table_cpu.gather_rows(rows, order, out)
        return out

    # ------------------------------------------------------------------ searching

    def search(self, query_activations: Any, query_embeddings: Any, topk: int,
               exclude_ids: Any = None) -> tuple[Any, Any]:
        """Find the ``topk`` nearest candidates of each query.

        Parameters
        ----------
        query_activations : array_like, shape (Q, num_buckets)
            The queries' hash-head outputs.
        query_embeddings : array_like, shape (Q, dim)
            The queries' embeddings.
        topk : int
            Results per query; more than the table holds is allowed (the rest is padding).
        exclude_ids : array_like of int, shape (Q,) or (Q, m), optional
            Ids never returned for that query (e.g. the query itself when the queries come from
            the database); -1 entries are ignored. Excluded items are not counted as candidates.

        Returns
        -------
        D : array of float32, shape (Q, topk)
            Squared distances ascending (``"l2"``) or inner products descending (``"ip"``);
            ``inf`` (``-inf`` for ``"ip"``) where a result is missing.
        I : array of int64, shape (Q, topk)
            The ids; -1 where a result is missing.

        Raises
        ------
        ValueError
            If a query array has another rank, width or number of rows, NaN or Inf, or
            ``topk`` is below 1 or its results would not fit in memory.
        TypeError
            If a query array does not hold real numbers, or arrays of two libraries or
            devices are mixed.

        Notes
        -----
        Ties in distance go to the item added first. ``candidate_counts`` then holds the
        number of candidates each query looked at. Queries on a GPU are searched there (topk up
        to 64) against a copy of the table made on the first such search.
        """
        origin = origin_of(query_activations, query_embeddings, exclude_ids,
                           names=("query_activations", "query_embeddings", "exclude_ids"))
        if (origin.is_cuda and _gpu.available() and self.ntotal
                and check_int(topk, "topk", 1) <= _table_gpu.MAX_TOPK):
            return self._search_on_device(origin, query_activations, query_embeddings, topk,
                                          exclude_ids)
        act, emb = self._host_queries(query_activations, query_embeddings)
        dist, ids, self.candidate_counts = self._search_host(act, emb, topk, exclude_ids)
        return origin.wrap(dist), origin.wrap(ids)

    def _host_queries(self, query_activations: Any, query_embeddings: Any
                      ) -> tuple[np.ndarray, np.ndarray]:
        """The queries, checked, as contiguous host arrays (activations, float32 embeddings)."""
        act = self._activations(query_activations, "query_activations")
        emb = self._embeddings(query_embeddings, "query_embeddings")
        check_same_rows(act, "query_activations", emb, "query_embeddings")
        return act, emb

    def _search_host(self, act: np.ndarray, emb: np.ndarray, topk: int, exclude_ids: Any,
                     probes: np.ndarray | None = None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The CPU search of checked queries: ``(D, I, candidate_counts)``. ``probes`` (per
        query, >= k) fixes how many buckets each query probes instead of the expansion rule
        (a sharded search plans them over all shards)."""
        num_queries = act.shape[0]
        topk, work = check_topk(topk, self.ntotal, num_queries)
        exclude = self._exclude(exclude_ids, num_queries)
        dist = np.empty((num_queries, work), dtype=np.float32)
        items = np.full((num_queries, work), -1, dtype=np.int64)
        counts = np.zeros(num_queries, dtype=np.int64)
        ids = items
        if self.ntotal == 0:
            dist.fill(-np.inf if self.metric == "ip" else np.inf)
        elif num_queries:
            built = self._build()
            exclude = self._exclude_positions(exclude)
            # bound the per-chunk heaps (chunks x queries x topk entries, 20 bytes each) to ~80 MB
            chunks = _chunks(self.num_buckets)
            block = max(1, (1 << 22) // (chunks * work))
            for start in range(0, num_queries, block):
                part = slice(start, min(num_queries, start + block))
                self._search_block(built, act[part], emb[part], work, exclude[part], chunks,
                                   dist[part], items[part], counts[part],
                                   None if probes is None else probes[part])
            ids = np.where(items >= 0, built.ids[np.maximum(items, 0)], -1)
        dist, ids = padded(dist, ids, topk, -np.inf if self.metric == "ip" else np.inf)
        return dist, ids.astype(np.int64, copy=False), counts

    def _count_candidates(self, act: np.ndarray, exclude_ids: Any, max_probes: np.ndarray
                          ) -> np.ndarray:
        """Per query, the candidates (distinct items, less the excluded) of its first
        ``max_probes[q]`` buckets (0 or >= k; 0 counts nothing)."""
        num_queries = act.shape[0]
        counts = np.zeros(num_queries, dtype=np.int64)
        if self.ntotal == 0 or num_queries == 0:
            return counts
        built = self._build()
        exclude = self._exclude_positions(self._exclude(exclude_ids, num_queries))
        probe_count = np.empty(num_queries, dtype=np.int64)
        _table_cpu.plan_probes(act, self.k, np.iinfo(np.int64).max,
                               np.ascontiguousarray(max_probes, dtype=np.int64), built.offsets,
                               built.items, built.codes, exclude, _chunks(num_queries),
                               probe_count, counts)
        return counts

    def _search_on_device(self, origin, query_activations, query_embeddings, topk: int,
                          exclude_ids):
        """The probe on the GPU (qkernels/cuda/table.cu), on torch's stream. The table is
        built on the host and mirrored to each device once (again after an add)."""
        import cupy

        act = to_cupy(query_activations)
        emb = to_cupy(query_embeddings)
        check_rank(act, "query_activations", (2,), f"(Q, num_buckets = {self.num_buckets})")
        check_rank(emb, "query_embeddings", (2,), "(Q, dim)")
        if act.shape[1] != self.num_buckets:
            raise ValueError(f"query_activations has {act.shape[1]} columns; this table has "
                             f"{self.num_buckets} buckets")
        if emb.shape[1] != self.dim:
            raise ValueError(f"query_embeddings has dimension {emb.shape[1]}; the table's "
                             f"embeddings have {self.dim}")
        check_same_rows(act, "query_activations", emb, "query_embeddings")
        act = cupy.ascontiguousarray(as_float_array(act, "query_activations",
                                                    dtype=np.float32))
        emb = cupy.ascontiguousarray(as_float_array(emb, "query_embeddings",
                                                    dtype=np.float32))
        exclude = self._exclude_positions(self._exclude(
            None if exclude_ids is None else to_numpy(exclude_ids, allow_device_copy=True),
            act.shape[0]))
        with torch_stream(origin):
            arrays = self._device_arrays()
            dist, items, counts = _table_gpu.probe(act, emb, self.k, topk, arrays[:-1],
                                                  cupy.asarray(exclude), self.metric == "ip")
            ids = cupy.where(items >= 0, arrays[-1][cupy.maximum(items, 0)], -1)
        self.candidate_counts = cupy.asnumpy(counts)
        return origin.wrap(dist), origin.wrap(ids)

    def _probe_arrays(self) -> tuple[np.ndarray, ...]:
        """(offsets, items, codes, embeddings, rows, item_of_row, ids): what the GPU probe
        (qkernels/cuda/table.cu) reads, on the host."""
        built = self._build()
        item_of_row = np.empty_like(built.rows)
        item_of_row[built.rows] = np.arange(built.rows.shape[0])
        return (built.offsets, built.items, built.codes, built.emb, built.rows, item_of_row,
                built.ids)

    def _device_arrays(self):
        """:meth:`_probe_arrays` on the current GPU, copied once per device."""
        import cupy

        return self._device_mirror(lambda: tuple(cupy.asarray(a) for a in self._probe_arrays()))

    def _search_block(self, built, act, emb, topk, exclude, chunks, dist, items, counts,
                      probes=None):
        """The passes of a search (see _table_cpu) for one block of queries."""
        num_queries = act.shape[0]
        if probes is None:
            probe_count = np.empty(num_queries, dtype=np.int64)
            _table_cpu.plan_probes(act, self.k, topk,
                                   np.full(num_queries, self.num_buckets, dtype=np.int64),
                                   built.offsets, built.items, built.codes, exclude,
                                   _chunks(num_queries), probe_count,
                                   np.empty(num_queries, dtype=np.int64))
        else:
            probe_count = np.ascontiguousarray(probes, dtype=np.int64)
        probe_offsets = np.zeros(num_queries + 1, dtype=np.int64)
        np.cumsum(probe_count, out=probe_offsets[1:])
        probe_list = np.empty(probe_offsets[-1], dtype=np.int64)
        _table_cpu.fill_probes(act, probe_offsets, probe_list)
        bucket_offsets, who, where = _table_cpu.invert_probes(probe_offsets, probe_list,
                                                              self.num_buckets)
        # chunks of consecutive buckets with about equal work (items x probing queries)
        work = np.diff(built.offsets) * np.diff(bucket_offsets) + 1
        cumulative = np.cumsum(work)
        targets = cumulative[-1] * np.arange(1, chunks) / chunks
        chunk_starts = np.concatenate(
            ([0], np.searchsorted(cumulative, targets, side="right"), [self.num_buckets]))
        chunk_starts = np.maximum.accumulate(chunk_starts).astype(np.int64)
        heap_dist = np.empty((chunks, num_queries, topk), dtype=np.float32)
        heap_row = np.empty((chunks, num_queries, topk), dtype=np.int64)
        heap_item = np.empty((chunks, num_queries, topk), dtype=np.int64)
        heap_size = np.zeros((chunks, num_queries), dtype=np.int64)
        found = np.zeros((chunks, num_queries), dtype=np.int64)
        inner_product = self.metric == "ip"
        _table_cpu.scan_buckets(emb, self.k, chunk_starts, built.offsets, built.items,
                                built.codes, built.emb, built.rows, exclude, probe_offsets,
                                probe_list, bucket_offsets, who, where, inner_product,
                                heap_dist, heap_row, heap_item, heap_size, found)
        counts[:] = found.sum(axis=0)
        _table_cpu.merge_heaps(heap_dist, heap_row, heap_item, heap_size, inner_product, dist,
                               items)

    def _exclude_positions(self, exclude: np.ndarray) -> np.ndarray:
        """Excluded ids -> the table positions holding them (every one: ids may repeat), each
        once per query (an id excluded twice must not be subtracted twice from the count)."""
        if exclude.shape[1] == 0:
            return exclude
        order, sorted_ids = self._ids_in_order()
        low = np.searchsorted(sorted_ids, exclude, side="left")
        high = np.searchsorted(sorted_ids, exclude, side="right")
        high = np.where(exclude < 0, low, high)
        matches = (high - low).sum(axis=1)
        out = np.full((exclude.shape[0], max(1, int(matches.max()))), -1, dtype=np.int64)
        for q in np.flatnonzero(matches):
            found = np.unique(np.concatenate([order[a:b] for a, b in zip(low[q], high[q],
                                                                        strict=True)]))
            out[q, : found.shape[0]] = found
        return out

    def _ids_in_order(self) -> tuple[np.ndarray, np.ndarray]:
        """The built table's positions sorted by id, and the ids in that order: sorted once
        per build (under the lock), not on every search that excludes ids."""
        built = self._build()

        def sort():
            order = np.argsort(built.ids, kind="stable")
            return built, order, built.ids[order]

        return self._once("_id_order", lambda o: o is not None and o[0] is built, sort)[1:]

    @staticmethod
    def _exclude(exclude_ids: Any, num_queries: int) -> np.ndarray:
        if exclude_ids is None:
            return np.empty((num_queries, 0), dtype=np.int64)
        exclude = to_numpy(exclude_ids, allow_device_copy=True)
        check_rank(exclude, "exclude_ids", (1, 2), "(Q,) or (Q, m)")
        if exclude.shape[0] != num_queries:
            raise ValueError(
                f"exclude_ids has {exclude.shape[0]} rows but there are {num_queries} queries"
            )
        exclude = as_index_array(exclude, "exclude_ids", allow_missing=True)
        return np.ascontiguousarray(exclude[:, None] if exclude.ndim == 1 else exclude)

    # ------------------------------------------------------------------ files

    _FIELDS: ClassVar[dict[str, tuple[str, int]]] = {
        "num_buckets": ("iu", 0), "k": ("iu", 0), "metric": ("U", 0), "dim": ("iu", 0),
        "embeddings": ("f", 2), "codes": ("iu", 2), "ids": ("iu", 1), "rows": ("iu", 1),
    }

    def _state(self) -> dict[str, np.ndarray]:
        return {"num_buckets": np.array(self.num_buckets), "k": np.array(self.k),
                "metric": np.array(self.metric),
                "dim": np.array(-1 if self.dim is None else self.dim),
                "embeddings": self._emb, "codes": self._codes, "ids": self._ids,
                "rows": self._rows}

    @classmethod
    def _from_state(cls, a: dict[str, np.ndarray], path: str | os.PathLike,
                    kind: str = "SparseHashTable") -> SparseHashTable:
        try:
            table = cls(int(a["num_buckets"]), int(a["k"]), str(a["metric"]))
            n = a["ids"].shape[0]
            dim = int(a["dim"])
            if (a["codes"].shape != (n, table.k) or a["rows"].shape != (n,)
                    or a["embeddings"].shape[0] != n
                    or (n and a["embeddings"].shape[1] != dim)):
                raise ValueError("array shapes do not agree")
            if n:
                table.dim = dim
                table._emb = table._embeddings(a["embeddings"], "embeddings")
                table._codes = as_index_array(a["codes"], "codes", table.num_buckets).copy()
                _check_distinct(table._codes, "codes")
                table._ids = as_index_array(a["ids"], "ids").copy()
                table._rows = as_index_array(a["rows"], "rows", n).copy()
                if np.unique(table._rows).shape[0] != n:
                    raise ValueError("insertion rows repeat")
        except (ValueError, TypeError) as error:
            raise ValueError(f"{os.fspath(path)!r} is a corrupted {kind} file ({error})"
                             ) from None
        return table

    def save(self, path: str | os.PathLike) -> None:
        """Write the table to ``path``.

        Parameters
        ----------
        path : str or os.PathLike
            A ``.npz`` file (no pickle inside); written whole or not at all.

        Raises
        ------
        OSError
            If the file cannot be written.
        """
        save_npz(path, "SparseHashTable", self._VERSION, **self._state())

    @classmethod
    def load(cls, path: str | os.PathLike) -> SparseHashTable:
        """Read a table written by :meth:`save`.

        Parameters
        ----------
        path : str or os.PathLike
            The file; it is checked member by member before anything is unpacked, and never
            unpickled.

        Returns
        -------
        SparseHashTable
            The index, searchable at once (also from several threads).

        Raises
        ------
        ValueError
            If the file is truncated, damaged, of another kind or version.
        OSError
            If the file cannot be read.
        """
        return cls._from_state(load_npz(path, "SparseHashTable", cls._VERSION, cls._FIELDS),
                               path)
