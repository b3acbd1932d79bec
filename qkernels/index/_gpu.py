"""GPU twins of the Hamming scan and the table probe (qkernels/cuda/hamming.cu and
qkernels/cuda/table_probe.cu)."""

from __future__ import annotations

from .. import _gpu

HAMMING_MAX_BITS = 1024
HAMMING_MAX_TOPK = 1024
PROBE_MAX_TOPK = 64
_KEYS = 4096  # merge keys per block of the probe (32 KB of shared memory)


def word_columns(codes):
    """Packed uint8 codes (N, B) on the device -> (words, N) uint64, like the CPU layout."""
    import cupy

    n, nbytes = codes.shape
    padded = max(8, -(-nbytes // 8) * 8)
    buffer = cupy.zeros((n, padded), dtype=cupy.uint8)
    buffer[:, :nbytes] = codes
    return cupy.ascontiguousarray(buffer.view(cupy.uint64).T)


def hamming_topk(query_codes, db_columns, topk: int):
    """Exact top-K by Hamming distance; cupy in, cupy (int32 distances, int64 rows) out."""
    import cupy

    words, n = db_columns.shape
    queries = cupy.ascontiguousarray(word_columns(query_codes).T)
    num_queries = queries.shape[0]
    dist = cupy.empty((num_queries, topk), dtype=cupy.int32)
    items = cupy.empty((num_queries, topk), dtype=cupy.int64)
    sort_size = 1 << max(0, (min(topk, max(n, 1)) - 1).bit_length())
    threads = 1 << (_gpu.block_size().bit_length() - 1)
    _gpu.launch("hamming", "hamming_topk", num_queries, threads,
                (queries, db_columns, cupy.int64(n), cupy.int32(words), cupy.int32(topk),
                 cupy.int32(sort_size), dist, items))
    return dist, items


def probe(query_act, query_emb, k: int, topk: int, device_table, exclude, inner_product: bool):
    """The table probe on the device. ``device_table`` holds the table's arrays on the device
    (see SparseHashTable._device_arrays). Returns (distances, items, counts) cupy arrays."""
    import cupy

    num_queries, num_buckets = query_act.shape
    offsets, items_csr, codes, emb, rows, item_of_row = device_table
    dist = cupy.empty((num_queries, topk), dtype=cupy.float32)
    items = cupy.empty((num_queries, topk), dtype=cupy.int64)
    counts = cupy.empty(num_queries, dtype=cupy.int64)
    threads = 1 << (min(_gpu.block_size(), max(32, _KEYS // topk)).bit_length() - 1)
    sort_size = 1 << max(0, (threads * topk - 1).bit_length())
    used = cupy.empty((num_queries, num_buckets), dtype=cupy.uint8)
    probes = cupy.empty((num_queries, num_buckets), dtype=cupy.int32)
    _gpu.launch("table_probe", "probe", num_queries, threads,
                (query_act, query_emb, cupy.int32(num_buckets), cupy.int32(emb.shape[1]),
                 cupy.int32(k), cupy.int32(topk), cupy.int32(sort_size), offsets, items_csr,
                 codes, cupy.int32(codes.shape[1]), emb, rows, item_of_row, exclude,
                 cupy.int32(exclude.shape[1]), cupy.int32(inner_product), used, probes, dist,
                 items, counts),
                shared_mem=8 * sort_size)
    return dist, items, counts
