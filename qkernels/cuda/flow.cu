// Exact k-sparse codes for a batch of problems: the GPU twin of qkernels/flow/_flat_cpu.py
// (solve_with_potentials), step for step, so that it returns the CPU's codes, not only an
// optimum of the same objective.
//
// One block per problem. The greedy start (every class its k best buckets, lower index first on
// ties; class potentials the k-th best score, bucket potentials 0), the sink's potential and each
// bucket's flow to the sink (sink_flows), on a crowded problem (n * k >= d) the deficit buckets'
// price raises (attract, one thread, in the CPU's order), then, bucket by bucket in order,
// successive shortest paths from an excess bucket to the nearest deficit bucket with the dense
// Dijkstra of the CPU: labels of the d buckets and the sink, the next node the least label (lowest
// id on ties, found by a block-wide argmin over the labels' bit patterns), the early exit when a
// deficit bucket is among the nearest, the bound skip of classes no nearer than a labelled deficit
// bucket, reduced costs clamped at zero, potentials moved by min(dist, D) on the nodes nearer than
// D, and the augmentation. The parallel parts (a settled class's d arcs, the sink's d arcs, the
// argmin, the potential update) do per element what the CPU does; the occupants of a settled bucket
// are taken one after another, in the CPU's order, so that ties between them go the same way.
// float64 additions and comparisons only, in the CPU's order: the same bits.
//
// Scratch per problem (global memory, laid out by the caller, qkernels/flow/_flat_gpu.py):
//   doubles: pb[d], pc[n], label[d + 1], key[d + 1], label_c[n], fwd[d], back[d]
//   longs:   count[d], occ[d * n], pred[d + 1], pred_c[n], f[d], deficit[d + 1]
//   bytes:   assigned[n * d]
// A problem without an augmenting path (which the CPU reports as a bug) gets codes of -1.

#include "common.cuh"

#define INF_BITS 0x7ff0000000000000LL
#define INF __longlong_as_double(INF_BITS)

struct Pick {
    long long near;   // the least key (bits)
    long long bound;  // the least key of a deficit bucket (bits; keys | deficit)
    int near_node;
    int bound_node;
};

__device__ __forceinline__ void take(Pick& a, long long near, int near_node, long long bound,
                                     int bound_node) {
    if (near < a.near || (near == a.near && near_node < a.near_node)) {
        a.near = near;
        a.near_node = near_node;
    }
    if (bound < a.bound || (bound == a.bound && bound_node < a.bound_node)) {
        a.bound = bound;
        a.bound_node = bound_node;
    }
}

__device__ __forceinline__ void sink_costs(const double* incr, int levels, const long long* f,
                                           int r, double* fwd, double* back) {
    fwd[r] = f[r] < levels ? incr[f[r]] : INF;
    back[r] = f[r] > 0 ? -incr[f[r] - 1] : INF;
}

// class j leaves bucket `leave` for bucket `join` (move in the CPU solver): its code, its row of
// `assigned`, and the occupant lists, `leave`'s by swap-remove
__device__ __forceinline__ void move_class(long long j, long long leave, long long join, int n,
                                           int d, int k, long long* codes,
                                           unsigned char* assigned, long long* occ,
                                           long long* count) {
    assigned[j * d + join] = 1;
    assigned[j * d + leave] = 0;
    for (int s = 0; s < k; ++s) {
        if (codes[j * k + s] == leave) {
            codes[j * k + s] = join;
            break;
        }
    }
    occ[join * n + count[join]] = j;
    ++count[join];
    for (long long o = 0; o < count[leave]; ++o) {
        if (occ[leave * n + o] == j) {
            occ[leave * n + o] = occ[leave * n + count[leave] - 1];
            break;
        }
    }
    --count[leave];
}

