"""PQIndex: search over product-quantization codes by look-up tables (DQN's AQD)."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from .. import _gpu, _simd, config
from .._arrays import origin_of, to_cupy, torch_stream
from .._checks import as_float_array, check_int, check_rank, check_topk
from .._filter import block_bits
from .._heap import padded
from .._parallel import database_chunks
from ..quantize import ProductQuantizer
from . import _fastscan_cpu, _pq_cpu, _pq_gpu
from ._base import Index, Snapshot

__all__ = ["PQIndex"]

_METRICS = ("l2", "ip")
_FASTSCAN_MAX_SUBSPACES = 256  # uint16 sums of uint8 entries stay exact up to 257


class PQIndex(Index):
    """Items stored as product-quantization codes, searched by asymmetric distance.

    A query is never quantized (asymmetric distance, ADC): per query one ``(M, K)`` table of
    distances between its sub-vectors and every codeword, then ``M`` look-ups and adds per item,
    fused with the top-K selection. With ``symmetric=True`` the query is quantized too (SDC,
    tables of codeword-to-codeword distances). Parallel over queries, or over the database when
    there are few queries (``qk.config.SPLIT_DATABASE_MAX_QUERIES``). Queries on a GPU are
    searched there (asymmetric distance, topk up to 128; qkernels/cuda/pq.cu).

    Over a 4-bit quantizer the asymmetric search is a *fast scan* (as faiss'
    ``IndexPQFastScan``): the codes are also kept in blocks of 32 items, two codes per byte,
    and scanned with per-query tables rounded to uint8, looked up 32 at a time by byte
    shuffles (AVX2; a scalar kernel elsewhere) and summed in uint16. The best ``rerank`` items
    by that rounded sum are then ranked again by their exact ADC distance, so ``D`` is the ADC
    distance of the returned ids (``index/_fastscan_cpu.py`` gives the rule). On a GPU and
    with ``symmetric=True`` the search stays the exact scan.

    Parameters
    ----------
    pq : ProductQuantizer
        A trained quantizer; the index keeps a reference.
    metric : {"l2", "ip"}, default "l2"
        Squared Euclidean distance (ascending) or inner product (descending).
    fast_scan : bool, optional
        None (default): the fast scan when the quantizer has 4 bits and at most 256
        sub-quantizers. True: require it. False: always the exact float ADC scan.

    Raises
    ------
    ValueError
        If ``metric`` is unknown, or ``fast_scan=True`` for a quantizer it cannot serve.
    TypeError
        If ``pq`` is not a ProductQuantizer or ``fast_scan`` not a bool or None.
    RuntimeError
        If the quantizer is not trained.

    See Also
    --------
    ProductQuantizer : the codes.

    Examples
    --------
    >>> import numpy as np, qkernels as qk
    >>> x = np.random.default_rng(0).standard_normal((5000, 32)).astype(np.float32)
    >>> pq = qk.ProductQuantizer(32, num_subspaces=8, nbits=8).train(x)
    >>> index = qk.PQIndex(pq).add(x)
    >>> D, I = index.search(x[:2], topk=5)
    >>> D.shape, I.dtype
    ((2, 5), dtype('int64'))
    """

    _KIND = "PQIndex"
    _VERSION = 1

    def __init__(self, pq: ProductQuantizer, metric: str = "l2", *,
                 fast_scan: bool | None = None):
        if not isinstance(pq, ProductQuantizer):
            raise TypeError(f"pq must be a ProductQuantizer, got {type(pq).__name__}")
        if not pq.is_trained:
            raise RuntimeError("this ProductQuantizer is not trained: call pq.train(x) first")
        if metric not in _METRICS:
            raise ValueError(f"metric must be one of {_METRICS}, got {metric!r}")
        possible = pq.nbits == 4 and pq.num_subspaces <= _FASTSCAN_MAX_SUBSPACES
        if fast_scan is None:
            fast_scan = possible
        elif not isinstance(fast_scan, (bool, np.bool_)):
            raise TypeError(f"fast_scan must be True, False or None, got {fast_scan!r}")
        elif fast_scan and not possible:
            raise ValueError(f"fast_scan=True needs a 4-bit quantizer with at most "
                             f"{_FASTSCAN_MAX_SUBSPACES} sub-quantizers; this one has "
                             f"nbits={pq.nbits}, num_subspaces={pq.num_subspaces}")
        self.pq = pq
        self.metric = metric
        self.fast_scan = bool(fast_scan)
        self._sdc_tables = None  # (codebooks_version, tables), built on demand
        self._init_index()

    def __repr__(self) -> str:
        return (f"PQIndex({self.pq!r}, metric={self.metric!r}, fast_scan={self.fast_scan}, "
                f"ntotal={self.ntotal})")

    @property
    def codes(self) -> np.ndarray:
        """The stored codes: shape ``(ntotal, num_subspaces)``, the quantizer's dtype, in the
        order added (read-only)."""
        return self._state.codes

    def add(self, x: Any, ids: Any = None) -> PQIndex:
        """Encode vectors and append their codes.

        Parameters
        ----------
        x : array_like, shape (N, dim)
            Vectors.
        ids : array_like of int, shape (N,), optional
            64-bit ids ``>= 0``, unique in the index (default: the next ``N`` of ``next_id``).

        Returns
        -------
        PQIndex
            ``self``.

        Raises
        ------
        ValueError
            If ``x`` has another dimension or rank, NaN or Inf, or an id is negative, repeated
            or already in the index.
        TypeError
            If ``x`` does not hold real numbers or ``ids`` integers.
        """
        return self._add_codes(self.pq.encode(self.pq.check_vectors(x, "x")), ids)

    def add_codes(self, codes: Any, ids: Any = None) -> PQIndex:
        """Append codes made by this index's quantizer.

        Parameters
        ----------
        codes : array_like of int, shape (N, num_subspaces)
            Codes (other integer dtypes are range-checked and converted).
        ids : array_like of int, shape (N,), optional
            64-bit ids ``>= 0``, unique in the index (default: the next ``N`` of ``next_id``).

        Returns
        -------
        PQIndex
            ``self``.

        Raises
        ------
        ValueError
            If the shape differs, a code is out of range, or an id is negative, repeated or
            already in the index.
        TypeError
            If ``codes`` or ``ids`` does not hold integers.
        """
        return self._add_codes(self.pq.check_codes(codes), ids)

    def _add_codes(self, codes: np.ndarray, ids: Any) -> PQIndex:
        with self._writer:
            state = self._state
            new_ids = self._new_ids(state, ids, codes.shape[0])
            self._publish(Snapshot(codes=np.concatenate([state.codes, codes]),
                                   ids=np.concatenate([state.ids, new_ids])),
                          new_ids=new_ids, given=ids is not None)
        return self

    # ------------------------------------------------------------------ the protocol's parts

    def _empty_state(self) -> Snapshot:
        return Snapshot(codes=np.empty((0, self.pq.num_subspaces), dtype=self.pq.code_dtype),
                        ids=np.empty(0, dtype=np.int64))

    def _kept(self, state: Snapshot, keep: np.ndarray) -> Snapshot:
        return Snapshot(codes=state.codes[keep], ids=state.ids[keep])

    def _joined(self, state: Snapshot, other: Snapshot, other_ids: np.ndarray) -> Snapshot:
        return Snapshot(codes=np.concatenate([state.codes, other.codes]),
                        ids=np.concatenate([state.ids, other_ids]))

    def _check_compatible(self, other: PQIndex) -> None:
        mine, theirs = self.pq, other.pq
        for name in ("dim", "num_subspaces", "nbits"):
            if getattr(mine, name) != getattr(theirs, name):
                raise ValueError(f"the indexes' quantizers differ in {name}: "
                                 f"{getattr(mine, name)} here, {getattr(theirs, name)} there")
        if self.metric != other.metric:
            raise ValueError(f"the indexes differ in metric: {self.metric!r} here, "
                             f"{other.metric!r} there")
        if theirs is not mine and not np.array_equal(mine.codebooks, theirs.codebooks):
            raise ValueError("the indexes' quantizers have different codebooks: their codes "
                             "mean different vectors")

    def _reconstructed(self, state: Snapshot, positions: np.ndarray) -> np.ndarray:
        return self.pq.decode(state.codes[positions])

    def search(self, q: Any, topk: int, *, symmetric: bool = False,
               rerank: int | None = None, include: Any = None, exclude: Any = None
               ) -> tuple[Any, Any]:
        """The ``topk`` nearest items of each query by asymmetric (or symmetric) distance.

        Parameters
        ----------
        q : array_like, shape (Q, dim)
            Queries (never quantized, unless ``symmetric``).
        topk : int
            Results per query.
        symmetric : bool, default False
            Quantize the queries too (SDC; the exact scan).
        rerank : int, optional
            Fast scan only: how many items the rounded scan keeps for ranking again by the
            exact ADC distance; None is ``4 * topk``, 0 returns the best ``topk`` by the
            rounded sums with their approximate distances (as faiss' ``IndexPQFastScan``).
        include : array_like of int, shape (n,), optional
            Only these ids may be returned (ids the index does not hold are ignored).
        exclude : array_like of int, shape (n,) or (Q, m), optional
            These ids are never returned: one array for every query, or one row per query
            (-1 entries are padding). Not with ``include``.

        Returns
        -------
        D : array of float32, shape (Q, topk)
            Squared L2 ascending, or inner products descending; ``inf`` / ``-inf`` where
            missing.
        I : array of int64, shape (Q, topk)
            The items' ids; -1 where missing. Ties go to the item added first.

        Raises
        ------
        ValueError
            If ``q`` has another dimension, NaN or Inf; ``topk`` is below 1; ``rerank`` is
            given to an exact search or is between 1 and ``topk - 1``; ``include`` and
            ``exclude`` are both given, or hold negative ids other than -1 padding.
        TypeError
            If ``q`` does not hold real numbers, ``topk`` is not an integer, or a filter does
            not hold integers.

        Notes
        -----
        The filter is applied inside the scan: an item it refuses never takes a place in a
        query's top ``topk``, so ``topk`` results come back whenever that many items pass.
        Queries on a GPU are searched there by the exact asymmetric scan (``topk`` up to
        128, no filter, not ``symmetric``): a fast-scan index answers them as
        ``fast_scan=False`` would, exactly, and ``rerank`` does not apply. Other searches of
        GPU queries run on the CPU, and their results go back to the device.
        """
        origin = origin_of(q, names=("q",))
        topk = check_int(topk, "topk", 1)
        inner_product = self.metric == "ip"
        fast = self.fast_scan and not symmetric
        rerank = self._check_rerank(rerank, topk, symmetric)
        state = self._state  # the snapshot this search reads, whatever happens meanwhile
        filtered = include is not None or exclude is not None
        if not filtered and self._on_device(origin, topk, symmetric, state):
            return self._search_on_device(origin, q, topk, inner_product, state)
        queries = self.pq.check_vectors(q, "q")
        num_queries = queries.shape[0]
        state, mask, excluded = self._search_state(state, include, exclude, num_queries)
        topk, work = check_topk(topk, state.size, num_queries)
        dist = np.empty((num_queries, work), dtype=np.float32)
        items = np.empty((num_queries, work), dtype=np.int64)
        if num_queries and work:  # else no results: all padding
            tables = self._tables(queries, symmetric, inner_product)
            chunks = database_chunks(num_queries, state.size)
            if fast:
                sums = np.empty((num_queries, work), dtype=np.int32)
                self._fast_scan(state, tables, self._candidates(topk, rerank, state.size),
                                rerank != 0, chunks, inner_product, dist, items, sums, mask,
                                excluded)
            elif chunks:
                _pq_cpu.scan_by_database(tables, state.codes, work, chunks, inner_product,
                                         dist, items, mask, excluded)
            else:
                _pq_cpu.scan_by_query(tables, state.codes, work, inner_product, dist, items,
                                      mask, excluded)
        dist, items = padded(dist, items, topk, -np.inf if inner_product else np.inf)
        return origin.wrap(dist), origin.wrap(state.ids_of(items))

    def _check_rerank(self, rerank: Any, topk: int, symmetric: bool) -> int | None:
        if rerank is None:
            return None
        rerank = check_int(rerank, "rerank", 0)
        if not self.fast_scan or symmetric:
            raise ValueError("rerank applies to the 4-bit fast scan; this search is exact ("
                             + ("symmetric=True)" if self.fast_scan else
                                f"fast_scan=False, nbits={self.pq.nbits})"))
        if 0 < rerank < topk:
            raise ValueError(f"rerank must be 0 (off) or at least topk = {topk}, got {rerank}")
        return rerank

    @staticmethod
    def _candidates(topk: int, rerank: int | None, ntotal: int) -> int:
        """How many items the fast scan keeps by rounded sum (R of the fast-scan rule) in an
        index of ``ntotal`` items."""
        return min(ntotal, 4 * topk if rerank is None else (rerank or topk))

    def _on_device(self, origin, topk: int, symmetric: bool, state: Snapshot | None = None
                   ) -> bool:
        """Whether a search of these queries runs on the GPU (the exact scan of pq.cu; an
        empty index answers its padding from the host, having no ids to map rows to)."""
        size = (self._state if state is None else state).size
        return bool(origin.is_cuda and _gpu.available() and not symmetric
                    and topk <= _pq_gpu.MAX_TOPK and 0 < size < 2**32)

    def fastscan_width(self, topk: int, rerank: int | None = None, symmetric: bool = False,
                       ntotal: int | None = None) -> int | None:
        """How many items the 4-bit fast scan keeps by rounded sum for a search of ``topk``
        (``R``: ``rerank``, ``4 * topk`` for None, ``topk`` for 0, at most ``ntotal``), or None
        where the search is not a fast scan (``symmetric``, or ``fast_scan=False``).

        A hook for an exact merge of shards (:class:`qkernels.distributed.ShardedIndex`).

        Parameters
        ----------
        topk : int
            Results per query.
        rerank : int, optional
            As in :meth:`search`.
        symmetric : bool, default False
            As in :meth:`search`.
        ntotal : int, optional
            The items the search is over (default: this index's; a sharded search's: all
            shards').

        Returns
        -------
        int or None
            ``R``, or None.

        Raises
        ------
        ValueError
            If ``rerank`` is refused as :meth:`search` refuses it, or ``ntotal`` is
            negative.
        TypeError
            If ``topk``, ``rerank`` or ``ntotal`` is not an integer.
        """
        topk = check_int(topk, "topk", 1)
        rerank = self._check_rerank(rerank, topk, symmetric)
        ntotal = self.ntotal if ntotal is None else check_int(ntotal, "ntotal", 0)
        if not self.fast_scan or symmetric:
            return None
        return self._candidates(topk, rerank, ntotal)

    def fastscan_candidates(self, q: Any, count: int, *, include: Any = None,
                            exclude: Any = None
                            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The fast scan's best ``count`` items of each query by (rounded sum, item), before
        any re-ranking.

        A hook for an exact merge of shards: the rounded tables depend only on the query and
        the codebooks, so shards' sums compare, and the best ``R`` of the union by (sum, id)
        are one index's ``R`` candidates (then ranked by ADC distance, or not, as
        :meth:`search` does).

        Parameters
        ----------
        q : array_like, shape (Q, dim)
            Queries.
        count : int
            Candidates per query (``fastscan_width``).
        include : array_like of int, shape (n,), optional
            As in :meth:`search`.
        exclude : array_like of int, shape (n,) or (Q, m), optional
            As in :meth:`search`.

        Returns
        -------
        sums : ndarray of int32, shape (Q, count)
            The rounded sums, ascending (``2**31 - 1`` where missing).
        ids : ndarray of int64, shape (Q, count)
            The items' ids (-1 where missing).
        approximate : ndarray of float32, shape (Q, count)
            The distances the rounded sums stand for.
        adc : ndarray of float32, shape (Q, count)
            The items' exact ADC distances (inner products for ``"ip"``).

        Raises
        ------
        ValueError
            If ``q`` is refused as by :meth:`search`, or ``count`` is below 1.
        TypeError
            If ``q`` does not hold real numbers or ``count`` is not an integer.
        """
        count = check_int(count, "count", 1)
        if not self.fast_scan:
            raise ValueError("fastscan_candidates needs a fast-scan index (4 bits, "
                             "fast_scan not False)")
        return self._fastscan_candidates(q, count, count, include, exclude)

    def _fastscan_candidates(self, q: Any, width: int, candidates: int, include: Any = None,
                             exclude: Any = None):
        """The fast scan's best ``candidates`` items by (rounded sum, item) on the host, padded
        to ``width`` columns: ``(sums int32, ids, approximate distances, ADC distances)``,
        missing ones last (sum ``2**31 - 1``, id -1)."""
        queries = self.pq.check_vectors(q, "q")
        num_queries = queries.shape[0]
        state, mask, excluded = self._search_state(self._state, include, exclude, num_queries)
        inner_product = self.metric == "ip"
        sums = np.empty((num_queries, width), dtype=np.int32)
        items = np.empty((num_queries, width), dtype=np.int64)
        approx = np.empty((num_queries, width), dtype=np.float32)
        adc = np.full((num_queries, width), -np.inf if inner_product else np.inf, np.float32)
        if num_queries == 0 or state.size == 0:
            sums[:] = _fastscan_cpu.MISSING_SUM
            items[:] = -1
            approx[:] = adc
            return sums, items, approx, adc
        tables = self._tables(queries, False, inner_product)
        self._fast_scan(state, tables, min(candidates, state.size), False,
                        database_chunks(num_queries, state.size), inner_product, approx, items,
                        sums, mask, excluded)
        _fastscan_cpu.adc_of(tables, state.codes, items, inner_product, adc)
        return sums, state.ids_of(items), approx, adc

    def _fast_scan(self, state, tables, candidates, rerank, chunks, inner_product, dist, items,
                   sums, mask, excluded):
        """The 4-bit fast scan (``_fastscan_cpu``) of ``state`` into ``dist``, ``items``
        (positions; and ``sums`` without ``rerank``)."""
        num_pairs = (self.pq.num_subspaces + 1) // 2
        packed = self._fastscan_layout(state, num_pairs)
        num_queries = tables.shape[0]
        luts = np.empty((num_queries, num_pairs * 32), dtype=np.uint8)
        bias = np.empty(num_queries, dtype=np.float32)
        scale = np.empty(num_queries, dtype=np.float64)
        _fastscan_cpu.quantize_tables(tables, num_pairs, luts, bias, scale)
        simd = config.get("FASTSCAN_SIMD") and _simd.has_avx2()
        allowed = block_bits(mask, _simd.FASTSCAN_BLOCK)
        args = (simd, luts, bias, scale, packed, tables, state.codes, candidates, rerank)
        if chunks:
            _fastscan_cpu.scan_by_database(*args, chunks, inner_product, dist, items, sums,
                                           allowed, excluded)
        else:
            _fastscan_cpu.scan_by_query(*args, inner_product, dist, items, sums, allowed,
                                        excluded)

    def _fastscan_layout(self, state: Snapshot, num_pairs: int) -> np.ndarray:
        """The snapshot's codes in the fast-scan layout, made once per snapshot."""
        codes = state.codes

        def build():
            blocks = -(-codes.shape[0] // _simd.FASTSCAN_BLOCK)
            packed = np.zeros(blocks * num_pairs * 32, dtype=np.uint8)
            _fastscan_cpu.pack_codes(codes, num_pairs, packed)
            return packed

        return self._cached(state, "packed", build)

    def _search_on_device(self, origin, q: Any, topk: int, inner_product: bool,
                          state: Snapshot):
        """The asymmetric search on the GPU (qkernels/cuda/pq.cu), on torch's stream; the
        codes and codebooks are copied to each device once per snapshot (and again when the
        quantizer's codebooks change)."""
        import cupy

        queries = to_cupy(q)
        check_rank(queries, "q", (2,), f"(N, dim = {self.pq.dim})")
        if queries.shape[1] != self.pq.dim:
            raise ValueError(f"q has dimension {queries.shape[1]}; this quantizer has "
                             f"{self.pq.dim}")
        queries = cupy.ascontiguousarray(as_float_array(queries, "q", dtype=np.float32))
        with torch_stream(origin):
            pq = self.pq
            codebooks, codes, ids = self._state_mirror(
                state, lambda: (cupy.asarray(pq.codebooks), cupy.asarray(state.codes),
                                cupy.asarray(state.ids)),
                (pq.codebooks_version,))
            dist, items = _pq_gpu.search(queries, codebooks, codes, topk, inner_product)
            items = cupy.where(items >= 0, ids[cupy.maximum(items, 0)], -1)
            return origin.wrap(dist), origin.wrap(items)

    def _tables(self, queries: np.ndarray, symmetric: bool, inner_product: bool) -> np.ndarray:
        version = self.pq.codebooks_version  # read first: a change after it forces a rebuild
        codebooks = self.pq.codebooks
        if not symmetric:
            tables = np.empty((queries.shape[0], self.pq.num_subspaces, self.pq.num_centroids),
                              dtype=np.float32)
            _pq_cpu.distance_tables(queries, codebooks, inner_product, tables)
            return tables
        sdc = self._once(
            "_sdc_tables", lambda c: c is not None and c[0] == version,
            lambda: (version, _pq_cpu.symmetric_tables(codebooks, inner_product)))[1]
        query_codes = self.pq.encode(queries).astype(np.int64)
        rows = np.arange(self.pq.num_subspaces)
        return np.ascontiguousarray(sdc[rows[None, :], query_codes])

    # ------------------------------------------------------------------ files

    _FIELDS: ClassVar[dict[str, tuple[str, int]]] = {
        "metric": ("U", 0), "codes": ("u", 2), "dim": ("iu", 0), "num_subspaces": ("iu", 0),
        "nbits": ("iu", 0), "codebooks": ("f", 3),
    }  # and, absent from files of earlier releases: "fast_scan" (bool: the default then),
    # "ids", "next_id", "default_ids" (the items' positions then)

    def _arrays_of(self, state: Snapshot) -> dict[str, np.ndarray]:
        pq = self.pq
        return {"metric": np.array(self.metric), "codes": state.codes,
                "dim": np.array(pq.dim), "num_subspaces": np.array(pq.num_subspaces),
                "nbits": np.array(pq.nbits), "codebooks": pq.codebooks,
                "fast_scan": np.array(self.fast_scan), **self._id_members(state)}

    @classmethod
    def _from_arrays(cls, arrays: dict[str, np.ndarray]) -> PQIndex:
        pq = ProductQuantizer(int(arrays["dim"]), int(arrays["num_subspaces"]),
                              int(arrays["nbits"])).set_codebooks(arrays["codebooks"])
        fast_scan = arrays.get("fast_scan")
        if fast_scan is not None:
            if fast_scan.dtype != np.bool_ or fast_scan.ndim != 0:
                raise ValueError(f"'fast_scan' has dtype {fast_scan.dtype} and "
                                 f"{fast_scan.ndim} dimensions; a PQIndex file holds a "
                                 "boolean scalar")
            fast_scan = bool(fast_scan)
        index = cls(pq, str(arrays["metric"]), fast_scan=fast_scan)
        codes = pq.check_codes(arrays["codes"])
        ids = index._restore_ids(arrays, codes.shape[0])
        index._state = Snapshot(codes=codes.copy(), ids=ids)
        return index
