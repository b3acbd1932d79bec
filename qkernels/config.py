"""Tunables in one place. Change them at run time (``qk.config.GPU_THREADS_PER_BLOCK = 128``);
``qk.config.reset()`` restores the defaults. Kernels read them at call time, never at import.
"""

from __future__ import annotations

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
