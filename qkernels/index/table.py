"""SparseHashTable: the Deep Hash Table index over k-sparse codes."""

from __future__ import annotations

import warnings
from typing import Any, ClassVar

import numba
import numpy as np

from .. import _gpu
from .._arrays import origin_of, read_only, to_cupy, to_numpy, torch_stream
from .._checks import (
    as_distance_array,
    as_float_array,
    as_index_array,
    check_columns,
    check_distinct_rows,
    check_int,
    check_rank,
    check_same_rows,
    check_topk,
)
from .._filter import NO_MASK
from .._heap import padded
from ..quantize import ProductQuantizer
from . import _pq_cpu, _table_cpu, _table_gpu
from ._base import Index, Snapshot, ascending_once, ids_array

__all__ = ["SparseHashTable"]

_METRICS = ("l2", "ip")
_STORAGES = ("float32", "float16")
# no ids (see _search_block); read-only like a snapshot's ids, so that the scan and the merge
# compile once for both
_NO_IDS = read_only(np.empty(0, dtype=np.int64))
# a build holds a few (threads x buckets) int64 count arrays: 2**24 buckets (a 4096 x 4096
# cascade) take about 1 GB there; more is a mistake, not a table
MAX_BUCKETS = 1 << 24


def _chunks(count: int) -> int:
    """Work units for a parallel loop: a few per thread so uneven units balance out."""
    return max(1, min(count, 4 * numba.get_num_threads()))


