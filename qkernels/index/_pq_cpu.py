"""Numba kernels of the PQ search: distance tables and look-up-table scans (asymmetric and
symmetric distance), fused with the top-K selection; the CPU twins of qkernels/cuda/pq.cu.

Distances between sub-vectors use ``qkernels._simd`` (float32, eight fixed lanes); a PQ
distance is the sum of the ``M`` table entries in the order ``m = 0, 1, ..., M - 1``. Ties go to
the lower item. tests/reference.py repeats all of it with plain loops.
"""

from __future__ import annotations

import sys

import numba as nb
import numpy as np
from numba import types
from numba.extending import overload

from .._arrays import read_only
from .._filter import passes
from .._heap import by_database, drain_sorted, push, sift_down
from .._parallel import parallel_kernel
from .._simd import adc_lanes, dot_f32, line_aligned, sq_l2_f32

_INF32 = np.float32(np.inf)


@parallel_kernel
def distance_tables(queries, centroids, inner_product, tables):
    """``tables[q, m, c]``: squared L2 (or minus the inner product) between query ``q``'s m-th
    sub-vector and codeword ``c`` of subspace ``m``."""
    num_subspaces, num_centroids, dsub = centroids.shape
    for q in nb.prange(queries.shape[0]):
        for m in range(num_subspaces):
            sub = queries[q, m * dsub:(m + 1) * dsub]
            for c in range(num_centroids):
                if inner_product:
                    tables[q, m, c] = -dot_f32(sub, centroids[m, c])
                else:
                    tables[q, m, c] = sq_l2_f32(sub, centroids[m, c])


@nb.njit(cache=True, nogil=True)
def symmetric_tables(centroids, inner_product):
    """``out[m, a, b]``: distance between codewords ``a`` and ``b`` of subspace ``m``."""
    num_subspaces, num_centroids, _ = centroids.shape
    out = np.empty((num_subspaces, num_centroids, num_centroids), dtype=np.float32)
    for m in range(num_subspaces):
        for a in range(num_centroids):
            for b in range(num_centroids):
                if inner_product:
                    out[m, a, b] = -dot_f32(centroids[m, a], centroids[m, b])
                else:
                    out[m, a, b] = sq_l2_f32(centroids[m, a], centroids[m, b])
    return out


@nb.njit(cache=True, nogil=True)
def _adc(table, code):
    """Asymmetric distance of one code: its table entries summed in subspace order."""
    dist = table[0, code[0]]
    for m in range(1, table.shape[0]):
        dist += table[m, code[m]]
    return dist


