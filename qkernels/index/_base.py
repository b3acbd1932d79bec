"""The protocol the four indexes share: ids, the lifecycle, filtered search, files and bytes,
and immutable snapshots.

Every index holds its items in a *snapshot*, an object whose arrays are never written after
it is published. A change (``add``, ``remove_ids``, ``reset``, ``merge_from``) makes a new
snapshot from the current one and publishes it in one assignment; changes are serialised by a
writers' lock. A search reads the current snapshot once and uses nothing else, so a search
running while another thread changes the index sees it wholly before or wholly after the
change, never a mix. What a search derives from a snapshot (a table's CSR, the fast scan's
layout, the word-major Hamming layout, the ids sorted for filters, device mirrors) is cached on
that snapshot, built once under a lock.

Ids are 64-bit integers >= 0 of the caller's choosing (``add(..., ids=...)``), unique within an
index; without them the next ids of a counter that starts at 0 (``next_id``): ``0..N-1`` in the
order added when no ids are ever given. Items keep their ids when others are removed.
"""

from __future__ import annotations

import io
import os
import threading
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np

from .._arrays import to_numpy
from .._checks import check_rank
from .._filter import NO_MASK
from .._shared import LazyState

__all__ = ["Index", "Snapshot"]

_INT64_MAX = np.iinfo(np.int64).max
_PRIVATE = "private"  # a snapshot's cache key: made for one search (see Index._search_state)


def _read_only(arrays: dict[str, np.ndarray | None]) -> None:
    for a in arrays.values():
        if isinstance(a, np.ndarray):
            a.setflags(write=False)


class Snapshot:
    """An index's items at one moment: read-only arrays (``ids`` and the index's own), plus
    ``cache``, what searches derived from them (built once, under the index's lock)."""

    __slots__ = ("arrays", "cache")

    def __init__(self, **arrays: np.ndarray | None):
        _read_only(arrays)
        self.arrays = arrays
        self.cache: dict[Any, Any] = {}

    def __getattr__(self, name: str) -> Any:
        try:
            return object.__getattribute__(self, "arrays")[name]
        except (KeyError, AttributeError):
            raise AttributeError(name) from None

    def __getstate__(self) -> dict:
        return {"arrays": self.arrays}  # what was derived (device mirrors) is made again

    def __setstate__(self, state: dict) -> None:
        _read_only(state["arrays"])  # unpickled arrays come back writable
        object.__setattr__(self, "arrays", state["arrays"])
        object.__setattr__(self, "cache", {})

    @property
    def size(self) -> int:
        return int(self.arrays["ids"].shape[0])

    def ids_of(self, positions: np.ndarray) -> np.ndarray:
        """The ids of stored positions (-1, a missing result, stays -1)."""
        if self.size == 0:
            return positions
        return np.where(positions >= 0, self.arrays["ids"][np.maximum(positions, 0)], -1)


def ascending_once(positions: np.ndarray) -> np.ndarray:
    """``positions`` sorted ascending, each once (numpy's ``unique`` hashes, about 6x slower
    than this sort for 500,000 positions)."""
    ordered = np.sort(positions)
    repeated = np.zeros(ordered.shape[0], dtype=bool)
    repeated[1:] = ordered[1:] == ordered[:-1]
    return ordered[~repeated]


def ids_array(ids: Any, name: str, rows: int | None = None) -> np.ndarray:
    """``ids`` as a contiguous int64 array of values in ``0..2**63-1``, or a clear error."""
    a = to_numpy(ids, allow_device_copy=True, name=name)
    check_rank(a, name, (1,), "(N,) integer ids")
    if rows is not None and a.shape[0] != rows:
        raise ValueError(f"{name} has {a.shape[0]} entries for {rows} items")
    if a.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integers, got dtype {a.dtype}")
    if a.size:
        if a.dtype.kind == "u" and int(a.max()) > _INT64_MAX:
            raise ValueError(f"{name} holds {int(a.max())}, outside int64: ids are 64-bit "
                             "integers in 0..2**63-1")
        if a.dtype.kind == "i" and int(a.min()) < 0:
            raise ValueError(f"{name} holds {int(a.min())}: ids are integers >= 0 (-1 marks a "
                             "missing result)")
    return np.ascontiguousarray(a, dtype=np.int64)


def _first_repeat(sorted_ids: np.ndarray) -> int | None:
    same = np.flatnonzero(sorted_ids[1:] == sorted_ids[:-1])
    return int(sorted_ids[same[0]]) if same.shape[0] else None


