"""Bounded max-heaps for the top-K of the Numba scans: the root is the worst kept entry, so a
candidate needs one comparison to be turned away.

Two arities, the one place for both: on (distance, item) for the PQ and Hamming scans (equal
distances go to the lower item; ``push``, ``sift_down``, ``drain_sorted``, ``merge_chunks``),
and on three keys compared in order for the Hamming tie-break (distance, feature distance,
item): ``offer3``, ``drain_sorted3``. (The table probe keeps sorted rows of packed keys
instead: ``qkernels._simd.insert_ranked``.)
``by_database`` is the one scan-and-merge of the scans split over chunks of the database.
``top_k_small`` selects a row's few largest entries without a heap, for the hash tables'
bucket choice and the flow solver's greedy start, which takes every row of its scores at once
(``top_k_rows``: two rows side by side, ``top_k_small_pair``, or eight as the lanes of a
vector)."""

from __future__ import annotations

import numba as nb
import numpy as np

from ._simd import least_after, least_k_lanes, least_node

__all__ = ["SMALL_K", "by_database", "drain_sorted", "drain_sorted3", "merge_chunks", "offer",
           "offer3", "padded", "push", "sift_down", "top_k_rows", "top_k_small",
           "top_k_small_pair"]

SMALL_K = 8  # the largest k that top_k_small takes
_MAGNITUDE = np.int64(0x7FFFFFFFFFFFFFFF)


@nb.njit(cache=True, nogil=True, inline="always")
def _descending_keys(bits, keys):
    """``keys[:d]``: int64 keys of the finite doubles whose bit patterns are ``bits`` (d,), in
    the reverse order of the doubles (a negative double's magnitude bits flipped, ``-0.0``'s
    key made ``+0.0``'s, as the two compare equal; then all bits flipped); ``keys[d:]`` the
    largest int64, which no key reaches."""
    d = bits.shape[0]
    for r in range(d):
        b = bits[r]
        key = b ^ ((b >> 63) & _MAGNITUDE)
        keys[r] = ~(key + (key == -1))
    keys[d:] = _MAGNITUDE


@nb.njit(cache=True, nogil=True, inline="always")
def top_k_small(bits, k, out, keys):
    """The ``k <= SMALL_K`` largest of the finite doubles whose bit patterns are ``bits``
    (d,): writes their indices into ``out``, largest first, lower index first on ties, and
    returns the ``k``-th one's index. ``keys`` is scratch of ``d`` rounded up to a multiple
    of eight.

    The doubles become int64 keys in the reverse order (``_descending_keys``), then ``k``
    times: the least key and its first index in one vectorised pass (``_simd.least_node``,
    then ``least_after`` the pair taken, so that no key is written between passes). The
    choice of an insertion into a sorted list of ``k``, without its data-dependent branches,
    which the branch predictor misses on every new row (the insertion took about a fifth of a
    crowded 64 x 64 flow solve)."""
    _descending_keys(bits, keys)
    size = keys.shape[0]
    key, r = least_node(keys, size)
    out[0] = r
    for t in range(1, k):
        key, r = least_after(keys, size, key, r)
        out[t] = r
    return r


@nb.njit(cache=True, nogil=True, inline="always")
def top_k_small_pair(bits_a, bits_b, k, out_a, out_b, keys):
    """``top_k_small`` of two rows at once, their passes side by side (``keys`` is scratch of
    two rows): each pass waits for the one before it (its reductions), and two rows' chains
    in flight together took 0.8x the time of one row after the other (64 rows of 64, k = 3
    and 4, Zen 5). Returns the two ``k``-th indices."""
    size = keys.shape[1]
    _descending_keys(bits_a, keys[0])
    _descending_keys(bits_b, keys[1])
    key_a, r_a = least_node(keys[0], size)
    key_b, r_b = least_node(keys[1], size)
    out_a[0] = r_a
    out_b[0] = r_b
    for t in range(1, k):
        key_a, r_a = least_after(keys[0], size, key_a, r_a)
        key_b, r_b = least_after(keys[1], size, key_b, r_b)
        out_a[t] = r_a
        out_b[t] = r_b
    return r_a, r_b