@nb.njit(cache=True, nogil=True)
def _scan_range(table, codes, start, stop, hd, hi, size, mask, excluded):
    """Asymmetric distances of items ``start..stop-1`` against one query's (M, K) table, into the
    top-K max-heap (hd, hi) holding ``size`` entries; returns the new size. Only items that
    pass the filter (``qkernels._filter``: ``mask``, this query's ``excluded``) take a place.

    Once the heap is full, items go eight at a time: eight independent sums in flight keep the
    CPU's load units busy where one sum would wait on its own chain of additions (measured
    1.4x faster). Each sum is still taken in subspace order, and the eight are offered to the
    heap in item order, so the result is that of the plain loop.
    """
    topk = hd.shape[0]
    num_subspaces = table.shape[0]
    i = start
    while i < stop and size < topk:
        if passes(mask, excluded, i):
            push(hd, hi, size, _adc(table, codes[i]), i)
            size += 1
        i += 1
    block = codes[i:stop]  # a slice: non-negative indices, no wraparound checks
    count = stop - i
    j = 0
    while j + 8 <= count:
        d0 = table[0, block[j + 0, 0]]
        d1 = table[0, block[j + 1, 0]]
        d2 = table[0, block[j + 2, 0]]
        d3 = table[0, block[j + 3, 0]]
        d4 = table[0, block[j + 4, 0]]
        d5 = table[0, block[j + 5, 0]]
        d6 = table[0, block[j + 6, 0]]
        d7 = table[0, block[j + 7, 0]]
        for m in range(1, num_subspaces):
            row = table[m]
            d0 += row[block[j + 0, m]]
            d1 += row[block[j + 1, m]]
            d2 += row[block[j + 2, m]]
            d3 += row[block[j + 3, m]]
            d4 += row[block[j + 4, m]]
            d5 += row[block[j + 5, m]]
            d6 += row[block[j + 6, m]]
            d7 += row[block[j + 7, m]]
        if d0 < hd[0] and passes(mask, excluded, i + j + 0):  # an equal distance loses
            sift_down(hd, hi, size, d0, i + j + 0)
        if d1 < hd[0] and passes(mask, excluded, i + j + 1):
            sift_down(hd, hi, size, d1, i + j + 1)
        if d2 < hd[0] and passes(mask, excluded, i + j + 2):
            sift_down(hd, hi, size, d2, i + j + 2)
        if d3 < hd[0] and passes(mask, excluded, i + j + 3):
            sift_down(hd, hi, size, d3, i + j + 3)
        if d4 < hd[0] and passes(mask, excluded, i + j + 4):
            sift_down(hd, hi, size, d4, i + j + 4)
        if d5 < hd[0] and passes(mask, excluded, i + j + 5):
            sift_down(hd, hi, size, d5, i + j + 5)
        if d6 < hd[0] and passes(mask, excluded, i + j + 6):
            sift_down(hd, hi, size, d6, i + j + 6)
        if d7 < hd[0] and passes(mask, excluded, i + j + 7):
            sift_down(hd, hi, size, d7, i + j + 7)
        j += 8
    while j < count:
        dist = _adc(table, block[j])
        if dist < hd[0] and passes(mask, excluded, i + j):
            sift_down(hd, hi, size, dist, i + j)
        j += 1
    return size


@nb.njit(cache=True, nogil=True)
def _adc_words(table, words):
    """``_adc`` of one code read as uint64 words (8 codes each, lowest byte first)."""
    dist = table[0, words[0] & np.uint64(255)]
    for m in range(1, table.shape[0]):
        dist += table[m, (words[m >> 3] >> np.uint64(8 * (m & 7))) & np.uint64(255)]
    return dist


@nb.njit(cache=True, nogil=True)
def _fill_words(table, words, start, stop, hd, hi, size, mask, excluded):
    """The start of a word scan: items from ``start`` pushed while the heap has room; returns
    (the new size, the first item not offered)."""
    topk = hd.shape[0]
    i = start
    while i < stop and size < topk:
        if passes(mask, excluded, i):
            push(hd, hi, size, _adc_words(table, words[i]), i)
            size += 1
        i += 1
    return size, i


