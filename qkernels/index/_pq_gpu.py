"""GPU twins of the PQ distance tables and asymmetric scan (qkernels/cuda/pq.cu; CPU:
_pq_cpu.py)."""

from __future__ import annotations

from .. import _gpu

MAX_TOPK = _gpu.LIMITS["pq"]["MAX_LOCAL_TOPK"]  # the per-thread lists; larger topk: the CPU


def search(queries, codebooks, codes, topk: int, inner_product: bool):
    """``queries`` (Q, dim) float32, ``codebooks`` (M, K, dsub) float32, ``codes`` (N, M)
    uint8/uint16, cupy arrays on one device. Returns (distances, items) cupy arrays."""
    xp = _gpu.array_module(queries)  # numpy under the tests' emulation
    num_queries = queries.shape[0]
    m, k, dsub = codebooks.shape
    n = codes.shape[0]
    if n >= 2**32:
        raise ValueError("the GPU PQ scan handles fewer than 2**32 items")
    tables = xp.empty((num_queries, m, k), dtype=xp.float32)
    entries = num_queries * m * k
    threads = _gpu.block_size()
    _gpu.launch("pq", "distance_tables", (entries + threads - 1) // threads, threads,
                (queries, codebooks, xp.int32(num_queries), xp.int32(m), xp.int32(k),
                 xp.int32(dsub), xp.int32(inner_product), tables))
    threads = 1 << (min(_gpu.block_size(), max(32, _gpu.MERGE_KEYS // topk)).bit_length() - 1)
    sort_size = 1 << max(0, (threads * topk - 1).bit_length())
    table_bytes = -(-4 * m * k // 8) * 8
    dist = xp.empty((num_queries, topk), dtype=xp.float32)
    items = xp.empty((num_queries, topk), dtype=xp.int64)
    name = "scan_by_query_u8" if codes.dtype == xp.uint8 else "scan_by_query_u16"
    _gpu.launch("pq", name, num_queries, threads,
                (tables, codes, xp.int64(n), xp.int32(m), xp.int32(k), xp.int32(topk),
                 xp.int32(sort_size), xp.int32(inner_product), dist, items),
                shared_mem=table_bytes + 8 * sort_size)
    return dist, items
