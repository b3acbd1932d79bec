"""GPU twin of the Hamming scan (qkernels/cuda/hamming.cu; CPU: _hamming_cpu.py)."""

from __future__ import annotations

from .. import _gpu

MAX_BITS = _gpu.LIMITS["hamming"]["MAX_BITS"]  # longer codes run on the CPU
MAX_TOPK = _gpu.LIMITS["hamming"]["MAX_TOPK"]


def word_columns(codes):
    """Packed uint8 codes (N, B) on the device -> (words, N) uint64, like the CPU layout."""
    import cupy

    n, nbytes = codes.shape
    padded = max(8, -(-nbytes // 8) * 8)
    buffer = cupy.zeros((n, padded), dtype=cupy.uint8)
    buffer[:, :nbytes] = codes
    return cupy.ascontiguousarray(buffer.view(cupy.uint64).T)


def topk_by_query(query_codes, db_columns, topk: int):
    """Exact top-K by Hamming distance; cupy in, cupy (int32 distances, int64 rows) out."""
    import cupy

    words, n = db_columns.shape
    queries = cupy.ascontiguousarray(word_columns(query_codes).T)
    num_queries = queries.shape[0]
    dist = cupy.empty((num_queries, topk), dtype=cupy.int32)
    items = cupy.empty((num_queries, topk), dtype=cupy.int64)
    sort_size = 1 << max(0, (min(topk, max(n, 1)) - 1).bit_length())
    threads = 1 << (_gpu.block_size().bit_length() - 1)
    _gpu.launch("hamming", "topk_by_query", num_queries, threads,
                (queries, db_columns, cupy.int64(n), cupy.int32(words), cupy.int32(topk),
                 cupy.int32(sort_size), dist, items))
    return dist, items
