// Product-quantization search on the GPU: the twin of qkernels/index/_pq_cpu.py.
//
// distance_tables: one thread per (query, subspace, codeword) entry, the distance between
//   the query's sub-vector and the codeword accumulated in eight lanes (coordinate j in lane
//   j % 8) and summed pairwise, with rounding intrinsics so that no multiply-add is fused:
//   the same float32 result as the CPU kernels (qkernels/_simd.py).
// scan_by_query_u8, _u16: one block per query. The (M, K) table sits in shared memory; each
//   thread scans items t, t + T, ... summing the M entries in subspace order (as the CPU
//   does) and keeps its best topk keys; the block then bitonic-sorts all threads' keys. A
//   key is (sortable distance bits << 32 | item): ascending keys order by (distance, item),
//   as on the CPU.
// Helpers (sortable keys, lane distances, the bitonic merge) are in common.cuh.

#include "common.cuh"

#ifndef MAX_LOCAL_TOPK
#error "MAX_LOCAL_TOPK comes from qkernels/_gpu.py LIMITS[\"pq\"] (-DMAX_LOCAL_TOPK=...)"
#endif

extern "C" __global__ void distance_tables(const float* __restrict__ queries,
                                           const float* __restrict__ codebooks,
                                           int num_queries, int m_count, int k_count,
                                           int dsub, int inner_product,
                                           float* __restrict__ tables) {
    long long entry = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    long long total = (long long)num_queries * m_count * k_count;
    if (entry >= total) return;
    int c = (int)(entry % k_count);
    int m = (int)((entry / k_count) % m_count);
    long long q = entry / ((long long)k_count * m_count);
    const float* sub = queries + q * (long long)m_count * dsub + (long long)m * dsub;
    const float* word = codebooks + ((long long)m * k_count + c) * dsub;
    tables[entry] = lane_distance(sub, word, dsub, inner_product);
}

template <typename Code>
__device__ void scan(const float* __restrict__ tables, const Code* __restrict__ codes,
                     long long n, int m_count, int k_count, int topk, int sort_size,
                     int inner_product, float* __restrict__ out_dist,
                     long long* __restrict__ out_item) {
    QK_DYNAMIC_SHARED(shared);
    float* table = reinterpret_cast<float*>(shared);
    unsigned long long* keys = reinterpret_cast<unsigned long long*>(
        shared + ((sizeof(float) * m_count * k_count + 7) / 8) * 8);
    const int q = blockIdx.x;
    const int t = threadIdx.x;
    const int threads = blockDim.x;
    const float* source = tables + (long long)q * m_count * k_count;
    for (int e = t; e < m_count * k_count; e += threads) table[e] = source[e];
    __syncthreads();

    unsigned long long best[MAX_LOCAL_TOPK];
    for (int s = 0; s < topk; ++s) best[s] = ~0ULL;
    for (long long i = t; i < n; i += threads) {
        const Code* code = codes + i * m_count;
        float dist = table[code[0]];
        for (int m = 1; m < m_count; ++m) {
            dist = __fadd_rn(dist, table[m * k_count + code[m]]);
        }
        keep_best(best, topk, ((unsigned long long)sortable(dist) << 32) | (unsigned long long)i);
    }
    merge_lists(best, topk, keys, sort_size);
    write_results(keys, q, topk, inner_product, nullptr, out_dist, out_item);
}

extern "C" __global__ void scan_by_query_u8(const float* tables, const unsigned char* codes,
                                            long long n, int m_count, int k_count, int topk,
                                            int sort_size, int inner_product, float* out_dist,
                                            long long* out_item) {
    scan<unsigned char>(tables, codes, n, m_count, k_count, topk, sort_size, inner_product,
                        out_dist, out_item);
}

extern "C" __global__ void scan_by_query_u16(const float* tables, const unsigned short* codes,
                                             long long n, int m_count, int k_count, int topk,
                                             int sort_size, int inner_product, float* out_dist,
                                             long long* out_item) {
    scan<unsigned short>(tables, codes, n, m_count, k_count, topk, sort_size, inner_product,
                         out_dist, out_item);
}
