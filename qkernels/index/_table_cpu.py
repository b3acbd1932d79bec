"""Numba kernels of SparseHashTable: top-k codes, CSR build by counting sort, and the probe.

Layout. Items are stored once, sorted by their codes (best bucket first), so the items of a
bucket that rank it first are one contiguous block of the embedding matrix, and those that rank
it lower come in runs; with k = 1 every bucket is a contiguous block, as in an inverted file.
The CSR (``offsets``, ``items``) lists, for each bucket, the positions of its items in ascending
order: ``N * k`` int32 ids in all.

Search, in passes over a block of queries: (1) ``plan_probes`` decides how many buckets each
query probes (its k best, more only while it has fewer than topk candidates), keeping the k
best; (2) ``fill_probes`` lists them (ranking the activations again only for a query that
probes more); (3) ``invert_probes`` turns that into, per bucket, the queries that probe it; (4)
``scan_buckets`` walks the probed buckets, reading each item's row once for all the queries that
probe its bucket (the rows are what costs: memory traffic, not arithmetic, bounds a probe), and
keeps per query and chunk of buckets its best K as a sorted row of (distance, row) keys; (5)
``merge_ranked`` merges the chunks' rows and writes distances and ids. Parallel over chunks of
buckets in (4), over queries elsewhere.

Distances. Squared L2 and inner products come from qkernels._simd: float32 in eight fixed
lanes, one SIMD register, in an order fixed by construction. Results are the same on every run,
thread count and CPU, and tests/reference.py repeats the arithmetic to check them bit for bit.
"""

from __future__ import annotations

import numba as nb
import numpy as np
from numba import types
from numba.extending import overload

from .._heap import SMALL_K, top_k_small
from .._parallel import parallel_kernel
from .._simd import (
    RANK_EMPTY,
    dot_f32_pair,
    insert_ranked,
    prefetch,
    rank_key,
    ranked_distance,
    sq_l2_f32_pair,
    widen_half,
)
from ._pq_cpu import _adc

# rows of the embedding matrix are prefetched this many candidates ahead
_AHEAD = 16

_INF32 = np.float32(np.inf)


@nb.njit(cache=True, nogil=True)
def _next_best(values, used, stamp):
    """Index of the largest ``values[r]`` with ``used[r] != stamp`` (lowest index on ties)."""
    best = -1
    for r in range(values.shape[0]):
        if used[r] != stamp and (best < 0 or values[r] > values[best]):
            best = r
    return best


@nb.njit(cache=True, nogil=True, inline="always")
def _best_k(values, out, wide, keys):
    """``out``: the ``len(out)`` largest ``values`` (at most ``len(values)``), best first,
    lowest index on ties; what ``len(out)`` calls of ``_next_best`` give. Up to ``SMALL_K``
    of them by ``top_k_small`` on the values widened into ``wide`` (float64 scratch of
    ``len(values)``; ``keys``: int64 scratch of that rounded up to a multiple of eight),
    beyond by an insertion in one pass."""
    k = out.shape[0]
    if k == 0:
        return
    if k <= SMALL_K:
        for r in range(values.shape[0]):
            wide[r] = values[r]
        top_k_small(wide.view(np.int64), k, out, keys)
        return
    for r in range(k):  # the first k, by insertion
        t = r
        while t > 0 and values[r] > values[out[t - 1]]:
            out[t] = out[t - 1]
            t -= 1
        out[t] = r
    worst = values[out[k - 1]]
    for r in range(k, values.shape[0]):
        v = values[r]
        if v > worst:  # an equal value keeps the lower index ahead of it
            t = k - 1
            while t > 0 and v > values[out[t - 1]]:
                out[t] = out[t - 1]
                t -= 1
            out[t] = r
            worst = values[out[k - 1]]


