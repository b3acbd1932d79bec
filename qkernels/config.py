"""Tunables in one place. Change them at run time (``qk.config.GPU_THREADS_PER_BLOCK = 128``);
``qk.config.reset()`` restores the defaults. Kernels read them at call time, never at import.
"""

from __future__ import annotations

import numbers

_DEFAULTS = {
    # CUDA launch shape for the RawKernels in qkernels/cuda (a multiple of 32).
    "GPU_THREADS_PER_BLOCK": 256,
    # Searches with at most this many queries split the database across threads instead of
    # the queries (one query cannot keep two cores busy when parallelised over queries).
    "SPLIT_DATABASE_MAX_QUERIES": 16,
    # The 4-bit PQ fast scan uses AVX2 byte shuffles where the CPU has them; False forces the
    # scalar kernel (the same results, one byte at a time).
    "FASTSCAN_SIMD": True,
}

GPU_THREADS_PER_BLOCK: int = _DEFAULTS["GPU_THREADS_PER_BLOCK"]
"""CUDA threads per block of the GPU kernels (a multiple of 32; default 256)."""

SPLIT_DATABASE_MAX_QUERIES: int = _DEFAULTS["SPLIT_DATABASE_MAX_QUERIES"]
"""Searches with at most this many queries split the database between threads instead of the
queries (default 16): one query cannot keep two cores busy when parallelised over queries."""

FASTSCAN_SIMD: bool = _DEFAULTS["FASTSCAN_SIMD"]
"""Whether the 4-bit PQ fast scan uses byte shuffles (AVX2, AVX-512BW) where the CPU Numba
compiles for has them (default True); False forces the scalar kernel, with the same results."""


def get(name: str) -> int | bool:
    """The tunable ``name`` as the kernels read it, checked.

    Parameters
    ----------
    name : str
        One of ``GPU_THREADS_PER_BLOCK``, ``SPLIT_DATABASE_MAX_QUERIES``, ``FASTSCAN_SIMD``.

    Returns
    -------
    int or bool
        ``True``/``False`` for a switch, an integer for a count.

    Raises
    ------
    TypeError
        If a switch holds something other than ``True``/``False`` (the string ``"no"`` would
        otherwise switch it on), or a count something other than an integer.
    ValueError
        If ``GPU_THREADS_PER_BLOCK`` is not a multiple of 32 in 32..1024, or
        ``SPLIT_DATABASE_MAX_QUERIES`` is negative.
    KeyError
        If ``name`` is no tunable.

    Examples
    --------
    >>> import qkernels as qk
    >>> qk.config.get("SPLIT_DATABASE_MAX_QUERIES")
    16
    """
    if name not in _DEFAULTS:
        raise KeyError(f"qk.config has no tunable {name!r}; it has {sorted(_DEFAULTS)}")
    value = globals()[name]
    if isinstance(_DEFAULTS[name], bool):
        if isinstance(value, str) or value not in (True, False):
            raise TypeError(f"qk.config.{name} must be True or False, got {value!r}")
        return bool(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"qk.config.{name} must be an integer, got {value!r}")
    value = int(value)
    if name == "GPU_THREADS_PER_BLOCK" and (value < 32 or value % 32 or value > 1024):
        raise ValueError(f"qk.config.{name} must be a multiple of 32 in 32..1024, got {value}")
    if value < 0:
        raise ValueError(f"qk.config.{name} must be >= 0, got {value}")
    return value


def reset() -> None:
    """Restore every tunable to its default.

    Examples
    --------
    >>> import qkernels as qk
    >>> qk.config.SPLIT_DATABASE_MAX_QUERIES = 4
    >>> qk.config.reset()
    >>> qk.config.SPLIT_DATABASE_MAX_QUERIES
    16
    """
    globals().update(_DEFAULTS)
