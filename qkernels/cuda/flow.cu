// Exact k-sparse codes for a batch of problems: the GPU twin of qkernels/flow/_flat_cpu.py.
//
// One block per problem runs successive shortest paths on the same network: supply at the
// classes, the convex bucket cost charged from occupancy, Dijkstra from one class stopped at
// the sink, potentials moved on the settled nodes only. (This is the CPU solver's previous
// form; the CPU solver now starts from the greedy codes and moves only their excess, which
// this kernel does not do yet. Both return an optimum of the same objective, which is what
// the parity tests compare.) The block parallelises each step:
// the relaxation of a settled class's d arcs (one bucket per thread), of a bucket's occupants,
// and the choice of the next node (a block-wide argmin over the labels; the lower node id
// wins ties, buckets 0..d-1 before classes d..d+n-1, the sink before both), so it is exact
// like the CPU solver and returns an optimum of the same objective. float64 throughout.
//
// Scratch per problem (global memory, laid out by the caller):
//   doubles: pc[n], pb[d], dist[d + n]
//   ints:    count[d], occ[d * n], ncode[n], pred[d + n], settled[d + n]
//   bytes:   assigned[n * d]

#include "common.cuh"

#define INF __longlong_as_double(0x7ff0000000000000LL)

struct Best {
    double value;
    int node;
};

__device__ __forceinline__ Best better(Best a, Best b) {
    if (b.value < a.value || (b.value == a.value && b.node < a.node)) return b;
    return a;
}

extern "C" __global__ void solve_batch(const double* __restrict__ all_scores, int n, int d,
                                       int k, const double* __restrict__ incr,
                                       double* __restrict__ doubles, int* __restrict__ ints,
                                       unsigned char* __restrict__ bytes,
                                       long long* __restrict__ all_codes) {
    QK_DYNAMIC_SHARED(shared);
    Best* partial = reinterpret_cast<Best*>(shared);
    __shared__ double sink_dist;
    __shared__ int sink_pred;
    __shared__ Best chosen;
    __shared__ int stop;

    const int b = blockIdx.x;
    const int t = threadIdx.x;
    const int threads = blockDim.x;
    const double* scores = all_scores + (long long)b * n * d;
    long long* codes = all_codes + (long long)b * n * k;
    double* pc = doubles + (long long)b * (n + d + d + n);
    double* pb = pc + n;
    double* dist = pb + d;  // buckets then classes
    int* count = ints + (long long)b * (d + d * n + n + 2 * (d + n));
    int* occ = count + d;
    int* ncode = occ + d * n;
    int* pred = ncode + n;
    int* settled = pred + d + n;
    unsigned char* assigned = bytes + (long long)b * n * d;
    const int nodes = d + n;
    const double psink = incr[0];

    for (int i = t; i < n; i += threads) {
        double best = scores[(long long)i * d];
        for (int r = 1; r < d; ++r) best = fmax(best, scores[(long long)i * d + r]);
        pc[i] = best;
        ncode[i] = 0;
    }
    for (int r = t; r < d; r += threads) {
        pb[r] = 0.0;
        count[r] = 0;
    }
    for (long long e = t; e < (long long)n * d; e += threads) assigned[e] = 0;
    __syncthreads();

    for (int source = 0; source < n; ++source) {
        for (int unit = 0; unit < k; ++unit) {
            for (int u = t; u < nodes; u += threads) {
                dist[u] = INF;
                settled[u] = 0;
            }
            __syncthreads();
            if (t == 0) {
                dist[d + source] = 0.0;
                sink_dist = INF;
                sink_pred = -1;
            }
            __syncthreads();
            while (true) {
                Best mine = {INF, nodes};
                for (int u = t; u < nodes; u += threads) {
                    if (!settled[u]) mine = better(mine, Best{dist[u], u});
                }
                partial[t] = mine;
                __syncthreads();
                for (int half = threads / 2; half > 0; half >>= 1) {
                    if (t < half) partial[t] = better(partial[t], partial[t + half]);
                    __syncthreads();
                }
                // the decision to stop is made once, by thread 0, before the barrier: thread 0
                // moves sink_dist below, while slower threads could still be reading it here,
                // and those that read the new value would leave the loop alone (a deadlock
                // at the next barrier; found by the CPU emulation, tests/test_emulated.py)
                if (t == 0) {
                    chosen = partial[0];
                    stop = sink_dist <= chosen.value;  // also when nothing is left (INF)
                }
                __syncthreads();
                const Best next = chosen;
                if (stop) break;
                const int node = next.node;
                const double here = next.value;
                if (t == 0) settled[node] = 1;
                if (node >= d) {  // a class: its free arcs to the buckets
                    const int j = node - d;
                    const double base = here + pc[j];
                    for (int r = t; r < d; r += threads) {
                        if (assigned[(long long)j * d + r] || settled[r]) continue;
                        double cand = fmax(base - scores[(long long)j * d + r] - pb[r], here);
                        if (cand < dist[r]) {
                            dist[r] = cand;
                            pred[r] = j;
                        }
                    }
                } else {  // a bucket: the sink, and back to its classes
                    const int r = node;
                    if (t == 0) {
                        double cand = fmax(here + incr[count[r]] + pb[r] - psink, here);
                        if (cand < sink_dist) {
                            sink_dist = cand;
                            sink_pred = r;
                        }
                    }
                    for (int o = t; o < count[r]; o += threads) {
                        const int j = occ[r * n + o];
                        if (settled[d + j]) continue;
                        double cand = fmax(here + scores[(long long)j * d + r] + pb[r] - pc[j],
                                           here);
                        if (cand < dist[d + j]) {
                            dist[d + j] = cand;
                            pred[d + j] = r;
                        }
                    }
                }
                __syncthreads();
            }
            // potentials of the settled nodes move by dist - D
            const double big = sink_dist;
            for (int u = t; u < nodes; u += threads) {
                if (!settled[u]) continue;
                if (u < d) pb[u] -= big - dist[u];
                else pc[u - d] -= big - dist[u];
            }
            __syncthreads();
            if (t == 0) {  // augment along the path, each class leaving before it joins
                int r = sink_pred;
                while (true) {
                    const int j = pred[r];
                    int leave = -1;
                    if (j != source) {
                        leave = pred[d + j];
                        assigned[(long long)j * d + leave] = 0;
                        for (int c = 0; c < ncode[j]; ++c) {
                            if (codes[(long long)j * k + c] == leave) {
                                codes[(long long)j * k + c] = codes[(long long)j * k + ncode[j] - 1];
                                break;
                            }
                        }
                        --ncode[j];
                        for (int o = 0; o < count[leave]; ++o) {
                            if (occ[leave * n + o] == j) {
                                occ[leave * n + o] = occ[leave * n + count[leave] - 1];
                                break;
                            }
                        }
                        --count[leave];
                    }
                    assigned[(long long)j * d + r] = 1;
                    codes[(long long)j * k + ncode[j]] = r;
                    ++ncode[j];
                    occ[r * n + count[r]] = j;
                    ++count[r];
                    if (j == source) break;
                    r = leave;
                }
            }
            __syncthreads();
        }
    }
    // rows sorted ascending (k is small: insertion sort per class)
    for (int i = t; i < n; i += threads) {
        long long* row = codes + (long long)i * k;
        for (int a = 1; a < k; ++a) {
            long long value = row[a];
            int c = a;
            while (c > 0 && row[c - 1] > value) {
                row[c] = row[c - 1];
                --c;
            }
            row[c] = value;
        }
    }
}