@parallel_kernel
def topk_rows(values, k, out):
    """``out[i]``: the ``k`` largest entries of row ``i``, best first (lowest index on ties).
    In 64 chunks of rows, each with its own scratch."""
    rows, d = values.shape
    num_chunks = min(rows, 64)
    step = (rows + num_chunks - 1) // num_chunks if rows else 1
    for c in nb.prange(num_chunks):
        wide = np.empty(d)
        keys = np.empty((d + 7) // 8 * 8, dtype=np.int64)
        for i in range(c * step, min(rows, (c + 1) * step)):
            _best_k(values[i], out[i, :k], wide, keys)


@parallel_kernel
def gather_rows(source, order, out):
    """``out[i] = source[order[i]]`` for 2-d arrays, in parallel. ``out`` comes from numpy,
    whose large allocations ask the kernel for huge pages: far fewer page faults than an
    allocation inside Numba when 256 MB of rows are written for the first time."""
    for i in nb.prange(order.shape[0]):
        out[i] = source[order[i]]


@parallel_kernel
def counting_sort(codes, num_buckets, num_chunks):
    """CSR of ``codes`` (N, k): ``offsets`` (num_buckets + 1) and ``items`` (N * k) int32, the
    items of bucket r being ``items[offsets[r]:offsets[r + 1]]`` in ascending order.

    Parallel over ``num_chunks`` ranges of items: each chunk counts its own buckets, a prefix
    sum over (bucket, chunk) gives every chunk its own write positions, then each chunk fills
    them. No two threads write the same slot, and the result is the stable order.
    """
    n, k = codes.shape
    step = (n + num_chunks - 1) // num_chunks if n else 1
    counts = np.zeros((num_chunks, num_buckets), dtype=np.int64)
    for c in nb.prange(num_chunks):
        for i in range(c * step, min(n, (c + 1) * step)):
            for t in range(k):
                counts[c, codes[i, t]] += 1
    offsets = np.zeros(num_buckets + 1, dtype=np.int64)
    starts = np.empty((num_chunks, num_buckets), dtype=np.int64)
    position = 0
    for r in range(num_buckets):
        offsets[r] = position
        for c in range(num_chunks):
            starts[c, r] = position
            position += counts[c, r]
    offsets[num_buckets] = position
    items = np.empty(position, dtype=np.int32)
    for c in nb.prange(num_chunks):
        cursor = starts[c].copy()
        for i in range(c * step, min(n, (c + 1) * step)):
            for t in range(k):
                r = codes[i, t]
                items[cursor[r]] = i
                cursor[r] += 1
    return offsets, items


@parallel_kernel
def plan_probes(query_act, k, topk, max_probes, offsets, items, codes, exclude, mask, num_chunks,
                probe_count, candidates, first):
    """Pass 1: how many buckets each query probes, and its ``k`` best into ``first[q]``, best
    first (left as they are for a skipped query).

    A query probes its ``k`` best buckets and, while it has fewer than ``topk`` candidates, its
    next-ranked ones, never more than ``max_probes[q]`` (0: the query is skipped). Candidates
    are the distinct items of the probed buckets minus the query's excluded items
    (``exclude[q]``: table positions, -1 for none) and, where ``mask`` is not empty, minus the
    items it refuses (``qkernels._filter``). When the largest of the ``k`` buckets
    alone, less the excluded items, reaches ``topk`` no more are needed and nothing is counted
    (``candidates[q]`` is then -1); otherwise the union is counted exactly, into
    ``candidates[q]``, with one bit per item for the duplicates (kept per chunk of queries,
    cleared after each query by walking the probed buckets again). A search takes its candidate
    counts from the scan; a sharded search (qkernels.distributed) calls this with a huge
    ``topk`` to count the candidates of the first ``max_probes[q]`` buckets on each shard.
    """
    num_queries, num_buckets = query_act.shape
    n = codes.shape[0]
    dedupe = k > 1  # with one bucket per item no item comes up twice
    masked = mask.shape[0] != 0
    step = (num_queries + num_chunks - 1) // num_chunks if num_queries else 1
    for c in nb.prange(num_chunks):
        seen = np.zeros((n + 7) // 8 if dedupe else 1, dtype=np.uint8)
        used = np.zeros(num_buckets, dtype=np.int32)
        probed_list = np.empty(num_buckets, dtype=np.int64)
        wide = np.empty(num_buckets)
        keys = np.empty((num_buckets + 7) // 8 * 8, dtype=np.int64)
        for q in range(c * step, min(num_queries, (c + 1) * step)):
            cap = min(max_probes[q], num_buckets)
            if cap == 0:
                probe_count[q] = 0
                candidates[q] = 0
                continue
            _best_k(query_act[q], first[q], wide, keys)
            largest = 0
            for t in range(k):
                r = first[q, t]
                largest = max(largest, offsets[r + 1] - offsets[r])
            num_excluded = 0
            for e in range(exclude.shape[1]):
                num_excluded += exclude[q, e] >= 0
            probe_count[q] = k
            candidates[q] = -1
            if not masked and largest - num_excluded >= topk:
                continue
            stamp = q - c * step + 1  # count exactly, from the first bucket again
            count = 0
            probed = 0
            while probed < cap and (probed < k or count < topk):
                r = _next_best(query_act[q], used, stamp)
                used[r] = stamp
                probed_list[probed] = r
                probed += 1
                if dedupe:
                    for p in range(offsets[r], offsets[r + 1]):
                        item = items[p]
                        bit = np.uint8(1) << np.uint8(item & 7)
                        if not seen[item >> 3] & bit:
                            seen[item >> 3] |= bit
                            if not masked or mask[item]:
                                count += 1
                elif masked:
                    for p in range(offsets[r], offsets[r + 1]):
                        count += mask[items[p]] != 0
                else:
                    count += offsets[r + 1] - offsets[r]
                for e in range(exclude.shape[1]):  # an excluded item entering the union
                    item = exclude[q, e]
                    if item < 0:
                        continue
                    in_r = False
                    earlier = False
                    for t in range(k):
                        code = codes[item, t]
                        if code == r:
                            in_r = True
                        elif used[code] == stamp:
                            earlier = True
                    if in_r and not earlier and (not masked or mask[item]):
                        count -= 1
            if dedupe:
                for t in range(probed):
                    r = probed_list[t]
                    for p in range(offsets[r], offsets[r + 1]):
                        seen[items[p] >> 3] = 0
            probe_count[q] = probed
            candidates[q] = count


@parallel_kernel
def fill_probes(query_act, probe_offsets, first, probe_list):
    """Pass 2: the probed buckets of each query, best first, into ``probe_list`` (CSR). The
    first ``k`` of each come from ``first`` (the ``(Q, k)`` buckets that ``plan_probes`` chose;
    empty when it did not run), and only a query that probes more ranks its activations
    again."""
    num_queries, num_buckets = query_act.shape
    known = first.shape[1] if first.shape[0] != 0 else 0
    for q in nb.prange(num_queries):
        start, end = probe_offsets[q], probe_offsets[q + 1]
        copied = min(known, end - start)
        for t in range(copied):
            probe_list[start + t] = first[q, t]
        if start + copied == end:
            continue
        used = np.zeros(num_buckets, dtype=np.int8)
        for t in range(copied):
            used[first[q, t]] = 1
        for t in range(start + copied, end):
            r = _next_best(query_act[q], used, 1)
            used[r] = 1
            probe_list[t] = r


@nb.njit(cache=True, nogil=True)
def invert_probes(probe_offsets, probe_list, num_buckets):
    """Pass 3: per bucket, the (query, probe position) pairs that probe it, by query then
    position."""
    num_queries = probe_offsets.shape[0] - 1
    total = probe_list.shape[0]
    bucket_offsets = np.zeros(num_buckets + 1, dtype=np.int64)
    for t in range(total):
        bucket_offsets[probe_list[t] + 1] += 1
    for r in range(num_buckets):
        bucket_offsets[r + 1] += bucket_offsets[r]
    cursor = bucket_offsets[:-1].copy()
    who = np.empty(total, dtype=np.int64)
    where = np.empty(total, dtype=np.int64)
    for q in range(num_queries):
        for t in range(probe_offsets[q], probe_offsets[q + 1]):
            r = probe_list[t]
            who[cursor[r]] = q
            where[cursor[r]] = t - probe_offsets[q]
            cursor[r] += 1
    return bucket_offsets, who, where


@parallel_kernel
def scan_buckets(query_emb, tables, k, chunk_starts, offsets, items, codes, emb, rows, ids,
                 exclude, mask, probe_offsets, probe_list, bucket_offsets, who, where,
                 inner_product, topk, ranked_keys, ranked_ids, found):
    """Pass 4, bucket by bucket: every item's row is read once for all the queries that probe
    the bucket, and its distance to each of them goes into that query's top-K row.

    Chunk ``c`` handles buckets ``chunk_starts[c]`` to ``chunk_starts[c + 1] - 1`` and owns
    ``ranked_keys[c]`` and ``ranked_ids[c]``: per query its best ``topk`` candidates so far as
    ``rank_key(distance, row)`` sorted ascending, and their ids, ``ids[item]``, or their
    positions where ``ids`` is empty (a row's length is ``topk`` rounded up to a multiple of
    eight; only the rows of queries that probe a bucket of the chunk are written). The table
    gives ``ids`` for k = 1, where a bucket's items are consecutive: their ids are read beside
    their rows (prefetched with them), where the merge, after the scan had streamed the rows
    through the caches, missed on every look-up (half of its time). For k > 1 the items of a
    bucket's lower-ranked codes are scattered, and reading their ids at each insertion cost more
    (1.05-1.09x slower at N = 1M) than the merge's look-ups. ``found[c, q]`` counts the
    candidates of query ``q`` it looked at (zero: the chunk holds nothing for it). The queries
    of a bucket are taken 64 at a time, as bits of a word: before the items are read,
    ``earlier[b]`` gets the bits of the queries that probed bucket ``b`` before this one, and
    the excluded items get the bits of the queries excluding them. An item then skips, with one
    OR per bucket of its code, the queries that met it in an earlier bucket (so each (query,
    item) pair is looked at once overall) and those excluding it. Items that ``mask`` refuses
    (where it is not empty) are no candidates of any query. Items are read two at a time: a
    query's distances to both are computed in one pass (two chains of dependent additions side
    by side, each sum the same to the bit) and offered in item order. A candidate below the
    row's ``topk``-th key is inserted in order (``insert_ranked``: eight keys a step, no
    branch); the others are turned away by that one comparison.

    ``emb`` holds the stored re-ranking rows: float32 embeddings, float16 ones as their bit
    patterns viewed as int16, or PQ codes (uint8 or uint16) with ``tables`` the queries' ``(Q,
    M, K)`` distance tables (``stored_row``, ``rerank_pair``).
    """
    num_chunks = chunk_starts.shape[0] - 1
    num_buckets = offsets.shape[0] - 1
    m = exclude.shape[1]
    for c in nb.prange(num_chunks):
        hk = ranked_keys[c]
        hi = ranked_ids[c]
        for u in range(bucket_offsets[chunk_starts[c]], bucket_offsets[chunk_starts[c + 1]]):
            hk[who[u]] = RANK_EMPTY  # the rows of the chunk's queries start empty
        earlier = np.zeros(num_buckets, dtype=np.uint64)
        excluded_items = np.empty(64 * max(m, 1), dtype=np.int64)
        excluded_bits = np.empty(64 * max(m, 1), dtype=np.uint64)
        buffer_a = np.empty(emb.shape[1], dtype=np.float32)  # float16 rows, widened
        buffer_b = np.empty(emb.shape[1], dtype=np.float32)
        for r in range(chunk_starts[c], chunk_starts[c + 1]):
            end = offsets[r + 1]
            for g0 in range(bucket_offsets[r], bucket_offsets[r + 1], 64):
                g1 = min(g0 + 64, bucket_offsets[r + 1])
                everyone = np.uint64(0xFFFFFFFFFFFFFFFF) >> np.uint64(64 - (g1 - g0))
                num_excluded = 0
                for u in range(g0, g1):
                    bit = np.uint64(1) << np.uint64(u - g0)
                    # the query's row and ranked rows, read first by the item loop below
                    prefetch(query_emb[who[u]])
                    prefetch(hk[who[u]])
                    prefetch(hi[who[u]])
                    base = probe_offsets[who[u]]
                    for v in range(where[u]):
                        earlier[probe_list[base + v]] |= bit
                    for e in range(m):
                        if exclude[who[u], e] >= 0:
                            excluded_items[num_excluded] = exclude[who[u], e]
                            excluded_bits[num_excluded] = bit
                            num_excluded += 1
                # the bucket's first rows, which the loop's prefetches (ahead of the item
                # read) never ask for
                for p in range(offsets[r], min(end, offsets[r] + _AHEAD)):
                    prefetch(emb[items[p]])
                    if k > 1:
                        prefetch(codes[items[p]])
                # two items at a time: their distances to a query are two chains of
                # dependent additions side by side (offered in item order, as one by one)
                for p in range(offsets[r], end, 2):
                    if p + _AHEAD + 1 < end:
                        ahead_a = items[p + _AHEAD]
                        ahead_b = items[p + _AHEAD + 1]
                        prefetch(emb[ahead_a])
                        prefetch(emb[ahead_b])
                        if ids.shape[0] != 0:
                            prefetch(ids[ahead_a:ahead_a + 1])
                        if k > 1:
                            prefetch(codes[ahead_a])
                            prefetch(codes[ahead_b])
                    item_a = items[p]
                    live_a = _live(item_a, everyone, mask, k, codes, earlier, excluded_items,
                                   excluded_bits, num_excluded)
                    item_b = item_a
                    live_b = np.uint64(0)
                    if p + 1 < end:
                        item_b = items[p + 1]
                        live_b = _live(item_b, everyone, mask, k, codes, earlier,
                                       excluded_items, excluded_bits, num_excluded)
                    if (live_a | live_b) == 0:
                        continue
                    row_a = stored_row(emb, item_a, buffer_a)
                    row_b = stored_row(emb, item_b, buffer_b)
                    for u in range(g0, g1):
                        a_on = (live_a >> np.uint64(u - g0)) & np.uint64(1) != 0
                        b_on = (live_b >> np.uint64(u - g0)) & np.uint64(1) != 0
                        if not (a_on or b_on):
                            continue
                        q = who[u]
                        # one call site (the distance code is inlined once): where only one
                        # item is a candidate, both rows are its row and one sum is unused
                        dist_a, dist_b = rerank_pair(query_emb[q], tables, q,
                                                     row_a if a_on else row_b,
                                                     row_b if b_on else row_a, inner_product)
                        # ranked by (distance, row); most candidates are not below the
                        # query's topk-th key
                        if a_on:
                            found[c, q] += 1
                            key = rank_key(dist_a, rows[item_a])
                            if key < hk[q, topk - 1]:
                                insert_ranked(hk[q], hi[q], key, _id_of(ids, item_a))
                        if b_on:
                            found[c, q] += 1
                            key = rank_key(dist_b, rows[item_b])
                            if key < hk[q, topk - 1]:
                                insert_ranked(hk[q], hi[q], key, _id_of(ids, item_b))
                for u in range(g0, g1):  # clear the marks of this group
                    base = probe_offsets[who[u]]
                    for v in range(where[u]):
                        earlier[probe_list[base + v]] = 0


@nb.njit(cache=True, nogil=True, inline="always")
def _id_of(ids, item):
    """``ids[item]``, or ``item`` itself where ``ids`` is empty."""
    if ids.shape[0] != 0:
        return ids[item]
    return np.int64(item)


@nb.njit(cache=True, nogil=True, inline="always")
def _live(item, everyone, mask, k, codes, earlier, excluded_items, excluded_bits, num_excluded):
    """The bits of the group's queries (``everyone``) for which ``item`` is a candidate: none
    if ``mask`` refuses it, less those that met it in an earlier bucket and those excluding
    it. Reads only (inlined: no reference counting)."""
    if mask.shape[0] != 0 and mask[item] == 0:
        return np.uint64(0)
    skip = np.uint64(0)
    if k > 1:
        for t in range(k):
            skip |= earlier[codes[item, t]]
    for e in range(num_excluded):
        if excluded_items[e] == item:
            skip |= excluded_bits[e]
    return everyone & ~skip


def stored_row(vectors, item, buffer):
    """Item ``item``'s stored re-ranking row as the distance reads it: a float32 row as it is;
    float16 embeddings (their bit patterns viewed as int16, Numba having no float16 arrays)
    widened into ``buffer``, exactly (``_simd.widen_half``); a row of PQ codes (uint8, or
    uint16 above 8 bits) as it is. Chosen by the types when Numba compiles the caller: the
    float16 bits are int16 so that no PQ code type can be taken for them."""
    return vectors[item]


@overload(stored_row, inline="always")
def _stored_row(vectors, item, buffer):
    if vectors.dtype == types.int16:
        def widened(vectors, item, buffer):
            widen_half(vectors[item], buffer)
            return buffer
        return widened
    return lambda vectors, item, buffer: vectors[item]


def rerank_pair(query, tables, q, row_a, row_b, inner_product):
    """The re-ranking distances of two stored rows to query ``q`` (smaller is better): float
    rows by ``qkernels._simd`` (squared L2, or minus the inner product) to ``query``, the two
    sums side by side in one pass (``sq_l2_f32_pair``, ``dot_f32_pair``: each the same to the
    bit as one row alone); PQ codes by asymmetric distance, the sum of ``tables[q]``'s entries
    in subspace order (minus the inner products where the tables hold them), one after the
    other."""
    return sq_l2_f32_pair(query, row_a, row_b)


@overload(rerank_pair, inline="always")
def _rerank_pair(query, tables, q, row_a, row_b, inner_product):
    if isinstance(row_a.dtype, types.Integer):  # PQ codes; tables (Q, M, K)
        return lambda query, tables, q, row_a, row_b, inner_product: (_adc(tables[q], row_a),
                                                                      _adc(tables[q], row_b))

    def lanes(query, tables, q, row_a, row_b, inner_product):
        if inner_product:
            dot_a, dot_b = dot_f32_pair(query, row_a, row_b)
            return -dot_a, -dot_b
        return sq_l2_f32_pair(query, row_a, row_b)
    return lanes


@parallel_kernel
def merge_ranked(ranked_keys, ranked_ids, topk, found, inner_product, ids, num_groups,
                 out_dist, out_id):
    """Pass 5: each query's best ``topk`` over the chunks' ranked rows (those with
    ``found[c, q] > 0``): the first such row, then the others' entries inserted while they are
    below its ``topk``-th key; written as distances (inner products for ``inner_product``; a
    zero as +0.0) and ids (-1 and the worst distance where missing): ``ids[entry]`` where the
    scan kept positions (``ids`` not empty), else the entries themselves. Parallel
    over ``num_groups`` groups of queries."""
    num_chunks, num_queries, width = ranked_keys.shape
    step = (num_queries + num_groups - 1) // num_groups if num_queries else 1
    for g in nb.prange(num_groups):
        merged_keys = np.empty(width, dtype=np.uint64)
        merged_ids = np.empty(width, dtype=np.int64)
        for q in range(g * step, min(num_queries, (g + 1) * step)):
            merged_keys[:] = RANK_EMPTY
            for c in range(num_chunks):
                if found[c, q] == 0:
                    continue
                if merged_keys[0] == RANK_EMPTY:  # the first chunk with candidates: as it is
                    merged_keys[:] = ranked_keys[c, q]
                    merged_ids[:] = ranked_ids[c, q]
                    continue
                for i in range(topk):
                    key = ranked_keys[c, q, i]
                    if key >= merged_keys[topk - 1]:  # the rest of the row is no better
                        break
                    insert_ranked(merged_keys, merged_ids, key, ranked_ids[c, q, i])
            for i in range(topk):
                key = merged_keys[i]
                if key == RANK_EMPTY:
                    out_dist[q, i] = -_INF32 if inner_product else _INF32
                    out_id[q, i] = -1
                else:
                    dist = ranked_distance(key)
                    out_dist[q, i] = -dist + np.float32(0.0) if inner_product else dist
                    out_id[q, i] = _id_of(ids, merged_ids[i])