@nb.njit(cache=True, nogil=True, inline="always")
def top_k_rows(bits, k, out, keys, picks):
    """``top_k_small`` of every row of ``bits`` (n, d) into ``out`` (n, >= k): the same
    indices, in the same order. ``keys`` (8, d rounded up to a multiple of eight) int64 and
    ``picks`` (8, SMALL_K) int64 are scratch.

    From ``k = 3`` eight rows at a time (``_simd.least_k_lanes``: each column inserted into
    the eight rows' sorted lists, no reduction between the picks): 1.5x / 2.1x / 2.3x the
    speed of the pairs below at k = 3 / 4 / 8 on 64-column rows (AMD EPYC Zen 5). One or two
    picks keep the pairs, two rows side by side by repeated selection (``top_k_small_pair``):
    the lanes measured 0.8x / 1.0x of them there."""
    n = bits.shape[0]
    if k < 3:
        for j in range(0, n - 1, 2):
            top_k_small_pair(bits[j], bits[j + 1], k, out[j], out[j + 1], keys)
        if n % 2:
            top_k_small(bits[n - 1], k, out[n - 1], keys[0])
        return
    for j in range(0, n, 8):
        for lane in range(8):
            _descending_keys(bits[min(j + lane, n - 1)], keys[lane])
        least_k_lanes(keys, k, picks)
        for lane in range(min(8, n - j)):
            for t in range(k):
                out[j + lane, t] = picks[lane, t]


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


@nb.njit(cache=True, nogil=True, inline="always")
def offer(hd, hi, size, dist, item):
    """Offer (dist, item) to the heap of ``size`` entries (room for ``len(hd)``): pushed while
    there is room, else it replaces the root (the worst entry) if it is better by (distance,
    item); returns the new size."""
    if size < hd.shape[0]:
        push(hd, hi, size, dist, item)
        return size + 1
    if dist < hd[0] or (dist == hd[0] and item < hi[0]):
        sift_down(hd, hi, size, dist, item)
    return size


@nb.njit(cache=True, nogil=True)
def drain_sorted(hd, hi, size, out_dist, out_item):
    """Write the heap's entries into ``out_*[:size]`` ascending by (distance, item); the heap
    is consumed."""
    for end in range(size - 1, -1, -1):
        out_dist[end] = hd[0]
        out_item[end] = hi[0]
        if end > 0:
            sift_down(hd, hi, end, hd[end], hi[end])


@nb.njit(cache=True, nogil=True, inline="always")
def by_database(chunk, finish, units, num_chunks, num_queries, room, dtype, args):
    """The scan-and-merge of every split-by-database scan (PQ, fast scan, Hamming), for few
    queries: ``units`` (items, or blocks of them) cut into at most ``num_chunks`` chunks
    scanned in parallel, each with its own max-heap of ``room`` (distance, item) entries per
    query (distances of ``dtype``); then each query's heaps are merged and written out.

    ``chunk(args, start, stop, hd, hi, hs)`` scans units ``start..stop-1`` for every query
    ``q`` into its heap ``hd[q]``, ``hi[q]`` (``hs[q]`` entries); ``finish(args, q, hd, hi,
    size)`` writes query ``q``'s results from its merged heap. Both are Numba functions;
    ``args`` is the tuple of what they share.

    Inlined into each family's ``parallel_kernel``, which names both as globals: the loop below
    becomes that kernel's parallel loop, and a search pays no run-time typing of function
    arguments (about 3 us each). (Functions must not be passed on as values: Numba cannot
    cache a kernel that does.)"""
    num_chunks = max(1, min(num_chunks, units))
    step = (units + num_chunks - 1) // num_chunks
    hd = np.empty((num_chunks, num_queries, room), dtype=dtype)
    hi = np.empty((num_chunks, num_queries, room), dtype=np.int64)
    hs = np.zeros((num_chunks, num_queries), dtype=np.int64)
    for c in nb.prange(num_chunks):
        chunk(args, min(units, c * step), min(units, (c + 1) * step), hd[c], hi[c],
              hs[c])
    md = np.empty(room, dtype=dtype)
    mi = np.empty(room, dtype=np.int64)
    for q in range(num_queries):
        finish(args, q, md, mi, merge_chunks(hd[:, q], hi[:, q], hs[:, q], md, mi))