class Index(LazyState):
    """What every index of qkernels does, as FAISS's indexes do it, and safe to share.

    - ``ntotal``, ``ids``, ``next_id``; ``add(..., ids=None)`` with 64-bit ids of the caller's
      choosing (unique within the index) or the next ids of the counter;
    - ``remove_ids(ids)`` (the number removed), ``reset()``, ``merge_from(other)``,
      ``reconstruct(ids)``;
    - ``search(..., include=None, exclude=None)``: only items whose ids are in ``include``,
      or none of ``exclude`` (one array for every query, or one row of ids per query, -1
      padding), filtered inside the scan, so that ``topk`` results come back whenever that
      many items pass;
    - ``save``/``load`` and ``to_bytes``/``from_bytes`` in one checked, pickle-free format.

    Any number of threads may search an index while another changes it: each search sees the
    index wholly before or wholly after a change (see the module docstring).

    Parameters
    ----------
    *args, **kwargs
        Refused: the protocol is not made directly.

    Raises
    ------
    TypeError
        If made directly: make a SparseHashTable, HierarchicalHashTable, PQIndex or
        BinaryIndex.
    """

    def __init__(self, *args: Any, **kwargs: Any):
        raise TypeError("Index is the protocol the four indexes share: make a SparseHashTable, "
                        "HierarchicalHashTable, PQIndex or BinaryIndex")

    _KIND: ClassVar[str] = "Index"
    _VERSION: ClassVar[int] = 1

    def __getstate__(self) -> dict:
        state = super().__getstate__()
        state.pop("_writer", None)  # each copy gets its own locks
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self._writer = threading.RLock()

    def _init_index(self) -> None:
        self._init_lock()
        self._writer = threading.RLock()
        self._state = self._empty_state()
        self._next_id = 0
        self._default_ids = True

    # ------------------------------------------------------------------ what subclasses give

    def _empty_state(self) -> Snapshot:
        raise NotImplementedError

    def _kept(self, state: Snapshot, keep: np.ndarray) -> Snapshot:
        """A snapshot of the items where ``keep`` (one bool per stored position), in order."""
        raise NotImplementedError

    def _joined(self, state: Snapshot, other: Snapshot, other_ids: np.ndarray) -> Snapshot:
        """This snapshot's items, then ``other``'s (with the ids ``other_ids``)."""
        raise NotImplementedError

    def _check_compatible(self, other: Index) -> None:
        """Raise a ValueError naming what differs where ``other``'s items cannot join these."""
        raise NotImplementedError

    def _reconstructed(self, state: Snapshot, positions: np.ndarray) -> np.ndarray:
        raise NotImplementedError(f"{type(self).__name__} keeps nothing to reconstruct")

    def _arrays_of(self, state: Snapshot) -> dict[str, np.ndarray]:
        """The members of the index's file (its parameters and items)."""
        raise NotImplementedError

    @classmethod
    def _from_arrays(cls, arrays: dict[str, np.ndarray]) -> Index:
        """The index a file's checked members describe (raise ValueError or TypeError)."""
        raise NotImplementedError

    _FIELDS: ClassVar[dict[str, tuple[str, int]]] = {}

    # ------------------------------------------------------------------ ids and counts

    @property
    def ntotal(self) -> int:
        """Number of items in the index."""
        return self._state.size

    def __len__(self) -> int:
        return self.ntotal

    @property
    def ids(self) -> np.ndarray:
        """The items' ids, int64, in the order the items were added (read-only)."""
        return self._ordered_ids(self._state)

    def _ordered_ids(self, state: Snapshot) -> np.ndarray:
        return state.ids

    @property
    def next_id(self) -> int:
        """The id the next item added without ids gets: one more than the largest id given so
        far (0 after :meth:`reset`)."""
        return self._next_id

    @property
    def version(self) -> int:
        """A number that changes whenever the items change (an add, a removal, a reset or a
        merge): what was derived from the index (a ShardedIndex's plan, say) keys on it."""
        return self._generation

    @property
    def default_ids(self) -> bool:
        """Whether every id was given by the counter (no ``ids=`` since the last reset): the
        ids then grow in the order the items were added."""
        return self._default_ids

    def _sorted_ids(self, state: Snapshot) -> tuple[np.ndarray, np.ndarray]:
        """``(positions ordered by id, the ids in that order)`` of a snapshot, cached on it."""
        def build():
            order = np.argsort(state.ids, kind="stable")
            return order, state.ids[order]

        return self._cached(state, "sorted_ids", build)

    def _positions(self, state: Snapshot, ids: np.ndarray) -> np.ndarray:
        """Stored position of each id (-1 where the index does not hold it)."""
        order, sorted_ids = self._sorted_ids(state)
        if sorted_ids.shape[0] == 0:
            return np.full(ids.shape, -1, dtype=np.int64)
        at = np.minimum(np.searchsorted(sorted_ids, ids), sorted_ids.shape[0] - 1)
        return np.where(sorted_ids[at] == ids, order[at], -1)

    def _new_ids(self, state: Snapshot, ids: Any, rows: int) -> np.ndarray:
        """The ids of ``rows`` items being added: checked given ones, or the counter's."""
        if ids is None:
            return np.arange(self._next_id, self._next_id + rows, dtype=np.int64)
        new = ids_array(ids, "ids", rows)
        ordered = np.sort(new)
        repeat = _first_repeat(ordered)
        if repeat is not None:
            raise ValueError(f"ids holds {repeat} twice: every item needs its own id")
        taken = new[self._positions(state, new) >= 0]
        if taken.shape[0]:
            raise ValueError(f"id {int(taken[0])} is already in the index: remove it first, "
                             "or give the new item another id")
        return new

    def _publish(self, state: Snapshot, *, new_ids: np.ndarray | None = None,
                 given: bool = False) -> None:
        """Make ``state`` the current snapshot (under the writers' lock, held by the caller)."""
        if new_ids is not None and new_ids.shape[0]:
            self._next_id = max(self._next_id, int(new_ids.max()) + 1)
            self._default_ids = self._default_ids and not given
        self._state = state
        self._changed()

    # ------------------------------------------------------------------ lifecycle

    def remove_ids(self, ids: Any) -> int:
        """Remove the items with these ids.

        Parameters
        ----------
        ids : array_like of int, shape (n,)
            Ids the index holds, each once.

        Returns
        -------
        int
            The number of items removed (``n``).

        Raises
        ------
        ValueError
            If an id is not in the index or appears twice (the message names it), or is
            negative or outside int64.
        TypeError
            If ``ids`` does not hold integers.

        Notes
        -----
        The remaining items keep their ids and their order. The arrays are copied without the
        removed items (a new snapshot; searches running meanwhile keep the old one), so a
        removal costs about as much as reading the index once.
        """
        wanted = ids_array(ids, "ids")
        repeat = _first_repeat(np.sort(wanted))
        if repeat is not None:
            raise ValueError(f"ids holds {repeat} twice; give each id once")
        with self._writer:
            state = self._state
            positions = self._positions(state, wanted)
            unknown = wanted[positions < 0]
            if unknown.shape[0]:
                raise ValueError(f"id {int(unknown[0])} is not in the index "
                                 f"({unknown.shape[0]} of the {wanted.shape[0]} ids are not)")
            if wanted.shape[0] == 0:
                return 0
            keep = np.ones(state.size, dtype=bool)
            keep[positions] = False
            self._publish(self._kept(state, keep))
        return int(wanted.shape[0])

    def reset(self) -> None:
        """Remove every item; the ids given without ``ids=`` start at 0 again.

        Examples
        --------
        >>> import numpy as np, qkernels as qk
        >>> index = qk.BinaryIndex(8).add(np.zeros((3, 1), dtype=np.uint8))
        >>> index.reset()
        >>> index.ntotal, index.next_id
        (0, 0)
        """
        with self._writer:
            self._publish(self._empty_state())
            self._next_id = 0
            self._default_ids = True

    def merge_from(self, other: Index) -> None:
        """Move ``other``'s items into this index (``other`` is emptied), as FAISS's
        ``merge_from`` does.

        Parameters
        ----------
        other : Index
            An index of the same type and parameters.

        Raises
        ------
        TypeError
            If ``other`` is not an index of this type.
        ValueError
            If its parameters differ (the message says which), it is this index, or it holds
            an id this index holds.

        Notes
        -----
        ``other``'s items come after this index's, as if added after them. Where ``other``'s
        ids all came from its counter, they are renumbered from this index's ``next_id`` on
        (keeping their gaps), as items added here would be; ids given by the caller are kept.
        """
        if type(other) is not type(self):
            raise TypeError(f"merge_from takes a {type(self).__name__}, got "
                            f"{type(other).__name__}")
        if other is self:
            raise ValueError("an index cannot merge from itself")
        self._check_compatible(other)
        first, second = sorted((self, other), key=id)  # one order of locking for every pair
        with first._writer, second._writer:
            theirs = other._state
            their_ids = other._ordered_ids(theirs)
            if other._default_ids:
                moved = their_ids + self._next_id
            else:
                moved = their_ids
                clash = moved[self._positions(self._state, moved) >= 0]
                if clash.shape[0]:
                    raise ValueError(f"id {int(clash[0])} is in both indexes: ids must stay "
                                     "unique")
            self._publish(self._joined(self._state, theirs, moved), new_ids=moved,
                          given=not other._default_ids)
            other.reset()

    def reconstruct(self, ids: Any) -> np.ndarray:
        """What the index keeps of the items with these ids.

        Parameters
        ----------
        ids : array_like of int, shape (n,)
            Ids the index holds.

        Returns
        -------
        ndarray, shape (n, ...)
            The stored vectors (hash tables: the embeddings; PQIndex: the codes' reconstruction)
            or codes (BinaryIndex: the packed codes), in the order of ``ids``.

        Raises
        ------
        ValueError
            If an id is not in the index (the message names it).
        TypeError
            If ``ids`` does not hold integers.
        """
        wanted = ids_array(ids, "ids")
        state = self._state
        positions = self._positions(state, wanted)
        unknown = wanted[positions < 0]
        if unknown.shape[0]:
            raise ValueError(f"id {int(unknown[0])} is not in the index")
        return self._reconstructed(state, positions)

    # ------------------------------------------------------------------ filters

    def _filter(self, state: Snapshot, include: Any, exclude: Any, num_queries: int
                ) -> tuple[np.ndarray, np.ndarray]:
        """``(mask, excluded)`` of ``qkernels._filter`` for a search of ``state``: the stored
        positions of ``include``'s ids (allowed), or of ``exclude``'s (one array for every
        query, or one row per query; -1 entries are padding)."""
        no_rows = np.empty((num_queries, 0), dtype=np.int64)
        if include is not None and exclude is not None:
            raise ValueError("give include or exclude, not both (include=ids allows only "
                             "those; exclude=ids allows all but those)")
        if include is None and exclude is None:
            return NO_MASK, no_rows
        if include is not None:
            return self._include_mask(state, self._included(state, include)), no_rows
        wanted = _filter_ids(to_numpy(exclude, allow_device_copy=True, name="exclude"),
                             "exclude", num_queries)
        if wanted.ndim == 2:
            return NO_MASK, _excluded_rows(np, wanted, *self._sorted_ids(state))
        positions = self._positions(state, wanted[wanted >= 0])
        mask = np.ones(state.size, dtype=np.uint8)
        mask[positions[positions >= 0]] = 0
        return mask, no_rows

    def _search_state(self, state: Snapshot, include: Any, exclude: Any, num_queries: int
                      ) -> tuple[Snapshot, np.ndarray, np.ndarray]:
        """The snapshot an exhaustive search reads and the ``(mask, excluded)`` filter it
        applies: where ``include`` allows few of the stored items, a snapshot of those alone
        (:meth:`_kept`: their order, ids and codes), with no filter, which gives the filter's
        answer (ties go by stored order, which it keeps) without a scan of the refused items;
        else ``state`` and the filter.

        Few: at most a quarter of the items, and at most ``num_queries / 32`` of them (making
        the snapshot, its layouts included, costs about as much per allowed item as 32 queries'
        scans of one item: for one query allowing 100,000 of a million items, the snapshot was
        1.1-1.7x slower than the filter)."""
        if include is None or exclude is not None:
            return state, *self._filter(state, include, exclude, num_queries)
        allowed = self._included(state, include)
        no_rows = np.empty((num_queries, 0), dtype=np.int64)
        if 4 * allowed.shape[0] > state.size or 32 * allowed.shape[0] > num_queries * state.size:
            return state, self._include_mask(state, allowed), no_rows
        subset = self._kept(state, ascending_once(allowed))
        subset.cache[_PRIVATE] = True  # this search's own: its layouts need no lock
        return subset, NO_MASK, no_rows

    @staticmethod
    def _include_mask(state: Snapshot, positions: np.ndarray) -> np.ndarray:
        """The ``mask`` of ``qkernels._filter`` that allows the stored ``positions`` alone."""
        mask = np.zeros(state.size, dtype=np.uint8)
        mask[positions] = 1
        return mask

    def _included(self, state: Snapshot, include: Any) -> np.ndarray:
        """The stored positions of ``include``'s ids that ``state`` holds, in their order
        (repeated where they are; checked as :meth:`_filter` checks them)."""
        wanted = _filter_ids(to_numpy(include, allow_device_copy=True, name="include"),
                             "include", 0)
        positions = self._positions(state, wanted[wanted >= 0])
        return positions[positions >= 0]

    def _device_exclude(self, state: Snapshot, exclude: Any, num_queries: int):
        """:meth:`_filter`'s ``excluded`` rows of a per-query ``exclude`` given on a GPU (or
        None), made there: the snapshot's ids are mirrored to the device once."""
        import cupy

        if exclude is None:
            return cupy.empty((num_queries, 0), dtype=cupy.int64)
        from .._arrays import is_cuda, to_cupy

        # host rows for GPU queries are accepted: copied over once, then mapped there
        rows = (to_cupy(exclude) if is_cuda(exclude)
                else cupy.asarray(to_numpy(exclude, allow_device_copy=True, name="exclude")))
        wanted = _filter_ids(rows, "exclude", num_queries, per_query=True)
        order, sorted_ids = self._state_mirror(
            state, lambda: tuple(cupy.asarray(a) for a in self._sorted_ids(state)), ("ids",))
        return _excluded_rows(cupy, wanted, order, sorted_ids)

    # ------------------------------------------------------------------ snapshots

    def _cached(self, state: Snapshot, key: Any, build: Callable[[], Any]) -> Any:
        """``build()``'s value for ``state``, made once (under the lock, unless ``state`` is one
        search's own snapshot, which no other thread reads) and kept on it."""
        value = state.cache.get(key)
        if value is not None:
            return value
        if state.cache.get(_PRIVATE):
            value = state.cache[key] = build()
            return value
        with self._lock:
            value = state.cache.get(key)
            if value is None:
                value = build()
                state.cache[key] = value
            return value

    def _state_mirror(self, state: Snapshot, build: Callable[[], Any], versions: tuple = ()
                      ) -> Any:
        """``build()``'s device copy of ``state`` on the current CUDA device, made once per
        device and ``versions`` (the quantizer's codebooks, say) and kept on the snapshot."""
        import cupy

        return self._cached(state, ("mirror", cupy.cuda.Device().id, *versions), build)

    # ------------------------------------------------------------------ files and bytes

    def save(self, path: str | os.PathLike | io.IOBase) -> None:
        """Write the index to ``path``.

        Parameters
        ----------
        path : str, os.PathLike or file object
            A ``.npz`` file (no pickle inside); a file at a path is written whole or not at
            all (into a new file beside it, renamed over it once complete).

        Raises
        ------
        OSError
            If the file cannot be written.
        """
        from .._io import save_npz

        save_npz(path, self._KIND, self._VERSION, **self._arrays_of(self._state))

    @classmethod
    def load(cls, path: str | os.PathLike | io.IOBase) -> Index:
        """Read an index written by :meth:`save` (files of earlier releases too).

        Parameters
        ----------
        path : str, os.PathLike or file object
            The file, or a file object opened for reading bytes (as :meth:`save` takes one);
            it is checked member by member before anything is unpacked, and never
            unpickled.

        Returns
        -------
        Index
            The index, searchable at once (also from several threads).

        Raises
        ------
        ValueError
            If the file is truncated, damaged, of another kind or version.
        OSError
            If the file cannot be read.
        TypeError
            If ``path`` is neither a path nor a file object that reads bytes.
        """
        from .._io import load_npz, source_name

        return cls._loaded(load_npz(path, cls._KIND, cls._VERSION, cls._FIELDS),
                           source_name(path))

    def to_bytes(self) -> bytes:
        """The index as bytes: what :meth:`save` writes.

        Returns
        -------
        bytes
            An ``.npz`` archive.

        Examples
        --------
        >>> import numpy as np, qkernels as qk
        >>> index = qk.BinaryIndex(8).add(np.array([[3], [5]], dtype=np.uint8))
        >>> copy = qk.BinaryIndex.from_bytes(index.to_bytes())
        >>> copy.ids
        array([0, 1])
        """
        buffer = io.BytesIO()
        self.save(buffer)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> Index:
        """Read an index from the bytes of :meth:`to_bytes`, checked as :meth:`load` checks a
        file.

        Parameters
        ----------
        data : bytes
            What :meth:`to_bytes` returned.

        Returns
        -------
        Index
            The index.

        Raises
        ------
        ValueError
            If the bytes are truncated, damaged, or of another kind or version.
        TypeError
            If ``data`` is not bytes.
        """
        from .._io import load_npz

        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"from_bytes takes bytes, got {type(data).__name__}")
        return cls._loaded(load_npz(bytes(data), cls._KIND, cls._VERSION, cls._FIELDS),
                           "the bytes")

    @classmethod
    def _loaded(cls, arrays: dict[str, np.ndarray], where: str) -> Index:
        try:
            return cls._from_arrays(arrays)
        except (ValueError, TypeError) as error:
            raise ValueError(f"{where!r} is a corrupted {cls._KIND} file ({error})") from None

    def _restore_ids(self, arrays: dict[str, np.ndarray], rows: int) -> np.ndarray:
        """The ids of a file's items (files of earlier releases hold none: 0..N-1) and the
        counter and flag it saved, checked."""
        ids = arrays.get("ids")
        if ids is None:
            ids = np.arange(rows, dtype=np.int64)
        else:
            ids = ids_array(ids, "ids", rows)
            repeat = _first_repeat(np.sort(ids))
            if repeat is not None:
                raise ValueError(f"id {repeat} is held twice")
        next_id = arrays.get("next_id")
        bound = int(ids.max()) + 1 if ids.shape[0] else 0
        self._next_id = bound if next_id is None else int(next_id)
        if self._next_id < bound:
            raise ValueError(f"next_id {self._next_id} is not above the largest id {bound - 1}")
        flag = arrays.get("default_ids")
        self._default_ids = (bool(np.array_equal(ids, np.sort(ids))) if flag is None
                             else bool(flag))
        return ids

    def _id_members(self, state: Snapshot) -> dict[str, np.ndarray]:
        return {"ids": self._ordered_ids(state), "next_id": np.array(self._next_id),
                "default_ids": np.array(self._default_ids)}