@nb.njit(cache=True, nogil=True)
def _scan_range_words(table, words, start, stop, hd, hi, size, mask, excluded):
    """``_scan_range`` for 8-bit codes of a multiple of 8 sub-quantizers, read as uint64 words
    ``(N, M / 8)``: one load per 8 codes instead of one per code, four items in flight
    (1.1-1.2x the byte scan at M = 8 in interleaved runs on a noisy 2-core EPYC; eight in
    flight measured the same). The sums are ``_adc``'s, in subspace order, and the items are
    offered to the heap in item order: the result is ``_scan_range``'s."""
    num_words = words.shape[1]
    size, i = _fill_words(table, words, start, stop, hd, hi, size, mask, excluded)
    low = np.uint64(255)
    while i + 4 <= stop:
        w0 = words[i + 0, 0]
        w1 = words[i + 1, 0]
        w2 = words[i + 2, 0]
        w3 = words[i + 3, 0]
        d0 = table[0, w0 & low]
        d1 = table[0, w1 & low]
        d2 = table[0, w2 & low]
        d3 = table[0, w3 & low]
        for b in range(1, 8):
            shift = np.uint64(8 * b)
            d0 += table[b, (w0 >> shift) & low]
            d1 += table[b, (w1 >> shift) & low]
            d2 += table[b, (w2 >> shift) & low]
            d3 += table[b, (w3 >> shift) & low]
        for w in range(1, num_words):
            w0 = words[i + 0, w]
            w1 = words[i + 1, w]
            w2 = words[i + 2, w]
            w3 = words[i + 3, w]
            for b in range(8):
                shift = np.uint64(8 * b)
                d0 += table[8 * w + b, (w0 >> shift) & low]
                d1 += table[8 * w + b, (w1 >> shift) & low]
                d2 += table[8 * w + b, (w2 >> shift) & low]
                d3 += table[8 * w + b, (w3 >> shift) & low]
        if d0 < hd[0] and passes(mask, excluded, i + 0):  # an equal distance loses
            sift_down(hd, hi, size, d0, i + 0)
        if d1 < hd[0] and passes(mask, excluded, i + 1):
            sift_down(hd, hi, size, d1, i + 1)
        if d2 < hd[0] and passes(mask, excluded, i + 2):
            sift_down(hd, hi, size, d2, i + 2)
        if d3 < hd[0] and passes(mask, excluded, i + 3):
            sift_down(hd, hi, size, d3, i + 3)
        i += 4
    while i < stop:
        dist = _adc_words(table, words[i])
        if dist < hd[0] and passes(mask, excluded, i):
            sift_down(hd, hi, size, dist, i)
        i += 1
    return size


@nb.njit(cache=True, nogil=True)
def _lane_tables(tables, first, count, lanes):
    """The tables of queries ``first..first+count-1`` interleaved for ``adc_lanes``: entry
    ``(m, c)`` of lane ``l`` at ``(m * 256 + c) * lanes + l``; lanes beyond ``count`` repeat
    the last query (their sums are never offered)."""
    num_subspaces = tables.shape[1]
    size = num_subspaces * 256 * lanes
    out = line_aligned(np.empty(size + 16, dtype=np.float32), size)
    for m in range(num_subspaces):
        for c in range(256):
            at = (m * 256 + c) * lanes
            for lane in range(lanes):
                out[at + lane] = tables[first + min(lane, count - 1), m, c]
    return out


@nb.njit(cache=True, nogil=True)
def _scan_lanes(tables, words, first, count, start, stop, hd, hi, hs, base, mask, excluded,
                lanes):
    """``_scan_range_words`` for ``count <= lanes`` queries at once (8-bit codes read as
    words; ``lanes`` 8 or 16, a compile-time constant): query ``q`` into the heap of row
    ``q - base``. Each item's word is read once and its distances to all the queries come
    out of one vector sum per subspace (``adc_lanes``, their tables interleaved), each lane
    the float32 sum of the one-query scan; each query's heap is offered its items in item
    order, so each result is ``_scan_range_words``'s. On a 2-core AMD EPYC (AVX2), 1M codes of
    M = 8, by query: sixteen lanes 5x the speed of three queries a pass without vectors, eight
    lanes 3x (interleaved runs)."""
    nb.literally(lanes)
    # each query fills its heap alone, then those that filled first catch up, in item order
    ends = np.empty(count, dtype=np.int64)
    reach = start
    for lane in range(count):
        q = first + lane
        r = q - base
        hs[r], ends[lane] = _fill_words(tables[q], words, start, stop, hd[r], hi[r], hs[r],
                                        mask, excluded[q])
        reach = max(reach, ends[lane])
    for lane in range(count):
        q = first + lane
        r = q - base
        hs[r] = _scan_range_words(tables[q], words, ends[lane], reach, hd[r], hi[r], hs[r],
                                  mask, excluded[q])
    if reach >= stop:
        return
    # every heap is full: thresholds are the roots; lanes beyond count never pass (-inf)
    flat = _lane_tables(tables, first, count, lanes)
    thresholds = np.full(lanes, -_INF32)
    sums = np.empty(2 * lanes, dtype=np.float32)
    for lane in range(count):
        thresholds[lane] = hd[first + lane - base, 0]
    i = reach
    while i + 1 < stop:
        below = adc_lanes(flat, words, i, thresholds, sums, lanes)
        if below != 0:
            # each query offered item i, then i + 1 (whose bit was set by the threshold
            # before item i's offer: checked again); an equal distance loses
            for half in range(2):
                for lane in range(count):
                    if (below >> (half * lanes + lane)) & 1:
                        q = first + lane
                        r = q - base
                        dist = sums[half * lanes + lane]
                        if dist < hd[r, 0] and passes(mask, excluded[q], i + half):
                            sift_down(hd[r], hi[r], hs[r], dist, i + half)
                            thresholds[lane] = hd[r, 0]
        i += 2
    if i < stop:  # an odd last item, one query at a time
        for lane in range(count):
            q = first + lane
            r = q - base
            dist = _adc_words(tables[q], words[i])
            if dist < hd[r, 0] and passes(mask, excluded[q], i):
                sift_down(hd[r], hi[r], hs[r], dist, i)


