"""Search beyond one machine: :class:`ShardedIndex`, one shard per rank of torch.distributed.

Every rank holds a shard (any index of qkernels) of the database and the same queries (or its
own: ``all_ranks_queries=False``). A search runs the shard's search on every rank and merges
the ranks' ``(D, I)`` exactly: every rank returns what one index over the union of the shards
(added in rank order) returns, ids and distances alike, with ties to the lower global id.

What travels per search: ``topk`` (distance, id) pairs per query from every rank (an
``all_gather``: ``world_size * topk`` pairs per query arrive at each rank), a few integers per
query, and for the hash tables a few rounds of one integer per query (see below); the queries
themselves only with ``all_ranks_queries=False``. Built on torch.distributed: gloo for CPU
tensors, nccl for CUDA ones (the process group's backend decides where the exchanged tensors
live).

Exactness of the hash tables. A table probes a query's ``k`` best buckets and, while it has
fewer than ``topk`` candidates, its next-ranked ones. A shard holds fewer items per bucket than
the whole table, so left alone it would probe more buckets than the whole table does (and
return items the whole table never looks at). The sharded search therefore decides how many
buckets each query probes over all shards: the candidates of a query's first ``p`` buckets are
the sum of the shards' (items are split between shards, and each item is counted once within
its shard), so the smallest sufficient ``p`` is found by an exponential then a binary search in
which each step is one ``all_reduce`` of the per-query counts. Usually the first step (``p =
k``) settles every query. Then each shard probes exactly those buckets, and the merged
``candidate_counts`` are those of the whole table (its SUF unchanged).

Exactness of the 4-bit fast scan (PQIndex over a 4-bit quantizer). One index keeps the best
``R`` items by rounded sum and re-ranks them by ADC distance; each shard's own re-ranked top-K
would be drawn from a different candidate set. So each shard sends its best ``R`` by (rounded
sum, id) with their ADC distances (the rounded tables depend only on the query and the shared
codebooks, so the sums compare across shards), and the merge takes the best ``R`` of the
union by (sum, global id), then the best ``topk`` of those by (ADC distance, id): ``R``
instead of ``topk`` pairs per query travel.

Every rank must call the same methods in the same order (collective calls). Bad input on one
rank is an error on every rank, with that rank's message, never a hang of the others.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from ._arrays import NUMPY, TORCH, origin_of, to_numpy
from .index import BinaryIndex, HierarchicalHashTable, PQIndex, SparseHashTable, _table_cpu

__all__ = ["ShardedIndex"]

_KINDS = (SparseHashTable, HierarchicalHashTable, PQIndex, BinaryIndex)
# the query arguments of each kind's search (arrays; the first is the one that counts rows)
_QUERY_ARGS = {
    SparseHashTable: ("query_activations", "query_embeddings", "exclude_ids"),
    HierarchicalHashTable: ("query_level1", "query_level2", "query_embeddings", "exclude_ids"),
    PQIndex: ("q",),
    BinaryIndex: ("query_codes", "query_features"),
}
# the parameters that every shard must share, by kind
_PARAMETERS = {
    SparseHashTable: ("num_buckets", "k", "metric", "dim"),
    HierarchicalHashTable: ("num_buckets", "k", "metric", "dim"),
    PQIndex: ("dim", "num_subspaces", "nbits", "metric", "codebooks (crc32)", "fast_scan"),
    BinaryIndex: ("nbits", "feature dimension"),
}
_METRICS = ("l2", "ip")
_IDS = ("offset", "global")
# dtypes that queries may have when they travel between ranks (all_ranks_queries=False)
_DTYPES = tuple(np.dtype(t) for t in ("float32", "float64", "float16", "int64", "int32",
                                      "int16", "int8", "uint64", "uint32", "uint16", "uint8",
                                      "bool"))
_MESSAGE_BYTES = 1024
_ERRORS = (ValueError, TypeError, RuntimeError, OSError)
_MANIFEST = "manifest.json"
_FORMAT = "qkernels.ShardedIndex"
_FORMAT_VERSION = 1


def _dist():
    import torch.distributed as dist

    return dist


def _check_group(group) -> None:
    dist = _dist()
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError(
            "ShardedIndex needs an initialised torch.distributed process group: call "
            "torch.distributed.init_process_group('gloo') (CPU tensors) or ('nccl') (CUDA "
            "tensors) first; torchrun sets the environment it reads")


class _Comm:
    """The collectives of a ShardedIndex on one process group, on numpy arrays (moved to the
    backend's device and back)."""

    def __init__(self, group):
        import torch

        dist = _dist()
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        self.device = (torch.device("cuda", torch.cuda.current_device())
                       if dist.get_backend(group) == "nccl" else torch.device("cpu"))

    def tensor(self, a: np.ndarray):
        import torch

        a = np.ascontiguousarray(a)
        if not a.flags.writeable:  # torch warns on (and may not alias) a read-only buffer
            a = a.copy()
        return torch.from_numpy(a).to(self.device)

    def gather_tensor(self, t):
        """``(world_size, *t.shape)``: every rank's ``t`` (same shape and dtype on all)."""
        import torch

        t = t.contiguous()
        parts = [torch.empty_like(t) for _ in range(self.world_size)]
        _dist().all_gather(parts, t, group=self.group)
        return torch.stack(parts)

    def gather(self, a: np.ndarray) -> np.ndarray:
        return self.gather_tensor(self.tensor(a)).cpu().numpy()

    def sum(self, a: np.ndarray) -> np.ndarray:
        t = self.tensor(a)
        _dist().all_reduce(t, group=self.group)
        return t.cpu().numpy()

    def agree(self, fn):
        """``fn()`` on this rank; if it raised on any rank, raise on every rank (the failing
        rank's own error there, the same type with that rank's message elsewhere), so that no
        rank waits forever in a collective that a failed rank never reaches."""
        try:
            value, error = fn(), None
        except Exception as e:  # any failure must reach the other ranks
            value, error = None, e
        status = np.zeros(2 + _MESSAGE_BYTES, dtype=np.uint8)
        if error is not None:
            status[0] = 1
            kinds = [i for i, kind in enumerate(_ERRORS) if isinstance(error, kind)]
            status[1] = kinds[0] if kinds else _ERRORS.index(RuntimeError)
            text = f"{error}".encode()[:_MESSAGE_BYTES]
            status[2 : 2 + len(text)] = np.frombuffer(text, dtype=np.uint8)
        everyone = self.gather(status)
        failed = np.flatnonzero(everyone[:, 0])
        if error is not None:
            raise error
        if failed.shape[0]:
            r = int(failed[0])
            text = bytes(everyone[r, 2:]).rstrip(b"\0").decode(errors="replace")
            raise _ERRORS[everyone[r, 1]](f"rank {r}: {text}")
        return value

    def gather_rows(self, a: np.ndarray, name: str) -> list[np.ndarray]:
        """Every rank's ``a`` (``ndim >= 1``; rows may differ, dtype and the other dimensions
        may not)."""
        a = np.ascontiguousarray(a)
        if a.dtype.byteorder not in "=|":
            a = a.astype(a.dtype.newbyteorder("="))
        dtype = np.dtype(a.dtype)
        if dtype not in _DTYPES:
            raise TypeError(f"{name} has dtype {dtype}, which cannot travel between ranks")
        if not 1 <= a.ndim <= 4:
            raise ValueError(f"{name} has {a.ndim} dimensions; 1 to 4 travel between ranks")
        trailing = [*a.shape[1:], *([-1] * (4 - a.ndim))]
        meta = np.array([a.shape[0], _DTYPES.index(dtype), a.ndim, *trailing], dtype=np.int64)
        metas = self.gather(meta)
        differs = (metas[:, 1:] != metas[0, 1:]).any(axis=1)
        if differs.any():
            r = int(np.flatnonzero(differs)[0])
            raise ValueError(
                f"{name} differs between ranks: rank 0 has {_DTYPES[metas[0, 1]]} rows of shape "
                f"{tuple(int(v) for v in metas[0, 3:] if v >= 0)}, rank {r} "
                f"{_DTYPES[metas[r, 1]]} rows of shape "
                f"{tuple(int(v) for v in metas[r, 3:] if v >= 0)}: give every rank queries of "
                "one dtype and width")
        row_shape = a.shape[1:]
        row_bytes = dtype.itemsize * int(np.prod(row_shape, dtype=np.int64))
        rows = metas[:, 0]
        payload = np.zeros(int(rows.max()) * row_bytes, dtype=np.uint8)
        payload[: a.nbytes] = a.reshape(-1).view(np.uint8)
        everyone = self.gather(payload)
        return [everyone[r, : rows[r] * row_bytes].view(dtype).reshape((int(rows[r]),
                                                                         *row_shape))
                for r in range(self.world_size)]


def _kind(shard: Any) -> type:
    for kind in _KINDS:
        if type(shard) is kind:
            return kind
    raise TypeError(f"ShardedIndex shards a SparseHashTable, HierarchicalHashTable, PQIndex or "
                    f"BinaryIndex, got {type(shard).__name__}")


def _parameters(shard: Any) -> list[int]:
    """The values of :data:`_PARAMETERS` of ``shard``, as integers."""
    if isinstance(shard, (SparseHashTable, HierarchicalHashTable)):
        table = shard._table if isinstance(shard, HierarchicalHashTable) else shard
        return [shard.num_buckets, shard.k, _METRICS.index(shard.metric),
                -1 if table.dim is None else table.dim]
    if isinstance(shard, PQIndex):
        pq = shard.pq
        return [pq.dim, pq.num_subspaces, pq.nbits, _METRICS.index(shard.metric),
                _crc([pq.codebooks]), int(shard.fast_scan)]
    features = shard._features
    return [shard.nbits, -1 if features is None else features.shape[1]]


def _default_ids(shard: Any) -> bool:
    """Whether every item's id is its insertion position (tables; PQ and binary indexes number
    their items so): then the lower id is the item added first, by which a shard breaks ties."""
    table = shard._table if isinstance(shard, HierarchicalHashTable) else shard
    return not isinstance(table, SparseHashTable) or np.array_equal(table._ids, table._rows)


def _crc(arrays: list[np.ndarray | None]) -> int:
    crc = 0
    for a in arrays:
        if a is not None:
            a = np.ascontiguousarray(a)
            crc = zlib.crc32(repr((a.shape, a.dtype.str)).encode(), crc)
            crc = zlib.crc32(a.tobytes(), crc)
    return crc


class ShardedIndex:
    """One index over the shards that the ranks of a torch.distributed process group hold.

    Parameters
    ----------
    shard : SparseHashTable, HierarchicalHashTable, PQIndex or BinaryIndex
        This rank's items. Every rank's shard must be of the same type with the same parameters
        (buckets, k, metric, dimension; for PQIndex the same codebooks; for BinaryIndex the
        same nbits and feature dimension) and must not be empty.
    ids : {"offset", "global"}
        ``"offset"`` (default): rank r's local id j becomes ``offsets[r] + j``, the offsets
        being the running sum of the shards' sizes in rank order (the tables' ids must then be
        the default ``0..ntotal-1``). ``"global"``: the tables' ids (``add(..., ids=)``) are
        already global and are returned as they are; ties then go to the lower id, which is
        what one table over all items does when ids grow in the order items were added.
    group : torch.distributed.ProcessGroup, optional
        The group of the shards (default: the whole world).

    Attributes
    ----------
    sizes : ndarray of int64, shape (world_size,)
        Every rank's number of items.
    offsets : ndarray of int64, shape (world_size,)
        The running sum of ``sizes``: rank r's first global id with ``ids="offset"``.
    candidate_counts : ndarray of int64
        Tables: the candidates of this rank's queries over all shards, from the last search.
    timings : dict of str to float
        Seconds of the last search's parts: ``plan``, ``local``, ``merge``, ``total``.

    Raises
    ------
    RuntimeError
        If no process group is initialised.
    ValueError
        On every rank, if any rank's shard is empty or differs in parameters, the ranks pass
        different ``ids`` modes, ``ids="offset"`` meets a table with other ids, or
        ``ids="global"`` meets an id held twice.
    TypeError
        On every rank, if the shards differ in type or one is not an index.

    Notes
    -----
    Construction is collective: every rank of the group must make its ShardedIndex, and so
    must every rank call :meth:`search` and :meth:`save` (with the same ``topk`` and options).
    Collectives pair up by their order on each rank, so searches from several threads of one
    rank run one at a time (a lock keeps their exchanges from interleaving), and the ranks must
    issue them in the same order: with all_ranks_queries=True a mismatch is an error (the
    queries' checksums differ), with own queries it cannot be told apart.

    Examples
    --------
    Under ``torchrun``, on every rank:

    >>> dist.init_process_group("gloo")  # doctest: +SKIP
    >>> shard = qk.SparseHashTable(512, k=2).add(my_activations, my_embeddings)  # doctest: +SKIP
    >>> index = ShardedIndex(shard)  # doctest: +SKIP
    >>> D, I = index.search(query_activations, query_embeddings, topk=16)  # doctest: +SKIP
    """

    def __init__(self, shard: Any, *, ids: str = "offset", group: Any = None):
        _check_group(group)
        self._comm = comm = _Comm(group)
        self.shard = shard
        self.group = group

        def describe():
            kind = _kind(shard)
            if ids not in _IDS:
                raise ValueError(f"ids must be one of {_IDS}, got {ids!r}")
            if ids == "global" and kind in (PQIndex, BinaryIndex):
                raise ValueError(f"ids='global' needs a table; a {kind.__name__} numbers its "
                                 "items by row: use ids='offset'")
            offset_ok = _default_ids(shard)
            params = _parameters(shard)
            return np.array([_KINDS.index(kind), _IDS.index(ids), shard.ntotal, offset_ok,
                             *params, *([0] * (6 - len(params)))], dtype=np.int64)

        everyone = comm.gather(comm.agree(describe))
        kinds = everyone[:, 0]
        if (kinds != kinds[0]).any():
            r = int(np.flatnonzero(kinds != kinds[0])[0])
            raise TypeError(f"the shards differ in type: rank 0 holds a "
                            f"{_KINDS[kinds[0]].__name__}, rank {r} a {_KINDS[kinds[r]].__name__}")
        if (everyone[:, 1] != everyone[0, 1]).any():
            raise ValueError("the ranks passed different ids= modes: "
                             + ", ".join(f"rank {r}: {_IDS[m]!r}"
                                         for r, m in enumerate(everyone[:, 1])))
        self.kind = _KINDS[kinds[0]]
        sizes = everyone[:, 2]
        empty = np.flatnonzero(sizes == 0)
        if empty.shape[0]:
            raise ValueError(f"rank {int(empty[0])}'s shard is empty (sizes by rank: "
                             f"{sizes.tolist()}): every rank must hold items")
        names = _PARAMETERS[self.kind]
        for column, name in enumerate(names, start=4):
            values = everyone[:, column]
            if (values != values[0]).any():
                r = int(np.flatnonzero(values != values[0])[0])
                shown = (lambda v: _METRICS[v]) if name == "metric" else int
                raise ValueError(f"the shards disagree on {name}: rank 0 has "
                                 f"{shown(values[0])}, rank {r} has {shown(values[r])}")
        self.ids = ids
        if ids == "offset" and not everyone[:, 3].all():
            r = int(np.flatnonzero(everyone[:, 3] == 0)[0])
            raise ValueError(f"ids='offset' numbers each shard's items 0..ntotal-1 in the order "
                             f"added, but rank {r}'s table was given other ids: pass "
                             "ids='global' if they are global ids already")
        if ids == "global":
            self._check_unique_ids(shard)
        self.sizes = sizes
        self.offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        self.parameters = dict(zip(names, (int(v) for v in everyone[0, 4 : 4 + len(names)]),
                                   strict=True))
        self._signature = inspect.signature(shard.search)
        self._bucket_sizes = None  # tables: the whole table's bucket sizes
        if self.kind in (SparseHashTable, HierarchicalHashTable):
            table = shard._table if self.kind is HierarchicalHashTable else shard
            self._bucket_sizes = comm.sum(comm.agree(lambda: np.diff(table._build().offsets)))
        self._codebooks_version = shard.pq.codebooks_version if self.kind is PQIndex else None
        self.candidate_counts = np.empty(0, dtype=np.int64)
        # seconds of the last search: planning rounds (tables), local search, exchange + merge
        self.timings: dict[str, float] = {}
        self._lock = threading.Lock()  # one search's collectives at a time on this rank

    def _check_unique_ids(self, shard: Any) -> None:
        """With ``ids="global"`` no id may be on two items, in one shard or across shards (the
        merge would return it twice). The shards' id ranges are compared first; only where
        they overlap do the ids themselves travel (8 bytes per item)."""
        comm = self._comm

        def local():
            table = shard._table if isinstance(shard, HierarchicalHashTable) else shard
            ids = np.sort(table._ids)
            repeated = ids[1:][ids[1:] == ids[:-1]]
            if repeated.shape[0]:
                raise ValueError(f"ids='global' needs every id once, but this rank's shard "
                                 f"holds id {int(repeated[0])} on more than one item")
            return ids

        ids = comm.agree(local)
        ranges = comm.gather(np.array([ids[0], ids[-1]], dtype=np.int64))
        order = np.argsort(ranges[:, 0], kind="stable")
        if (ranges[order[1:], 0] > ranges[order[:-1], 1]).all():
            return  # disjoint ranges
        everyone = comm.gather_rows(ids, "ids")
        owner = np.concatenate([np.full(len(a), r) for r, a in enumerate(everyone)])
        merged = np.concatenate(everyone)
        by_id = np.argsort(merged, kind="stable")
        merged, owner = merged[by_id], owner[by_id]
        twice = np.flatnonzero(merged[1:] == merged[:-1])
        if twice.shape[0]:
            at = int(twice[0])
            raise ValueError(f"ids='global' needs every id on one item of one shard, but id "
                             f"{int(merged[at])} is on rank {int(owner[at])} and rank "
                             f"{int(owner[at + 1])}: give the shards distinct ids, or use "
                             "ids='offset' for ids numbered 0..ntotal-1 on each shard")

    # ------------------------------------------------------------------ properties

    @property
    def rank(self) -> int:
        """This process's rank in the group."""
        return self._comm.rank

    @property
    def world_size(self) -> int:
        """The number of ranks (and shards)."""
        return self._comm.world_size

    @property
    def ntotal(self) -> int:
        """Items over all shards."""
        return int(self.sizes.sum())

    def __len__(self) -> int:
        return self.ntotal

    @property
    def metric(self) -> str | None:
        """The shards' metric (``"l2"`` or ``"ip"``; None for a BinaryIndex)."""
        return getattr(self.shard, "metric", None)

    def __repr__(self) -> str:
        return (f"ShardedIndex({self.kind.__name__}, rank {self.rank} of {self.world_size}, "
                f"sizes={self.sizes.tolist()}, ids={self.ids!r})")

    # ------------------------------------------------------------------ searching

    def search(self, *args: Any, all_ranks_queries: bool = True, **kwargs: Any
               ) -> tuple[Any, Any]:
        """The shard type's search with its arguments (for example ``search(query_activations,
        query_embeddings, topk, exclude_ids=None)`` for a SparseHashTable), over all shards.

        ``all_ranks_queries=True`` (default): every rank passes the same queries (checked) and
        gets the same results. ``False``: each rank passes its own queries (any number, the
        same dtype and width) and gets the results of those against all shards.

        Parameters
        ----------
        *args : array_like or int
            The shard type's search arguments (queries, ``topk``).
        all_ranks_queries : bool, default True
            Whether every rank passes the same queries.
        **kwargs : array_like or int
            The shard type's keyword arguments (``exclude_ids``, ``rerank``, ...).

        Returns
        -------
        D : array
            As the shard type's search returns it, over all shards, in the queries' array
            type and device.
        I : array of int64
            Global ids; -1 where missing.

        Raises
        ------
        ValueError
            On every rank: bad input on any rank (with that rank's message), ranks that differ
            in ``topk``, options or (with ``all_ranks_queries``) queries, or a shard changed
            since construction.
        TypeError
            On every rank: arguments the shard's search does not take.
        RuntimeError
            On every rank, if a rank's shard changed (items added, codebooks replaced), or a
            rank failed or left in the middle of the search.

        Notes
        -----
        ``candidate_counts`` then holds the candidates over all shards for this rank's queries
        (tables); ``timings`` the seconds of the search's parts.
        """
        with self._lock:
            return self._search(args, kwargs, all_ranks_queries)

    def _search(self, args, kwargs, all_ranks_queries):
        start = time.perf_counter()
        comm = self._comm
        prepared = comm.agree(lambda: self._prepare(args, kwargs, all_ranks_queries))
        names, arrays, topk, options, origin, meta, originals = prepared
        everyone = comm.gather(meta)
        self._check_agreement(everyone, all_ranks_queries)
        width = int(everyone[:, 6].max())  # exclude_ids columns (tables)
        if "exclude_ids" in names and arrays["exclude_ids"] is not None:
            arrays["exclude_ids"] = _padded_columns(arrays["exclude_ids"], width)
        rows = everyone[:, 5]
        if all_ranks_queries:
            mine = slice(0, int(rows[0]))
        else:
            for name in names:
                if arrays[name] is not None:
                    arrays[name] = np.concatenate(comm.gather_rows(arrays[name], name))
            first = int(rows[: self.rank].sum())
            mine = slice(first, first + int(rows[self.rank]))
        local_start = time.perf_counter()
        if self.kind in (SparseHashTable, HierarchicalHashTable):
            D, I, T, counts, plan_s = self._search_table(arrays, topk)
        else:
            plan_s = 0.0
            # with the same queries everywhere the shard searches the caller's own arrays (on
            # a GPU there when they are CUDA tensors)
            D, I, T = comm.agree(lambda: self._search_codes(
                originals if all_ranks_queries else arrays, topk, options, origin))
            counts = None
        local_s = time.perf_counter() - local_start - plan_s
        merge_start = time.perf_counter()
        # on the backend's device from here (the local results may be numpy, or torch / cupy
        # arrays on a GPU)
        D, I = _as_tensor(D, comm.device), _as_tensor(I, comm.device)
        if self.ids == "offset":
            I = I.where(I < 0, I + int(self.offsets[self.rank]))
        if isinstance(T, _Candidates):
            D, I = self._merge_candidates(D, I, T, topk)
        else:
            D, I = self._merge(D, I, T, topk)
        if counts is not None:
            self.candidate_counts = comm.sum(counts)[mine]
        merge_s = time.perf_counter() - merge_start
        self.timings = {"plan": plan_s, "local": local_s, "merge": merge_s,
                        "total": time.perf_counter() - start}
        return _returned(D[mine], origin), _returned(I[mine], origin)

    def _prepare(self, args, kwargs, all_ranks_queries):
        """Check the arguments on this rank: ``(names, host arrays, topk, options, origin,
        meta)``, meta being what the ranks must agree on."""
        from ._checks import as_index_array, check_int

        try:
            bound = self._signature.bind(*args, **kwargs)
        except TypeError as error:
            raise TypeError(f"ShardedIndex.search of a {self.kind.__name__}: {error} "
                            f"(its arguments: {self._signature})") from None
        bound.apply_defaults()
        given = bound.arguments
        names = _QUERY_ARGS[self.kind]
        origin = origin_of(*(given[n] for n in names), names=names)
        topk = check_int(given["topk"], "topk", 1)
        options = {"symmetric": bool(given.get("symmetric", False))}
        if self.kind is PQIndex:
            options["rerank"] = self.shard._check_rerank(given["rerank"], topk,
                                                         options["symmetric"])
        if self.shard.ntotal != self.sizes[self.rank]:
            raise RuntimeError(f"this rank's shard changed after the ShardedIndex was made (it "
                               f"held {self.sizes[self.rank]} items, now {self.shard.ntotal}): "
                               "make a new ShardedIndex after adding")
        if (self.kind is PQIndex
                and self.shard.pq.codebooks_version != self._codebooks_version):
            raise RuntimeError("this rank's quantizer changed its codebooks after the "
                               "ShardedIndex was made: make a new ShardedIndex")
        arrays = {n: None if given[n] is None else to_numpy(given[n], allow_device_copy=True,
                                                            name=n) for n in names}
        for n in names:
            if arrays[n] is not None and arrays[n].ndim < 1:
                raise ValueError(f"{n} must be an array with one row per query, got a scalar")
        if arrays[names[0]] is None:
            raise ValueError(f"{names[0]} must be an array with one row per query, got None")
        num_queries = arrays[names[0]].shape[0]
        width = 0
        if "exclude_ids" in arrays and arrays["exclude_ids"] is not None:
            e = arrays["exclude_ids"]
            if e.ndim not in (1, 2) or e.shape[0] != num_queries:
                raise ValueError(f"exclude_ids must be (Q,) or (Q, m) with Q = {num_queries} "
                                 f"queries, got shape {tuple(e.shape)}")
            e = as_index_array(e[:, None] if e.ndim == 1 else e, "exclude_ids",
                               allow_missing=True)
            arrays["exclude_ids"] = e
            width = e.shape[1]
        optional = [n for n in names if n in ("exclude_ids", "query_features")]
        present = sum(1 << i for i, n in enumerate(optional) if arrays[n] is not None)
        crc = _crc([arrays[n] for n in names]) if all_ranks_queries else 0
        rerank = options.get("rerank")
        meta = np.array([topk, int(all_ranks_queries), int(options["symmetric"]), present,
                         crc, num_queries, width, -1 if rerank is None else rerank],
                        dtype=np.int64)
        return names, arrays, topk, options, origin, meta, {n: given[n] for n in names}

    def _check_agreement(self, everyone: np.ndarray, all_ranks_queries: bool) -> None:
        what = {0: "topk", 1: "all_ranks_queries", 2: "symmetric",
                3: "the optional arguments given", 4: "the queries", 7: "rerank"}
        columns = [0, 1, 2, 3, 7] + ([4] if all_ranks_queries else [])
        for column in columns:
            values = everyone[:, column]
            if (values != values[0]).any():
                r = int(np.flatnonzero(values != values[0])[0])
                hint = (" (each rank with its own queries: pass all_ranks_queries=False)"
                        if column == 4 else "")
                raise ValueError(f"the ranks' searches differ in {what[column]}: rank {r}'s "
                                 f"differs from rank 0's{hint}")

    def _search_codes(self, arrays, topk, options, origin):
        """The local search of a PQIndex or BinaryIndex: ``(D, I, tie-break keys or None)``;
        for a PQIndex's fast scan ``(approximate D, I, _Candidates)`` of the best ``R`` by
        rounded sum (see _merge_candidates)."""
        if self.kind is PQIndex:
            shard, symmetric, rerank = self.shard, options["symmetric"], options["rerank"]
            if shard.fast_scan and not symmetric and not shard._on_device(origin, topk, False):
                count = shard._candidates(topk, rerank, self.ntotal)
                sums, I, D, adc = shard._fastscan_candidates(arrays["q"], count, count)
                return D, I, _Candidates(sums, adc, rerank != 0)
            D, I = shard.search(arrays["q"], topk, symmetric=symmetric, rerank=rerank)
            return D, I, None
        features = arrays["query_features"]
        D, I = self.shard.search(arrays["query_codes"], topk, features)
        T = None if features is None else self.shard._tiebreak_keys(
            features, to_numpy(I, allow_device_copy=True))
        return D, I, T

    def _search_table(self, arrays, topk):
        """The local search of a table with the number of probed buckets decided over all
        shards (see the module docstring)."""
        comm = self._comm
        hierarchical = self.kind is HierarchicalHashTable
        table = self.shard._table if hierarchical else self.shard

        def checked():
            if hierarchical:
                act = self.shard._compound(arrays["query_level1"], arrays["query_level2"])
                _, emb = table._host_queries(act, arrays["query_embeddings"])
            else:
                act, emb = table._host_queries(arrays["query_activations"],
                                               arrays["query_embeddings"])
            exclude = table._exclude(arrays["exclude_ids"], act.shape[0])
            excluded = (exclude >= 0).sum(axis=1)  # over all shards: the same on every rank
            if self.ids == "offset":
                low, high = self.offsets[self.rank], self.offsets[self.rank] + table.ntotal
                exclude = np.where((exclude >= low) & (exclude < high), exclude - low, -1)
            return act, emb, exclude, excluded

        act, emb, exclude, excluded = comm.agree(checked)
        plan_start = time.perf_counter()
        target = min(topk, self.ntotal)
        probes = self._plan(table, act, exclude, excluded, target)
        plan_s = time.perf_counter() - plan_start
        D, I, counts = comm.agree(lambda: table._search_host(act, emb, topk, exclude, probes))
        return D, I, None, counts, plan_s

    def _plan(self, table: SparseHashTable, act: np.ndarray, exclude: np.ndarray,
              excluded: np.ndarray, target: int) -> np.ndarray:
        """Per query, the buckets that one table over all shards would probe: the smallest
        ``p >= k`` whose first ``p`` buckets hold ``target`` candidates over all shards, or all
        buckets. Each step is one all_reduce; every rank takes the same steps (every decision
        is made on what all ranks hold alike: the queries, the whole table's bucket sizes, the
        count of excluded ids, the summed counts). ``exclude`` is this shard's share of the
        excluded items, ``excluded`` the number of excluded ids of each query."""
        k, buckets = table.k, table.num_buckets
        num_queries = act.shape[0]

        def candidates(caps: np.ndarray) -> np.ndarray:
            return self._comm.sum(table._count_candidates(act, exclude, caps))

        low = np.zeros(num_queries, dtype=np.int64)   # too few candidates (0: unknown)
        high = np.full(num_queries, k, dtype=np.int64)  # enough, or every bucket
        if num_queries == 0:
            return high
        # the whole table's shortcut: when the largest of a query's k buckets alone, less its
        # excluded ids, holds target items, k buckets are enough (each excluded id is at most
        # one item when ids are unique: always with ids="offset")
        best = np.empty((num_queries, k), dtype=np.int64)
        _table_cpu.topk_rows(act, k, best)
        largest = self._bucket_sizes[best].max(axis=1)
        settled = largest - excluded >= target
        if self.ids != "offset":
            settled &= excluded == 0
        short = np.zeros(num_queries, dtype=bool)
        if not settled.all():
            short = ~settled & (candidates(np.where(settled, 0, high)) < target)
        low[short] = k
        growing = short & (high < buckets)
        while growing.any():  # doubling until enough (or every bucket)
            high[growing] = np.minimum(2 * high[growing], buckets)
            enough = candidates(np.where(growing, high, 0)) >= target
            still = growing & ~enough
            low[still] = high[still]
            growing = still & (high < buckets)
        narrowing = short & (high - low > 1)
        while narrowing.any():  # bisection: low has too few, high enough
            middle = (low + high) // 2
            enough = candidates(np.where(narrowing, middle, 0)) >= target
            high = np.where(narrowing & enough, middle, high)
            low = np.where(narrowing & ~enough, middle, low)
            narrowing = short & (high - low > 1)
        return high

    def _merge_candidates(self, D, I, found: _Candidates, topk: int):
        """The fast scan over all shards: every shard's best ``R`` items by (rounded sum,
        item), the best ``R`` of their union by (sum, global id) (the rounded tables are the
        same on every rank: they depend only on the query and the codebooks), then as one index
        does, the best ``topk`` of those by (ADC distance, id), or without rerank their first
        ``topk`` with the approximate distances."""
        import torch

        comm = self._comm
        D_all, I_all, S_all, A_all = (_gathered(comm, t) for t in (
            D, I, comm.tensor(found.sums), comm.tensor(found.adc)))
        order = _ordered([(I_all, False), (S_all, False)], I_all, I.shape[1])
        D_all, I_all, A_all = (c.gather(1, order) for c in (D_all, I_all, A_all))
        if found.rerank:
            order = _ordered([(I_all, False), (A_all, self.metric == "ip")], I_all, topk)
            D_all, I_all = A_all.gather(1, order), I_all.gather(1, order)
        D_all, I_all = D_all[:, :topk], I_all[:, :topk]
        missing = topk - I_all.shape[1]  # R < topk: an index holding fewer than topk items
        if missing > 0:
            fill = float("-inf") if self.metric == "ip" else float("inf")
            D_all = torch.nn.functional.pad(D_all, (0, missing), value=fill)
            I_all = torch.nn.functional.pad(I_all, (0, missing), value=-1)
        return D_all, I_all

    def _merge(self, D, I, T: np.ndarray | None, topk: int):
        """Every rank's ``(Q, topk)`` results into the best ``topk`` of their union, ordered as
        one index orders them: distance (then the tie-break key), then the lower id; missing
        results last."""
        comm = self._comm
        D_all, I_all = _gathered(comm, D), _gathered(comm, I)
        keys = [(I_all, False)]  # least significant first; stable sorts
        if T is not None:
            keys.append((_gathered(comm, comm.tensor(T)), False))
        keys.append((D_all, self.metric == "ip"))
        order = _ordered(keys, I_all, topk)
        return D_all.gather(1, order), I_all.gather(1, order)

    # ------------------------------------------------------------------ files

    def save(self, directory: str | os.PathLike) -> None:
        """Write every rank's shard and a manifest. Collective.

        Each rank writes ``directory/shard-{rank}.npz``; rank 0 writes ``manifest.json``
        (world size, sizes, parameters, each shard's sha256), which :meth:`load` checks.

        Parameters
        ----------
        directory : str or os.PathLike
            The same path on a shared file system, or on every machine.

        Raises
        ------
        OSError
            On every rank, if a rank cannot write.
        """
        with self._lock:  # not between the collectives of a search from another thread
            self._save(Path(directory))

    def _save(self, folder: Path) -> None:
        comm = self._comm

        def write() -> np.ndarray:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"shard-{self.rank}.npz"
            self.shard.save(path)
            return np.frombuffer(hashlib.sha256(path.read_bytes()).digest(), dtype=np.uint8)

        digests = comm.gather(comm.agree(write))

        def manifest() -> None:
            if self.rank != 0:
                return
            text = json.dumps({
                "format": _FORMAT, "version": _FORMAT_VERSION, "kind": self.kind.__name__,
                "world_size": self.world_size, "ids": self.ids,
                "sizes": [int(s) for s in self.sizes], "parameters": self.parameters,
                "sha256": [bytes(d).hex() for d in digests]}, indent=2)
            temporary = folder / (_MANIFEST + ".tmp")
            temporary.write_text(text)
            temporary.replace(folder / _MANIFEST)

        comm.agree(manifest)

    @classmethod
    def load(cls, directory: str | os.PathLike, *, group: Any = None) -> ShardedIndex:
        """Read what :meth:`save` wrote. Collective.

        Each rank reads its shard and checks it against the manifest: the world size, its size
        and sha256, the parameters.

        Parameters
        ----------
        directory : str or os.PathLike
            What :meth:`save` wrote.
        group : torch.distributed.ProcessGroup, optional
            The group (default: the whole world), of the saved world size.

        Returns
        -------
        ShardedIndex
            The index over the loaded shards.

        Raises
        ------
        ValueError
            On every rank: a missing or foreign manifest, another world size, a shard whose
            size or checksum differs from the manifest, or shards that do not fit together.
        RuntimeError
            If no process group is initialised.
        """
        _check_group(group)
        comm = _Comm(group)
        folder = Path(directory)

        def read():
            manifest_path = folder / _MANIFEST
            try:
                manifest = json.loads(manifest_path.read_text())
            except (OSError, ValueError) as error:
                raise ValueError(f"{os.fspath(manifest_path)!r} is not a ShardedIndex manifest "
                                 f"({error})") from None
            expected = {"format", "version", "kind", "world_size", "ids", "sizes",
                        "parameters", "sha256"}
            if (not isinstance(manifest, dict) or not expected <= set(manifest)
                    or manifest["format"] != _FORMAT):
                raise ValueError(f"{os.fspath(manifest_path)!r} is not a ShardedIndex manifest")
            if manifest["version"] != _FORMAT_VERSION:
                raise ValueError(f"{os.fspath(manifest_path)!r} has version "
                                 f"{manifest['version']}; this qkernels reads {_FORMAT_VERSION}")
            kinds = {kind.__name__: kind for kind in _KINDS}
            if manifest["kind"] not in kinds:
                raise ValueError(f"{os.fspath(manifest_path)!r}: unknown kind "
                                 f"{manifest['kind']!r}")
            if manifest["world_size"] != comm.world_size:
                raise ValueError(f"{os.fspath(folder)!r} holds {manifest['world_size']} shards "
                                 f"but the process group has {comm.world_size} ranks")
            sizes, digests = manifest["sizes"], manifest["sha256"]
            if (not isinstance(sizes, list) or not isinstance(digests, list)
                    or len(sizes) != comm.world_size or len(digests) != comm.world_size):
                raise ValueError(f"{os.fspath(manifest_path)!r}: sizes and sha256 must list "
                                 "one entry per rank")
            path = folder / f"shard-{comm.rank}.npz"
            data = path.read_bytes()
            if hashlib.sha256(data).hexdigest() != digests[comm.rank]:
                raise ValueError(f"{os.fspath(path)!r} is not the shard the manifest lists (its "
                                 "sha256 differs): the folder mixes two saves, or the file was "
                                 "changed")
            shard = kinds[manifest["kind"]].load(path)
            if shard.ntotal != sizes[comm.rank]:
                raise ValueError(f"{os.fspath(path)!r} holds {shard.ntotal} items; the manifest "
                                 f"says {sizes[comm.rank]}")
            return shard, manifest

        shard, manifest = comm.agree(read)
        index = cls(shard, ids=manifest["ids"], group=group)
        if index.parameters != manifest["parameters"]:
            raise ValueError(f"{os.fspath(folder)!r}: the shards' parameters "
                             f"{index.parameters} differ from the manifest's "
                             f"{manifest['parameters']}")
        return index


def _padded_columns(exclude: np.ndarray, width: int) -> np.ndarray:
    if exclude.shape[1] == width:
        return exclude
    out = np.full((exclude.shape[0], width), -1, dtype=np.int64)
    out[:, : exclude.shape[1]] = exclude
    return out


class _Candidates:
    """A fast-scan shard's rounded sums and ADC distances of its candidates."""

    def __init__(self, sums: np.ndarray, adc: np.ndarray, rerank: bool):
        self.sums, self.adc, self.rerank = sums, adc, rerank


def _gathered(comm: _Comm, t):
    """Every rank's ``(Q, width)`` tensor ``t`` side by side: ``(Q, world_size * width)``,
    rank 0's columns first."""
    parts = comm.gather_tensor(t)
    world, num_queries, width = parts.shape
    return parts.permute(1, 0, 2).reshape(num_queries, world * width)


def _ordered(keys: list, items, count: int):
    """Per row, the column order of the first ``count`` entries by ``keys`` (least
    significant first; each ``(tensor, descending)``), missing items (-1) last."""
    import torch

    keys = [*keys, ((items < 0).to(torch.int8), False)]
    order = torch.arange(items.shape[1], device=items.device).expand(items.shape[0], -1)
    for key, descending in keys:
        step = torch.sort(key.gather(1, order), dim=1, descending=descending,
                          stable=True).indices
        order = order.gather(1, step)
    return order[:, :count]


def _as_tensor(x: Any, device):
    import torch

    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x)).to(device)
    return torch.from_dlpack(x).to(device)  # a cupy array


def _returned(t, origin):
    """A merged result as the caller's array type, on the caller's device."""
    if origin.library == NUMPY:
        return t.cpu().numpy()
    if origin.library == TORCH:
        return t.to(origin.device)
    import cupy

    with cupy.cuda.Device(int(origin.device.split(":")[1])):
        return cupy.from_dlpack(t.to(origin.device))
