"""Numba kernels of the 4-bit PQ fast scan (PQIndex over a ``nbits=4`` quantizer).

The layout (``pack_codes``): the database in blocks of 32 vectors, each block ``P = ceil(M /
2)`` groups of 32 bytes, one per pair of sub-quantizers ``(2p, 2p + 1)``: byte ``i < 16`` holds
sub-quantizer ``2p``'s codes of vectors ``i`` (low nibble) and ``16 + i`` (high nibble), byte
``16 + i`` the same for ``2p + 1``. One 256-bit register then holds a pair's codes for the whole
block, and its two 128-bit lanes are looked up in the pair's two 16-entry tables by one byte
shuffle (``qkernels._simd.fastscan_block``). A missing sub-quantizer (odd M) and the vectors
past the end of the last block have code 0 and table entries 0.

The tables (``quantize_tables``): per query, the float32 ADC table ``T[m, c]`` becomes uint8
``round((T[m, c] - min_c T[m, c]) * a)`` with one scale ``a = 255 / max_m (max_c T[m, c] -
min_c T[m, c])`` for all sub-quantizers, so the uint8 sums rank like the float sums up to the
rounding, and ``bias + sum / a`` (``bias = sum_m min_c T[m, c]``) approximates the distance.
The differences ``T[m, c] - min_c T[m, c]`` are float32; ``a``, the rounding and ``bias + sum
/ a`` are float64 (``a`` overflows float32 for tables that span less than ``255 / 3.4e38``).
The scan keeps the best ``R`` items by (uint16 sum, item); with ``rerank`` these are ranked
again by their float ADC distance (``_pq_cpu``'s sum in subspace order) and the best ``topk``
returned; without, the best ``topk`` with their approximate distances. tests/reference.py
repeats all of it with plain loops.

Each block's sums are made by ``block_simd`` (AVX2; two pairs per 512-bit shuffle where the CPU
has AVX-512BW; where it also has VBMI and VNNI, four sub-quantizers per 512-bit look-up and
their entries added by byte dot products: 1.7x the speed of the 512-bit shuffles at M = 16
on an Intel Xeon) or ``block_scalar`` (the same arithmetic, one byte at a time), as the kernels'
``simd`` argument says; where the CPU has no AVX2 the AVX2 code is never compiled. Many
queries go ``GROUP`` at a time (``group_simd`` / ``group_scalar``): each block's codes are
loaded and split into nibbles once for all of them. Three with AVX2 (two measured 1.3x one at
a time, three 1.05-1.09x two against faiss in the same runs; four were slower, their 16
accumulators do not fit the 16 AVX2 registers), four with AVX-512's 32 registers (0.78x the
time of two at 1M codes, where the scan is memory-bound; with the byte dot products, whose
two accumulators a query would leave room for eight, six and eight were no faster than four).
"""

from __future__ import annotations

import numba as nb
import numpy as np

from .._filter import not_excluded
from .._heap import by_database, drain_sorted, offer
from .._parallel import parallel_kernel
from .._simd import (
    FASTSCAN_BLOCK,
    fastscan_block,
    fastscan_group3,
    fastscan_group4,
    has_avx2,
    has_avx512bw,
    popcount64,
)
from ._pq_cpu import _adc

_INF32 = np.float32(np.inf)
_ALL = 65535  # a threshold above every sum of at most 256 uint8 entries (PQIndex allows 256)
MISSING_SUM = np.int32(2**31 - 1)  # the sum written where a result is missing
# Read when a kernel is compiled (Numba's cache is kept per CPU model and features): without
# AVX2 the branches to the AVX2 kernels are pruned before they are compiled.
_AVX2 = has_avx2()


