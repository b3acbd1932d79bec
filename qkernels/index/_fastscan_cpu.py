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
The scan keeps the best ``R`` items by (uint16 sum, item); with ``rerank`` these are ranked
again by their float ADC distance (``_pq_cpu``'s sum in subspace order) and the best ``topk``
returned; without, the best ``topk`` with their approximate distances. tests/reference.py
repeats all of it with plain loops.

Each block's sums are made by ``block``, a kernel argument: ``block_simd`` (AVX2) or
``block_scalar`` (the same arithmetic, one byte at a time) where the CPU has no AVX2.
"""

from __future__ import annotations

import numba as nb
import numpy as np

from .._heap import drain_sorted, merge_chunks, push, sift_down
from .._parallel import parallel_kernel
from .._simd import FASTSCAN_BLOCK, fastscan_block, popcount64
from ._pq_cpu import _adc

_INF32 = np.float32(np.inf)
_ALL = 65535  # a threshold every uint16 sum of at most 257 uint8 entries is below
MISSING_SUM = np.int32(2**31 - 1)  # the sum written where a result is missing


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
        span = np.float32(0)
        total = np.float32(0)
        for m in range(num_subspaces):
            low = table[m, 0]
            high = table[m, 0]
            for c in range(1, num_centroids):
                low = min(low, table[m, c])
                high = max(high, table[m, c])
            span = max(span, high - low)
            total += low
        a = np.float32(255) / span if span > 0 else np.float32(1)
        bias[q] = total
        scale[q] = a
        luts[q, :] = 0
        for m in range(num_subspaces):
            low = table[m, 0]
            for c in range(1, num_centroids):
                low = min(low, table[m, c])
            at = (m // 2) * 32 + (m % 2) * 16
            for c in range(num_centroids):
                level = np.floor((table[m, c] - low) * a + np.float32(0.5))
                luts[q, at + c] = np.uint8(min(level, np.float32(255)))


@nb.njit(cache=True, nogil=True, inline="always")
def block_simd(packed, start, lut, threshold, out):
    """A block's 32 sums by AVX2 byte shuffles; the mask of those below ``threshold``."""
    return fastscan_block(packed, start, lut, threshold, out)


@nb.njit(cache=True, nogil=True)
def block_scalar(packed, start, lut, threshold, out):
    """``block_simd`` one byte at a time (CPUs without AVX2)."""
    num_pairs = lut.shape[0] // 32
    mask = 0
    for i in range(FASTSCAN_BLOCK):
        lane = i % 16
        shift = 4 * (i // 16)
        total = 0
        for p in range(num_pairs):
            at = start + p * 32 + lane
            total += lut[p * 32 + ((packed[at] >> shift) & 15)]
            total += lut[p * 32 + 16 + ((packed[at + 16] >> shift) & 15)]
        out[i] = total
        if total < threshold:
            mask |= 1 << i
    return mask


@nb.njit(cache=True, nogil=True)
def _scan_blocks(block, packed, lut, n, first, stop, hd, hi, size, out):
    """Blocks ``first..stop-1`` of one query into the max-heap (hd, hi) of (sum, item) holding
    ``size`` entries (room for ``len(hd)``); returns the new size. Items come in increasing
    order and an equal sum loses to the heap's root, so ties go to the lower item."""
    room = hd.shape[0]
    stride = lut.shape[0]
    threshold = _ALL if size < room else hd[0]
    for b in range(first, stop):
        mask = block(packed, b * stride, lut, threshold, out)
        base = b * FASTSCAN_BLOCK
        if base + FASTSCAN_BLOCK > n:  # the last block: only the vectors that exist
            mask &= (1 << (n - base)) - 1
        while mask:
            low = mask & -mask
            mask ^= low
            i = popcount64(np.uint64(low - 1))
            total = np.int32(out[i])
            if size < room:
                push(hd, hi, size, total, base + i)
                size += 1
                if size == room:
                    threshold = hd[0]
            elif total < hd[0]:
                sift_down(hd, hi, size, total, base + i)
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
            dist = _adc(table, codes[items[t]])
            if count < topk:
                push(rd, ri, count, dist, items[t])
                count += 1
            elif dist < rd[0] or (dist == rd[0] and items[t] < ri[0]):
                sift_down(rd, ri, count, dist, items[t])
        drain_sorted(rd, ri, kept, out_dist, out_item)
    else:
        for t in range(kept):
            out_dist[t] = bias + np.float32(sums[t]) / scale
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
def scan_by_query(block, luts, bias, scale, packed, tables, codes, candidates, rerank,
                  inner_product, out_dist, out_item, out_sum):
    """The fast scan of every query, in parallel over queries: the best ``candidates`` by
    uint16 sum, then ``_finish`` into ``out_*`` ``(Q, topk)``."""
    n = codes.shape[0]
    blocks = (n + FASTSCAN_BLOCK - 1) // FASTSCAN_BLOCK
    for q in nb.prange(luts.shape[0]):
        hd = np.empty(candidates, dtype=np.int32)
        hi = np.empty(candidates, dtype=np.int64)
        out = np.empty(FASTSCAN_BLOCK, dtype=np.uint16)
        size = _scan_blocks(block, packed, luts[q], n, 0, blocks, hd, hi, 0, out)
        _finish(tables[q], codes, hd, hi, size, bias[q], scale[q], rerank, inner_product,
                out_dist[q], out_item[q], out_sum[q])


@parallel_kernel
def scan_by_database(block, luts, bias, scale, packed, tables, codes, candidates, rerank,
                     num_chunks, inner_product, out_dist, out_item, out_sum):
    """The same for few queries, in parallel over chunks of whole blocks; each chunk keeps its
    own heaps, merged at the end."""
    num_queries = luts.shape[0]
    n = codes.shape[0]
    blocks = (n + FASTSCAN_BLOCK - 1) // FASTSCAN_BLOCK
    num_chunks = min(num_chunks, blocks)
    step = (blocks + num_chunks - 1) // num_chunks
    hd = np.empty((num_queries, num_chunks, candidates), dtype=np.int32)
    hi = np.empty((num_queries, num_chunks, candidates), dtype=np.int64)
    sizes = np.zeros((num_queries, num_chunks), dtype=np.int64)
    for c in nb.prange(num_chunks):
        out = np.empty(FASTSCAN_BLOCK, dtype=np.uint16)
        for q in range(num_queries):
            sizes[q, c] = _scan_blocks(block, packed, luts[q], n, c * step,
                                       min(blocks, (c + 1) * step), hd[q, c], hi[q, c], 0, out)
    merged_d = np.empty(candidates, dtype=np.int32)
    merged_i = np.empty(candidates, dtype=np.int64)
    for q in range(num_queries):
        size = merge_chunks(hd[q], hi[q], sizes[q], merged_d, merged_i)
        _finish(tables[q], codes, merged_d, merged_i, size, bias[q], scale[q], rerank,
                inner_product, out_dist[q], out_item[q], out_sum[q])