class SparseHashTable(Index):
    """A hash table over k-sparse codes, re-ranked by exact distance (Jeong & Song, ICML 2018).

    Each item goes into the buckets of its ``k`` largest activations. A query looks at the
    union of the items in its own ``k`` best buckets (each item once) and, while that gives
    fewer than ``topk`` candidates, at its next-ranked buckets; the candidates are ranked by
    exact distance between embeddings. The table holds the embeddings once (float32) and
    ``N * k`` item positions. The lifecycle (ids, ``remove_ids``, ``reset``, ``merge_from``,
    filtered search, bytes) is :class:`qkernels.index.Index`'s.

    Parameters
    ----------
    num_buckets : int
        ``d``, the length of an activation vector, ``1..2**24``.
    k : int
        Buckets per item and per query, ``1 <= k <= num_buckets``.
    metric : {"l2", "ip"}, default "l2"
        Re-ranking by squared Euclidean distance (ascending) or inner product (descending).
    storage : {"float32", "float16"} or ProductQuantizer, default "float32"
        How the embeddings the candidates are re-ranked by are kept: float32 (exact distances),
        float16 (half the bytes; distances of the float16 values), or the codes of a trained
        ProductQuantizer of the embeddings' dimension (``M`` bytes an item; re-ranked by
        asymmetric distance, as :class:`PQIndex` ranks).

    Attributes
    ----------
    candidate_counts : array of int64, shape (Q,)
        The number of candidates each query of the last search looked at
        (:func:`qkernels.metrics.search_speedup` turns them into the SUF); numpy's, or after a
        search of queries on a GPU, on their device in their array type (also where the
        search ran on host copies).
    dim : int or None
        The embeddings' dimension (None until the first add).

    Raises
    ------
    ValueError
        If a parameter is out of range, ``metric`` or ``storage`` unknown.
    TypeError
        If ``num_buckets`` or ``k`` is not an integer, or ``storage`` a quantizer that is not
        trained.

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

    _KIND = "SparseHashTable"
    _VERSION = 1

    def __init__(self, num_buckets: int, k: int, metric: str = "l2", *,
                 storage: str | ProductQuantizer = "float32"):
        self.num_buckets = check_int(num_buckets, "num_buckets", 1, MAX_BUCKETS)
        self.k = check_int(k, "k", 1, self.num_buckets)
        if metric not in _METRICS:
            raise ValueError(f"metric must be one of {_METRICS}, got {metric!r}")
        self.metric = metric
        self.dim: int | None = None
        self.storage = storage
        if isinstance(storage, ProductQuantizer):
            if not storage.is_trained:
                raise TypeError("storage: the ProductQuantizer is not trained (call "
                                "pq.train(x) first)")
            self.dim = storage.dim
        elif storage not in _STORAGES:
            raise ValueError(f"storage must be one of {_STORAGES} or a trained "
                             f"ProductQuantizer, got {storage!r}")
        self.candidate_counts = np.empty(0, dtype=np.int64)
        self._init_index()

    def __repr__(self) -> str:
        storage = "pq" if isinstance(self.storage, ProductQuantizer) else self.storage
        return (f"SparseHashTable(num_buckets={self.num_buckets}, k={self.k}, "
                f"metric={self.metric!r}, storage={storage!r}, ntotal={self.ntotal}, "
                f"dim={self.dim})")

    @property
    def nbytes(self) -> int:
        """The bytes the table's arrays hold (the stored vectors or codes, the bucket codes,
        ids and insertion rows, and the bucket lists once built)."""
        state = self._state
        total = sum(a.nbytes for a in (state.emb, state.codes, state.ids, state.rows))
        if state.offsets is not None:
            total += state.offsets.nbytes + state.items.nbytes
        else:  # what the first search builds
            total += 8 * (self.num_buckets + 1) + 4 * state.codes.size
        return int(total)

    def _stored(self, emb: np.ndarray) -> np.ndarray:
        """Checked float32 embeddings as the table keeps them (see ``storage``)."""
        if isinstance(self.storage, ProductQuantizer):
            return np.ascontiguousarray(self.storage.encode(emb))
        if self.storage == "float16":
            largest = float(np.abs(emb).max()) if emb.size else 0.0
            if largest > float(np.finfo(np.float16).max):
                raise ValueError(f"embeddings hold a value of magnitude {largest:.3g}, beyond "
                                 f"float16's {np.finfo(np.float16).max:.0f}: scale them down "
                                 "or keep them as float32")
            return emb.astype(np.float16)
        return emb

    def _rerank_tables(self, emb: np.ndarray) -> np.ndarray:
        """What the probe re-ranks with besides the queries (``_table_cpu.rerank_pair``): the
        queries' ``(Q, M, K)`` ADC tables where the table keeps PQ codes, else nothing."""
        if not isinstance(self.storage, ProductQuantizer):
            return np.empty((emb.shape[0], 0, 0), dtype=np.float32)
        pq = self.storage
        tables = np.empty((emb.shape[0], pq.num_subspaces, pq.num_centroids), np.float32)
        _pq_cpu.distance_tables(emb, pq.codebooks, self.metric == "ip", tables)
        return tables

    # ------------------------------------------------------------------ adding

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
            64-bit ids ``>= 0``, unique in the table, returned by searches (default: the next
            ``N`` of ``next_id``).

        Returns
        -------
        SparseHashTable
            ``self``.

        Raises
        ------
        ValueError
            If the arrays disagree in rows, have another width, NaN or Inf; an id is
            negative, repeated or already in the table; or the table would hold ``2**31``
            items.
        TypeError
            If an array does not hold numbers of the right kind, or arrays of two libraries
            or devices are mixed.
        """
        origin_of(activations, embeddings, ids, names=("activations", "embeddings", "ids"))
        act = self._activations(activations, "activations")
        codes = np.empty((act.shape[0], self.k), dtype=np.int32)
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
            64-bit ids ``>= 0``, unique in the table (default: the next ``N`` of ``next_id``).

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
        check_distinct_rows(c, "codes")
        return self._append(np.ascontiguousarray(c, dtype=np.int32), embeddings, ids,
                            c.shape[0])

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
        if self.dim is not None and emb.shape[1] != self.dim:
            raise ValueError(
                f"{name} has dimension {emb.shape[1]}; the table's embeddings have {self.dim}"
            )
        return np.ascontiguousarray(as_distance_array(emb, name))

    def _append(self, codes: np.ndarray, embeddings: Any, ids: Any, n: int) -> SparseHashTable:
        emb = self._embeddings(embeddings, "embeddings")
        check_same_rows(codes, "the codes", emb, "embeddings")
        with self._writer:
            state = self._state
            new_ids = self._new_ids(state, ids, n)
            if state.size + n >= 2**31:
                raise ValueError("a SparseHashTable holds fewer than 2**31 items")
            stored = self._stored(emb)
            if self.dim is None:
                self.dim = emb.shape[1]
            old = state.emb if state.size else stored[:0]
            self._publish(Snapshot(
                emb=np.concatenate([old, stored]), codes=np.concatenate([state.codes, codes]),
                ids=np.concatenate([state.ids, new_ids]),
                rows=np.concatenate([state.rows, state.size + np.arange(n, dtype=np.int32)]),
                offsets=None, items=None), new_ids=new_ids, given=ids is not None)
        return self

    # ------------------------------------------------------------------ the protocol's parts

    def _empty_state(self) -> Snapshot:
        if isinstance(self.storage, ProductQuantizer):
            empty = np.empty((0, self.storage.num_subspaces), dtype=self.storage.code_dtype)
        else:
            empty = np.empty((0, 0), dtype=np.dtype(self.storage))
        return Snapshot(emb=empty, codes=np.empty((0, self.k), dtype=np.int32),
                        ids=np.empty(0, dtype=np.int64), rows=np.empty(0, dtype=np.int32),
                        offsets=None, items=None)

    def _ordered_ids(self, state: Snapshot) -> np.ndarray:
        """The ids in the order added (a built snapshot holds its items sorted by code)."""
        def build():
            order = np.empty_like(state.rows)
            order[state.rows] = np.arange(state.rows.shape[0])
            ids = state.ids[order]
            ids.setflags(write=False)
            return ids

        return self._cached(state, "ids_in_order", build)

    def _kept(self, state: Snapshot, keep: np.ndarray) -> Snapshot:
        rows = state.rows[keep]
        ranks = np.empty_like(rows)  # insertion order kept, renumbered 0..n-1
        ranks[np.argsort(rows, kind="stable")] = np.arange(rows.shape[0], dtype=rows.dtype)
        return Snapshot(emb=state.emb[keep], codes=state.codes[keep], ids=state.ids[keep],
                        rows=ranks, offsets=None, items=None)

    def _joined(self, state: Snapshot, other: Snapshot, other_ids: np.ndarray) -> Snapshot:
        if state.size == 0:
            emb = other.emb
        elif other.size == 0:
            emb = state.emb
        else:
            emb = np.concatenate([state.emb, other.emb])
        if emb.size and not isinstance(self.storage, ProductQuantizer):
            self.dim = emb.shape[1]  # (PQ codes have num_subspaces columns; dim is the pq's)
        return Snapshot(emb=emb, codes=np.concatenate([state.codes, other.codes]),
                        ids=np.concatenate([state.ids, other_ids]),
                        rows=np.concatenate([state.rows, (state.size + other.rows).astype(
                            np.int32)]), offsets=None, items=None)

    def _check_compatible(self, other: SparseHashTable) -> None:
        for name in ("num_buckets", "k", "metric"):
            if getattr(self, name) != getattr(other, name):
                raise ValueError(f"the tables differ in {name}: {getattr(self, name)!r} here, "
                                 f"{getattr(other, name)!r} there")
        if self.dim is not None and other.dim is not None and self.dim != other.dim:
            raise ValueError(f"the tables' embeddings differ in dimension: {self.dim} here, "
                             f"{other.dim} there")
        mine, theirs = self.storage, other.storage
        same = (mine is theirs or (isinstance(mine, str) and mine == theirs)
                or (isinstance(mine, ProductQuantizer) and isinstance(theirs, ProductQuantizer)
                    and mine.num_subspaces == theirs.num_subspaces
                    and mine.nbits == theirs.nbits
                    and np.array_equal(mine.codebooks, theirs.codebooks)))
        if not same:
            raise ValueError("the tables keep their embeddings differently (storage): "
                             f"{self._storage_name()} here, {other._storage_name()} there")

    def _storage_name(self) -> str:
        return "PQ codes" if isinstance(self.storage, ProductQuantizer) else self.storage

    def _reconstructed(self, state: Snapshot, positions: np.ndarray) -> np.ndarray:
        """The stored embeddings (float16 ones as float32; PQ codes decoded)."""
        rows = state.emb[positions]
        if isinstance(self.storage, ProductQuantizer):
            return self.storage.decode(rows)
        return rows.astype(np.float32)

    def _built(self, state: Snapshot) -> Snapshot:
        """``state`` sorted by codes with its CSR (:meth:`_sorted`), built once per snapshot
        under the lock; published in its place where it is still the table's current one (the
        same items in another order: searches holding the unsorted one are unaffected)."""
        if state.offsets is not None:
            return state
        built = self._cached(state, "built", lambda: self._sorted(state))
        if self._state is state:
            with self._writer:
                if self._state is state:
                    self._state = built
        return built

    def _sorted(self, state: Snapshot) -> Snapshot:
        """Sort the items by their codes, best bucket first, and build the CSR (counting sorts,
        in parallel).

        Sorting by the whole code tuple, not only the best bucket, makes every bucket's items
        fall into long contiguous runs: the items that rank the bucket first form one block,
        and those that rank it second come in one run per first bucket, which for learned codes
        are few. A search then streams rows instead of gathering them.
        """
        emb, codes, ids, rows = state.emb, state.codes, state.ids, state.rows
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
        return Snapshot(emb=emb, codes=codes, ids=ids, rows=rows, offsets=offsets, items=items)

    @staticmethod
    def _gathered(rows: np.ndarray, order: np.ndarray) -> np.ndarray:
        if rows.dtype == np.float16:  # Numba has no float16 arrays: gather the bits
            return SparseHashTable._gathered(rows.view(np.uint16), order).view(np.float16)
        out = np.empty_like(rows)
        _table_cpu.gather_rows(rows, order, out)
        return out

    @property
    def bucket_sizes(self) -> np.ndarray:
        """The number of items in each bucket (an item counts in each of its ``k``): int64,
        shape ``(num_buckets,)``."""
        return np.diff(self._built(self._state).offsets)

    # ------------------------------------------------------------------ searching

    def search(self, query_activations: Any, query_embeddings: Any, topk: int,
               exclude_ids: Any = None, *, include: Any = None, exclude: Any = None
               ) -> tuple[Any, Any]:
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
            Deprecated: ``exclude`` with one row per query (``exclude=ids[:, None]`` for one
            id per query).
        include : array_like of int, shape (n,), optional
            Only these ids may be returned.
        exclude : array_like of int, shape (n,) or (Q, m), optional
            These ids are never returned: one array for every query, or one row per query
            (e.g. the query itself when the queries come from the table; -1 entries are
            padding). Not with ``include``.

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
            ``topk`` is below 1 or its results would not fit in memory; if the filter is
            refused (both given, negative ids, rows that do not match the queries).
        TypeError
            If a query array does not hold real numbers, a filter does not hold integers, or
            arrays of two libraries or devices are mixed.

        Notes
        -----
        Ties in distance go to the item added first. A refused item is no candidate: it is not
        counted, and the probe goes on to the next buckets until ``topk`` items that pass are
        found (or every bucket is probed). ``candidate_counts`` then holds the number of
        candidates each query looked at. Queries on a GPU are searched there (``topk`` up to
        64; with ``exclude`` per query, not with ``include`` or one ``exclude`` for every
        query) against a copy of the table made on the first such search of each snapshot;
        ``candidate_counts`` then stays on the device.
        """
        origin = origin_of(query_activations, query_embeddings,
                           names=("query_activations", "query_embeddings"))
        exclude = _merged_exclude(exclude, exclude_ids)
        state = self._state  # the snapshot this search reads, whatever happens meanwhile
        # the GPU probe takes excluded ids per query; a filter for every query runs here
        per_query = include is None and (exclude is None or np.ndim(exclude) == 2)
        if (per_query and self.storage == "float32" and origin.is_cuda and _gpu.available()
                and state.size
                and check_int(topk, "topk", 1) <= _table_gpu.MAX_TOPK):
            return self._search_on_device(origin, query_activations, query_embeddings, topk,
                                          state, exclude)
        act, emb = self._host_queries(query_activations, query_embeddings)
        dist, ids, counts = self._search_host(act, emb, topk, include, exclude, state=state)
        # GPU queries get their counts on their device wherever the search ran (host callers
        # keep numpy's, whatever their array type)
        self.candidate_counts = origin.wrap(counts) if origin.is_cuda else counts
        return origin.wrap(dist), origin.wrap(ids)

    def _host_queries(self, query_activations: Any, query_embeddings: Any
                      ) -> tuple[np.ndarray, np.ndarray]:
        """The queries, checked, as contiguous host arrays (activations, float32 embeddings)."""
        act = self._activations(query_activations, "query_activations")
        emb = self._embeddings(query_embeddings, "query_embeddings")
        check_same_rows(act, "query_activations", emb, "query_embeddings")
        return act, emb

    def _search_host(self, act: np.ndarray, emb: np.ndarray, topk: int, include: Any,
                     exclude: Any, probes: np.ndarray | None = None,
                     state: Snapshot | None = None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The CPU search of checked queries: ``(D, I, candidate_counts)``. ``probes`` (per
        query, >= k) fixes how many buckets each query probes instead of the expansion rule
        (a sharded search plans them over all shards)."""
        state = self._built(self._state if state is None else state)
        num_queries = act.shape[0]
        topk, work = check_topk(topk, state.size, num_queries)
        lists, mask, excluded = self._filtered_lists(state, include, exclude, num_queries)
        dist = np.empty((num_queries, work), dtype=np.float32)
        ids = np.empty((num_queries, work), dtype=np.int64)
        counts = np.zeros(num_queries, dtype=np.int64)
        if state.size == 0:
            dist.fill(-np.inf if self.metric == "ip" else np.inf)
            ids.fill(-1)
        elif num_queries:
            # bound the per-chunk ranked rows (chunks x queries x topk rounded up to eight
            # entries, 16 bytes each) to ~64 MB
            chunks = _chunks(self.num_buckets)
            block = max(1, (1 << 22) // (chunks * (-(-work // 8) * 8)))
            for start in range(0, num_queries, block):
                part = slice(start, min(num_queries, start + block))
                self._search_block(state, lists, act[part], emb[part], work, excluded[part],
                                   mask, chunks, dist[part], ids[part], counts[part],
                                   None if probes is None else probes[part])
        dist, ids = padded(dist, ids, topk, -np.inf if self.metric == "ip" else np.inf)
        return dist, ids.astype(np.int64, copy=False), counts

    def _filtered_lists(self, state: Snapshot, include: Any, exclude: Any, num_queries: int
                        ) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray, np.ndarray]:
        """The bucket lists (``offsets``, ``items``) a search of ``state`` reads and the
        ``(mask, excluded)`` filter of ``qkernels._filter`` it applies to them.

        Where ``include`` allows few items (see below), the lists are those of the allowed
        items alone, with no filter: the probe goes to the same buckets and looks at the
        same candidates as over every item's lists with a filter that refuses the others, but
        reads no refused item (with few items allowed, the probe goes on through nearly every
        bucket to find ``topk`` of them, and every list it reads is mostly refused items)."""
        if include is None or exclude is not None:
            return (state.offsets, state.items), *self._filter(state, include, exclude,
                                                              num_queries)
        allowed = self._included(state, include)
        no_rows = np.empty((num_queries, 0), dtype=np.int64)
        # the lists cost a read of each allowed item's k codes: no more than the filter's
        # first reads where they take at most one in k items and no more entries than the
        # queries' first k buckets hold (about N k / num_buckets entries a bucket)
        if (allowed.shape[0] * self.k > state.size or allowed.shape[0] * self.num_buckets
                > num_queries * self.k * state.size):
            return (state.offsets, state.items), self._include_mask(state, allowed), no_rows
        allowed = ascending_once(allowed)
        offsets, local = _table_cpu.counting_sort(state.codes[allowed], self.num_buckets,
                                                  _chunks(1))
        return (offsets, allowed.astype(state.items.dtype)[local]), NO_MASK, no_rows

    def count_candidates(self, query_activations: Any, probes: Any, *, include: Any = None,
                         exclude: Any = None) -> np.ndarray:
        """The candidates each query would look at in its first ``probes[q]`` buckets.

        A hook for an exact merge of shards (:class:`qkernels.distributed.ShardedIndex`): the
        candidates of one table over all shards are the sums of the shards' counts, which
        decide how many buckets each query probes.

        Parameters
        ----------
        query_activations : array_like, shape (Q, num_buckets)
            The queries' hash-head outputs.
        probes : array_like of int, shape (Q,)
            Buckets to count per query: 0 (none) or ``k`` to ``num_buckets``.
        include : array_like of int, shape (n,), optional
            As in :meth:`search`: only these ids count.
        exclude : array_like of int, shape (n,) or (Q, m), optional
            As in :meth:`search`: these ids do not count.

        Returns
        -------
        ndarray of int64, shape (Q,)
            The distinct items that pass the filter in each query's first buckets.

        Raises
        ------
        ValueError
            If the activations have another width, NaN or Inf, ``probes`` another length or
            a count outside ``0`` and ``k..num_buckets``, or the filter is refused.
        TypeError
            If an array does not hold numbers of the right kind.
        """
        act = self._activations(query_activations, "query_activations")
        return self._count_candidates(act, include, exclude,
                                      _probes(probes, act, self.k, none=True))

    def search_probes(self, query_activations: Any, query_embeddings: Any, topk: int,
                      probes: Any, *, include: Any = None, exclude: Any = None
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """:meth:`search` with the number of probed buckets of each query given.

        A hook for an exact merge of shards: each shard probes the buckets that one table over
        all shards would (:meth:`count_candidates` decides how many).

        Parameters
        ----------
        query_activations : array_like, shape (Q, num_buckets)
            The queries' hash-head outputs.
        query_embeddings : array_like, shape (Q, dim)
            The queries' embeddings.
        topk : int
            Results per query.
        probes : array_like of int, shape (Q,)
            Buckets to probe per query, ``k`` to ``num_buckets``.
        include : array_like of int, shape (n,), optional
            As in :meth:`search`.
        exclude : array_like of int, shape (n,) or (Q, m), optional
            As in :meth:`search`.

        Returns
        -------
        D : ndarray of float32, shape (Q, topk)
            As :meth:`search`.
        I : ndarray of int64, shape (Q, topk)
            As :meth:`search`.
        counts : ndarray of int64, shape (Q,)
            The candidates each query looked at.

        Raises
        ------
        ValueError
            As :meth:`search`; or if ``probes`` has another length or a count outside
            ``k..num_buckets``.
        TypeError
            As :meth:`search`.
        """
        act, emb = self._host_queries(query_activations, query_embeddings)
        return self._search_host(act, emb, check_int(topk, "topk", 1), include, exclude,
                                 _probes(probes, act, self.k, none=False))

    def _count_candidates(self, act: np.ndarray, include: Any, exclude: Any,
                          max_probes: np.ndarray) -> np.ndarray:
        """Per query, the candidates (distinct items that pass the filter) of its first
        ``max_probes[q]`` buckets (0 or >= k; 0 counts nothing)."""
        num_queries = act.shape[0]
        counts = np.zeros(num_queries, dtype=np.int64)
        state = self._built(self._state)
        if state.size == 0 or num_queries == 0:
            return counts
        (offsets, items), mask, excluded = self._filtered_lists(state, include, exclude,
                                                                num_queries)
        probe_count = np.empty(num_queries, dtype=np.int64)
        _table_cpu.plan_probes(act, self.k, np.iinfo(np.int64).max,
                               np.ascontiguousarray(max_probes, dtype=np.int64), offsets,
                               items, state.codes, excluded, mask, _chunks(num_queries),
                               probe_count, counts, np.empty((num_queries, self.k), np.int64))
        return counts

    def _search_on_device(self, origin, query_activations, query_embeddings, topk: int,
                          state: Snapshot, exclude: Any = None):
        """The probe on the GPU (qkernels/cuda/table.cu), on torch's stream. The table is
        built on the host and mirrored to each device once per snapshot."""
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
        state = self._built(state)
        with torch_stream(origin):
            excluded = self._device_exclude(state, exclude, act.shape[0])
            arrays = self._state_mirror(
                state, lambda: tuple(cupy.asarray(a) for a in self._probe_arrays(state)))
            dist, items, counts = _table_gpu.probe(act, emb, self.k, topk, arrays[:-1],
                                                  excluded, self.metric == "ip")
            ids = cupy.where(items >= 0, arrays[-1][cupy.maximum(items, 0)], -1)
        self.candidate_counts = origin.wrap(counts)  # on the device: no wait for the search
        return origin.wrap(dist), origin.wrap(ids)

    def _probe_arrays(self, state: Snapshot) -> tuple[np.ndarray, ...]:
        """(offsets, items, codes, embeddings, rows, item_of_row, ids): what the GPU probe
        (qkernels/cuda/table.cu) reads, on the host."""
        rows = state.rows.astype(np.int64)
        item_of_row = np.empty_like(rows)
        item_of_row[rows] = np.arange(rows.shape[0])
        return (state.offsets, state.items, state.codes.astype(np.int64), state.emb, rows,
                item_of_row, state.ids)

    def _search_block(self, state, lists, act, emb, topk, excluded, mask, chunks, dist, ids,
                      counts, probes=None):
        """The passes of a search (see _table_cpu) for one block of queries, into ``dist``
        and ``ids``, over the bucket lists ``lists`` (``offsets``, ``items``: the snapshot's,
        or those of the items a filter allows)."""
        offsets, items = lists
        num_queries = act.shape[0]
        excluded = np.ascontiguousarray(excluded)
        first = np.empty((num_queries if probes is None else 0, self.k), dtype=np.int64)
        if probes is None:
            probe_count = np.empty(num_queries, dtype=np.int64)
            _table_cpu.plan_probes(act, self.k, topk,
                                   np.full(num_queries, self.num_buckets, dtype=np.int64),
                                   offsets, items, state.codes, excluded, mask,
                                   _chunks(num_queries), probe_count,
                                   np.empty(num_queries, dtype=np.int64), first)
        else:
            probe_count = np.ascontiguousarray(probes, dtype=np.int64)
        probe_offsets = np.zeros(num_queries + 1, dtype=np.int64)
        np.cumsum(probe_count, out=probe_offsets[1:])
        if probes is None and probe_offsets[-1] == first.size:
            probe_list = first.reshape(-1)  # every query probes its k best: as fill_probes
        else:
            probe_list = np.empty(probe_offsets[-1], dtype=np.int64)
            _table_cpu.fill_probes(act, probe_offsets, first, probe_list)
        bucket_offsets, who, where = _table_cpu.invert_probes(probe_offsets, probe_list,
                                                              self.num_buckets)
        # chunks of consecutive buckets with about equal work (items x probing queries)
        work = np.diff(offsets) * np.diff(bucket_offsets) + 1
        cumulative = np.cumsum(work)
        targets = cumulative[-1] * np.arange(1, chunks) / chunks
        chunk_starts = np.concatenate(
            ([0], np.searchsorted(cumulative, targets, side="right"), [self.num_buckets]))
        chunk_starts = np.maximum.accumulate(chunk_starts).astype(np.int64)
        # per chunk and query: the best candidates' (distance, row) keys, sorted, and items;
        # rows of whole 512-bit registers
        width = -(-topk // 8) * 8
        ranked_keys = np.empty((chunks, num_queries, width), dtype=np.uint64)
        ranked_ids = np.empty((chunks, num_queries, width), dtype=np.int64)
        found = np.zeros((chunks, num_queries), dtype=np.int64)
        inner_product = self.metric == "ip"
        # float16 rows go as their bits viewed as int16, never a PQ code type (uint8, uint16)
        stored = state.emb.view(np.int16) if state.emb.dtype == np.float16 else state.emb
        # the scan ranks ids where a bucket's items are consecutive (k = 1), else positions,
        # whose ids the merge looks up (see scan_buckets)
        scan_ids, merge_ids = (state.ids, _NO_IDS) if self.k == 1 else (_NO_IDS, state.ids)
        _table_cpu.scan_buckets(emb, self._rerank_tables(emb), self.k, chunk_starts,
                                offsets, items, state.codes, stored, state.rows,
                                scan_ids, excluded, mask, probe_offsets, probe_list,
                                bucket_offsets, who, where, inner_product, topk, ranked_keys,
                                ranked_ids, found)
        counts[:] = found.sum(axis=0)
        _table_cpu.merge_ranked(ranked_keys, ranked_ids, topk, found, inner_product, merge_ids,
                                _chunks(num_queries), dist, ids)

    # ------------------------------------------------------------------ files

    _FIELDS: ClassVar[dict[str, tuple[str, int]]] = {
        "num_buckets": ("iu", 0), "k": ("iu", 0), "metric": ("U", 0), "dim": ("iu", 0),
        "embeddings": ("fu", 2), "codes": ("iu", 2), "ids": ("iu", 1), "rows": ("iu", 1),
    }  # and, absent from files of earlier releases: "next_id", "default_ids", "storage" (then
    # float32 embeddings), and for PQ storage "pq_nbits", "pq_codebooks"

    def _arrays_of(self, state: Snapshot) -> dict[str, np.ndarray]:
        return {"num_buckets": np.array(self.num_buckets), "k": np.array(self.k),
                "metric": np.array(self.metric),
                "dim": np.array(-1 if self.dim is None else self.dim),
                "embeddings": state.emb, "codes": state.codes, "ids": state.ids,
                "rows": state.rows, "next_id": np.array(self._next_id),
                "default_ids": np.array(self._default_ids), **self._storage_members()}

    def _storage_members(self) -> dict[str, np.ndarray]:
        if isinstance(self.storage, ProductQuantizer):
            return {"storage": np.array("pq"), "pq_nbits": np.array(self.storage.nbits),
                    "pq_codebooks": self.storage.codebooks}
        return {"storage": np.array(self.storage)}

    @classmethod
    def _from_arrays(cls, a: dict[str, np.ndarray]) -> SparseHashTable:
        table = cls(int(a["num_buckets"]), int(a["k"]), str(a["metric"]),
                    storage=_storage_of(a))
        table._restore(a)
        return table

    def _restore(self, a: dict[str, np.ndarray]) -> None:
        """This (empty) table's items from a file's checked members."""
        n = a["ids"].shape[0]
        dim = int(a["dim"])
        width = (self.storage.num_subspaces if isinstance(self.storage, ProductQuantizer)
                 else dim)
        if (a["codes"].shape != (n, self.k) or a["rows"].shape != (n,)
                or a["embeddings"].shape[0] != n
                or (n and a["embeddings"].shape[1] != width)):
            raise ValueError("array shapes do not agree")
        if not n:
            if "next_id" in a:
                self._restore_ids({k: v for k, v in a.items() if k != "ids"}, 0)
            return
        self.dim = dim
        emb = a["embeddings"]
        if isinstance(self.storage, ProductQuantizer):
            emb = self.storage.check_codes(emb, "embeddings (PQ codes)").copy()
        else:
            if emb.dtype.kind != "f":
                raise ValueError(f"the embeddings are {emb.dtype}; the table keeps "
                                 f"{self.storage}")
            # checked as added ones are (finite, in range); float16 ones convert exactly
            emb = self._stored(self._embeddings(emb, "embeddings")).copy()
        codes = as_index_array(a["codes"], "codes", self.num_buckets).astype(np.int32)
        check_distinct_rows(codes, "codes")
        rows = as_index_array(a["rows"], "rows", n).astype(np.int32)
        if np.unique(rows).shape[0] != n:
            raise ValueError("insertion rows repeat")
        # the ids in the order added, for the checks; stored in the file's order
        ids = a["ids"]
        order = np.empty_like(rows)
        order[rows] = np.arange(n)
        self._restore_ids({**a, "ids": ids[order]}, n)
        self._state = Snapshot(emb=emb, codes=codes, ids=ids_array(ids, "ids", n), rows=rows,
                               offsets=None, items=None)


def _storage_of(a: dict[str, np.ndarray]) -> str | ProductQuantizer:
    """The ``storage`` a table file names (files of earlier releases: float32)."""
    name = a.get("storage")
    if name is None:
        return "float32"
    name = str(name)
    if name != "pq":
        return name
    codebooks = a.get("pq_codebooks")
    nbits = a.get("pq_nbits")
    if codebooks is None or nbits is None or codebooks.ndim != 3:
        raise ValueError("a table of PQ storage lacks its quantizer's codebooks")
    m, _, dsub = codebooks.shape
    return ProductQuantizer(m * dsub, m, int(nbits)).set_codebooks(codebooks)


def _probes(probes: Any, act: np.ndarray, k: int, *, none: bool) -> np.ndarray:
    """``probes`` checked as one count of buckets per query of ``act``: from ``k`` (a query
    probes its ``k`` best buckets first) to every bucket, or 0 where ``none`` allows it."""
    counts = to_numpy(probes, allow_device_copy=True, name="probes")
    check_rank(counts, "probes", (1,), "(Q,)")
    check_same_rows(act, "query_activations", counts, "probes")
    counts = as_index_array(counts, "probes")
    buckets = act.shape[1]
    bad = ((counts < k) & ((counts != 0) | (not none))) | (counts > buckets)
    if bad.any():
        accepted = f"{'0 or ' if none else ''}{k}..{buckets} (k to every bucket)"
        raise ValueError(f"probes[{int(np.argmax(bad))}] is {int(counts[bad][0])}; "
                         f"accepted: {accepted}")
    return counts


def _merged_exclude(exclude: Any, exclude_ids: Any) -> Any:
    """``exclude``, or the deprecated ``exclude_ids`` (one row of ids per query) as it."""
    if exclude_ids is None:
        return exclude
    if exclude is not None:
        raise ValueError("give exclude (exclude_ids is its deprecated name), not both")
    warnings.warn("exclude_ids is deprecated: pass exclude= with one row of ids per query "
                  "(exclude=ids[:, None] for one id each)", DeprecationWarning, stacklevel=3)
    e = to_numpy(exclude_ids, allow_device_copy=True, name="exclude_ids")
    check_rank(e, "exclude_ids", (1, 2), "(Q,) or (Q, m)")
    return e[:, None] if e.ndim == 1 else e
