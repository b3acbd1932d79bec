"""GPU twin of the Hamming scan (qkernels/cuda/hamming.cu; CPU: _hamming_cpu.py)."""

from __future__ import annotations

from .. import _gpu

MAX_BITS = _gpu.LIMITS["hamming"]["MAX_BITS"]  # longer codes run on the CPU
MAX_TOPK = _gpu.LIMITS["hamming"]["MAX_TOPK"]


def word_columns(codes):
    """Packed uint8 codes (N, B) on the device -> (words, N) uint64, like the CPU layout."""
    xp = _gpu.array_module(codes)  # numpy under the tests' emulation
    n, nbytes = codes.shape
    padded = max(8, -(-nbytes // 8) * 8)
    buffer = xp.zeros((n, padded), dtype=xp.uint8)
    buffer[:, :nbytes] = codes
    return xp.ascontiguousarray(buffer.view(xp.uint64).T)


def topk_by_query(query_codes, db_columns, topk: int):
    """Exact top-K by Hamming distance; cupy in, cupy (int32 distances, int64 rows) out."""
    xp = _gpu.array_module(query_codes)  # numpy under the tests' emulation
    words, n = db_columns.shape
    queries = xp.ascontiguousarray(word_columns(query_codes).T)
    num_queries = queries.shape[0]
    dist = xp.empty((num_queries, topk), dtype=xp.int32)
    items = xp.empty((num_queries, topk), dtype=xp.int64)
    sort_size = 1 << max(0, (min(topk, max(n, 1)) - 1).bit_length())
    threads = 1 << (_gpu.block_size().bit_length() - 1)
    _gpu.launch("hamming", "topk_by_query", num_queries, threads,
                (queries, db_columns, xp.int64(n), xp.int32(words), xp.int32(topk),
                 xp.int32(sort_size), dist, items))
    return dist, items
