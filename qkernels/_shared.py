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
from collections.abc import Callable
from typing import Any

__all__ = ["LazyState"]


class LazyState:
    """Mixin: ``self._lock``, a re-entrant lock for building lazy state, kept out of copies and
    pickles (each copy gets its own)."""

    def _init_lock(self) -> None:
        self._lock = threading.RLock()

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
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._init_lock()
