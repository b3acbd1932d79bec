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
    query_codes : array_like of uint8, shape (Q, B)
        Packed as by :func:`pack_bits`.
    db_codes : array_like of uint8, shape (N, B)
        Packed the same way.
    topk : int
        Results per query; more than ``N`` is allowed (the rest is padding).
    tiebreak : tuple of two array_like, optional
        ``(query_features, db_features)``, continuous ``(Q, dim)`` and ``(N, dim)``: items at
        equal Hamming distance are ordered by squared Euclidean distance between features (the
        H2Q evaluation rule; pass normalised features for theirs). Without it, ties go to
        the lower row.

    Returns
    -------
    D : array of int32, shape (Q, topk)
        Hamming distances, ascending; int32's largest value where a result is missing.
    I : array of int64, shape (Q, topk)
        Database rows; -1 where missing.

    Raises
    ------
    ValueError
        If the codes differ in width or rank, ``topk`` is below 1, or the features have the
        wrong shape, NaN or Inf.
    TypeError
        If a code array is not uint8 (codes are never cast), ``tiebreak`` is not a pair, or
        arrays of two libraries or devices are mixed.

    Notes
    -----
    Codes on a GPU are searched there, on torch's current stream, up to 1024 bits and topk
    1024 without a tie-break; otherwise on host copies, with the results returned to the
    caller's device.

    Examples
    --------
    >>> import numpy as np, qkernels as qk
    >>> db = qk.pack_bits(np.array([[1, 1, 0], [0, 1, 0], [0, 0, 1]]))
    >>> D, I = qk.hamming_topk(qk.pack_bits(np.array([[1, 1, 1]])), db, topk=2)
    >>> D, I
    (array([[1, 2]], dtype=int32), array([[0, 1]]))
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

    ``add`` takes packed codes (see :func:`pack_bits`) and, optionally, continuous features
    for the H2Q tie-break; ``search`` returns int32 Hamming distances and int64 rows.

    Parameters
    ----------
    nbits : int
        Bits per code, ``1..2**31 - 1`` (distances are int32, as FAISS's).

    Raises
    ------
    ValueError
        If ``nbits`` is out of range.
    TypeError
        If ``nbits`` is not an integer.

    See Also
    --------
    hamming_topk : the same search without an index.
    HouseholderQuantizer, ITQ : what makes the codes.

    Examples
    --------
    >>> import numpy as np, qkernels as qk
    >>> x = np.random.default_rng(0).standard_normal((1000, 64))
    >>> index = qk.BinaryIndex(64).add(qk.pack_bits(x))
    >>> D, I = index.search(qk.pack_bits(x[:3]), topk=5)
    >>> I[:, 0]                      # each item finds itself first, at distance 0
    array([0, 1, 2])
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
        """Number of items in the index."""
        return int(self._codes.shape[0])

    def __len__(self) -> int:
        return self.ntotal

    def __repr__(self) -> str:
        return f"BinaryIndex(nbits={self.nbits}, ntotal={self.ntotal})"

    @property
    def codes(self) -> np.ndarray:
        """The stored packed codes: uint8, shape ``(ntotal, ceil(nbits / 8))``."""
        return self._codes

    def add(self, codes: Any, features: Any = None) -> BinaryIndex:
        """Append packed codes.

        Parameters
        ----------
        codes : array_like of uint8, shape (N, ceil(nbits / 8))
            Packed as by :func:`pack_bits`; the bits beyond ``nbits`` must be 0.
        features : array_like, shape (N, dim), optional
            Continuous features for the tie-break of :meth:`search`; given with every add or
            with none.

        Returns
        -------
        BinaryIndex
            ``self``.

        Raises
        ------
        ValueError
            If the codes have another width or set bits beyond ``nbits``, or the features
            have another shape, NaN or Inf, or come with some adds and not others.
        TypeError
            If ``codes`` is not uint8 or the features do not hold real numbers.
        """
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
        """Top-K by Hamming distance, as :func:`hamming_topk`.

        Parameters
        ----------
        query_codes : array_like of uint8, shape (Q, ceil(nbits / 8))
            Packed query codes.
        topk : int
            Results per query.
        query_features : array_like, shape (Q, dim), optional
            With features added: ties in Hamming distance are broken by squared Euclidean
            distance between features; else by the lower row.

        Returns
        -------
        D : array of int32, shape (Q, topk)
            Hamming distances, ascending; int32's largest value where missing.
        I : array of int64, shape (Q, topk)
            Rows in the order added; -1 where missing.

        Raises
        ------
        ValueError
            If the query codes have another width, ``topk`` is below 1, or the features have
            the wrong shape, NaN or Inf, or were not added.
        TypeError
            If ``query_codes`` is not uint8, or arrays of two libraries or devices are mixed.
        """
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
        """Write the index (and its features) to ``path``.

        Parameters
        ----------
        path : str or os.PathLike
            A ``.npz`` file (no pickle inside); written whole or not at all.

        Raises
        ------
        OSError
            If the file cannot be written.
        """
        extra = {} if self._features is None else {"features": self._features}
        save_npz(path, "BinaryIndex", self._VERSION, nbits=np.array(self.nbits),
                 codes=self._codes, **extra)

    @classmethod
    def load(cls, path: str | os.PathLike) -> BinaryIndex:
        """Read an index written by :meth:`save`.

        Parameters
        ----------
        path : str or os.PathLike
            The file; it is checked member by member before anything is unpacked, and never
            unpickled.

        Returns
        -------
        BinaryIndex
            The index, searchable at once (also from several threads).

        Raises
        ------
        ValueError
            If the file is truncated, damaged, of another kind or version.
        OSError
            If the file cannot be read.
        """
        arrays = load_npz(path, "BinaryIndex", cls._VERSION,
                          {"nbits": ("iu", 0), "codes": ("u", 2)})
        try:
            index = cls(int(arrays["nbits"]))
            index.add(arrays["codes"], arrays.get("features"))
        except (ValueError, TypeError) as error:
            raise ValueError(f"{os.fspath(path)!r} is a corrupted BinaryIndex file "
                             f"({error})") from None
        return index
