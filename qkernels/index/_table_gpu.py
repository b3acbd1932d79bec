"""GPU twin of the table probe (qkernels/cuda/table.cu; CPU: the passes of _table_cpu.py)."""

from __future__ import annotations

from .. import _gpu

MAX_TOPK = _gpu.LIMITS["table"]["MAX_LOCAL_TOPK"]  # larger topk runs on the CPU


def probe(query_act, query_emb, k: int, topk: int, device_table, exclude, inner_product: bool):
    """The table probe on the device. ``device_table`` holds the table's arrays on the device
    (see SparseHashTable._device_arrays). Returns (distances, items, counts) cupy arrays."""
    xp = _gpu.array_module(query_act)  # numpy under the tests' emulation
    num_queries, num_buckets = query_act.shape
    offsets, items_csr, codes, emb, rows, item_of_row = device_table
    dist = xp.empty((num_queries, topk), dtype=xp.float32)
    items = xp.empty((num_queries, topk), dtype=xp.int64)
    counts = xp.empty(num_queries, dtype=xp.int64)
    threads = 1 << (min(_gpu.block_size(), max(32, _gpu.MERGE_KEYS // topk)).bit_length() - 1)
    sort_size = 1 << max(0, (threads * topk - 1).bit_length())
    used = xp.empty((num_queries, num_buckets), dtype=xp.uint8)
    probes = xp.empty((num_queries, num_buckets), dtype=xp.int32)
    _gpu.launch("table", "probe", num_queries, threads,
                (query_act, query_emb, xp.int32(num_buckets), xp.int32(emb.shape[1]),
                 xp.int32(k), xp.int32(topk), xp.int32(sort_size), offsets, items_csr,
                 codes, xp.int32(codes.shape[1]), emb, rows, item_of_row, exclude,
                 xp.int32(exclude.shape[1]), xp.int32(inner_product), used, probes, dist,
                 items, counts),
                shared_mem=8 * sort_size)
    return dist, items, counts
