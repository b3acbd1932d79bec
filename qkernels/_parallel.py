"""``parallel_kernel``: Numba ``parallel=True`` kernels that are safe to call from many threads.

Numba's OpenMP and TBB threading layers accept parallel launches from several Python threads at
once; its ``workqueue`` layer (the fallback where neither is installed, or chosen with
``NUMBA_THREADING_LAYER=workqueue``) aborts the whole process when two launches overlap. Every
parallel kernel of qkernels is wrapped here: under a thread-safe layer the wrapper calls the
kernel directly (one global read per call); under ``workqueue`` it serialises the launches
behind one process-wide lock, so an index searched from a thread pool is slower there, never
killed. The layer is known only once Numba has launched a parallel region, so the launches are
serialised until the first one has told which layer it runs on.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable

import numba as nb

__all__ = ["database_chunks", "parallel_kernel", "threading_layer"]

_THREADSAFE = ("omp", "tbb")
_lock = threading.RLock()
_layer: str | None = None  # None until the first parallel launch has run


def database_chunks(num_queries: int, ntotal: int) -> int:
    """How a scan of ``ntotal`` items for ``num_queries`` queries is split: into this many
    chunks of the database (each with its own heaps, merged after) when there are few queries
    (``qk.config.SPLIT_DATABASE_MAX_QUERIES``), so that every core has work; 0 to go in
    parallel over queries instead. The one rule of the PQ and Hamming scans."""
    from . import config

    chunks = min(ntotal, 4 * nb.get_num_threads())
    return chunks if num_queries <= config.get("SPLIT_DATABASE_MAX_QUERIES") and chunks > 1 else 0


def threading_layer() -> str | None:
    """The threading layer Numba runs parallel kernels on, once one has run (else None)."""
    return _layer


def parallel_kernel(func: Callable) -> Callable:
    """``numba.njit(cache=True, nogil=True, parallel=True)`` plus the launch guard above. The
    compiled dispatcher is the wrapper's ``dispatcher`` attribute (for ``py_func``,
    ``signatures`` and the like)."""
    dispatcher = nb.njit(cache=True, nogil=True, parallel=True)(func)

    @functools.wraps(func)
    def launch(*args):
        if _layer in _THREADSAFE:
            return dispatcher(*args)
        return _serialised(dispatcher, args)

    launch.dispatcher = dispatcher
    return launch


def _serialised(dispatcher, args):
    global _layer
    with _lock:
        result = dispatcher(*args)
        if _layer is None:
            # ValueError: no parallel region ran yet (a kernel whose prange loop was empty)
            with contextlib.suppress(ValueError):
                _layer = nb.threading_layer()
    return result
