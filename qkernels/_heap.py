"""Bounded max-heaps on (distance, item) for the top-K of the Numba scans: the root is the
worst kept entry, so a candidate needs one comparison to be turned away. Equal distances go
to the lower item."""

from __future__ import annotations

import numba as nb

__all__ = ["drain_sorted", "push", "sift_down"]


@nb.njit(cache=True, nogil=True)
def sift_down(hd, hi, size, dist, item):
    """Replace the root of the heap of ``size`` entries by (dist, item) and sift it down."""
    i = 0
    while True:
        child = 2 * i + 1
        if child >= size:
            break
        if child + 1 < size and (hd[child + 1] > hd[child] or (
                hd[child + 1] == hd[child] and hi[child + 1] > hi[child])):
            child += 1
        if hd[child] < dist or (hd[child] == dist and hi[child] < item):
            break
        hd[i] = hd[child]
        hi[i] = hi[child]
        i = child
    hd[i] = dist
    hi[i] = item


@nb.njit(cache=True, nogil=True)
def push(hd, hi, size, dist, item):
    """Add (dist, item) to the heap of ``size`` entries, which has room for it."""
    i = size
    while i > 0:
        parent = (i - 1) >> 1
        if hd[parent] > dist or (hd[parent] == dist and hi[parent] > item):
            break
        hd[i] = hd[parent]
        hi[i] = hi[parent]
        i = parent
    hd[i] = dist
    hi[i] = item


@nb.njit(cache=True, nogil=True)
def drain_sorted(hd, hi, size, out_dist, out_item):
    """Write the heap's entries into ``out_*[:size]`` ascending by (distance, item); the heap
    is consumed."""
    for end in range(size - 1, -1, -1):
        out_dist[end] = hd[0]
        out_item[end] = hi[0]
        if end > 0:
            sift_down(hd, hi, end, hd[end], hi[end])