@nb.njit(cache=True, nogil=True)
def merge_chunks(hd, hi, sizes, md, mi):
    """One query's best ``len(md)`` entries over the heaps that chunks of the database kept
    for it (``hd[c, :sizes[c]]``, ``hi[c, :sizes[c]]``), into the heap ``md``, ``mi``, by
    (distance, item); returns its size. The merge of every split-by-database scan."""
    size = 0
    for c in range(hd.shape[0]):
        for t in range(sizes[c]):
            size = offer(md, mi, size, hd[c, t], hi[c, t])
    return size


@nb.njit(cache=True, nogil=True, inline="always")
def worse3(a1, b1, c1, a2, b2, c2):
    """(a1, b1, c1) > (a2, b2, c2), compared in order (the first key decides most often, so
    it is tested first and alone)."""
    return a1 > a2 or (a1 == a2 and (b1 > b2 or (b1 == b2 and c1 > c2)))


@nb.njit(cache=True, nogil=True, inline="always")
def offer3(ha, hb, hc, hs, q, a, b, c):
    """Offer (a, b, c) to heap ``q`` of the 2-D arrays ``ha``, ``hb``, ``hc`` (``hs[q]``
    entries, room for ``ha.shape[1]``): pushed while there is room, else it replaces the root
    (the worst entry) if it is better."""
    size = hs[q]
    if size < ha.shape[1]:  # sift up from the end
        i = size
        hs[q] = size + 1
        while i > 0:
            parent = (i - 1) >> 1
            if not worse3(a, b, c, ha[q, parent], hb[q, parent], hc[q, parent]):
                break
            ha[q, i] = ha[q, parent]
            hb[q, i] = hb[q, parent]
            hc[q, i] = hc[q, parent]
            i = parent
    elif worse3(ha[q, 0], hb[q, 0], hc[q, 0], a, b, c):  # sift down from the root
        i = _sift3(ha, hb, hc, q, size, a, b, c)
    else:
        return
    ha[q, i] = a
    hb[q, i] = b
    hc[q, i] = c


@nb.njit(cache=True, nogil=True, inline="always")
def _sift3(ha, hb, hc, q, size, a, b, c):
    """Move the entries of heap ``q`` (``size`` of them) up along the path from the root that
    (a, b, c) sinks down; returns the free slot where it belongs."""
    i = 0
    while True:
        child = 2 * i + 1
        if child >= size:
            return i
        if child + 1 < size and worse3(ha[q, child + 1], hb[q, child + 1], hc[q, child + 1],
                                       ha[q, child], hb[q, child], hc[q, child]):
            child += 1
        if not worse3(ha[q, child], hb[q, child], hc[q, child], a, b, c):
            return i
        ha[q, i] = ha[q, child]
        hb[q, i] = hb[q, child]
        hc[q, i] = hc[q, child]
        i = child


@nb.njit(cache=True, nogil=True)
def drain_sorted3(ha, hb, hc, q, size, out_a, out_c):
    """Write heap ``q``'s entries into ``out_a[:size]``, ``out_c[:size]`` (the first and the
    last key) ascending; the heap is consumed."""
    for end in range(size - 1, -1, -1):
        out_a[end] = ha[q, 0]
        out_c[end] = hc[q, 0]
        if end > 0:
            a, b, c = ha[q, end], hb[q, end], hc[q, end]
            i = _sift3(ha, hb, hc, q, end, a, b, c)
            ha[q, i] = a
            hb[q, i] = b
            hc[q, i] = c

