"""Safe sharing: what every index needs so that many threads may search it at once.

An index builds some state lazily on its first search (the table's CSR, the word-major layout of
binary codes, device mirrors). Two threads that both find the state missing must not both build
it: a build that rearranges arrays in place while another thread reads them corrupts the index
for good. :class:`LazyState` gives each index one lock under which such state is built, checked
again inside the lock (a thread that waited finds it built), and published in one assignment.

Searches never take the lock once the state exists; ``add`` is not meant to run concurrently
with searches of the same index (as with FAISS indexes).
"""

from __future__ import annotations

import threading

__all__ = ["LazyState"]


class LazyState:
    """Mixin: ``self._lock``, a re-entrant lock for building lazy state, kept out of copies and
    pickles (each copy gets its own)."""

    def _init_lock(self) -> None:
        self._lock = threading.RLock()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("_lock", None)
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._init_lock()