def _filter_ids(given: Any, name: str, num_queries: int, per_query: bool = False):
    """A filter's ids (numpy or cupy), checked: int64, ``(n,)`` (``(Q, m)`` for ``exclude``;
    only that with ``per_query``), every entry ``>= -1``."""
    ranks = (2,) if per_query else (1, 2) if name == "exclude" else (1,)
    check_rank(given, name, ranks,
               "(Q, m): ids per query (-1: none)" if per_query else "(n,) ids for every query"
               + (", or (Q, m): ids per query (-1: none)" if name == "exclude" else ""))
    if given.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integer ids, got dtype {given.dtype}")
    if given.dtype.kind == "u" and given.size and int(given.max()) > _INT64_MAX:
        raise ValueError(f"{name} holds {int(given.max())}, outside int64")
    wanted = given.astype(np.int64, copy=False)
    if wanted.size and int(wanted.min()) < -1:
        raise ValueError(f"{name} holds {int(wanted.min())}; ids are >= 0 (-1: padding)")
    if wanted.ndim == 2 and wanted.shape[0] != num_queries:
        raise ValueError(f"exclude has {wanted.shape[0]} rows but there are {num_queries} "
                         "queries")
    return wanted


def _excluded_rows(xp: Any, wanted: Any, order: Any, sorted_ids: Any):
    """The stored positions of each query's excluded ids (``wanted``, (Q, m), -1: none),
    ascending, each once, -1 padding at the end of each row; with numpy or cupy (``xp``)
    over the snapshot's ``(positions ordered by id, ids in that order)``."""
    if sorted_ids.shape[0] == 0:
        positions = xp.full(wanted.shape, -1, dtype=xp.int64)
    else:
        safe = xp.maximum(wanted, 0)
        at = xp.minimum(xp.searchsorted(sorted_ids, safe), sorted_ids.shape[0] - 1)
        positions = xp.where((wanted >= 0) & (sorted_ids[at] == safe), order[at], -1)
    rows = xp.sort(xp.where(positions < 0, _INT64_MAX, positions), axis=1)
    if rows.shape[1] > 1:  # an id excluded twice is one excluded item
        repeated = xp.zeros(rows.shape, dtype=bool)
        repeated[:, 1:] = rows[:, 1:] == rows[:, :-1]
        rows = xp.sort(xp.where(repeated, _INT64_MAX, rows), axis=1)
    return xp.ascontiguousarray(xp.where(rows == _INT64_MAX, -1, rows))