@nb.njit(cache=True, nogil=True)
def _sorted_out(hd, hi, size, inner_product, out_dist, out_item):
    """Write a heap's entries ascending by (distance, item), then padding."""
    drain_sorted(hd, hi, size, out_dist, out_item)
    if inner_product:
        for t in range(size):
            out_dist[t] = -out_dist[t]
    for t in range(size, out_dist.shape[0]):
        out_dist[t] = -_INF32 if inner_product else _INF32
        out_item[t] = -1


def scan_range(table, codes, start, stop, hd, hi, size, mask, excluded):
    """``_scan_range_words`` for codes held as uint64 words, else ``_scan_range``: chosen by
    the codes' type when Numba compiles the caller (an argument of function type would make
    every kernel that takes it uncachable, so every process would compile it again)."""
    scan = _scan_range_words if codes.dtype == np.uint64 else _scan_range
    return scan(table, codes, start, stop, hd, hi, size, mask, excluded)


@overload(scan_range, inline="always")
def _scan_range_overload(table, codes, start, stop, hd, hi, size, mask, excluded):
    scan = _scan_range_words if codes.dtype == types.uint64 else _scan_range

    def impl(table, codes, start, stop, hd, hi, size, mask, excluded):
        return scan(table, codes, start, stop, hd, hi, size, mask, excluded)
    return impl


@nb.njit(cache=True, nogil=True)
def _one_at_a_time(tables, codes, first, last, start, stop, hd, hi, hs, base, mask, excluded):
    for q in range(first, last):
        hs[q - base] = scan_range(tables[q], codes, start, stop, hd[q - base], hi[q - base], 0,
                                  mask, excluded[q])


@nb.njit(cache=True, nogil=True)
def _grouped(tables, codes, first, last, start, stop, hd, hi, hs, base, mask, excluded):
    q = first
    if tables.shape[2] == 256:
        while last - q > 8:
            count = min(16, last - q)
            _scan_lanes(tables, codes, q, count, start, stop, hd, hi, hs, base, mask, excluded,
                        16)
            q += count
        if last - q > 1:
            _scan_lanes(tables, codes, q, last - q, start, stop, hd, hi, hs, base, mask,
                        excluded, 8)
            q = last
    _one_at_a_time(tables, codes, q, last, start, stop, hd, hi, hs, base, mask, excluded)


def scan_queries(tables, codes, first, last, start, stop, hd, hi, hs, base, mask, excluded):
    """Items ``start..stop-1`` for queries ``first..last-1``, query ``q`` into the heap
    ``hd[q - base]``, ``hi[q - base]`` of ``hs[q - base]`` entries: for words of 8-bit codes,
    up to sixteen queries at a time in vector lanes (``_scan_lanes``: nine or more in
    sixteen lanes, two to eight in eight, a last one alone; a pass of eight lanes costs
    about 1.4 one-query passes, of sixteen about 2); else one at a time (``scan_range``).
    Chosen, like ``scan_range``, by the codes' type when Numba compiles the caller: kernels
    of other codes never compile the lane scans."""
    scan = _grouped if codes.dtype == np.uint64 else _one_at_a_time
    scan(tables, codes, first, last, start, stop, hd, hi, hs, base, mask, excluded)


