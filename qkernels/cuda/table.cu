// SparseHashTable probe on the GPU: the twin of qkernels/index/_table_cpu.py's search.
//
// One block per query. The block picks the query's next-best bucket (a block-wide argmax of
// its activations over the buckets not yet probed; the lower bucket wins ties), walks that
// bucket's items in parallel, and repeats while it has probed fewer than k buckets or has
// fewer than topk candidates. An item met in several probed buckets counts only in the first
// of them that the query probed (its other codes are checked against the probe list), so no
// per-item marks are needed; excluded items are skipped and not counted. Each thread keeps its
// best topk keys (sortable distance bits << 32 | insertion row); the block bitonic-sorts them,
// so results are ordered by (distance, row) as on the CPU. Distances use eight fixed lanes
// and rounding intrinsics, bit for bit the CPU's float32 (qkernels/_simd.py).
//
// Per-query scratch in global memory: used[num_buckets] (0/1) and probes[num_buckets].

#include "common.cuh"

#ifndef MAX_LOCAL_TOPK
#error "MAX_LOCAL_TOPK comes from qkernels/_gpu.py LIMITS[\"table\"] (-DMAX_LOCAL_TOPK=...)"
#endif

extern "C" __global__ void probe(const float* __restrict__ query_act,
                                 const float* __restrict__ query_emb, int num_buckets, int dim,
                                 int k, int topk, int sort_size,
                                 const long long* __restrict__ offsets,
                                 const int* __restrict__ items,
                                 const long long* __restrict__ codes, int code_width,
                                 const float* __restrict__ emb,
                                 const long long* __restrict__ rows,
                                 const long long* __restrict__ item_of_row,
                                 const long long* __restrict__ exclude, int num_exclude,
                                 int inner_product, unsigned char* __restrict__ used_scratch,
                                 int* __restrict__ probes_scratch,
                                 float* __restrict__ out_dist, long long* __restrict__ out_item,
                                 long long* __restrict__ out_count) {
    QK_DYNAMIC_SHARED(shared);
    unsigned long long* keys = reinterpret_cast<unsigned long long*>(shared);
    __shared__ float best_value[1024];
    __shared__ int best_bucket[1024];
    __shared__ int probed;
    __shared__ unsigned long long count;

    const int q = blockIdx.x;
    const int t = threadIdx.x;
    const int threads = blockDim.x;
    const float* act = query_act + (long long)q * num_buckets;
    const float* query = query_emb + (long long)q * dim;
    const long long* excluded = exclude + (long long)q * num_exclude;
    unsigned char* used = used_scratch + (long long)q * num_buckets;
    int* probes = probes_scratch + (long long)q * num_buckets;

    for (int r = t; r < num_buckets; r += threads) used[r] = 0;
    if (t == 0) {
        probed = 0;
        count = 0;
    }
    unsigned long long best[MAX_LOCAL_TOPK];
    for (int s = 0; s < topk; ++s) best[s] = ~0ULL;
    __syncthreads();

    while (probed < num_buckets && (probed < k || count < (unsigned long long)topk)) {
        // the next-best bucket: argmax over buckets not probed, lower index on ties
        float value = -__int_as_float(0x7f800000);
        int bucket = num_buckets;
        for (int r = t; r < num_buckets; r += threads) {
            if (!used[r] && (bucket == num_buckets || act[r] > value)) {
                value = act[r];
                bucket = r;
            }
        }
        best_value[t] = value;
        best_bucket[t] = bucket;
        __syncthreads();
        for (int half = threads / 2; half > 0; half >>= 1) {
            if (t < half) {
                int other = best_bucket[t + half];
                if (other < num_buckets && (best_bucket[t] == num_buckets ||
                                            best_value[t + half] > best_value[t] ||
                                            (best_value[t + half] == best_value[t] &&
                                             other < best_bucket[t]))) {
                    best_value[t] = best_value[t + half];
                    best_bucket[t] = other;
                }
            }
            __syncthreads();
        }
        const int r = best_bucket[0];
        const int position = probed;
        __syncthreads();
        if (t == 0) {
            used[r] = 1;
            probes[position] = r;
            probed = position + 1;
        }
        __syncthreads();
        unsigned long long found = 0;
        for (long long p = offsets[r] + t; p < offsets[r + 1]; p += threads) {
            const int item = items[p];
            bool earlier = false;  // met in a bucket this query probed before?
            for (int c = 0; c < code_width && !earlier; ++c) {
                long long code = codes[(long long)item * code_width + c];
                if (code == r) continue;
                for (int v = 0; v < position; ++v) {
                    if (probes[v] == code) {
                        earlier = true;
                        break;
                    }
                }
            }
            if (earlier) continue;
            bool skip = false;
            for (int e = 0; e < num_exclude; ++e) skip |= excluded[e] == item;
            if (skip) continue;
            ++found;
            float dist = lane_distance(query, emb + (long long)item * dim, dim, inner_product);
            keep_best(best, topk,
                      ((unsigned long long)sortable(dist) << 32) | (unsigned long long)rows[item]);
        }
        atomicAdd(&count, found);
        __syncthreads();
    }

    merge_lists(best, topk, keys, sort_size);
    write_results(keys, q, topk, inner_product, item_of_row, out_dist, out_item);
    if (t == 0) out_count[q] = (long long)count;
}
