"""Safe sharing: what every index needs so that many threads may search it at once.

An index builds some state lazily on its first search (the table's CSR, the word-major layout of
binary codes, device mirrors). Two threads that both find the state missing must not both build
it: a build that rearranges arrays in place while another thread reads them corrupts the index
for good. :class:`LazyState` gives each index one lock under which such state is built, checked
again inside the lock (a thread that waited finds it built), and published in one assignment.

Searches never take the lock once the state exists. The indexes go further
(``qkernels.index._base``): their items live in immutable snapshots, so a change may run
while other threads search, and what a search derives is cached on the snapshot it read.

:meth:`LazyState._changed` bumps a version counter at every change (``Index.version``);
:meth:`LazyState._device_mirror` keys device copies by it and by e.g. the quantizer's
``codebooks_version``, never by ``id()`` of an array, which a new array may reuse.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

__all__ = ["LazyState"]


class LazyState:
    """Mixin: ``self._lock``, a re-entrant lock for building lazy state, kept out of copies and
    pickles (each copy gets its own)."""

    def _init_lock(self) -> None:
        self._lock = threading.RLock()
        self._generation = 0  # bumped by _changed: the data the mirrors were made from
        self._mirrors: dict[int, tuple[tuple, Any]] = {}  # device -> (key, mirror)

    def _changed(self) -> None:
        """Call after the index's data changed (an add): mirrors of the old data are dropped
        (and never served: their key holds the old generation)."""
        self._generation += 1
        self._mirrors = {}

    def _device_mirror(self, build: Callable[[], Any], versions: tuple = ()) -> Any:
        """``build()``'s device copy of the index's state on the current CUDA device, made once
        per device and per (generation, *versions) under the lock; mirrors of other devices
        with the same key are kept (a dict published whole: readers never see it half-made)."""
        import cupy

        device = cupy.cuda.Device().id
        key = (self._generation, *versions)

        def current(mirrors: dict) -> bool:
            entry = mirrors.get(device)
            return entry is not None and entry[0] == key

        def make() -> dict:
            kept = {d: e for d, e in self._mirrors.items() if e[0] == key}
            return {**kept, device: (key, build())}

        return self._once("_mirrors", current, make)[device][1]

    def _once(self, attr: str, valid: Callable[[Any], bool], build: Callable[[], Any]) -> Any:
        """``self.<attr>`` if ``valid`` says it is current, else ``build()``'s result, stored
        there: built under the lock and checked again inside it (a thread that waited finds
        it built), published in one assignment. The fast path takes no lock."""
        value = getattr(self, attr)
        if valid(value):
            return value
        with self._lock:
            value = getattr(self, attr)
            if not valid(value):
                value = build()
                setattr(self, attr, value)
            return value

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("_lock", None)
        state.pop("_mirrors", None)  # device arrays: each copy makes its own
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._init_lock()  # a fresh lock, no mirrors: nothing stale to key against
