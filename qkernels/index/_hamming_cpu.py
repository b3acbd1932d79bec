"""Numba kernels of the Hamming scan: popcount over 64-bit words, fused with top-K selection.

The database is held as words, ``(words, N)`` uint64: the packed bytes zero-padded to a multiple
of eight and viewed in the machine's byte order (XOR and popcount do not care about the order),
word ``w`` of every item in one contiguous row. A block of items then gets its distances to a
query in one vectorised pass, and only a block whose minimum can enter the top-K is walked item
by item. Ties in distance go to the lower item, or, with a tie-break, to the smaller float32
squared Euclidean distance between continuous features (then the lower item).
"""

from __future__ import annotations

import numba as nb
import numpy as np

from .._filter import passes
from .._heap import by_database, drain_sorted, drain_sorted3, offer3, push, sift_down
from .._parallel import parallel_kernel
from .._simd import popcount64, sq_l2_f32

_MISSING = np.iinfo(np.int32).max
_NO_DISTANCE = np.int64(1) << 62  # above every distance: the start of a minimum


@nb.njit(cache=True, nogil=True)
def _offer(hd, hi, hs, q, dist, item):
    """Offer (dist, item) to query ``q``'s max-heap: push while there is room, else replace the
    root. The caller checked that it beats the root when the heap is full."""
    size = hs[q]
    if size < hd.shape[1]:
        push(hd[q], hi[q], size, dist, item)
        hs[q] = size + 1
    else:
        sift_down(hd[q], hi[q], size, dist, item)


@nb.njit(cache=True, nogil=True)
def _block_distances(query, db_t, start, stop, out):
    """``out[j]``: Hamming distance between ``query`` and item ``start + j``; returns their
    minimum. Two words a pass over contiguous rows (one for a last odd word), the minimum taken
    in the last pass, so a 64- or 128-bit code is one pass; the compiler vectorises each loop
    (VPOPCNTQ where the CPU has it, else a byte-table popcount whose two words' byte counts are
    added before one horizontal sum)."""
    count = stop - start
    words = db_t.shape[0]
    low = 0
    # slices, not row[start + j]: with a non-negative index there is no wraparound check,
    # and the loop vectorises (measured 4x faster)
    for w in range(0, words, 2):
        first = w == 0
        low = _NO_DISTANCE
        a = db_t[w, start:stop]
        qa = query[w]
        if w + 1 < words:
            b = db_t[w + 1, start:stop]
            qb = query[w + 1]
            for j in range(count):
                d = popcount64(a[j] ^ qa) + popcount64(b[j] ^ qb)
                if not first:
                    d += out[j]
                out[j] = d
                low = min(low, d)
        else:
            for j in range(count):
                d = popcount64(a[j] ^ qa)
                if not first:
                    d += out[j]
                out[j] = d
                low = min(low, d)
    return low


@nb.njit(cache=True, nogil=True)
def _scan(queries, db_t, start, stop, q0, q1, buffer, hd, hi, hs, mask, excluded):
    """Distances of items ``start..stop-1`` to queries ``q0..q1-1`` into their heaps (rows
    ``q - q0`` of hd, hi, hs), one block of items at a time: the distances of a block are
    computed in a vectorised pass, and the block is only walked item by item when its
    minimum can enter the heap. Only items that pass the filter (``qkernels._filter``:
    ``mask``, ``excluded[q]``) take a place."""
    topk = hd.shape[1]
    block = buffer.shape[0]
    for first in range(start, stop, block):
        last = min(stop, first + block)
        for q in range(q0, q1):
            h = q - q0
            low = _block_distances(queries[q], db_t, first, last, buffer)
            if hs[h] == topk and low >= hd[h, 0]:
                continue
            for j in range(last - first):
                d = buffer[j]
                if (hs[h] < topk or d < hd[h, 0]) and passes(mask, excluded[q], first + j):
                    _offer(hd, hi, hs, h, d, first + j)