@overload(scan_queries, inline="always")
def _scan_queries_overload(tables, codes, first, last, start, stop, hd, hi, hs, base, mask,
                           excluded):
    scan = _grouped if codes.dtype == types.uint64 else _one_at_a_time

    def impl(tables, codes, first, last, start, stop, hd, hi, hs, base, mask, excluded):
        scan(tables, codes, first, last, start, stop, hd, hi, hs, base, mask, excluded)
    return impl


def _as_words(codes):
    """8-bit codes of a multiple of 8 sub-quantizers as uint64 words (``_scan_range_words``),
    others as they are (``_scan_range``); a read-only view either way (``read_only``)."""
    if (codes.dtype == np.uint8 and codes.shape[1] % 8 == 0 and codes.flags.c_contiguous
            and sys.byteorder == "little"):  # byte 0 of a word is the first code
        return read_only(codes.view(np.uint64))
    return read_only(codes)


def scan_by_query(tables, codes, topk, inner_product, out_dist, out_item, mask, excluded):
    """Look-up-table scan of every item for every query, in parallel over queries; the filter
    (``mask``, ``excluded`` with one row per query) as ``qkernels._filter`` says."""
    words = _as_words(codes)
    step = 1
    if words.itemsize == 8 and tables.shape[2] == 256:  # words of 8-bit codes: lanes
        # sixteen queries a group, or eight or three where sixteen would leave threads idle
        threads = nb.get_num_threads()
        num_queries = tables.shape[0]
        step = 16 if num_queries >= 16 * threads else 8 if num_queries >= 8 * threads else 3
    _scan_by_query(tables, words, topk, inner_product, out_dist, out_item, mask, excluded, step)


def scan_by_database(tables, codes, topk, num_chunks, inner_product, out_dist, out_item, mask,
                     excluded):
    """The same scan for few queries, in parallel over chunks of the database
    (``_heap.by_database``)."""
    _scan_by_database(tables, _as_words(codes), topk, num_chunks, inner_product, out_dist,
                      out_item, mask, excluded)


@parallel_kernel
def _scan_by_database(tables, codes, topk, num_chunks, inner_product, out_dist, out_item, mask,
                      excluded):
    by_database(_chunk, _chunk_out, codes.shape[0], num_chunks, tables.shape[0], topk,
                np.float32, (tables, codes, inner_product, out_dist, out_item, mask, excluded))


@parallel_kernel
def _scan_by_query(tables, codes, topk, inner_product, out_dist, out_item, mask, excluded,
                   step):
    """Every query over every item, in parallel over groups of ``step`` queries (each group
    through ``scan_queries``: in vector lanes for codes held as words)."""
    num_queries = tables.shape[0]
    for p in nb.prange((num_queries + step - 1) // step):
        q = p * step
        count = min(step, num_queries - q)
        hd = np.empty((count, topk), dtype=np.float32)
        hi = np.empty((count, topk), dtype=np.int64)
        size = np.zeros(count, dtype=np.int64)
        scan_queries(tables, codes, q, q + count, 0, codes.shape[0], hd, hi, size, q, mask,
                     excluded)
        for r in range(count):
            _sorted_out(hd[r], hi[r], size[r], inner_product, out_dist[q + r], out_item[q + r])


@nb.njit(cache=True, nogil=True)
def _chunk(args, start, stop, hd, hi, hs):
    """Items ``start..stop-1`` for every query (in lanes, as ``_scan_by_query``)."""
    tables, codes, mask, excluded = args[0], args[1], args[5], args[6]
    scan_queries(tables, codes, 0, tables.shape[0], start, stop, hd, hi, hs, 0, mask, excluded)


@nb.njit(cache=True, nogil=True)
def _chunk_out(args, q, hd, hi, size):
    _sorted_out(hd, hi, size, args[2], args[3][q], args[4][q])
