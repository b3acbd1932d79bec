"""GPU twin of the table probe (qkernels/cuda/table.cu; CPU: the passes of _table_cpu.py)."""

from __future__ import annotations

from .. import _gpu

MAX_TOPK = _gpu.LIMITS["table"]["MAX_LOCAL_TOPK"]  # larger topk runs on the CPU


def probe(query_act, query_emb, k: int, topk: int, device_table, exclude, inner_product: bool):
    """The table probe on the device. ``device_table`` holds the table's arrays on the device
    (see SparseHashTable._device_arrays). Returns (distances, items, counts) cupy arrays."""
    import cupy

    num_queries, num_buckets = query_act.shape
    offsets, items_csr, codes, emb, rows, item_of_row = device_table
    dist = cupy.empty((num_queries, topk), dtype=cupy.float32)
    items = cupy.empty((num_queries, topk), dtype=cupy.int64)
    counts = cupy.empty(num_queries, dtype=cupy.int64)
    threads = 1 << (min(_gpu.block_size(), max(32, _gpu.MERGE_KEYS // topk)).bit_length() - 1)
    sort_size = 1 << max(0, (threads * topk - 1).bit_length())
    used = cupy.empty((num_queries, num_buckets), dtype=cupy.uint8)
    probes = cupy.empty((num_queries, num_buckets), dtype=cupy.int32)
    _gpu.launch("table", "probe", num_queries, threads,
                (query_act, query_emb, cupy.int32(num_buckets), cupy.int32(emb.shape[1]),
                 cupy.int32(k), cupy.int32(topk), cupy.int32(sort_size), offsets, items_csr,
                 codes, cupy.int32(codes.shape[1]), emb, rows, item_of_row, exclude,
                 cupy.int32(exclude.shape[1]), cupy.int32(inner_product), used, probes, dist,
                 items, counts),
                shared_mem=8 * sort_size)
    return dist, items, counts
