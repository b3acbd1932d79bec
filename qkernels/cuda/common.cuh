// Device helpers shared by the RawKernels of qkernels/cuda (included with -I at compile time).

#pragma once

// The block's dynamic shared memory (the launch's shared_mem bytes), as unsigned char name[].
// A macro so that the CPU emulation of the tests (tests/cuda_emulation) can supply its own.
#ifndef QK_DYNAMIC_SHARED
#define QK_DYNAMIC_SHARED(name) extern __shared__ unsigned char name[]
#endif

// Float bits that sort as unsigned integers in the order of the floats (negatives included),
// as the CPU's rank keys (qkernels/_simd.py, rank_key): a zero of either sign counts as +0.0,
// so that equal distances -0.0 and +0.0 (an inner product of zero) tie and go to the lower
// item, and any NaN as +NaN, after +inf. (A zero's sign is not kept.)
__device__ __forceinline__ unsigned int sortable(float value) {
    unsigned int bits = __float_as_uint(value);
    if (value == 0.0f) bits = 0u;
    if (value != value) bits = 0x7fc00000u;
    return (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
}

__device__ __forceinline__ float unsortable(unsigned int bits) {
    return __uint_as_float((bits & 0x80000000u) ? (bits & 0x7fffffffu) : ~bits);
}

// Squared L2 (or minus the inner product) in float32 over eight lanes: coordinate j in lane
// j % 8, the lanes summed pairwise, rounding intrinsics so that no multiply-add is fused. The
// same bits as the CPU kernels (qkernels/_simd.py).
__device__ __forceinline__ float lane_distance(const float* __restrict__ a,
                                               const float* __restrict__ b, int dim,
                                               int inner_product) {
    float lane[8] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
    for (int j = 0; j < dim; ++j) {
        float term;
        if (inner_product) {
            term = __fmul_rn(a[j], b[j]);
        } else {
            float diff = __fsub_rn(a[j], b[j]);
            term = __fmul_rn(diff, diff);
        }
        lane[j % 8] = __fadd_rn(lane[j % 8], term);
    }
    float low = __fadd_rn(__fadd_rn(lane[0], lane[1]), __fadd_rn(lane[2], lane[3]));
    float high = __fadd_rn(__fadd_rn(lane[4], lane[5]), __fadd_rn(lane[6], lane[7]));
    float total = __fadd_rn(low, high);
    return inner_product ? -total : total;
}

// Ascending bitonic sort of keys[0, size) in shared memory by the whole block; size is a power
// of two. Ends with the block synchronised.
__device__ __forceinline__ void bitonic_sort(unsigned long long* keys, int size) {
    const int t = threadIdx.x;
    const int threads = blockDim.x;
    __syncthreads();
    for (int span = 2; span <= size; span <<= 1) {
        for (int stride = span >> 1; stride > 0; stride >>= 1) {
            for (int s = t; s < size; s += threads) {
                int partner = s ^ stride;
                if (partner > s) {
                    bool ascending = (s & span) == 0;
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
}

// Insert key into a thread's ascending list best[0, length) if it beats the last entry.
__device__ __forceinline__ void keep_best(unsigned long long* best, int length,
                                          unsigned long long key) {
    if (key >= best[length - 1]) return;
    int s = length - 1;
    while (s > 0 && best[s - 1] > key) {
        best[s] = best[s - 1];
        --s;
    }
    best[s] = key;
}

// A block's per-thread lists (length entries each) merged: copied to keys, padded to size
// with ~0 and sorted. keys[0..] then holds the block's best keys in order.
__device__ __forceinline__ void merge_lists(const unsigned long long* best, int length,
                                            unsigned long long* keys, int size) {
    const int t = threadIdx.x;
    for (int s = 0; s < length; ++s) keys[t * length + s] = best[s];
    for (int s = blockDim.x * length + t; s < size; s += blockDim.x) keys[s] = ~0ULL;
    bitonic_sort(keys, size);
}

// Query q's sorted keys (sortable distance << 32 | id) written out by the block: distances
// (negated back for inner products; +-inf where missing) and ids, -1 where missing. With
// item_of_row, the key's low bits are a row and item_of_row[row] the id written.
__device__ __forceinline__ void write_results(const unsigned long long* keys, int q, int topk,
                                              int inner_product,
                                              const long long* __restrict__ item_of_row,
                                              float* out_dist, long long* out_item) {
    const float inf = __int_as_float(0x7f800000);
    for (int s = threadIdx.x; s < topk; s += blockDim.x) {
        long long row = (long long)q * topk + s;
        if (keys[s] != ~0ULL) {
            float dist = unsortable((unsigned int)(keys[s] >> 32));
            unsigned long long low = keys[s] & 0xffffffffULL;
            out_dist[row] = inner_product ? -dist : dist;
            out_item[row] = item_of_row ? item_of_row[low] : (long long)low;
        } else {
            out_dist[row] = inner_product ? -inf : inf;
            out_item[row] = -1;
        }
    }
}
