// Product-quantization search on the GPU: the twin of qkernels/quantize/_pq_cpu.py.
//
// pq_distance_tables: one thread per (query, subspace, codeword) entry, the distance between
//   the query's sub-vector and the codeword accumulated in eight lanes (coordinate j in lane
//   j % 8) and summed pairwise, with rounding intrinsics so that no multiply-add is fused:
//   the same float32 result as the CPU kernels (qkernels/_simd.py).
// pq_scan: one block per query. The (M, K) table sits in shared memory; each thread scans items
//   t, t + T, ... summing the M entries in subspace order (as the CPU does) and keeps its best
//   topk keys; the block then bitonic-sorts all threads' keys. A key is (sortable distance
//   bits << 32 | item): ascending keys order by (distance, item), as on the CPU.

#define MAX_LOCAL_TOPK 128

__device__ __forceinline__ unsigned int sortable(float value) {
    unsigned int bits = __float_as_uint(value);
    return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

__device__ __forceinline__ float unsortable(unsigned int bits) {
    return __uint_as_float((bits & 0x80000000u) ? (bits & 0x7fffffffu) : ~bits);
}

extern "C" __global__ void pq_distance_tables(const float* __restrict__ queries,
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
    float lane[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    for (int j = 0; j < dsub; ++j) {
        float term;
        if (inner_product) {
            term = __fmul_rn(sub[j], word[j]);
        } else {
            float diff = __fsub_rn(sub[j], word[j]);
            term = __fmul_rn(diff, diff);
        }
        lane[j % 8] = __fadd_rn(lane[j % 8], term);
    }
    float low = __fadd_rn(__fadd_rn(lane[0], lane[1]), __fadd_rn(lane[2], lane[3]));
    float high = __fadd_rn(__fadd_rn(lane[4], lane[5]), __fadd_rn(lane[6], lane[7]));
    float total_dist = __fadd_rn(low, high);
    tables[entry] = inner_product ? -total_dist : total_dist;
}

template <typename Code>
__device__ void scan(const float* __restrict__ tables, const Code* __restrict__ codes,
                     long long n, int m_count, int k_count, int topk, int sort_size,
                     int inner_product, float* __restrict__ out_dist,
                     long long* __restrict__ out_item) {
    extern __shared__ unsigned char shared[];
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
        unsigned long long key = ((unsigned long long)sortable(dist) << 32) |
                                 (unsigned long long)i;
        if (key < best[topk - 1]) {  // insert into the thread's sorted list
            int s = topk - 1;
            while (s > 0 && best[s - 1] > key) {
                best[s] = best[s - 1];
                --s;
            }
            best[s] = key;
        }
    }
    for (int s = 0; s < topk; ++s) keys[t * topk + s] = best[s];
    for (int s = threads * topk + t; s < sort_size; s += threads) keys[s] = ~0ULL;
    __syncthreads();

    for (int size = 2; size <= sort_size; size <<= 1) {
        for (int stride = size >> 1; stride > 0; stride >>= 1) {
            for (int s = t; s < sort_size; s += threads) {
                int partner = s ^ stride;
                if (partner > s) {
                    bool ascending = (s & size) == 0;
                    unsigned long long a = keys[s], b = keys[partner];
                    if ((a > b) == ascending) {
                        keys[s] = b;
                        keys[partner] = a;
                    }
                }
            }
            __syncthreads();
        }
    }
    for (int s = t; s < topk; s += threads) {
        long long row = (long long)q * topk + s;
        if (keys[s] != ~0ULL) {
            float dist = unsortable((unsigned int)(keys[s] >> 32));
            out_dist[row] = inner_product ? -dist : dist;
            out_item[row] = (long long)(keys[s] & 0xffffffffULL);
        } else {
            out_dist[row] = inner_product ? -__int_as_float(0x7f800000) : __int_as_float(0x7f800000);
            out_item[row] = -1;
        }
    }
}

extern "C" __global__ void pq_scan_u8(const float* tables, const unsigned char* codes,
                                      long long n, int m_count, int k_count, int topk,
                                      int sort_size, int inner_product, float* out_dist,
                                      long long* out_item) {
    scan<unsigned char>(tables, codes, n, m_count, k_count, topk, sort_size, inner_product,
                        out_dist, out_item);
}

extern "C" __global__ void pq_scan_u16(const float* tables, const unsigned short* codes,
                                       long long n, int m_count, int k_count, int topk,
                                       int sort_size, int inner_product, float* out_dist,
                                       long long* out_item) {
    scan<unsigned short>(tables, codes, n, m_count, k_count, topk, sort_size, inner_product,
                         out_dist, out_item);
}