extern "C" __global__ void solve_batch(const double* __restrict__ all_scores, int n, int d,
                                       int k, const double* __restrict__ incr, int levels,
                                       double* __restrict__ doubles,
                                       long long* __restrict__ longs,
                                       unsigned char* __restrict__ bytes,
                                       long long* __restrict__ all_codes) {
    QK_DYNAMIC_SHARED(shared);
    Pick* partial = reinterpret_cast<Pick*>(shared);
    __shared__ double psink;
    __shared__ double dist;   // the label of the node being settled
    __shared__ double bound;  // the least label of a deficit bucket
    __shared__ int node;
    __shared__ int target;
    __shared__ int stop;      // 0: relax node; 1: target reached; 2: no augmenting path
    __shared__ int failed;

    const int b = blockIdx.x;
    const int t = threadIdx.x;
    const int threads = blockDim.x;
    const int sink = d;
    const double* scores = all_scores + (long long)b * n * d;
    long long* codes = all_codes + (long long)b * n * k;
    double* pb = doubles + (long long)b * (5LL * d + 3LL * n + 2);
    double* pc = pb + d;
    double* label = pc + n;
    double* key = label + d + 1;
    long long* key_bits = reinterpret_cast<long long*>(key);
    double* label_c = key + d + 1;
    double* fwd = label_c + n;
    double* back = fwd + d;
    long long* count = longs + (long long)b * (4LL * d + (long long)d * n + n + 2);
    long long* occ = count + d;
    long long* pred = occ + (long long)d * n;
    long long* pred_c = pred + d + 1;
    long long* f = pred_c + n;
    long long* deficit = f + d;  // 0 for a deficit bucket, inf's bits otherwise
    unsigned char* assigned = bytes + (long long)b * n * d;

    // the greedy start: each class its k best buckets, best first (insertion, lower index
    // first on ties: the CPU's choice, by _top_k or top_k_rows), its potential the k-th best
    // score
    for (int j = t; j < n; j += threads) {
        const double* row = scores + (long long)j * d;
        long long* out = codes + (long long)j * k;
        int filled = 0;
        for (int r = 0; r < d; ++r) {
            const double value = row[r];
            int s;
            if (filled == k) {
                if (value <= row[out[k - 1]]) continue;
                s = k - 1;
            } else {
                s = filled++;
            }
            while (s > 0 && row[out[s - 1]] < value) {
                out[s] = out[s - 1];
                --s;
            }
            out[s] = r;
        }
        pc[j] = row[out[k - 1]];
        for (int r = 0; r < d; ++r) assigned[(long long)j * d + r] = 0;
    }
    for (int r = t; r < d; r += threads) {
        pb[r] = 0.0;
        count[r] = 0;
    }
    __syncthreads();
    if (t == 0) {
        failed = 0;
        for (int j = 0; j < n; ++j) {  // occupants in the CPU's order: by class, then rank
            for (int s = 0; s < k; ++s) {
                const long long r = codes[(long long)j * k + s];
                assigned[(long long)j * d + r] = 1;
                occ[r * n + count[r]] = j;
                ++count[r];
            }
        }
        // sink_flows: p(sink) and each bucket's flow to it, as close to its count as the
        // total n * k allows
        const long long units = (long long)n * k;
        psink = incr[min(units / d, (long long)levels - 1)];
        long long lo = 0, hi = 0;
        for (int c = 0; c < levels; ++c) {
            lo += incr[c] < psink;
            hi += incr[c] <= psink;
        }
        long long total = 0;
        for (int r = 0; r < d; ++r) {
            f[r] = min(max(count[r], lo), hi);
            total += f[r];
        }
        while (total > units) {
            for (int r = 0; r < d; ++r) {
                if (total > units && f[r] > lo) {
                    --f[r];
                    --total;
                }
            }
        }
        while (total < units) {
            for (int r = 0; r < d; ++r) {
                if (total < units && f[r] < hi) {
                    ++f[r];
                    ++total;
                }
            }
        }
        // crowded (every bucket is to hold a class): the deficit buckets' price raises, in
        // bucket order (attract in the CPU solver); label_c and pred_c hold the least gaps
        // and their classes
        if (units >= d) {
            double* least = label_c;
            long long* who = pred_c;
            for (int r = 0; r < d; ++r) {
                if (count[r] >= f[r]) continue;
                const long long wanted = f[r] - count[r];
                const double room = psink - incr[f[r] - 1] - pb[r];
                if (!(room > 0.0)) continue;
                // the wanted least gaps, by insertion (lower index first among equal ones)
                long long filled = 0;
                for (int j = 0; j < n; ++j) {
                    if (assigned[(long long)j * d + r]) continue;
                    double g = pc[j] - (scores[(long long)j * d + r] + pb[r]);
                    g = g > 0.0 ? g : 0.0;
                    long long s;
                    if (filled == wanted) {
                        if (!(g < least[wanted - 1])) continue;
                        s = wanted - 1;
                    } else {
                        s = filled++;
                    }
                    while (s > 0 && least[s - 1] > g) {
                        least[s] = least[s - 1];
                        who[s] = who[s - 1];
                        --s;
                    }
                    least[s] = g;
                    who[s] = j;
                }
                double level = room;
                if (filled == wanted) level = least[wanted - 1] < room ? least[wanted - 1] : room;
                pb[r] += level;
                for (long long w = 0; w < filled && !(least[w] > level); ++w) {
                    const long long j = who[w];
                    // leave the least adjusted bucket (the highest index on ties)
                    long long leave = codes[j * k];
                    double low = INF;
                    for (int s = 0; s < k; ++s) {
                        const long long b2 = codes[j * k + s];
                        const double a = scores[j * d + b2] + pb[b2];
                        if (a < low || (a == low && b2 > leave)) {
                            low = a;
                            leave = b2;
                        }
                    }
                    move_class(j, leave, r, n, d, k, codes, assigned, occ, count);
                }
                // each class of r: its potential the least adjusted score of its buckets
                for (long long o = 0; o < count[r]; ++o) {
                    const long long j = occ[(long long)r * n + o];
                    double low = INF;
                    for (int s = 0; s < k; ++s) {
                        const long long b2 = codes[j * k + s];
                        const double a = scores[j * d + b2] + pb[b2];
                        low = a < low ? a : low;
                    }
                    pc[j] = low;
                }
            }
        }
        deficit[sink] = INF_BITS;
    }
    __syncthreads();
    for (int r = t; r < d; r += threads) {
        sink_costs(incr, levels, f, r, fwd, back);
        deficit[r] = count[r] < f[r] ? 0 : INF_BITS;
    }
    __syncthreads();

    for (int source = 0; source < d && !failed; ++source) {
        while (count[source] > f[source] && !failed) {
            for (int u = t; u <= d; u += threads) {
                label[u] = INF;
                key[u] = INF;
            }
            for (int j = t; j < n; j += threads) label_c[j] = INF;
            __syncthreads();
            if (t == 0) {
                label[source] = 0.0;
                key[source] = 0.0;
            }
            __syncthreads();
            while (true) {
                // the nearest node and the nearest labelled deficit bucket (lowest ids)
                Pick mine = {INF_BITS + 1, INF_BITS + 1, d + 1, d + 1};
                for (int u = t; u <= d; u += threads) {
                    take(mine, key_bits[u], u, key_bits[u] | deficit[u], u);
                }
                partial[t] = mine;
                __syncthreads();
                for (int half = threads / 2; half > 0; half >>= 1) {
                    if (t < half) {
                        const Pick other = partial[t + half];
                        take(partial[t], other.near, other.near_node, other.bound,
                             other.bound_node);
                    }
                    __syncthreads();
                }
                if (t == 0) {
                    const Pick best = partial[0];
                    if (best.near >= INF_BITS) {
                        stop = 2;
                    } else if (best.bound <= best.near) {  // a deficit bucket is among the
                        stop = 1;                          // nearest: the target
                        target = best.bound_node;
                    } else {
                        stop = 0;
                        node = best.near_node;
                        dist = key[node];
                        bound = __longlong_as_double(best.bound);
                        key[node] = INF;  // settled
                    }
                }
                __syncthreads();
                if (stop) break;
                const double here = dist;
                if (node == sink) {  // one unit less from some bucket to the sink
                    const double base = here + psink;
                    for (int r = t; r < d; r += threads) {
                        double cand = base + back[r] - pb[r];
                        cand = cand > here ? cand : here;
                        if (cand < label[r]) {
                            label[r] = cand;
                            key[r] = cand;
                            pred[r] = -1;
                        }
                    }
                    __syncthreads();
                    continue;
                }
                // a bucket (not a deficit one): one unit more to the sink, or a class leaves
                const int r = node;
                if (t == 0) {
                    double cand = here + fwd[r] + pb[r] - psink;
                    cand = cand > here ? cand : here;
                    if (cand < label[sink]) {
                        label[sink] = cand;
                        key[sink] = cand;
                        pred[sink] = r;
                    }
                }
                const long long occupants = count[r];
                for (long long o = 0; o < occupants; ++o) {
                    const long long j = occ[r * n + o];
                    double from_dist = here + scores[j * d + r] + pb[r] - pc[j];
                    from_dist = from_dist > here ? from_dist : here;
                    const bool nearer = from_dist < label_c[j];
                    __syncthreads();  // every thread has read label_c[j]
                    if (!nearer) continue;
                    if (t == 0) {
                        label_c[j] = from_dist;
                        pred_c[j] = r;
                    }
                    // the bound skip: all the class reaches is at least from_dist >= bound
                    if (from_dist >= bound) continue;
                    const double base = from_dist + pc[j];
                    for (int v = t; v < d; v += threads) {
                        double cand = base - scores[j * d + v] - pb[v];
                        cand = cand > from_dist ? cand : from_dist;
                        if (assigned[j * d + v]) cand = INF;
                        if (cand < label[v]) {
                            label[v] = cand;
                            key[v] = cand;
                            pred[v] = j;
                        }
                    }
                    __syncthreads();  // the next occupant sees these labels
                }
                __syncthreads();
            }
            if (stop == 2) {
                if (t == 0) failed = 1;
                __syncthreads();
                break;
            }
            // p += min(dist, D), shifted by -D: only the nodes nearer than D change
            const double reach = label[target];
            for (int u = t; u < d; u += threads) {
                if (label[u] < reach) pb[u] -= reach - label[u];
            }
            for (int j = t; j < n; j += threads) {
                if (label_c[j] < reach) pc[j] -= reach - label_c[j];
            }
            __syncthreads();
            if (t == 0) {
                if (label[sink] < reach) psink -= reach - label[sink];
                // augment along source -> ... -> target
                long long r = target;
                while (r != source) {
                    const long long j = pred[r];
                    if (j < 0) {  // through the sink: one unit less from r, one more from the
                        --f[r];   // bucket that labelled the sink
                        sink_costs(incr, levels, f, (int)r, fwd, back);
                        r = pred[sink];
                        ++f[r];
                        sink_costs(incr, levels, f, (int)r, fwd, back);
                        continue;
                    }
                    const long long leave = pred_c[j];
                    move_class(j, leave, r, n, d, k, codes, assigned, occ, count);
                    r = leave;
                }
                deficit[target] = count[target] < f[target] ? 0 : INF_BITS;
            }
            __syncthreads();
        }
    }
    // rows sorted ascending (k is small: insertion sort per class); -1 on a failure
    for (int i = t; i < n; i += threads) {
        long long* row = codes + (long long)i * k;
        for (int a = 0; a < k && failed; ++a) row[a] = -1;
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