@nb.njit(cache=True, nogil=True)
def pack_codes(codes, num_pairs, packed):
    """Write ``codes`` ``(N, M)`` (values < 16) into ``packed`` (``ceil(N / 32) * num_pairs *
    32`` bytes, zeroed by the caller) in the fast-scan layout."""
    n, num_subspaces = codes.shape
    stride = num_pairs * 32
    for v in range(n):
        base = (v // FASTSCAN_BLOCK) * stride
        lane = v % 16
        shift = 4 * ((v % FASTSCAN_BLOCK) // 16)
        for m in range(num_subspaces):
            at = base + (m // 2) * 32 + (m % 2) * 16 + lane
            packed[at] |= np.uint8(codes[v, m] << shift)


@parallel_kernel
def quantize_tables(tables, num_pairs, luts, bias, scale):
    """Per query the uint8 tables ``luts[q]`` (``num_pairs * 32`` bytes, sub-quantizer ``m``'s
    16 entries at ``(m // 2) * 32 + (m % 2) * 16``), ``bias[q]`` and ``scale[q]`` (the ``a`` of
    the module docstring) from the float32 ADC tables ``(Q, M, 16)``."""
    num_queries, num_subspaces, num_centroids = tables.shape
    for q in nb.prange(num_queries):
        table = tables[q]
        lows = np.empty(num_subspaces, dtype=np.float32)
        span = np.float32(0)
        total = np.float32(0)
        for m in range(num_subspaces):
            low = table[m, 0]
            high = table[m, 0]
            for c in range(1, num_centroids):
                low = min(low, table[m, c])
                high = max(high, table[m, c])
            lows[m] = low
            span = max(span, high - low)
            total += low
        # in float64: 255 / span overflows float32 where span < 7.5e-37 (entries of magnitude
        # 2**-64 and below), and the levels would collapse to {0, 255}
        a = 255.0 / np.float64(span) if span > 0 else 1.0
        bias[q] = total
        scale[q] = a
        luts[q, :] = 0
        for m in range(num_subspaces):
            at = (m // 2) * 32 + (m % 2) * 16
            for c in range(num_centroids):
                level = np.floor(np.float64(table[m, c] - lows[m]) * a + 0.5)
                luts[q, at + c] = np.uint8(min(level, 255.0))


@nb.njit(cache=True, nogil=True)
def block_simd(packed, start, lut, threshold, out):
    """A block's 32 sums by AVX2 byte shuffles; the mask of those below ``threshold``. (Not
    ``inline="always"``: see ``_scan_group_simd``.)"""
    return fastscan_block(packed, start, lut, threshold, out)


@nb.njit(cache=True, nogil=True)
def block_scalar(packed, start, lut, threshold, out):
    """``block_simd`` without vector instructions (CPUs without AVX2): pair by pair, each
    byte's two nibbles looked up and added to the sums of its two vectors."""
    for i in range(FASTSCAN_BLOCK):
        out[i] = 0
    for p in range(lut.shape[0] // 32):
        at = start + p * 32
        table = lut[p * 32:(p + 1) * 32]
        codes = packed[at:at + 32]
        for lane in range(16):
            first = codes[lane]
            second = codes[16 + lane]
            out[lane] += table[first & 15] + table[16 + (second & 15)]
            out[16 + lane] += table[first >> 4] + table[16 + (second >> 4)]
    mask = 0
    for i in range(FASTSCAN_BLOCK):
        if out[i] < threshold:
            mask |= 1 << i
    return mask


# queries per pass of scan_by_query: 3 with AVX2 (four spill its 16 registers), 4 with AVX-512
GROUP = 4 if has_avx512bw() else 3
_GROUP_KERNEL = fastscan_group4 if GROUP == 4 else fastscan_group3


@nb.njit(cache=True, nogil=True)
def group_simd(packed, start, luts, thresholds, out, masks):
    """``block_simd`` for the ``GROUP`` queries of ``luts`` at once: their sums into
    ``out[q]``, masks into ``masks[q]``; returns the union of the masks."""
    return _GROUP_KERNEL(packed, start, luts, thresholds, out, masks)


@nb.njit(cache=True, nogil=True)
def group_scalar(packed, start, luts, thresholds, out, masks):
    """``group_simd`` one query and one byte at a time."""
    union = 0
    for q in range(luts.shape[0]):
        masks[q] = block_scalar(packed, start, luts[q], thresholds[q], out[q])
        union |= masks[q]
    return union


@nb.njit(cache=True, nogil=True, inline="always")
def _offer_block(mask, b, n, sums, hd, hi, size, allowed, excluded):
    """Offer block ``b``'s items whose bit is set in ``mask`` (those that exist: the last
    block may be partial; those the filter allows: ``allowed[b]``'s bits where ``allowed`` is
    not empty, and not in this query's ``excluded``) with their ``sums`` to the heap; returns
    its new size. The mask only filters: each item is still compared with the heap's current
    root (items come in increasing order, so an equal sum loses to it: ties go to the lower
    item)."""
    base = b * FASTSCAN_BLOCK
    if base + FASTSCAN_BLOCK > n:
        mask &= (1 << (n - base)) - 1
    if allowed.shape[0] != 0:
        mask &= allowed[b]
    while mask:
        low = mask & -mask
        mask ^= low
        i = popcount64(np.uint64(low - 1))
        if excluded.shape[0] == 0 or not_excluded(excluded, base + i):
            size = offer(hd, hi, size, np.int32(sums[i]), base + i)
    return size


@nb.njit(cache=True, nogil=True)
def _scan_group(simd, packed, luts, n, hd, hi, sizes, out, allowed, excluded):
    """Every block for the ``GROUP`` queries of ``luts`` into their heaps ``hd[q]``,
    ``hi[q]`` (``sizes[q]`` entries), as ``_scan_blocks`` does for one: by ``group_simd``
    where ``simd`` (and the CPU has AVX2), else by ``group_scalar``."""
    if _AVX2 and simd:
        _scan_group_simd(packed, luts, n, hd, hi, sizes, out, allowed, excluded)
    else:
        _scan_group_scalar(packed, luts, n, hd, hi, sizes, out, allowed, excluded)


# One compiled loop per kernel: the loop is inlined (inline="always") into a function that
# names its kernel as a global. A function passed as a value would make every caller
# uncachable, and a branch between the kernels inside the loop made it 1.8x slower. The AVX2
# kernels themselves are called, not inlined at Numba's level: inlining them into the loop
# made the scan of 1M codes for 1000 queries 3-8% slower (all measured, interleaved).
@nb.njit(cache=True, nogil=True)
def _scan_group_simd(packed, luts, n, hd, hi, sizes, out, allowed, excluded):
    _group_loop(group_simd, packed, luts, n, hd, hi, sizes, out, allowed, excluded)


@nb.njit(cache=True, nogil=True)
def _scan_group_scalar(packed, luts, n, hd, hi, sizes, out, allowed, excluded):
    _group_loop(group_scalar, packed, luts, n, hd, hi, sizes, out, allowed, excluded)


@nb.njit(cache=True, nogil=True, inline="always")
def _group_loop(group, packed, luts, n, hd, hi, sizes, out, allowed, excluded):
    """``excluded``: one row per query of the group (``GROUP`` rows)."""
    count = luts.shape[0]
    stride = luts.shape[1]
    room = hd.shape[1]
    thresholds = np.empty(count, dtype=np.int64)
    masks = np.empty(count, dtype=np.int64)
    for q in range(count):
        thresholds[q] = _ALL if sizes[q] < room else hd[q, 0]
    for b in range((n + FASTSCAN_BLOCK - 1) // FASTSCAN_BLOCK):
        if group(packed, b * stride, luts, thresholds, out, masks) == 0:
            continue
        for q in range(count):
            # the views of query q's rows cost reference counting: only where it has items
            # below its threshold (1.3x the whole scan with 40 kept items when taken for all)
            if masks[q] == 0:
                continue
            sizes[q] = _offer_block(masks[q], b, n, out[q], hd[q], hi[q], sizes[q], allowed,
                                    excluded[q])
            if sizes[q] == room:
                thresholds[q] = hd[q, 0]


@nb.njit(cache=True, nogil=True)
def _scan_blocks(simd, packed, lut, n, first, stop, hd, hi, size, out, allowed, excluded):
    """Blocks ``first..stop-1`` of one query into the max-heap (hd, hi) of (sum, item) holding
    ``size`` entries (room for ``len(hd)``); returns the new size. Items come in increasing
    order and an equal sum loses to the heap's root, so ties go to the lower item. By
    ``block_simd`` where ``simd`` (and the CPU has AVX2), else by ``block_scalar``."""
    if _AVX2 and simd:
        return _scan_blocks_simd(packed, lut, n, first, stop, hd, hi, size, out, allowed,
                                 excluded)
    return _scan_blocks_scalar(packed, lut, n, first, stop, hd, hi, size, out, allowed,
                               excluded)


@nb.njit(cache=True, nogil=True)
def _scan_blocks_simd(packed, lut, n, first, stop, hd, hi, size, out, allowed, excluded):
    return _block_loop(block_simd, packed, lut, n, first, stop, hd, hi, size, out, allowed,
                       excluded)


@nb.njit(cache=True, nogil=True)
def _scan_blocks_scalar(packed, lut, n, first, stop, hd, hi, size, out, allowed, excluded):
    return _block_loop(block_scalar, packed, lut, n, first, stop, hd, hi, size, out, allowed,
                       excluded)


@nb.njit(cache=True, nogil=True, inline="always")
def _block_loop(block, packed, lut, n, first, stop, hd, hi, size, out, allowed, excluded):
    # one compiled loop per kernel, as _group_loop
    room = hd.shape[0]
    stride = lut.shape[0]
    threshold = _ALL if size < room else hd[0]
    for b in range(first, stop):
        mask = block(packed, b * stride, lut, threshold, out)
        size = _offer_block(mask, b, n, out, hd, hi, size, allowed, excluded)
        if size == room:
            threshold = hd[0]
    return size


@nb.njit(cache=True, nogil=True)
def _finish(table, codes, hd, hi, size, bias, scale, rerank, inner_product, out_dist,
            out_item, out_sum):
    """One query's results from its heap of the best (sum, item): with ``rerank``, the best
    ``len(out_dist)`` of them by (float ADC distance, item); else the first ``len(out_dist)``
    with their approximate distances and their sums (``out_sum``, written only then). Missing
    results are padded."""
    topk = out_dist.shape[0]
    sums = np.empty(size, dtype=np.int32)
    items = np.empty(size, dtype=np.int64)
    drain_sorted(hd, hi, size, sums, items)
    kept = min(size, topk)
    if rerank:
        rd = np.empty(topk, dtype=np.float32)
        ri = np.empty(topk, dtype=np.int64)
        count = 0
        for t in range(size):
            count = offer(rd, ri, count, _adc(table, codes[items[t]]), items[t])
        drain_sorted(rd, ri, kept, out_dist, out_item)
    else:
        for t in range(kept):
            out_dist[t] = np.float32(np.float64(bias) + np.float64(sums[t]) / scale)
            out_item[t] = items[t]
            out_sum[t] = sums[t]
        for t in range(kept, topk):
            out_sum[t] = MISSING_SUM
    for t in range(kept):
        if inner_product:
            out_dist[t] = -out_dist[t]
    for t in range(kept, topk):
        out_dist[t] = -_INF32 if inner_product else _INF32
        out_item[t] = -1


@parallel_kernel
def adc_of(tables, codes, items, inner_product, out):
    """``out[q, t]``: the ADC distance (``_adc``; inner products for ``inner_product``) of item
    ``items[q, t]`` for query ``q``; entries of missing items (-1) are left as they are."""
    for q in nb.prange(items.shape[0]):
        for t in range(items.shape[1]):
            if items[q, t] >= 0:
                dist = _adc(tables[q], codes[items[q, t]])
                out[q, t] = -dist if inner_product else dist


@parallel_kernel
def scan_by_query(simd, luts, bias, scale, packed, tables, codes, candidates, rerank,
                  inner_product, out_dist, out_item, out_sum, allowed, excluded):
    """The fast scan of every query, ``GROUP`` at a time in parallel: the best ``candidates``
    by uint16 sum, then ``_finish`` into ``out_*`` ``(Q, topk)``. The filter: ``allowed``
    (``qkernels._filter.block_bits`` of the mask, or empty) and ``excluded`` (one row per
    query)."""
    n = codes.shape[0]
    num_queries = luts.shape[0]
    for g in nb.prange((num_queries + GROUP - 1) // GROUP):
        first = g * GROUP
        count = min(GROUP, num_queries - first)
        # a last group of fewer queries scans its last one again (the kernel takes GROUP
        # tables)
        mine = np.empty((GROUP, luts.shape[1]), dtype=np.uint8)
        for q in range(GROUP):
            mine[q] = luts[first + min(q, count - 1)]
        rows = np.empty((GROUP, excluded.shape[1]), dtype=np.int64)
        for q in range(GROUP):
            rows[q] = excluded[first + min(q, count - 1)]
        hd = np.empty((GROUP, candidates), dtype=np.int32)
        hi = np.empty((GROUP, candidates), dtype=np.int64)
        sizes = np.zeros(GROUP, dtype=np.int64)
        out = np.empty((GROUP, FASTSCAN_BLOCK), dtype=np.uint16)
        _scan_group(simd, packed, mine, n, hd, hi, sizes, out, allowed, rows)
        for q in range(count):
            _finish(tables[first + q], codes, hd[q], hi[q], sizes[q], bias[first + q],
                    scale[first + q], rerank, inner_product, out_dist[first + q],
                    out_item[first + q], out_sum[first + q])


@parallel_kernel
def scan_by_database(simd, luts, bias, scale, packed, tables, codes, candidates, rerank,
                     num_chunks, inner_product, out_dist, out_item, out_sum, allowed,
                     excluded):
    """The same for few queries, in parallel over chunks of whole blocks
    (``_heap.by_database``), one query at a time."""
    n = codes.shape[0]
    by_database(_chunk, _chunk_out, (n + FASTSCAN_BLOCK - 1) // FASTSCAN_BLOCK,
                num_chunks, luts.shape[0], candidates, np.int32,
                (luts, bias, scale, packed, tables, codes, rerank, inner_product, out_dist,
                 out_item, out_sum, simd, allowed, excluded))


@nb.njit(cache=True, nogil=True)
def _chunk(args, first, stop, hd, hi, hs):
    """Blocks ``first..stop-1`` for every query."""
    luts, packed, n, simd = args[0], args[3], args[5].shape[0], args[11]
    allowed, excluded = args[12], args[13]
    out = np.empty(FASTSCAN_BLOCK, dtype=np.uint16)
    for q in range(luts.shape[0]):
        hs[q] = _scan_blocks(simd, packed, luts[q], n, first, stop, hd[q], hi[q], 0, out,
                             allowed, excluded[q])


@nb.njit(cache=True, nogil=True)
def _chunk_out(args, q, hd, hi, size):
    bias, scale, tables, codes, rerank, inner_product, out_dist, out_item, out_sum = (
        args[1], args[2], args[4], args[5], args[6], args[7], args[8], args[9], args[10])
    _finish(tables[q], codes, hd, hi, size, bias[q], scale[q], rerank, inner_product,
            out_dist[q], out_item[q], out_sum[q])