@nb.njit(cache=True, nogil=True)
def _write_sorted(hd, hi, size, out_dist, out_item):
    drain_sorted(hd, hi, size, out_dist, out_item)
    for t in range(size, out_dist.shape[0]):
        out_dist[t] = _MISSING
        out_item[t] = -1


@parallel_kernel
def topk_by_query(queries, db_t, topk, block, out_dist, out_item, mask, excluded):
    """Exact top-K by Hamming distance; parallel over groups of queries. ``db_t`` holds the
    codes as words, ``(words, N)``; the filter as ``_scan``'s."""
    num_queries = queries.shape[0]
    n = db_t.shape[1]
    group = 8
    num_groups = (num_queries + group - 1) // group
    for g in nb.prange(num_groups):
        q0 = g * group
        q1 = min(num_queries, q0 + group)
        buffer = np.empty(block, dtype=np.int64)
        hd = np.empty((q1 - q0, topk), dtype=np.int64)
        hi = np.empty((q1 - q0, topk), dtype=np.int64)
        hs = np.zeros(q1 - q0, dtype=np.int64)
        _scan(queries, db_t, 0, n, q0, q1, buffer, hd, hi, hs, mask, excluded)
        for q in range(q0, q1):
            _write_sorted(hd[q - q0], hi[q - q0], hs[q - q0], out_dist[q], out_item[q])


@parallel_kernel
def topk_by_database(queries, db_t, topk, block, num_chunks, out_dist, out_item, mask,
                     excluded):
    """The same for few queries: in parallel over chunks of the database
    (``_heap.by_database``)."""
    by_database(_chunk, _chunk_out, db_t.shape[1], num_chunks, queries.shape[0], topk,
                np.int64, (queries, db_t, block, out_dist, out_item, mask, excluded))


@nb.njit(cache=True, nogil=True)
def _chunk(args, start, stop, hd, hi, hs):
    """Items ``start..stop-1`` for every query, by ``_scan``."""
    queries, db_t, block = args[0], args[1], args[2]
    _scan(queries, db_t, start, stop, 0, queries.shape[0], np.empty(block, dtype=np.int64),
          hd, hi, hs, args[5], args[6])


@nb.njit(cache=True, nogil=True)
def _chunk_out(args, q, hd, hi, size):
    _write_sorted(hd, hi, size, args[3][q], args[4][q])


@parallel_kernel
def topk_tiebreak(queries, db_t, query_features, db_features, topk, out_dist, out_item, mask,
                  excluded):
    """Top-K by (Hamming distance, squared L2 between features, item), parallel over queries.
    The feature distance is only computed for items that can still enter the heap (and pass
    the filter)."""
    num_queries = queries.shape[0]
    words, n = db_t.shape
    for q in nb.prange(num_queries):
        # one heap, by (Hamming distance, feature distance, item)
        hd = np.empty((1, topk), dtype=np.int64)
        ht = np.empty((1, topk), dtype=np.float32)
        hi = np.empty((1, topk), dtype=np.int64)
        hs = np.zeros(1, dtype=np.int64)
        for i in range(n):
            d = 0
            for w in range(words):
                d += popcount64(db_t[w, i] ^ queries[q, w])
            if (hs[0] == topk and d > hd[0, 0]) or not passes(mask, excluded[q], i):
                continue
            t = sq_l2_f32(query_features[q], db_features[i])
            offer3(hd, ht, hi, hs, 0, d, t, i)
        size = hs[0]
        drain_sorted3(hd, ht, hi, 0, size, out_dist[q], out_item[q])
        for t in range(size, topk):
            out_dist[q, t] = _MISSING
            out_item[q, t] = -1


@parallel_kernel
def feature_distances(query_features, db_features, items, out):
    """``out[q, t]``: the tie-break key of result ``items[q, t]`` (``inf`` where it is -1), the
    same float32 squared L2 that ``topk_tiebreak`` orders by: a sharded search merges shards'
    results by it (qkernels.distributed)."""
    for q in nb.prange(items.shape[0]):
        for t in range(items.shape[1]):
            i = items[q, t]
            out[q, t] = np.inf if i < 0 else sq_l2_f32(query_features[q], db_features[i])
