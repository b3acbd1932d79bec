"""Bounded max-heaps on (distance, item) for the top-K of the Numba scans: the root is the
worst kept entry, so a candidate needs one comparison to be turned away. Equal distances go
to the lower item."""

from __future__ import annotations

import numba as nb
import numpy as np

__all__ = ["drain_sorted", "merge_chunks", "padded", "push", "sift_down"]


def padded(dist: np.ndarray, items: np.ndarray, topk: int, missing
           ) -> tuple[np.ndarray, np.ndarray]:
    """Widen ``(Q, work)`` results to ``(Q, topk)`` with ``missing`` distances and -1 ids: a
    search selects at most as many results as the database holds, however large ``topk``."""
    work = dist.shape[1]
    if work >= topk:
        return dist, items
    wide_dist = np.full((dist.shape[0], topk), missing, dtype=dist.dtype)
    wide_items = np.full((items.shape[0], topk), -1, dtype=items.dtype)
    wide_dist[:, :work] = dist
    wide_items[:, :work] = items
    return wide_dist, wide_items


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


@nb.njit(cache=True, nogil=True)
def merge_chunks(hd, hi, sizes, md, mi):
    """One query's best ``len(md)`` entries over the heaps that chunks of the database kept
    for it (``hd[c, :sizes[c]]``, ``hi[c, :sizes[c]]``), into the heap ``md``, ``mi``, by
    (distance, item); returns its size. The merge of every split-by-database scan."""
    topk = md.shape[0]
    size = 0
    for c in range(hd.shape[0]):
        for t in range(sizes[c]):
            dist = hd[c, t]
            item = hi[c, t]
            if size < topk:
                push(md, mi, size, dist, item)
                size += 1
            elif dist < md[0] or (dist == md[0] and item < mi[0]):
                sift_down(md, mi, size, dist, item)
    return size
