"""Packed binary codes: pack_bits, unpack_bits, hamming_topk and BinaryIndex."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .. import _gpu
from .._arrays import origin_of, to_numpy, torch_stream
from .._bits import pack_bits, packed, unpack_bits
from .._checks import (
    as_float_array,
    check_columns,
    check_distance_range,
    check_int,
    check_rank,
    check_same_rows,
    check_topk,
)
from .._heap import padded
from .._io import load_npz, save_npz
from .._parallel import database_chunks
from .._shared import LazyState
from . import _hamming_cpu

__all__ = ["BinaryIndex", "hamming_topk", "pack_bits", "unpack_bits"]


def _words(codes: np.ndarray) -> np.ndarray:
    """Packed bytes as rows of uint64 words ``(N, words)``, zero-padded to whole words."""
    nbytes = codes.shape[1]
    padded = -(-nbytes // 8) * 8 if nbytes else 8
    if padded != nbytes or not codes.flags.c_contiguous:
        out = np.zeros((codes.shape[0], padded), dtype=np.uint8)
        out[:, :nbytes] = codes
        codes = out
    return codes.view(np.uint64)


def _word_columns(codes: np.ndarray) -> np.ndarray:
    """The database layout of the kernels: ``(words, N)``, word w of every item contiguous."""
    return np.ascontiguousarray(_words(codes).T)


# items per block of the Hamming scan: the block's distances stay in L1
_BLOCK = 1024


def _features(x: Any, name: str, rows: int) -> np.ndarray:
    f = to_numpy(x, allow_device_copy=True, name=name)
    check_rank(f, name, (2,), "(N, dim)")
    check_columns(f, name, "dimensions")
    if f.shape[0] != rows:
        raise ValueError(f"{name} has {f.shape[0]} rows; expected {rows}")
    f = np.ascontiguousarray(as_float_array(f, name, dtype=np.float32))
    check_distance_range(f, name)
    return f


def _on_device(origin, nbytes: int, topk: int, tiebreak: Any) -> bool:
    """Whether a search runs on the GPU: GPU input, cupy, and what the kernel handles (else
    the CPU kernel runs on host copies and the results go back to the device)."""
    from . import _hamming_gpu

    return (origin.is_cuda and _gpu.available() and tiebreak is None
            and 8 * nbytes <= _hamming_gpu.MAX_BITS and topk <= _hamming_gpu.MAX_TOPK)


def _search(query_words: np.ndarray, db_columns: np.ndarray, topk: int,
            tiebreak: tuple[np.ndarray, np.ndarray] | None) -> tuple[np.ndarray, np.ndarray]:
    num_queries = query_words.shape[0]
    requested, topk = check_topk(topk, db_columns.shape[1], num_queries)
    dist, items = _select(query_words, db_columns, topk, tiebreak)
    return padded(dist, items, requested, np.iinfo(np.int32).max)


def _select(query_words, db_columns, topk, tiebreak):
    num_queries = query_words.shape[0]
    dist = np.empty((num_queries, topk), dtype=np.int32)
    items = np.empty((num_queries, topk), dtype=np.int64)
    if num_queries == 0:
        return dist, items
    if tiebreak is not None:
        _hamming_cpu.topk_tiebreak(query_words, db_columns, tiebreak[0], tiebreak[1], topk,
                                   dist, items)
        return dist, items
    chunks = database_chunks(num_queries, db_columns.shape[1])
    if chunks:
        _hamming_cpu.topk_by_database(query_words, db_columns, topk, _BLOCK, chunks, dist,
                                      items)
    else:
        _hamming_cpu.topk_by_query(query_words, db_columns, topk, _BLOCK, dist, items)
    return dist, items


def hamming_topk(query_codes: Any, db_codes: Any, topk: int, tiebreak: Any = None
                 ) -> tuple[Any, Any]:
    """Exact top-K by Hamming distance between packed codes (FAISS IndexBinaryFlat's search).

    Parameters
    ----------
    query_codes, db_codes : uint8 ``(Q, B)`` and ``(N, B)``, packed as by :func:`pack_bits`.
    topk : int
    tiebreak : (query_features, db_features), optional
        Continuous features ``(Q, dim)`` and ``(N, dim)``: items at equal Hamming distance are
        ordered by squared Euclidean distance between features (the H2Q evaluation rule; pass
        normalised features for theirs). Without it ties go to the lower index.

    Codes on a GPU are searched there (qkernels/cuda/hamming.cu, on torch's current stream),
    up to 1024 bits and topk 1024 without a tie-break; otherwise on host copies.

    Returns
    -------
    D : int32 ``(Q, topk)``, Hamming distances ascending (int32 max where missing).
    I : int64 ``(Q, topk)``, database rows (-1 where missing).
    """
    pair = tuple(tiebreak) if isinstance(tiebreak, (tuple, list)) and len(tiebreak) == 2 else (
        None, None)
    origin = origin_of(query_codes, db_codes, *pair,
                       names=("query_codes", "db_codes", "tiebreak[0]", "tiebreak[1]"))
    topk = check_int(topk, "topk", 1)
    db = packed(db_codes, "db_codes", device=origin.is_cuda and _gpu.available())
    if _on_device(origin, db.shape[1], topk, tiebreak):
        from . import _hamming_gpu

        queries = packed(query_codes, "query_codes", db.shape[1], device=True)
        with torch_stream(origin):
            return origin.wrap(_hamming_gpu.topk_by_query(queries, _hamming_gpu.word_columns(db),
                                                          topk))
    db = to_numpy(db, allow_device_copy=True)
    queries = packed(query_codes, "query_codes", db.shape[1])
    pair = None
    if tiebreak is not None:
        if not isinstance(tiebreak, (tuple, list)) or len(tiebreak) != 2:
            raise TypeError("tiebreak must be a pair (query_features, db_features)")
        qf = _features(tiebreak[0], "tiebreak[0] (query features)", queries.shape[0])
        df = _features(tiebreak[1], "tiebreak[1] (database features)", db.shape[0])
        if qf.shape[1] != df.shape[1]:
            raise ValueError(f"query features have dimension {qf.shape[1]} but database "
                             f"features have {df.shape[1]}")
        pair = (qf, df)
    dist, items = _search(_words(queries), _word_columns(db), topk, pair)
    return origin.wrap(dist), origin.wrap(items)


class BinaryIndex(LazyState):
    """Exhaustive Hamming search over packed binary codes, like FAISS IndexBinaryFlat.

    ``add(codes)`` takes uint8 codes ``(N, ceil(nbits / 8))`` (see :func:`pack_bits`) and,
    optionally, continuous ``features`` for the H2Q tie-break; ``search(query_codes, topk)``
    returns int32 Hamming distances and int64 rows.
    """

    _VERSION = 1

    def __init__(self, nbits: int):
        # distances are int32, as FAISS's: at most 2**31 - 1 bits
        self.nbits = check_int(nbits, "nbits", 1, np.iinfo(np.int32).max)
        self.nbytes = -(-self.nbits // 8)
        self._codes = np.empty((0, self.nbytes), dtype=np.uint8)
        self._columns: np.ndarray | None = None  # the kernels' layout, built on search
        self._features: np.ndarray | None = None
        self._init_lock()

    @property
    def ntotal(self) -> int:
        return int(self._codes.shape[0])

    def __len__(self) -> int:
        return self.ntotal

    def __repr__(self) -> str:
        return f"BinaryIndex(nbits={self.nbits}, ntotal={self.ntotal})"

    @property
    def codes(self) -> np.ndarray:
        return self._codes

    def add(self, codes: Any, features: Any = None) -> BinaryIndex:
        """Append packed codes; ``features`` (continuous, for tie-breaks) must come with every
        add or with none. Returns the index."""
        origin_of(codes, features, names=("codes", "features"))
        c = packed(codes, "codes", self.nbytes)
        if self.nbits % 8 and (c[:, -1] >> (self.nbits % 8)).any():
            raise ValueError(f"codes set bits beyond nbits = {self.nbits} in their last byte")
        if features is not None:
            f = _features(features, "features", c.shape[0])
            if self.ntotal and self._features is None:
                raise ValueError("features were not given with the earlier codes")
            if self._features is not None and f.shape[1] != self._features.shape[1]:
                raise ValueError(f"features have dimension {f.shape[1]}; earlier ones "
                                 f"{self._features.shape[1]}")
            self._features = f if self._features is None else np.concatenate(
                [self._features, f])
        elif self._features is not None:
            raise ValueError("features were given with the earlier codes; give them again")
        self._codes = np.concatenate([self._codes, c])
        self._columns = None
        self._changed()
        return self

    def search(self, query_codes: Any, topk: int, query_features: Any = None
               ) -> tuple[Any, Any]:
        """Top-K by Hamming distance; with ``query_features`` (and features added), ties are
        broken by squared Euclidean distance between features. See :func:`hamming_topk`."""
        origin = origin_of(query_codes, query_features,
                           names=("query_codes", "query_features"))
        topk = check_int(topk, "topk", 1)
        if _on_device(origin, self.nbytes, topk, query_features):
            from . import _hamming_gpu

            queries = packed(query_codes, "query_codes", self.nbytes, device=True)
            with torch_stream(origin):
                columns = self._device_columns()
                return origin.wrap(_hamming_gpu.topk_by_query(queries, columns, topk))
        queries = packed(query_codes, "query_codes", self.nbytes)
        pair = None
        if query_features is not None:
            if self._features is None:
                raise ValueError("query_features need features added with the codes")
            qf = _features(query_features, "query_features", queries.shape[0])
            check_same_rows(qf, "query_features", queries, "query_codes")
            if qf.shape[1] != self._features.shape[1]:
                raise ValueError(f"query_features have dimension {qf.shape[1]}; the index's "
                                 f"features have {self._features.shape[1]}")
            pair = (qf, self._features)
        dist, items = _search(_words(queries), self._host_columns(), topk, pair)
        return origin.wrap(dist), origin.wrap(items)

    def _tiebreak_keys(self, query_features: Any, items: np.ndarray) -> np.ndarray:
        """The float32 feature distances by which :meth:`search` ordered equal Hamming
        distances, for its result rows ``items`` (``inf`` where -1)."""
        if self._features is None:
            raise ValueError("query_features need features added with the codes")
        qf = _features(query_features, "query_features", items.shape[0])
        if qf.shape[1] != self._features.shape[1]:
            raise ValueError(f"query_features have dimension {qf.shape[1]}; the index's "
                             f"features have {self._features.shape[1]}")
        out = np.empty(items.shape, dtype=np.float32)
        _hamming_cpu.feature_distances(qf, self._features, np.ascontiguousarray(items), out)
        return out

    def _host_columns(self) -> np.ndarray:
        """The codes in the kernels' layout, made on the first search (under the lock)."""
        return self._once("_columns", lambda c: c is not None,
                          lambda: _word_columns(self._codes))

    def _device_columns(self):
        """The codes in the kernels' layout on the current GPU, copied there once per device
        (and again after an add)."""
        import cupy

        from . import _hamming_gpu

        return self._device_mirror(lambda: _hamming_gpu.word_columns(cupy.asarray(self._codes)))

    def save(self, path: str | os.PathLike) -> None:
        """Write the index to ``path`` (.npz, no pickle)."""
        extra = {} if self._features is None else {"features": self._features}
        save_npz(path, "BinaryIndex", self._VERSION, nbits=np.array(self.nbits),
                 codes=self._codes, **extra)

    @classmethod
    def load(cls, path: str | os.PathLike) -> BinaryIndex:
        """Read an index written by :meth:`save`."""
        arrays = load_npz(path, "BinaryIndex", cls._VERSION,
                          {"nbits": ("iu", 0), "codes": ("u", 2)})
        try:
            index = cls(int(arrays["nbits"]))
            index.add(arrays["codes"], arrays.get("features"))
        except (ValueError, TypeError) as error:
            raise ValueError(f"{os.fspath(path)!r} is a corrupted BinaryIndex file "
                             f"({error})") from None
        return index
