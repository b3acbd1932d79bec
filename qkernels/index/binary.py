"""Packed binary codes: pack_bits, unpack_bits, hamming_topk and BinaryIndex."""

from __future__ import annotations

from typing import Any, ClassVar

import numba
import numpy as np

from .. import _gpu
from .._arrays import origin_of, read_only, to_numpy, torch_stream
from .._bits import pack_bits, packed, unpack_bits
from .._checks import (
    as_distance_array,
    check_columns,
    check_int,
    check_rank,
    check_topk,
)
from .._filter import NO_MASK
from .._heap import padded
from .._parallel import database_chunks
from . import _hamming_cpu
from ._base import Index, Snapshot, ids_array

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
    return np.ascontiguousarray(as_distance_array(f, name))


def _on_device(origin, nbytes: int, topk: int, tiebreak: Any) -> bool:
    """Whether a search runs on the GPU: GPU input, cupy, and what the kernel handles (else
    the CPU kernel runs on host copies and the results go back to the device)."""
    from . import _hamming_gpu

    return (origin.is_cuda and _gpu.available() and tiebreak is None
            and 8 * nbytes <= _hamming_gpu.MAX_BITS and topk <= _hamming_gpu.MAX_TOPK)


def _search(query_words: np.ndarray, db_columns: np.ndarray, topk: int,
            tiebreak: tuple[np.ndarray, np.ndarray] | None, mask: np.ndarray = NO_MASK,
            excluded: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    num_queries = query_words.shape[0]
    if excluded is None:
        excluded = np.empty((num_queries, 0), dtype=np.int64)
    requested, topk = check_topk(topk, db_columns.shape[1], num_queries)
    dist, items = _select(query_words, db_columns, topk, tiebreak, mask, excluded)
    return padded(dist, items, requested, np.iinfo(np.int32).max)


def _select(query_words, db_columns, topk, tiebreak, mask, excluded):
    num_queries = query_words.shape[0]
    # the codes read-only whoever made them (an index's snapshot or hamming_topk's caller)
    query_words, db_columns = read_only(query_words), read_only(db_columns)
    dist = np.empty((num_queries, topk), dtype=np.int32)
    items = np.empty((num_queries, topk), dtype=np.int64)
    if num_queries == 0:
        return dist, items
    if tiebreak is not None:
        _hamming_cpu.topk_tiebreak(query_words, db_columns, read_only(tiebreak[0]),
                                   read_only(tiebreak[1]), topk, dist, items, mask, excluded)
        return dist, items
    chunks = database_chunks(num_queries, db_columns.shape[1])
    if chunks:
        _hamming_cpu.topk_by_database(query_words, db_columns, topk, _BLOCK, chunks, dist,
                                      items, mask, excluded)
    else:
        # groups of LANES queries scanned in vector lanes where that leaves no thread idle
        lanes = (db_columns.shape[0] <= _hamming_cpu.LANE_WORDS
                 and num_queries >= _hamming_cpu.LANES * numba.get_num_threads())
        group = _hamming_cpu.LANES if lanes else 8
        _hamming_cpu.topk_by_query(query_words, db_columns, topk, _BLOCK, group, dist, items,
                                   mask, excluded)
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


def _held(features: np.ndarray | None, size: int) -> np.ndarray | None:
    """The features of a snapshot of ``size`` items: None where it holds none, so that an
    index emptied by ``remove_ids`` takes codes with or without features, as a new one does
    (whether an index has features is a property of the items it holds)."""
    return features if size else None


class BinaryIndex(Index):
    """Exhaustive Hamming search over packed binary codes, like FAISS IndexBinaryFlat.

    ``add`` takes packed codes (see :func:`pack_bits`) and, optionally, continuous features
    for the H2Q tie-break; ``search`` returns int32 Hamming distances and int64 ids. The
    lifecycle (ids, ``remove_ids``, ``reset``, ``merge_from``, filtered search, bytes) is
    :class:`qkernels.index.Index`'s.

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
    >>> D, I = index.search(qk.pack_bits(x[:3]), topk=5, exclude=np.arange(3)[:, None])
    >>> bool((I[:, 0] != np.arange(3)).all())
    True
    """

    _KIND = "BinaryIndex"
    _VERSION = 1

    def __init__(self, nbits: int):
        # distances are int32, as FAISS's: at most 2**31 - 1 bits
        self.nbits = check_int(nbits, "nbits", 1, np.iinfo(np.int32).max)
        self.nbytes = -(-self.nbits // 8)
        self._init_index()

    def __repr__(self) -> str:
        return f"BinaryIndex(nbits={self.nbits}, ntotal={self.ntotal})"

    @property
    def codes(self) -> np.ndarray:
        """The stored packed codes: uint8, shape ``(ntotal, ceil(nbits / 8))``, in the order
        added (read-only)."""
        return self._state.codes

    @property
    def features(self) -> np.ndarray | None:
        """The stored tie-break features, float32 ``(ntotal, dim)``, or None."""
        return self._state.features

    def add(self, codes: Any, features: Any = None, ids: Any = None) -> BinaryIndex:
        """Append packed codes.

        Parameters
        ----------
        codes : array_like of uint8, shape (N, ceil(nbits / 8))
            Packed as by :func:`pack_bits`; the bits beyond ``nbits`` must be 0.
        features : array_like, shape (N, dim), optional
            Continuous features for the tie-break of :meth:`search`; given with every add or
            with none while the index holds items (an empty one, new or emptied, takes
            either).
        ids : array_like of int, shape (N,), optional
            64-bit ids ``>= 0``, unique in the index (default: the next ``N`` of ``next_id``).

        Returns
        -------
        BinaryIndex
            ``self``.

        Raises
        ------
        ValueError
            If the codes have another width or set bits beyond ``nbits``; the features have
            another shape, NaN or Inf, or come with some adds and not others; an id is
            negative, repeated or already in the index.
        TypeError
            If ``codes`` is not uint8, the features do not hold real numbers or ``ids``
            integers.
        """
        origin_of(codes, features, ids, names=("codes", "features", "ids"))
        c = packed(codes, "codes", self.nbytes)
        if self.nbits % 8 and (c[:, -1] >> (self.nbits % 8)).any():
            raise ValueError(f"codes set bits beyond nbits = {self.nbits} in their last byte")
        with self._writer:
            state = self._state
            f = None
            if features is not None:
                f = _features(features, "features", c.shape[0])
                if state.size and state.features is None:
                    raise ValueError("features were not given with the earlier codes")
                if state.features is not None and f.shape[1] != state.features.shape[1]:
                    raise ValueError(f"features have dimension {f.shape[1]}; earlier ones "
                                     f"{state.features.shape[1]}")
                # a copy where it is the caller's array: a snapshot's arrays are read-only
                f = f.copy() if state.features is None else np.concatenate([state.features, f])
            elif state.features is not None:
                raise ValueError("features were given with the earlier codes; give them again")
            new_ids = self._new_ids(state, ids, c.shape[0])
            self._publish(Snapshot(codes=np.concatenate([state.codes, c]),
                                   features=_held(f, state.size + c.shape[0]),
                                   ids=np.concatenate([state.ids, new_ids])),
                          new_ids=new_ids, given=ids is not None)
        return self

    def search(self, query_codes: Any, topk: int, query_features: Any = None, *,
               include: Any = None, exclude: Any = None) -> tuple[Any, Any]:
        """Top-K by Hamming distance, as :func:`hamming_topk`.

        Parameters
        ----------
        query_codes : array_like of uint8, shape (Q, ceil(nbits / 8))
            Packed query codes.
        topk : int
            Results per query.
        query_features : array_like, shape (Q, dim), optional
            With features added: ties in Hamming distance are broken by squared Euclidean
            distance between features; else by the item added first. Refused by an index
            whose items came without features (an empty one takes them).
        include : array_like of int, shape (n,), optional
            Only these ids may be returned.
        exclude : array_like of int, shape (n,) or (Q, m), optional
            These ids are never returned: one array for every query, or one row per query
            (-1 entries are padding). Not with ``include``.

        Returns
        -------
        D : array of int32, shape (Q, topk)
            Hamming distances, ascending; int32's largest value where missing.
        I : array of int64, shape (Q, topk)
            The items' ids; -1 where missing.

        Raises
        ------
        ValueError
            If the query codes have another width, ``topk`` is below 1, the features have the
            wrong shape, NaN or Inf, or were not added, or the filter is refused (both given,
            negative ids).
        TypeError
            If ``query_codes`` is not uint8, a filter does not hold integers, or arrays of two
            libraries or devices are mixed.
        """
        origin = origin_of(query_codes, query_features,
                           names=("query_codes", "query_features"))
        topk = check_int(topk, "topk", 1)
        state = self._state
        filtered = include is not None or exclude is not None
        # (an empty index answers its padding from the host, having no ids to map rows to)
        if not filtered and state.size and _on_device(origin, self.nbytes, topk,
                                                      query_features):
            from . import _hamming_gpu

            queries = packed(query_codes, "query_codes", self.nbytes, device=True)
            with torch_stream(origin):
                columns, ids = self._device_columns(state)
                dist, items = _hamming_gpu.topk_by_query(queries, columns, topk)
                import cupy

                items = cupy.where(items >= 0, ids[cupy.maximum(items, 0)], -1)
                return origin.wrap(dist), origin.wrap(items)
        queries = packed(query_codes, "query_codes", self.nbytes)
        qf = (None if query_features is None
              else self._query_features(state, query_features, queries.shape[0]))
        state, mask, excluded = self._search_state(state, include, exclude, queries.shape[0])
        # (an empty index has no ties to break)
        pair = None if qf is None or not state.size else (qf, state.features)
        dist, items = _search(_words(queries), self._host_columns(state), topk, pair, mask,
                              excluded)
        return origin.wrap(dist), origin.wrap(state.ids_of(items))

    def _query_features(self, state: Snapshot, query_features: Any, rows: int) -> np.ndarray:
        if state.features is None and state.size:
            raise ValueError("query_features need features added with the codes")
        qf = _features(query_features, "query_features", rows)
        if state.features is not None and qf.shape[1] != state.features.shape[1]:
            raise ValueError(f"query_features have dimension {qf.shape[1]}; the index's "
                             f"features have {state.features.shape[1]}")
        return qf

    def tiebreak_keys(self, query_features: Any, ids: Any) -> np.ndarray:
        """The tie-break keys by which :meth:`search` ordered equal Hamming distances.

        A hook for an exact merge of shards: results merged by (Hamming distance, this key,
        id) are in one index's order.

        Parameters
        ----------
        query_features : array_like, shape (Q, dim)
            The queries' features, as given to :meth:`search`.
        ids : array_like of int, shape (Q, t)
            Result ids of those queries (-1 where missing).

        Returns
        -------
        ndarray of float32, shape (Q, t)
            The float32 squared Euclidean distance between each query's features and each
            result's (``inf`` where the id is -1).

        Raises
        ------
        ValueError
            If the features were not added, have another shape, NaN or Inf, or an id is not
            in the index (or is below -1).
        TypeError
            If ``ids`` does not hold integers.
        """
        state = self._state
        ids = np.ascontiguousarray(to_numpy(ids, allow_device_copy=True, name="ids"))
        check_rank(ids, "ids", (2,), "(Q, t)")
        if ids.dtype.kind not in "iu":
            raise TypeError(f"ids must hold integers, got dtype {ids.dtype}")
        low, high = (int(ids.min()), int(ids.max())) if ids.size else (-1, -1)
        if low < -1 or high > np.iinfo(np.int64).max:
            bad = low if low < -1 else high
            raise ValueError(f"ids holds {bad}: result ids are integers in 0..2**63 - 1, or "
                             "-1 where a result is missing")
        ids = ids.astype(np.int64, copy=False)
        qf = self._query_features(state, query_features, ids.shape[0])
        positions = np.where(ids >= 0, self._positions(state, np.maximum(ids, 0)), -1)
        if ((positions < 0) & (ids >= 0)).any():
            raise ValueError(f"id {int(ids[(positions < 0) & (ids >= 0)][0])} is not in the "
                             "index")
        if state.features is None:  # an empty index: every id is -1
            return np.full(ids.shape, np.inf, dtype=np.float32)
        out = np.empty(ids.shape, dtype=np.float32)
        _hamming_cpu.feature_distances(qf, state.features, np.ascontiguousarray(positions),
                                       out)
        return out

    def _host_columns(self, state: Snapshot) -> np.ndarray:
        """The snapshot's codes in the kernels' layout, made once per snapshot."""
        return self._cached(state, "columns", lambda: _word_columns(state.codes))

    def _device_columns(self, state: Snapshot):
        """The snapshot's codes in the kernels' layout (and its ids) on the current GPU,
        copied there once per device and snapshot."""
        import cupy

        from . import _hamming_gpu

        return self._state_mirror(state, lambda: (
            _hamming_gpu.word_columns(cupy.asarray(state.codes)), cupy.asarray(state.ids)))

    # ------------------------------------------------------------------ the protocol's parts

    def _empty_state(self) -> Snapshot:
        return Snapshot(codes=np.empty((0, self.nbytes), dtype=np.uint8), features=None,
                        ids=np.empty(0, dtype=np.int64))

    def _kept(self, state: Snapshot, keep: np.ndarray) -> Snapshot:
        features = None if state.features is None else state.features[keep]
        ids = state.ids[keep]
        return Snapshot(codes=state.codes[keep], features=_held(features, ids.shape[0]),
                        ids=ids)

    def _joined(self, state: Snapshot, other: Snapshot, other_ids: np.ndarray) -> Snapshot:
        if state.size and other.size and (state.features is None) != (other.features is None):
            raise ValueError("one index holds tie-break features and the other does not")
        features = state.features if other.size == 0 else other.features if state.size == 0 \
            else None if state.features is None else np.concatenate([state.features,
                                                                     other.features])
        if (features is not None and state.features is not None and other.features is not None
                and state.features.shape[1] != other.features.shape[1]):
            raise ValueError(f"the indexes' features differ in dimension: "
                             f"{state.features.shape[1]} here, {other.features.shape[1]} there")
        return Snapshot(codes=np.concatenate([state.codes, other.codes]), features=features,
                        ids=np.concatenate([state.ids, other_ids]))

    def _check_compatible(self, other: BinaryIndex) -> None:
        if self.nbits != other.nbits:
            raise ValueError(f"the indexes differ in nbits: {self.nbits} here, {other.nbits} "
                             "there")

    def _reconstructed(self, state: Snapshot, positions: np.ndarray) -> np.ndarray:
        return state.codes[positions]

    # ------------------------------------------------------------------ files

    _FIELDS: ClassVar[dict[str, tuple[str, int]]] = {"nbits": ("iu", 0), "codes": ("u", 2)}

    def _arrays_of(self, state: Snapshot) -> dict[str, np.ndarray]:
        extra = {} if state.features is None else {"features": state.features}
        return {"nbits": np.array(self.nbits), "codes": state.codes, **extra,
                **self._id_members(state)}

    @classmethod
    def _from_arrays(cls, arrays: dict[str, np.ndarray]) -> BinaryIndex:
        index = cls(int(arrays["nbits"]))
        ids = arrays.get("ids")
        index.add(arrays["codes"], arrays.get("features"),
                  None if ids is None else ids_array(ids, "ids", arrays["codes"].shape[0]))
        index._restore_ids(arrays, index.ntotal)
        return index
