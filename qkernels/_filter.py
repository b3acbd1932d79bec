"""Filtered search inside the kernels: which stored items a search may return.

A search's filter is two arrays, both empty when nothing is filtered:

- ``mask``: uint8, one entry per stored position (0: refused for every query): what an
  ``include`` or a one-dimensional ``exclude`` of ids becomes;
- ``excluded``: int64 ``(Q, m)``, each query's refused positions sorted ascending, ``-1``
  padding at the end: what a two-dimensional ``exclude`` (one row of ids per query) becomes.

The kernels ask :func:`passes` only where an item would enter a query's top-K (its distance
beats the heap's worst): a refused item never takes a place, so a filtered search still
returns ``topk`` results whenever that many items pass, and the unfiltered scan loops keep
their shape. The hash tables also ask it when counting a query's candidates, so that refused
items do not count towards the ``topk`` that stops the probe's expansion.
"""

from __future__ import annotations

import numba as nb
import numpy as np

__all__ = ["NO_EXCLUDED", "NO_MASK", "block_bits", "not_excluded", "passes"]

NO_MASK = np.empty(0, dtype=np.uint8)
NO_EXCLUDED = np.empty((0, 0), dtype=np.int64)


@nb.njit(cache=True, nogil=True, inline="always")
def passes(mask, excluded, item):
    """Whether position ``item`` may be returned: allowed by ``mask`` (empty: all are) and
    not in ``excluded`` (one query's sorted positions, ``-1`` padding at the end; read as
    larger than every position)."""
    if mask.shape[0] != 0 and mask[item] == 0:
        return False
    return not_excluded(excluded, item)


@nb.njit(cache=True, nogil=True, inline="always")
def not_excluded(excluded, item):
    """Whether position ``item`` is not among one query's ``excluded`` positions."""
    low = 0
    high = excluded.shape[0]
    while low < high:
        middle = (low + high) >> 1
        value = excluded[middle]
        if value < 0 or value > item:
            high = middle
        elif value < item:
            low = middle + 1
        else:
            return False
    return True


def block_bits(mask: np.ndarray, block: int) -> np.ndarray:
    """``mask`` (one uint8 per position) as one int64 per block of ``block`` positions (at
    most 63), bit ``i`` set where position ``block * b + i`` is allowed: the fast scan ANDs it
    with a block's candidates. Empty for an empty mask."""
    if mask.shape[0] == 0:
        return np.empty(0, dtype=np.int64)
    blocks = -(-mask.shape[0] // block)
    padded = np.zeros(blocks * block, dtype=np.int64)
    padded[: mask.shape[0]] = mask != 0
    weights = np.left_shift(np.int64(1), np.arange(block, dtype=np.int64))
    return (padded.reshape(blocks, block) * weights).sum(axis=1)
