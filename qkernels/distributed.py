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
from ._checks import as_float_array, as_index_array
from .index import BinaryIndex, HierarchicalHashTable, PQIndex, SparseHashTable
from .quantize import ProductQuantizer

__all__ = ["ShardedIndex"]

_KINDS = (SparseHashTable, HierarchicalHashTable, PQIndex, BinaryIndex)
# the query arguments of each kind's search (arrays; the first is the one that counts rows)
_QUERY_ARGS = {
    SparseHashTable: ("query_activations", "query_embeddings"),
    HierarchicalHashTable: ("query_level1", "query_level2", "query_embeddings"),
    PQIndex: ("q",),
    BinaryIndex: ("query_codes", "query_features"),
}  # and the filters every search takes: include, exclude (tables: exclude_ids, deprecated)
# the parameters that every shard must share, by kind
_PARAMETERS = {
    SparseHashTable: ("num_buckets", "k", "metric", "dim", "storage (crc32)"),
    HierarchicalHashTable: ("num_buckets", "k", "metric", "dim", "storage (crc32)"),
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
    """The values of :data:`_PARAMETERS` of ``shard``, as integers (public attributes)."""
    if isinstance(shard, (SparseHashTable, HierarchicalHashTable)):
        storage = shard.storage
        kept = (_crc([storage.codebooks]) if isinstance(storage, ProductQuantizer)
                else zlib.crc32(str(storage).encode()))
        return [shard.num_buckets, shard.k, _METRICS.index(shard.metric),
                -1 if shard.dim is None else shard.dim, kept]
    if isinstance(shard, PQIndex):
        pq = shard.pq
        return [pq.dim, pq.num_subspaces, pq.nbits, _METRICS.index(shard.metric),
                _crc([pq.codebooks]), int(shard.fast_scan)]
    features = shard.features
    return [shard.nbits, -1 if features is None else features.shape[1]]


def _crc(arrays: list[np.ndarray | None]) -> int:
    crc = 0
    for a in arrays:
        if a is not None:
            a = np.ascontiguousarray(a)
            crc = zlib.crc32(repr((a.shape, a.dtype.str)).encode(), crc)
            crc = zlib.crc32(a.tobytes(), crc)
    return crc


def _top_buckets(act: np.ndarray, k: int) -> np.ndarray:
    """Each row's ``k`` best buckets (ties to the lower bucket), as the tables rank them."""
    return np.argsort(-act, axis=1, kind="stable")[:, :k]


class _Layout:
    """What the ranks agreed on about their shards at their current versions: sizes, id
    offsets and (tables) the whole table's bucket sizes."""

    def __init__(self, key, sizes, offsets, bucket_sizes):
        self.key, self.sizes, self.offsets, self.bucket_sizes = key, sizes, offsets, bucket_sizes


class ShardedIndex:
    """One index over the shards that the ranks of a torch.distributed process group hold.

    Parameters
    ----------
    shard : SparseHashTable, HierarchicalHashTable, PQIndex or BinaryIndex
        This rank's items. Every rank's shard must be of the same type with the same parameters
        (buckets, k, metric, dimension; for PQIndex the same codebooks; for BinaryIndex the
        same nbits and feature dimension). An empty shard takes part, whatever the dimension
        of its embeddings or features had been. Shards may change between searches (``add``,
        ``remove_ids``, ``reset``, ``merge_from``): the next search agrees on them again.
    ids : {"offset", "global"}
        ``"offset"`` (default): rank r's local id j becomes ``offsets[r] + j``, the offsets
        being the running sum of the shards' ``next_id`` in rank order (their sizes while
        nothing was removed); the shards' ids must come from their counters
        (``default_ids``). ``"global"``: the shards' ids (``add(..., ids=)``) are already
        global, unique over all shards (checked), and are returned as they are; ties then go
        to the lower id, which is what one index over all items does when ids grow in the
        order items were added.
    group : torch.distributed.ProcessGroup, optional
        The group of the shards (default: the whole world).

    Attributes
    ----------
    sizes : ndarray of int64, shape (world_size,)
        Every rank's number of items, as of the last search (or construction).
    offsets : ndarray of int64, shape (world_size,)
        Rank r's first global id with ``ids="offset"``.
    candidate_counts : ndarray of int64
        Tables: the candidates of this rank's queries over all shards, from the last search.
    timings : dict of str to float
        Seconds of the last search's parts: ``plan``, ``local``, ``merge``, ``total``.

    Raises
    ------
    RuntimeError
        If no process group is initialised.
    ValueError
        On every rank, if the shards differ in parameters, the ranks pass different ``ids``
        modes, ``ids="offset"`` meets ids given by the caller, or ``ids="global"`` meets an id
        held twice.
    TypeError
        On every rank, if the shards differ in type or one is not an index.

    Notes
    -----
    Construction is collective: every rank of the group must make its ShardedIndex, and so
    must every rank call :meth:`search` and :meth:`save` (with the same ``topk`` and options).
    Collectives pair up by their order on each rank, so searches from several threads of one
    rank run one at a time (a lock keeps their exchanges from interleaving), and the ranks must
    issue them in the same order: with all_ranks_queries=True a mismatch is an error (the
    queries' checksums differ), with own queries it cannot be told apart. A ShardedIndex uses
    only the public methods of its shards (and their hooks for an exact merge:
    ``count_candidates``, ``search_probes``, ``fastscan_candidates``, ``tiebreak_keys``).

    Examples
    --------
    Under ``torchrun``, on every rank:

    >>> dist.init_process_group("gloo")  # doctest: +SKIP
    >>> shard = qk.SparseHashTable(512, k=2).add(my_activations, my_embeddings)  # doctest: +SKIP
    >>> index = ShardedIndex(shard)  # doctest: +SKIP
    >>> D, I = index.search(query_activations, query_embeddings, topk=16)  # doctest: +SKIP
    >>> shard.remove_ids(stale_ids); shard.add(new_activations, new_embeddings)  # doctest: +SKIP
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
            return np.array([_KINDS.index(kind), _IDS.index(ids)], dtype=np.int64)

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
        self.ids = ids
        self._signature = inspect.signature(shard.search)
        self._layout: _Layout | None = None
        self.parameters: dict[str, int] = {}
        self.candidate_counts = np.empty(0, dtype=np.int64)
        # seconds of the last search: planning rounds (tables), local search, exchange + merge
        self.timings: dict[str, float] = {}
        self._lock = threading.Lock()  # one search's collectives at a time on this rank
        self._sync()

    # ------------------------------------------------------------------ agreement

    def _version(self) -> list[int]:
        shard = self.shard
        codebooks = shard.pq.codebooks_version if self.kind is PQIndex else 0
        return [shard.version, codebooks, shard.ntotal, shard.next_id, int(shard.default_ids)]

    def _sync(self) -> _Layout:
        """The layout of the shards as they are now: agreed again (one all_gather, and more
        only when a shard changed since the last search)."""
        comm = self._comm
        everyone = comm.gather(comm.agree(lambda: np.array(self._version(), dtype=np.int64)))
        key = everyone.tobytes()
        if self._layout is not None and self._layout.key == key:
            return self._layout
        names = _PARAMETERS[self.kind]
        params = comm.gather(comm.agree(lambda: np.array(
            [*_parameters(self.shard), *([0] * (6 - len(names)))], dtype=np.int64)))
        sizes = everyone[:, 2]
        nonempty = np.flatnonzero(sizes > 0)
        reference = int(nonempty[0]) if nonempty.shape[0] else 0
        for column, name in enumerate(names):
            values = params[:, column]
            # an empty shard has no dimension yet (of embeddings or tie-break features): it
            # agrees with any
            compared = (nonempty if name in ("dim", "feature dimension")
                        else np.arange(values.shape[0]))
            differs = compared[values[compared] != values[reference]]
            if differs.shape[0]:
                r = int(differs[0])
                shown = (lambda v: _METRICS[v]) if name == "metric" else int
                raise ValueError(f"the shards disagree on {name}: rank {reference} has "
                                 f"{shown(values[reference])}, rank {r} has {shown(values[r])}")
        if self.ids == "offset" and not everyone[:, 4].all():
            r = int(np.flatnonzero(everyone[:, 4] == 0)[0])
            raise ValueError(f"ids='offset' numbers each shard's items by its counter "
                             f"(0, 1, ... in the order added), but rank {r}'s shard was given "
                             "other ids: pass ids='global' if they are global ids already")
        if self.ids == "global":
            self._check_unique_ids()
        bounds = everyone[:, 3]
        offsets = np.concatenate([[0], np.cumsum(bounds)[:-1]]).astype(np.int64)
        bucket_sizes = None
        if self.kind in (SparseHashTable, HierarchicalHashTable):
            table = self._table()
            bucket_sizes = comm.sum(comm.agree(lambda: table.bucket_sizes))
        self.parameters = dict(zip(names, (int(v) for v in params[reference, : len(names)]),
                                   strict=True))
        self._layout = _Layout(key, sizes, offsets, bucket_sizes)
        return self._layout

    def _table(self) -> SparseHashTable:
        return self.shard.compound if self.kind is HierarchicalHashTable else self.shard

    def _check_unique_ids(self) -> None:
        """With ``ids="global"`` no id may be on two items, in one shard or across shards (the
        merge would return it twice). Each shard's ids are unique already; the shards' id
        ranges are compared first, and only where they overlap do the ids travel (8 bytes per
        item)."""
        comm = self._comm
        ids = comm.agree(lambda: np.sort(self.shard.ids))
        ranges = comm.gather(np.array([ids[0], ids[-1]] if ids.shape[0] else [-1, -2],
                                      dtype=np.int64))
        live = np.flatnonzero(ranges[:, 0] <= ranges[:, 1])
        order = live[np.argsort(ranges[live, 0], kind="stable")]
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
                             "ids='offset' for ids numbered by each shard's counter")

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
    def sizes(self) -> np.ndarray:
        """Every rank's number of items, as of the last search (or construction)."""
        return self._layout.sizes

    @property
    def offsets(self) -> np.ndarray:
        """Rank r's first global id with ``ids="offset"`` (the running sum of the shards'
        ``next_id``), as of the last search (or construction)."""
        return self._layout.offsets

    @property
    def ntotal(self) -> int:
        """Items over all shards (as of the last search or construction)."""
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
        query_embeddings, topk, exclude=None)`` for a SparseHashTable), over all shards.

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
            The shard type's keyword arguments (``include``, ``exclude``, ``rerank``, ...).
            ``include`` and a one-dimensional ``exclude`` hold global ids and must be the same
            on every rank; a two-dimensional ``exclude`` has one row per query.

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
            in ``topk``, options, filters or (with ``all_ranks_queries``) queries, or shards
            that no longer agree in parameters or ids.
        TypeError
            On every rank: arguments the shard's search does not take.
        RuntimeError
            On every rank, if a rank failed or left in the middle of the search.

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
        layout = self._sync()
        prepared = comm.agree(lambda: self._prepare(args, kwargs, all_ranks_queries))
        names, arrays, topk, options, origin, meta, originals, shared = prepared
        everyone = comm.gather(meta)
        self._check_agreement(everyone, all_ranks_queries)
        width = int(everyone[:, 6].max())  # per-query exclude columns
        if arrays["exclude"] is not None:
            arrays["exclude"] = _padded_columns(arrays["exclude"], width)
        rows = everyone[:, 5]
        if all_ranks_queries:
            mine = slice(0, int(rows[0]))
        else:
            for name in [*names, "exclude"]:
                if arrays[name] is not None:
                    arrays[name] = np.concatenate(comm.gather_rows(arrays[name], name))
            first = int(rows[: self.rank].sum())
            mine = slice(first, first + int(rows[self.rank]))
        filters = self._local_filters(shared, arrays["exclude"], layout)
        local_start = time.perf_counter()
        if self.kind in (SparseHashTable, HierarchicalHashTable):
            D, I, T, counts, plan_s = self._search_table(arrays, topk, filters, layout)
        else:
            plan_s = 0.0
            # with the same queries everywhere the shard searches the caller's own arrays (on
            # a GPU there when they are CUDA tensors and nothing is filtered)
            D, I, T = comm.agree(lambda: self._search_codes(
                originals if all_ranks_queries and not filters else arrays, topk, options,
                filters, layout))
            counts = None
        local_s = time.perf_counter() - local_start - plan_s
        merge_start = time.perf_counter()
        # on the backend's device from here (the local results may be numpy, or torch / cupy
        # arrays on a GPU)
        D, I = _as_tensor(D, comm.device), _as_tensor(I, comm.device)
        if self.ids == "offset":
            I = I.where(I < 0, I + int(layout.offsets[self.rank]))
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
        meta, the caller's arrays, the shared filter)``, meta being what the ranks must agree
        on."""
        from ._checks import check_int

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
            options["rerank"] = given["rerank"]
            self.shard.fastscan_width(topk, given["rerank"], options["symmetric"])  # checks
        arrays = {n: None if given[n] is None else to_numpy(given[n], allow_device_copy=True,
                                                            name=n) for n in names}
        for n in names:
            if arrays[n] is not None and arrays[n].ndim < 1:
                raise ValueError(f"{n} must be an array with one row per query, got a scalar")
        if arrays[names[0]] is None:
            raise ValueError(f"{names[0]} must be an array with one row per query, got None")
        num_queries = arrays[names[0]].shape[0]
        include, exclude = given.get("include"), given.get("exclude")
        legacy = given.get("exclude_ids")
        if legacy is not None:
            if exclude is not None:
                raise ValueError("give exclude (exclude_ids is its deprecated name), not both")
            legacy = to_numpy(legacy, allow_device_copy=True, name="exclude_ids")
            exclude = legacy[:, None] if legacy.ndim == 1 else legacy
        if include is not None and exclude is not None:
            raise ValueError("give include or exclude, not both")
        rows, shared = None, None
        for name, value in (("include", include), ("exclude", exclude)):
            if value is None:
                continue
            value = to_numpy(value, allow_device_copy=True, name=name)
            if value.ndim == 2 and name == "exclude":
                if value.shape[0] != num_queries:
                    raise ValueError(f"exclude must be (n,) or (Q, m) with Q = {num_queries} "
                                     f"queries, got shape {tuple(value.shape)}")
                rows = as_index_array(value, "exclude", allow_missing=True)
            elif value.ndim == 1:
                shared = (name, as_index_array(value, name))
            else:
                raise ValueError(f"{name} must be (n,) ids" + (" or (Q, m)" if name == "exclude"
                                                               else "") +
                                 f", got shape {tuple(value.shape)}")
        arrays["exclude"] = rows
        present = sum(1 << i for i, n in enumerate(names) if arrays[n] is not None)
        crc = _crc([arrays[n] for n in (*names, "exclude")]) if all_ranks_queries else 0
        shared_crc = 0 if shared is None else _crc([np.array([len(shared[0])]), shared[1]])
        rerank = options.get("rerank")
        meta = np.array([topk, int(all_ranks_queries), int(options["symmetric"]), present,
                         crc, num_queries, 0 if rows is None else rows.shape[1],
                         -1 if rerank is None else rerank, shared_crc,
                         int(rows is not None)], dtype=np.int64)
        return (names, arrays, topk, options, origin, meta, {n: given[n] for n in names},
                shared)

    def _check_agreement(self, everyone: np.ndarray, all_ranks_queries: bool) -> None:
        what = {0: "topk", 1: "all_ranks_queries", 2: "symmetric",
                3: "the optional arguments given", 4: "the queries", 7: "rerank",
                8: "include or one-dimensional exclude (global ids, the same on every rank)",
                9: "whether they exclude ids per query"}
        columns = [0, 1, 2, 3, 7, 8, 9] + ([4] if all_ranks_queries else [])
        for column in columns:
            values = everyone[:, column]
            if (values != values[0]).any():
                r = int(np.flatnonzero(values != values[0])[0])
                hint = (" (each rank with its own queries: pass all_ranks_queries=False)"
                        if column == 4 else "")
                raise ValueError(f"the ranks' searches differ in {what[column]}: rank {r}'s "
                                 f"differs from rank 0's{hint}")

    def _local_filters(self, shared, rows, layout: _Layout) -> dict[str, np.ndarray]:
        """The search's filter in this shard's ids: ``{"include": ...}`` or ``{"exclude":
        ...}`` (global ids less this shard's offset with ids="offset"; others dropped)."""
        def local(ids: np.ndarray) -> np.ndarray:
            if self.ids != "offset":
                return ids
            low = int(layout.offsets[self.rank])
            high = low + int(self.shard.next_id)
            return np.where((ids >= low) & (ids < high), ids - low, -1)

        if rows is not None:
            return {"exclude": local(rows)}
        if shared is not None:
            name, ids = shared
            ids = local(ids)
            return {name: ids[ids >= 0]}
        return {}

    def _search_codes(self, arrays, topk, options, filters, layout: _Layout):
        """The local search of a PQIndex or BinaryIndex: ``(D, I, tie-break keys or None)``;
        for a PQIndex's fast scan ``(approximate D, I, _Candidates)`` of the best ``R`` by
        rounded sum (see _merge_candidates)."""
        if self.kind is PQIndex:
            shard, symmetric, rerank = self.shard, options["symmetric"], options["rerank"]
            count = shard.fastscan_width(topk, rerank, symmetric, int(layout.sizes.sum()))
            if count is not None and count > 0:
                sums, I, D, adc = shard.fastscan_candidates(arrays["q"], count, **filters)
                return D, I, _Candidates(sums, adc, rerank != 0)
            D, I = shard.search(arrays["q"], topk, symmetric=symmetric, rerank=rerank,
                                **filters)
            return D, I, None
        features = arrays["query_features"]
        D, I = self.shard.search(arrays["query_codes"], topk, features, **filters)
        T = None if features is None else self.shard.tiebreak_keys(
            features, to_numpy(I, allow_device_copy=True))
        return D, I, T

    def _search_table(self, arrays, topk, filters, layout: _Layout):
        """The local search of a table with the number of probed buckets decided over all
        shards (see the module docstring)."""
        comm = self._comm
        table = self._table()

        def checked():
            if self.kind is HierarchicalHashTable:
                act = self.shard.compound_activations(arrays["query_level1"],
                                                      arrays["query_level2"])
            else:
                act = np.ascontiguousarray(as_float_array(arrays["query_activations"],
                                                          "query_activations"))
            # the queries' checks, on every rank alike
            table.count_candidates(act, np.zeros(act.shape[0], dtype=np.int64))
            emb = arrays["query_embeddings"]
            if emb is None or emb.ndim != 2 or emb.shape[0] != act.shape[0]:
                raise ValueError("query_embeddings must be (Q, dim) with one row per query")
            exclude = arrays["exclude"]
            excluded = (np.zeros(act.shape[0], dtype=np.int64) if exclude is None
                        else (exclude >= 0).sum(axis=1))  # over all shards: alike everywhere
            return act, emb, excluded

        act, emb, excluded = comm.agree(checked)
        plan_start = time.perf_counter()
        target = min(topk, int(layout.sizes.sum()))
        probes = self._plan(table, act, filters, excluded, target, layout)
        plan_s = time.perf_counter() - plan_start
        D, I, counts = comm.agree(lambda: table.search_probes(act, emb, topk, probes,
                                                              **filters))
        return D, I, None, counts, plan_s

    def _plan(self, table: SparseHashTable, act: np.ndarray, filters: dict,
              excluded: np.ndarray, target: int, layout: _Layout) -> np.ndarray:
        """Per query, the buckets that one table over all shards would probe: the smallest
        ``p >= k`` whose first ``p`` buckets hold ``target`` candidates over all shards, or all
        buckets. Each step is one all_reduce; every rank takes the same steps (every decision
        is made on what all ranks hold alike: the queries, the whole table's bucket sizes, the
        count of excluded ids, the summed counts). ``filters`` is this shard's share of the
        filter, ``excluded`` the number of ids each query excludes."""
        k, buckets = table.k, table.num_buckets
        num_queries = act.shape[0]

        def candidates(caps: np.ndarray) -> np.ndarray:
            return self._comm.sum(self._comm.agree(
                lambda: table.count_candidates(act, caps, **filters)))

        low = np.zeros(num_queries, dtype=np.int64)   # too few candidates (0: unknown)
        high = np.full(num_queries, k, dtype=np.int64)  # enough, or every bucket
        if num_queries == 0:
            return high
        # the whole table's shortcut: when the largest of a query's k buckets alone, less its
        # excluded ids, holds target items, k buckets are enough (each excluded id is at most
        # one item: ids are unique). Not with a filter for every query.
        largest = layout.bucket_sizes[_top_buckets(act, k)].max(axis=1)
        settled = largest - excluded >= target
        if "include" in filters or ("exclude" in filters and filters["exclude"].ndim == 1):
            settled[:] = False
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
        if key.is_floating_point():  # -0.0 as +0.0: equal, whatever a radix sort makes of them
            key = key + 0.0
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
    if torch.device(device).type == "cpu":  # a cupy array for gloo: staged through the host
        import cupy

        return torch.from_numpy(cupy.asnumpy(x))
    return torch.from_dlpack(x).to(device)  # a cupy array for nccl: shared with torch


def _returned(t, origin):
    """A merged result as the caller's array type, on the caller's device."""
    if origin.library == NUMPY:
        return t.cpu().numpy()
    if origin.library == TORCH:
        return t.to(origin.device)
    import cupy

    with cupy.cuda.Device(int(origin.device.split(":")[1])):
        if t.device.type == "cpu":  # merged on the host (gloo): one copy to the device
            return cupy.asarray(t.numpy())
        return cupy.from_dlpack(t.to(origin.device))
