"""PQIndex: search over product-quantization codes by look-up tables (DQN's AQD)."""

from __future__ import annotations

import os
from typing import Any, ClassVar

import numpy as np

from .. import _gpu, _simd, config
from .._arrays import origin_of, to_cupy, torch_stream
from .._checks import as_float_array, check_int, check_rank, check_topk
from .._heap import padded
from .._io import load_npz, save_npz
from .._parallel import database_chunks
from .._shared import LazyState
from ..quantize import ProductQuantizer
from . import _fastscan_cpu, _pq_cpu, _pq_gpu

__all__ = ["PQIndex"]

_METRICS = ("l2", "ip")
_FASTSCAN_MAX_SUBSPACES = 256  # uint16 sums of uint8 entries stay exact up to 257


class PQIndex(LazyState):
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
        self._codes = np.empty((0, pq.num_subspaces), dtype=pq.code_dtype)
        self._sdc_tables = None  # (codebooks_version, tables), built on demand
        self._packed = None  # (codes, their fast-scan layout), built on demand
        self._init_lock()

    @property
    def ntotal(self) -> int:
        """Number of items in the index."""
        return int(self._codes.shape[0])

    def __len__(self) -> int:
        return self.ntotal

    def __repr__(self) -> str:
        return (f"PQIndex({self.pq!r}, metric={self.metric!r}, fast_scan={self.fast_scan}, "
                f"ntotal={self.ntotal})")

    @property
    def codes(self) -> np.ndarray:
        """The stored codes: shape ``(ntotal, num_subspaces)``, the quantizer's dtype."""
        return self._codes

    def add(self, x: Any) -> PQIndex:
        """Encode vectors and append their codes.

        Parameters
        ----------
        x : array_like, shape (N, dim)
            Vectors.

        Returns
        -------
        PQIndex
            ``self``.

        Raises
        ------
        ValueError
            If ``x`` has another dimension or rank, NaN or Inf.
        TypeError
            If ``x`` does not hold real numbers.
        """
        codes = self.pq.encode(self.pq.check_vectors(x, "x"))
        self._codes = np.concatenate([self._codes, codes])
        self._changed()
        return self

    def add_codes(self, codes: Any) -> PQIndex:
        """Append codes made by this index's quantizer.

        Parameters
        ----------
        codes : array_like of int, shape (N, num_subspaces)
            Codes (other integer dtypes are range-checked and converted).

        Returns
        -------
        PQIndex
            ``self``.

        Raises
        ------
        ValueError
            If the shape differs or a code is out of range.
        TypeError
            If ``codes`` does not hold integers.
        """
        self._codes = np.concatenate([self._codes, self.pq.check_codes(codes)])
        self._changed()
        return self

    def search(self, q: Any, topk: int, *, symmetric: bool = False,
               rerank: int | None = None) -> tuple[Any, Any]:
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

        Returns
        -------
        D : array of float32, shape (Q, topk)
            Squared L2 ascending, or inner products descending; ``inf`` / ``-inf`` where
            missing.
        I : array of int64, shape (Q, topk)
            Rows in the order added; -1 where missing. Ties go to the item added first.

        Raises
        ------
        ValueError
            If ``q`` has another dimension, NaN or Inf; ``topk`` is below 1; ``rerank`` is
            given to an exact search or is between 1 and ``topk - 1``.
        TypeError
            If ``q`` does not hold real numbers or ``topk`` is not an integer.
        """
        origin = origin_of(q, names=("q",))
        topk = check_int(topk, "topk", 1)
        inner_product = self.metric == "ip"
        fast = self.fast_scan and not symmetric
        rerank = self._check_rerank(rerank, topk, symmetric)
        if self._on_device(origin, topk, symmetric):
            return self._search_on_device(origin, q, topk, inner_product)
        queries = self.pq.check_vectors(q, "q")
        num_queries = queries.shape[0]
        topk, work = check_topk(topk, self.ntotal, num_queries)
        dist = np.empty((num_queries, work), dtype=np.float32)
        items = np.empty((num_queries, work), dtype=np.int64)
        if num_queries and work:  # else no results: all padding
            tables = self._tables(queries, symmetric, inner_product)
            chunks = database_chunks(num_queries, self.ntotal)
            if fast:
                sums = np.empty((num_queries, work), dtype=np.int32)
                self._fast_scan(tables, self._candidates(topk, rerank, self.ntotal),
                                rerank != 0, chunks, inner_product, dist, items, sums)
            elif chunks:
                _pq_cpu.scan_by_database(tables, self._codes, work, chunks, inner_product,
                                         dist, items)
            else:
                _pq_cpu.scan_by_query(tables, self._codes, work, inner_product, dist, items)
        dist, items = padded(dist, items, topk, -np.inf if inner_product else np.inf)
        return origin.wrap(dist), origin.wrap(items)

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

    def _on_device(self, origin, topk: int, symmetric: bool) -> bool:
        """Whether a search of these queries runs on the GPU (the exact scan of pq.cu)."""
        return bool(origin.is_cuda and _gpu.available() and not symmetric
                    and topk <= _pq_gpu.MAX_TOPK and self.ntotal < 2**32)

    def _fastscan_candidates(self, q: Any, width: int, candidates: int):
        """The fast scan's best ``candidates`` items by (rounded sum, item) on the host, padded
        to ``width`` columns: ``(sums int32, items, approximate distances, ADC distances)``,
        missing ones last (sum ``2**31 - 1``, item -1). What ShardedIndex merges."""
        queries = self.pq.check_vectors(q, "q")
        num_queries = queries.shape[0]
        inner_product = self.metric == "ip"
        sums = np.empty((num_queries, width), dtype=np.int32)
        items = np.empty((num_queries, width), dtype=np.int64)
        approx = np.empty((num_queries, width), dtype=np.float32)
        adc = np.full((num_queries, width), -np.inf if inner_product else np.inf, np.float32)
        if num_queries == 0 or self.ntotal == 0:
            sums[:] = _fastscan_cpu.MISSING_SUM
            items[:] = -1
            approx[:] = adc
            return sums, items, approx, adc
        tables = self._tables(queries, False, inner_product)
        self._fast_scan(tables, min(candidates, self.ntotal), False,
                        database_chunks(num_queries, self.ntotal), inner_product, approx, items,
                        sums)
        _fastscan_cpu.adc_of(tables, self._codes, items, inner_product, adc)
        return sums, items, approx, adc

    def _fast_scan(self, tables, candidates, rerank, chunks, inner_product, dist, items, sums):
        """The 4-bit fast scan (``_fastscan_cpu``) into ``dist``, ``items`` (and ``sums``
        without ``rerank``)."""
        num_pairs = (self.pq.num_subspaces + 1) // 2
        codes, packed = self._fastscan_layout(num_pairs)
        num_queries = tables.shape[0]
        luts = np.empty((num_queries, num_pairs * 32), dtype=np.uint8)
        bias = np.empty(num_queries, dtype=np.float32)
        scale = np.empty(num_queries, dtype=np.float64)
        _fastscan_cpu.quantize_tables(tables, num_pairs, luts, bias, scale)
        simd = bool(config.FASTSCAN_SIMD) and _simd.has_avx2()
        args = (simd, luts, bias, scale, packed, tables, codes, candidates, rerank)
        if chunks:
            _fastscan_cpu.scan_by_database(*args, chunks, inner_product, dist, items, sums)
        else:
            _fastscan_cpu.scan_by_query(*args, inner_product, dist, items, sums)

    def _fastscan_layout(self, num_pairs: int) -> tuple[np.ndarray, np.ndarray]:
        """``(codes, the same codes in the fast-scan layout)``, the layout made once per add
        under the lock (an add replaces the codes array, never changes it in place)."""
        codes = self._codes

        def build():
            blocks = -(-codes.shape[0] // _simd.FASTSCAN_BLOCK)
            packed = np.zeros(blocks * num_pairs * 32, dtype=np.uint8)
            _fastscan_cpu.pack_codes(codes, num_pairs, packed)
            return codes, packed

        return self._once("_packed", lambda v: v is not None and v[0] is codes, build)

    def _search_on_device(self, origin, q: Any, topk: int, inner_product: bool):
        """The asymmetric search on the GPU (qkernels/cuda/pq.cu), on torch's stream; the
        codes and codebooks are copied to each device once (again after an add or a change of
        the quantizer's codebooks)."""
        import cupy

        queries = to_cupy(q)
        check_rank(queries, "q", (2,), f"(N, dim = {self.pq.dim})")
        if queries.shape[1] != self.pq.dim:
            raise ValueError(f"q has dimension {queries.shape[1]}; this quantizer has "
                             f"{self.pq.dim}")
        queries = cupy.ascontiguousarray(as_float_array(queries, "q", dtype=np.float32))
        with torch_stream(origin):
            # once per device, again after an add or when the quantizer's codebooks change
            pq = self.pq
            codebooks, codes = self._device_mirror(
                lambda: (cupy.asarray(pq.codebooks), cupy.asarray(self._codes)),
                (pq.codebooks_version,))
            return origin.wrap(_pq_gpu.search(queries, codebooks, codes, topk, inner_product))

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
    }  # and "fast_scan" (bool), absent from files of earlier releases: the default then

    def save(self, path: str | os.PathLike) -> None:
        """Write the index and its quantizer to ``path``.

        Parameters
        ----------
        path : str or os.PathLike
            A ``.npz`` file (no pickle inside); written whole or not at all.

        Raises
        ------
        OSError
            If the file cannot be written.
        """
        pq = self.pq
        save_npz(path, "PQIndex", self._VERSION, metric=np.array(self.metric),
                 codes=self._codes, dim=np.array(pq.dim),
                 num_subspaces=np.array(pq.num_subspaces), nbits=np.array(pq.nbits),
                 codebooks=pq.codebooks, fast_scan=np.array(self.fast_scan))

    @classmethod
    def load(cls, path: str | os.PathLike) -> PQIndex:
        """Read an index written by :meth:`save`.

        Parameters
        ----------
        path : str or os.PathLike
            The file; it is checked member by member before anything is unpacked, and never
            unpickled.

        Returns
        -------
        PQIndex
            The index, searchable at once (also from several threads).

        Raises
        ------
        ValueError
            If the file is truncated, damaged, of another kind or version.
        OSError
            If the file cannot be read.
        """
        arrays = load_npz(path, "PQIndex", cls._VERSION, cls._FIELDS)
        try:
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
            index.add_codes(arrays["codes"])
        except (ValueError, TypeError) as error:
            raise ValueError(f"{os.fspath(path)!r} is a corrupted PQIndex file ({error})") from None
        return index
