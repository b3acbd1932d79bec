"""PQIndex: search over product-quantization codes by look-up tables (DQN's AQD)."""

from __future__ import annotations

import os
from typing import Any, ClassVar

import numpy as np

from .. import _gpu
from .._arrays import origin_of, to_cupy, torch_stream
from .._checks import as_float_array, check_int, check_rank, check_topk
from .._heap import padded
from .._io import load_npz, save_npz
from .._parallel import database_chunks
from .._shared import LazyState
from ..quantize import ProductQuantizer
from . import _pq_cpu, _pq_gpu

__all__ = ["PQIndex"]

_METRICS = ("l2", "ip")


class PQIndex(LazyState):
    """Items stored as product-quantization codes, searched by asymmetric distance.

    A query is never quantized (asymmetric distance, ADC): per query one ``(M, K)`` table of
    distances between its sub-vectors and every codeword, then ``M`` look-ups and adds per item,
    fused with the top-K selection. With ``symmetric=True`` the query is quantized too (SDC,
    tables of codeword-to-codeword distances). Parallel over queries, or over the database when
    there are few queries (``qk.config.SPLIT_DATABASE_MAX_QUERIES``). Queries on a GPU are
    searched there (asymmetric distance, topk up to 128; qkernels/cuda/pq.cu).

    Parameters
    ----------
    pq : ProductQuantizer
        A trained quantizer; the index keeps a reference.
    metric : {"l2", "ip"}
        Squared Euclidean distance (ascending) or inner product (descending).

    Examples
    --------
    >>> index = PQIndex(ProductQuantizer(64, 8, 8).train(x))
    >>> index.add(x)
    >>> D, I = index.search(q, topk=10)
    """

    _VERSION = 1

    def __init__(self, pq: ProductQuantizer, metric: str = "l2"):
        if not isinstance(pq, ProductQuantizer):
            raise TypeError(f"pq must be a ProductQuantizer, got {type(pq).__name__}")
        if not pq.is_trained:
            raise RuntimeError("this ProductQuantizer is not trained: call pq.train(x) first")
        if metric not in _METRICS:
            raise ValueError(f"metric must be one of {_METRICS}, got {metric!r}")
        self.pq = pq
        self.metric = metric
        self._codes = np.empty((0, pq.num_subspaces), dtype=pq.code_dtype)
        self._sdc_tables = None  # (codebooks_version, tables), built on demand
        self._init_lock()

    @property
    def ntotal(self) -> int:
        return int(self._codes.shape[0])

    def __len__(self) -> int:
        return self.ntotal

    def __repr__(self) -> str:
        return f"PQIndex({self.pq!r}, metric={self.metric!r}, ntotal={self.ntotal})"

    @property
    def codes(self) -> np.ndarray:
        """The stored codes, ``(ntotal, num_subspaces)``."""
        return self._codes

    def add(self, x: Any) -> PQIndex:
        """Encode ``x`` ``(N, dim)`` and append the codes. Returns the index."""
        codes = self.pq.encode(self.pq.check_vectors(x, "x"))
        self._codes = np.concatenate([self._codes, codes])
        self._changed()
        return self

    def add_codes(self, codes: Any) -> PQIndex:
        """Append codes made by this index's quantizer. Returns the index."""
        self._codes = np.concatenate([self._codes, self.pq.check_codes(codes)])
        self._changed()
        return self

    def search(self, q: Any, topk: int, *, symmetric: bool = False) -> tuple[Any, Any]:
        """The ``topk`` nearest items of each query by asymmetric (or symmetric) distance.

        Returns ``D`` float32 ``(Q, topk)`` (squared L2 ascending, or inner products descending;
        ``inf`` / ``-inf`` where missing) and ``I`` int64 (row numbers in the order added, -1
        where missing). Ties go to the item added first.
        """
        origin = origin_of(q, names=("q",))
        topk = check_int(topk, "topk", 1)
        inner_product = self.metric == "ip"
        if (origin.is_cuda and _gpu.available() and not symmetric
                and topk <= _pq_gpu.MAX_TOPK and self.ntotal < 2**32):
            return self._search_on_device(origin, q, topk, inner_product)
        queries = self.pq.check_vectors(q, "q")
        num_queries = queries.shape[0]
        topk, work = check_topk(topk, self.ntotal, num_queries)
        dist = np.empty((num_queries, work), dtype=np.float32)
        items = np.empty((num_queries, work), dtype=np.int64)
        if num_queries:
            tables = self._tables(queries, symmetric, inner_product)
            chunks = database_chunks(num_queries, self.ntotal)
            if chunks:
                _pq_cpu.scan_by_database(tables, self._codes, work, chunks, inner_product,
                                         dist, items)
            else:
                _pq_cpu.scan_by_query(tables, self._codes, work, inner_product, dist, items)
        dist, items = padded(dist, items, topk, -np.inf if inner_product else np.inf)
        return origin.wrap(dist), origin.wrap(items)

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
    }

    def save(self, path: str | os.PathLike) -> None:
        """Write the index and its quantizer to ``path`` (.npz, no pickle)."""
        pq = self.pq
        save_npz(path, "PQIndex", self._VERSION, metric=np.array(self.metric),
                 codes=self._codes, dim=np.array(pq.dim),
                 num_subspaces=np.array(pq.num_subspaces), nbits=np.array(pq.nbits),
                 codebooks=pq.codebooks)

    @classmethod
    def load(cls, path: str | os.PathLike) -> PQIndex:
        """Read an index written by :meth:`save`."""
        arrays = load_npz(path, "PQIndex", cls._VERSION, cls._FIELDS)
        try:
            pq = ProductQuantizer(int(arrays["dim"]), int(arrays["num_subspaces"]),
                                  int(arrays["nbits"])).set_codebooks(arrays["codebooks"])
            index = cls(pq, str(arrays["metric"]))
            index.add_codes(arrays["codes"])
        except (ValueError, TypeError) as error:
            raise ValueError(f"{os.fspath(path)!r} is a corrupted PQIndex file ({error})") from None
        return index
