// Exact top-K by Hamming distance: the GPU twin of qkernels/index/_hamming_cpu.py.
//
// One block per query. The database is (words, n) uint64, word w of every item contiguous.
// Distances are small integers (at most 64 * words), so the block
//   1. histograms the query's distances in shared memory,
//   2. finds the threshold distance tau of the K-th result and how many items at tau are
//      needed, taking those in item order (each thread owns a contiguous range of items, and
//      an exclusive scan over threads orders the ranges),
//   3. gathers the chosen keys (distance << 40 | item) into shared memory and bitonic-sorts
//      them: the result is ordered by (distance, item), as on the CPU.
// Shared memory: the histogram (at most MAX_BITS + 1 counts), two counts per thread and
// next_pow2(topk) keys; topk is at most MAX_TOPK (the caller falls back to the CPU above).

#include "common.cuh"

#ifndef MAX_BITS
#error "MAX_BITS comes from qkernels/_gpu.py LIMITS[\"hamming\"] (-DMAX_BITS=...)"
#endif
#ifndef MAX_TOPK
#error "MAX_TOPK comes from qkernels/_gpu.py LIMITS[\"hamming\"] (-DMAX_TOPK=...)"
#endif
#ifndef MAX_THREADS
#error "MAX_THREADS comes from qkernels/_gpu.py LIMITS[\"hamming\"] (-DMAX_THREADS=...)"
#endif

__device__ __forceinline__ int distance_of(const unsigned long long* __restrict__ query,
                                           const unsigned long long* __restrict__ db_t,
                                           long long n, int words, long long item) {
    int d = 0;
    for (int w = 0; w < words; ++w) {
        d += __popcll(query[w] ^ db_t[(long long)w * n + item]);
    }
    return d;
}

extern "C" __global__ void topk_by_query(const unsigned long long* __restrict__ queries,
                                         const unsigned long long* __restrict__ db_t,
                                         long long n, int words, int topk, int sort_size,
                                         int* __restrict__ out_dist,
                                         long long* __restrict__ out_item) {
    __shared__ int histogram[MAX_BITS + 1];
    __shared__ int equal_count[MAX_THREADS];
    __shared__ unsigned long long keys[MAX_TOPK];
    __shared__ int tau;
    __shared__ int need_at_tau;
    __shared__ int filled;

    const int q = blockIdx.x;
    const int t = threadIdx.x;
    const int threads = blockDim.x;
    const unsigned long long* query = queries + (long long)q * words;
    const int bits = 64 * words;
    const long long chunk = (n + threads - 1) / threads;
    const long long first = (long long)t * chunk;
    const long long last = min(n, first + chunk);

    for (int b = t; b <= bits; b += threads) histogram[b] = 0;
    __syncthreads();
    for (long long i = first; i < last; ++i) {
        atomicAdd(&histogram[distance_of(query, db_t, n, words, i)], 1);
    }
    __syncthreads();

    if (t == 0) {
        int wanted = (int)min((long long)topk, n);
        int below = 0;
        int d = 0;
        while (d <= bits && below + histogram[d] < wanted) {
            below += histogram[d];
            ++d;
        }
        tau = d;
        need_at_tau = wanted - below;
        filled = 0;
    }
    __syncthreads();

    int equal = 0;
    for (long long i = first; i < last; ++i) {
        equal += distance_of(query, db_t, n, words, i) == tau;
    }
    equal_count[t] = equal;
    __syncthreads();
    if (t == 0) {  // exclusive scan of the counts at tau: ranges come in item order
        int running = 0;
        for (int u = 0; u < threads; ++u) {
            int here = equal_count[u];
            equal_count[u] = running;
            running += here;
        }
    }
    __syncthreads();

    int quota = max(0, min(equal, need_at_tau - equal_count[t]));
    for (long long i = first; i < last; ++i) {
        int d = distance_of(query, db_t, n, words, i);
        if (d < tau || (d == tau && quota > 0)) {
            if (d == tau) --quota;
            int slot = atomicAdd(&filled, 1);
            keys[slot] = ((unsigned long long)d << 40) | (unsigned long long)i;
        }
    }
    __syncthreads();
    for (int s = filled + t; s < sort_size; s += threads) keys[s] = ~0ULL;  // padding sorts last
    bitonic_sort(keys, sort_size);

    for (int s = t; s < topk; s += threads) {
        long long row = (long long)q * topk + s;
        if (s < filled) {
            out_dist[row] = (int)(keys[s] >> 40);
            out_item[row] = (long long)(keys[s] & ((1ULL << 40) - 1));
        } else {
            out_dist[row] = 2147483647;
            out_item[row] = -1;
        }
    }
}
